"""A run stopped at step k and resumed ends where an uninterrupted run ends."""

import torch

from aigc_cli.training.loop import train

from .helpers import read_scalars


def test_resumed_run_matches_uninterrupted(make_cfg, tmp_path):
    common = [
        "trainer.max_steps=6",
        "trainer.log_every=1",
        "trainer.ckpt_every=3",
        "trainer.deterministic=true",
    ]
    full = tmp_path / "full"
    train(make_cfg(*common), run_dir=full)

    part = tmp_path / "part"
    train(make_cfg(*common[1:], "trainer.max_steps=3"), run_dir=part)
    train(make_cfg(*common), resume=part)  # continues in its own run dir

    a = torch.load(full / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(part / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for key, value in a["model_state"].items():
        assert torch.equal(value, b["model_state"][key]), key
    # one event stream, no duplicated or out-of-order steps, same loss curve
    curve_a, curve_b = read_scalars(full)["model/loss"], read_scalars(part)["model/loss"]
    assert [s for s, _ in curve_b] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in curve_a] == [v for _, v in curve_b]
