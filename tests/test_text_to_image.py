"""Text-to-image: the caption grammar both ways, the captioned data, a text-conditioned
denoiser trained and sampled through the CLI, the judge's verdicts by hand, and bad input in
one line."""

import pytest
import torch

from aigc_cli.build import build_data, build_model
from aigc_cli.data.captions import COLOURS, SHAPES, Scene, Thing, describe, parse, verdicts
from aigc_cli.errors import ConfigError

from .helpers import TINY, run_cli

SMALL_DATA = {"name": "captioned_shapes", "image_size": 16, "train_size": 64, "test_size": 16}


def test_every_phrasing_parses_back_to_its_scene():
    scenes = [Scene(Thing(s, c, k)) for s in (0, 1) for c in range(6) for k in range(3)]
    scenes += [Scene(Thing(0, 1, 2), Thing(1, 3, 0), layout) for layout in (0, 1)]
    for scene in scenes:
        for phrasing in range(6):
            assert parse(describe(scene, phrasing)) == scene
    assert parse("A small red triangle above a large blue circle.") == Scene(
        Thing(0, 0, 2), Thing(1, 2, 0), 0
    )
    # "below" names the lower thing first: the scene keeps the upper one first
    assert parse("a large blue circle below a small red triangle") == Scene(
        Thing(0, 0, 2), Thing(1, 2, 0), 0
    )
    with pytest.raises(ConfigError, match="not a caption"):
        parse("a purple circle")


@pytest.mark.parametrize("objects", [1, 2])
def test_held_out_pairs_appear_in_no_scene(objects):
    data = build_data({**SMALL_DATA, "objects": objects, "train_size": 600})
    for split in (data.train, data.test):
        attrs = split[3]
        for colour, shape in ((COLOURS.index("yellow"), SHAPES.index("circle")),
                              (COLOURS.index("cyan"), SHAPES.index("square"))):  # fmt: skip
            first = (attrs[:, 3] == colour) & (attrs[:, 2] == shape)
            second = (attrs[:, 0] == 1) & (attrs[:, 6] == colour) & (attrs[:, 5] == shape)
            assert not (first | second).any()
    assert int(data.train[3][:, 0].min()) == int(data.train[3][:, 0].max()) == objects - 1


def test_verdicts_by_hand():
    wanted = torch.tensor([[0, 0, 1, 2, 0, 0, 0, 0],  # one small blue square
                           [1, 0, 2, 0, 1, 0, 3, 0]])  # fmt: skip
    read = wanted.clone()
    read[0, 5:] = torch.tensor([2, 5, 1])  # slot 2 of a one-thing scene does not count
    read[1, 1] = 1  # the relation is wrong
    read[1, 6] = 4  # and the second thing's colour
    v = verdicts(read, wanted)
    assert v["all"].tolist() == [True, False]
    assert v["relation"].tolist() == [True, False] and v["colour"].tolist() == [True, False]
    assert v["shape"].tolist() == [True, True] and v["size"].tolist() == [True, True]
    assert v["swapped"].tolist() == [False, False]
    swap = wanted[1:].clone()
    swap[0, 3], swap[0, 6] = wanted[1, 6], wanted[1, 3]  # red and yellow on the other things
    same_colour = swap.clone()
    same_colour[0, 6] = same_colour[0, 3] = 5
    v = verdicts(torch.cat([swap, same_colour]), torch.cat([wanted[1:], same_colour]))
    assert v["swapped"].tolist() == [True, False] and v["colour"].tolist() == [False, True]


def test_prompts_steer_rows_and_bad_prompts_are_one_line():
    data = build_data({**SMALL_DATA, "objects": 2})
    model = build_model({"name": "flow", "text": True, "base_channels": 8, "steps": 2,
                         "text_width": 16, "text_layers": 1}, data.spec).eval()  # fmt: skip
    prompts = ["a small red circle above a large blue square", "a large green triangle to the "
               "left of a small yellow square"]  # fmt: skip
    result = model.sample(4, generator=torch.Generator().manual_seed(0), prompts=prompts)
    assert result.images.shape == (4, 3, 16, 16) and result.nrow == 2
    torch.manual_seed(1)
    with torch.no_grad():  # the encoder's output reaches the image: other words, other pixels
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    a = model.sample(1, generator=torch.Generator().manual_seed(0), prompt=prompts[0])
    b = model.sample(1, generator=torch.Generator().manual_seed(0), prompt=prompts[1])
    assert (a.images - b.images).abs().max() > 1e-3
    for bad, match in [({"prompt": " "}, "empty"), ({"prompt": "a dog"}, "not a caption"),
                       ({"classes": [0]}, "captions"),
                       ({"prompt": "a small red circle" * 5}, "at most")]:  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            model.sample(2, **bad)


@pytest.mark.slow
def test_train_and_sample_a_text_to_image_model_through_the_cli(tmp_path):
    run = tmp_path / "run"
    args = ["train", "model=diffusion", "dataset=captioned_shapes", "model.text=true",
            "model.base_channels=8", "model.timesteps=50", "model.steps=2", "model.text_width=16",
            "model.text_layers=1", *TINY, *[f"dataset.{k}={v}" for k, v in SMALL_DATA.items()
                                            if k != "name"], f"hydra.run.dir={run}"]  # fmt: skip
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a small red circle\n\na large blue square\n")
    r = run_cli("sample", f"run={run}", f"prompts_file={prompts}", "n=4", "guidance=3",
                f"out={tmp_path / 'grid.png'}", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "grid.png").stat().st_size > 0
    for bad in ("prompt=a purple circle", "classes=[1]"):
        r = run_cli("sample", f"run={run}", bad, cwd=tmp_path)
        lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
        assert r.returncode != 0 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    shapes_run = tmp_path / "shapes"
    r = run_cli("train", "model=flow", "dataset=shapes", "dataset.image_size=16",
                "model.base_channels=8", "model.steps=2", *TINY, f"hydra.run.dir={shapes_run}",
                cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = run_cli("sample", f"run={shapes_run}", "prompt=a small red circle", cwd=tmp_path)
    assert r.returncode != 0 and "takes no text" in r.stderr
