"""Datasets of image files: image_folder (classes from sub-folders, corrupt files skipped) in
memory and streamed through a DataLoader, and CelebA's layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from aigc_cli.build import build_data
from aigc_cli.data.base import TensorData
from aigc_cli.data.files import StreamingImages, load_image
from aigc_cli.errors import DataError

from .helpers import tiny_overrides

COLOURS = {"red": (255, 0, 0), "blue": (0, 0, 255)}


def make_folder(root: Path, per_class: int = 10, corrupt: bool = True) -> Path:
    """PNGs in one sub-folder per class (a nested one too), plus a corrupt file and a non-image."""
    for name, colour in COLOURS.items():
        for i in range(per_class):
            sub = root / name / ("nested" if i % 3 == 0 else "")
            sub.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (20 + i, 16), colour).save(sub / f"{i}.png")
    if corrupt:
        (root / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (root / "blue" / "notes.txt").write_text("not an image")
    return root


def cfg(path: Path, **kw) -> dict:
    return {"name": "image_folder", "path": str(path), "image_size": 8, "workers": 0,
            "test_fraction": 0.25, **kw}  # fmt: skip


def test_image_folder_in_memory_with_classes_and_a_corrupt_file(tmp_path, capsys):
    data = build_data(cfg(make_folder(tmp_path / "imgs")))
    assert isinstance(data, TensorData)
    out = capsys.readouterr().out
    assert "skipped 1 unreadable image file(s) of 21" in out and "broken.png" in out
    assert data.spec.shape == [3, 8, 8] and data.spec.class_names == ["blue", "red"]
    x, y = data.train
    assert x.dtype == torch.uint8 and len(x) + len(data.test[0]) == 20
    # every image is one flat colour, and its label is its folder
    for img, label in zip(x, y, strict=True):
        expected = COLOURS[data.spec.class_names[label]]
        assert img[:, 4, 4].tolist() == list(expected)


def test_image_folder_streamed_matches_in_memory(tmp_path):
    folder = make_folder(tmp_path / "imgs")
    memory = build_data(cfg(folder))
    stream = build_data(cfg(folder, in_memory="false"))
    assert isinstance(stream, StreamingImages)
    xs = torch.cat([x for x, _ in stream.eval_iter(3)])
    assert torch.equal(xs, memory.test[0].float() / 255)
    x, y = next(stream.train_iter(4, seed=0))
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.long


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_resumes_at_the_same_batch(tmp_path, workers):
    folder = make_folder(tmp_path / "imgs", corrupt=False)
    data = build_data(cfg(folder, in_memory="false", workers=workers, image_size=16))
    it = data.train_iter(4, seed=3)
    seen = [next(it)[0] for _ in range(5)]  # crosses an epoch: 15 train images = 3 batches
    state = it.state_dict()
    assert state == {"epoch": 1, "pos": 2}
    expected = [next(it)[0] for _ in range(3)]
    again = data.train_iter(4, seed=3)
    again.load_state_dict(state)
    for want in expected:
        assert torch.equal(next(again)[0], want)
    assert not torch.equal(seen[0], seen[3])  # a new epoch is a new order


def test_a_file_that_breaks_mid_training_is_dropped_from_its_batch(tmp_path, capsys):
    folder = make_folder(tmp_path / "imgs", corrupt=False)
    data = build_data(cfg(folder, in_memory="false", test_fraction=0.5))
    victim = Path(data.train.paths[0])
    victim.write_bytes(b"gone")
    sizes = [len(x) for x, _ in (next(it) for it in [data.train_iter(10, 0)])]
    assert sizes == [9]
    assert f"skipped unreadable image file {victim}" in capsys.readouterr().out


def test_centre_crop_and_grey(tmp_path):
    im = Image.new("RGB", (30, 10), (0, 0, 0))
    im.paste((255, 255, 255), (10, 0, 20, 10))  # white middle third
    im.save(tmp_path / "wide.png")
    x = load_image(tmp_path / "wide.png", 10, 1)
    assert x.shape == (1, 10, 10) and x.min() > 200  # only the centre square is kept
    x = load_image(tmp_path / "wide.png", 20, 3)
    assert x.shape == (3, 20, 20)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="needs a folder"):
        build_data({"name": "image_folder"})
    with pytest.raises(DataError, match="image folder not found"):
        build_data(cfg(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds 0 image file"):
        build_data(cfg(tmp_path / "empty"))
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(4):
        Image.new("L", (8, 8), i * 60).save(flat / f"{i}.png")
    data = build_data(cfg(flat, channels=1))
    assert data.spec.num_classes == 0 and data.spec.shape == [1, 8, 8]


def write_fake_celeba(root: Path, n: int = 6) -> None:
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    lines = []
    for i in range(n):
        name = f"{i + 1:06d}.jpg"
        Image.new("RGB", (178, 218), (i * 40, 100, 50)).save(folder / "img_align_celeba" / name)
        lines.append(f"{name} {[0, 0, 0, 1, 2, 2][i]}")
    (folder / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")


def test_celeba_layout(tmp_path):
    write_fake_celeba(tmp_path)
    data = build_data({"name": "celeba", "root": str(tmp_path), "download": False,
                       "image_size": 16, "workers": 0})  # fmt: skip
    assert data.spec.shape == [3, 16, 16] and data.spec.num_classes == 0
    assert len(data.train[0]) == 3 and len(data.test[0]) == 2  # validation images left out
    with pytest.raises(DataError, match=r"celeba not found: .*img_align_celeba"):
        build_data({"name": "celeba", "root": str(tmp_path / "none"), "download": False})


def test_training_on_a_streamed_folder(run_main, tmp_path):
    make_folder(tmp_path / "imgs")
    code, out, err = run_main(
        "train", *tiny_overrides("vae", "image_folder"), "dataset.path=imgs",
        "dataset.image_size=16", "dataset.in_memory=false", "dataset.workers=0",
        "hydra.run.dir=run",
    )  # fmt: skip
    assert code == 0, err
    assert "skipped 1 unreadable image file(s)" in out
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_image_folder_takes_the_folders_own_size_and_channels(tmp_path, capsys):
    """auto: the most common shorter side (capped) and grey when every image is grey."""
    grey = tmp_path / "grey"
    grey.mkdir()
    for i in range(12):
        Image.new("L", (28, 28), i * 20).save(grey / f"{i}.png")
    Image.new("L", (40, 30), 0).save(grey / "odd.png")  # one other size: not the most common
    data = build_data({"name": "image_folder", "path": str(grey), "workers": 0})
    assert data.spec.shape == [1, 28, 28]
    assert data.spec.extra["resolved"] == {"image_size": 28, "channels": 1}
    out = capsys.readouterr().out
    assert "image_size=28 (the most common shorter side of 13 images)" in out
    assert "channels=1 (every image is grey)" in out
    (grey / "colour.png").unlink(missing_ok=True)
    Image.new("RGB", (28, 28), (255, 0, 0)).save(grey / "colour.png")
    assert build_data({"name": "image_folder", "path": str(grey), "workers": 0}).spec.shape[0] == 3
    big = tmp_path / "big"
    big.mkdir()
    for i in range(3):
        Image.new("RGB", (400, 300), (0, 0, 255)).save(big / f"{i}.png")
    data = build_data({"name": "image_folder", "path": str(big), "workers": 0, "channels": 1})
    assert data.spec.shape == [1, 128, 128]  # capped; an explicit channels is kept
    assert "capped at 128" in capsys.readouterr().out


def test_native_size_is_stored_in_the_run(run_main, tmp_path):
    folder = tmp_path / "imgs"
    for name, shade in (("dark", 30), ("light", 220)):
        (folder / name).mkdir(parents=True)
        for i in range(8):
            Image.new("L", (28, 28), shade + i).save(folder / name / f"{i}.png")
    code, _, err = run_main("train", *tiny_overrides("vae", "image_folder"), "dataset.path=imgs",
                              "dataset.workers=0", "hydra.run.dir=run")  # fmt: skip
    assert code == 0, err
    from aigc_cli.store.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["dataset"]["spec"]["shape"] == [1, 28, 28]
    assert (
        ckpt["dataset"]["config"]["image_size"] == 28 and ckpt["dataset"]["config"]["channels"] == 1
    )
    assert "image_size: 28" in (tmp_path / "run" / "config.yaml").read_text()
    code, _, err = run_main("train", *tiny_overrides("vae", "image_folder"), "dataset.path=imgs",
                            "dataset.image_size=big")  # fmt: skip
    assert code != 0 and "'dataset.image_size': 'big'; auto or a number" in err
