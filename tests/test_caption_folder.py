"""`dataset=caption_folder`: users' captioned images in both layouts (.txt beside each image,
Hugging Face's metadata.jsonl), each batch's captions checked against the colour drawn in its
images, in memory and streamed; the warnings and one-line errors; and a text-to-image model
trained on a folder, sampled from a free prompt and exported with its tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aigc_cli.build import build_data
from aigc_cli.errors import DataError

from .helpers import FOLDER_COLOURS, caption_folder, run_cli

SETTINGS = {"name": "caption_folder", "image_size": 16, "channels": 3, "test_fraction": 0.25,
            "workers": 0}  # fmt: skip


def decode(ids: torch.Tensor) -> str:
    """The caption of one row of ids: after the start id, bytes shifted by two, until padding."""
    row = ids.tolist()
    assert row[0] == 1
    return bytes(t - 2 for t in row[1:] if t != 0).decode("utf-8")


def dominant_colour(image: torch.Tensor) -> str:
    """The named colour closest to the mean of an image's lit pixels."""
    lit = image.flatten(1)[:, image.flatten(1).sum(0) > 0.3]
    mean = lit.mean(1) * 255
    return min(
        FOLDER_COLOURS, key=lambda c: float(((mean - torch.tensor(FOLDER_COLOURS[c])) ** 2).sum())
    )


@pytest.mark.parametrize("in_memory", ["true", "false"])
def test_each_image_gets_its_own_caption_in_both_layouts(tmp_path, in_memory):
    root = caption_folder(tmp_path / "folder", n=24)
    (root / "img001.png").write_bytes(b"not a png")  # unreadable: dropped with its caption
    data = build_data({**SETTINGS, "path": str(root), "in_memory": in_memory})
    spec = data.spec.extra["captions"]
    assert spec["tokenizer"] == {"kind": "byte"} and spec["length"] == 128
    assert set(spec["examples"]) <= {
        f"a {c} {s}" for c in FOLDER_COLOURS for s in ("square", "circle")
    }
    seen = 0
    batches = [next(data.train_iter(6, 0)) for _ in range(1)] + list(data.eval_iter(4))
    for x, _, ids in batches:
        for image, row in zip(x, ids, strict=True):
            caption = decode(row)
            assert caption.split()[1] == dominant_colour(image), caption
            seen += 1
    assert seen >= 6 + 6
    n_train = sum(len(b[0]) for b in [next(data.train_iter(1, 0)) for _ in range(17)])
    assert n_train == 17  # 24 images, 6 test, 1 unreadable: 17 train images


def test_missing_captions_are_counted_and_train_as_the_empty_prompt(tmp_path, capsys):
    root = caption_folder(tmp_path / "folder", n=12)
    (root / "img000.txt").unlink()
    (root / "img001.txt").write_text("  \n")
    data = build_data({**SETTINGS, "path": str(root), "test_fraction": 0.5})
    out = capsys.readouterr().out
    assert "2 of 12 images have no caption" in " ".join(out.split())
    rows = torch.cat([data.train_iter(6, 0).__next__()[2], *(b[2] for b in data.eval_iter(6))])
    assert int((rows[:, 1] == 0).sum()) == 2  # the empty prompt: the start id, then padding


def test_long_captions_are_cut_and_counted(tmp_path, capsys):
    root = caption_folder(tmp_path / "folder", n=6)
    (root / "img000.txt").write_text("a red square " * 10)
    data = build_data({**SETTINGS, "path": str(root), "caption_length": 16})
    assert "1 caption(s) longer than 15 bytes were cut" in " ".join(capsys.readouterr().out.split())
    assert data.spec.extra["captions"]["length"] == 16


def test_metadata_never_points_outside_the_scanned_images(tmp_path):
    root = caption_folder(tmp_path / "folder", n=6)
    secret = tmp_path / "secret.png"
    secret.write_bytes((root / "img000.png").read_bytes())
    with (root / "sub" / "metadata.jsonl").open("a") as f:
        f.write(json.dumps({"file_name": "../../secret.png", "text": "a stolen square"}) + "\n")
    data = build_data({**SETTINGS, "path": str(root), "test_fraction": 0.5})
    rows = torch.cat([next(data.train_iter(3, 0))[2], *(b[2] for b in data.eval_iter(3))])
    assert not any("stolen" in decode(r) for r in rows)


def test_bad_folders_are_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="needs a folder"):
        build_data({"name": "caption_folder"})
    with pytest.raises(DataError, match="not found"):
        build_data({"name": "caption_folder", "path": str(tmp_path / "nowhere")})
    with pytest.raises(DataError, match="holds 0 image"):
        build_data({"name": "caption_folder", "path": str(empty)})
    bare = caption_folder(tmp_path / "bare", n=6)
    for p in [*bare.glob("*.txt"), bare / "sub" / "metadata.jsonl"]:
        p.unlink()
    with pytest.raises(DataError, match="no captions in"):
        build_data({**SETTINGS, "path": str(bare)})
    broken = caption_folder(tmp_path / "broken", n=6)
    (broken / "sub" / "metadata.jsonl").write_text(
        '{"file_name": "img003.png", "text": "a"}\n{oops\n'
    )
    with pytest.raises(DataError, match=r"metadata.jsonl, line 2: not JSON"):
        build_data({**SETTINGS, "path": str(broken)})


@pytest.mark.slow
def test_train_sample_and_export_a_text_model_on_a_caption_folder(tmp_path: Path):
    root = caption_folder(tmp_path / "folder", n=24)
    run = tmp_path / "run"
    r = run_cli("train", "model=flow", "model.text=true", "model.base_channels=8", "model.steps=2",
                "model.text_width=16", "model.text_layers=1", "dataset=caption_folder",
                f"dataset.path={root}", "dataset.image_size=16", "trainer.max_steps=4",
                "trainer.batch_size=4", "trainer.sample_every=2", "trainer.eval_every=0",
                "trainer.progress=false", f"hydra.run.dir={run}", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (run / "samples").glob("*.png"))
    grid = tmp_path / "grid.png"
    r = run_cli("sample", f"run={run}", 'prompts=["a red circle","Ein grünes Quadrat"]', "n=4",
                f"out={grid}", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    from PIL import Image

    with Image.open(grid) as im:  # two rows of two 16-pixel images, with the grid's padding
        assert im.size[0] < im.size[1] * 1.5 and min(im.size) >= 32
    r = run_cli("sample", f"run={run}", f"prompt={'x' * 200}", cwd=tmp_path)
    assert r.returncode != 0 and "at most 127" in r.stderr and "Traceback" not in r.stderr
    out = tmp_path / "export"
    r = run_cli("export", f"run={run}", f"out={out}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    import aigc_cli

    model = aigc_cli.load(out)
    a = model.sample(2, seed=3, prompt="a red circle")
    b = aigc_cli.load(run).sample(2, seed=3, prompt="a red circle")
    assert torch.allclose(a.images, b.images, atol=1e-5)
