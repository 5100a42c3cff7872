"""Adam's implementation (`optim.impl`): the fused kernel where torch has one, the same
updates whichever is used, and a clear error when fused is asked for where it cannot run."""

from __future__ import annotations

import pytest
import torch

from aigc_cli import optim
from aigc_cli.config import OptimConfig
from aigc_cli.errors import ConfigError


def _trained(impl: str, name: str = "adam") -> list[torch.Tensor]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    opt = optim.make_optimizer(net.parameters(), OptimConfig(name=name, impl=impl, lr=1e-2))
    x, y = torch.randn(32, 6), torch.randn(32, 2)
    for _ in range(5):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(net(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_every_impl_makes_the_same_updates(name):
    ref = _trained("loop", name)
    for impl in ("foreach", "fused", "auto"):
        if impl == "fused" and "cpu" not in optim.fused_devices():
            continue
        for a, b in zip(_trained(impl, name), ref, strict=True):
            assert torch.allclose(a, b, atol=1e-6), impl
    # and they did move: the comparison is not between untouched weights
    torch.manual_seed(0)
    assert not torch.allclose(ref[0], torch.nn.Linear(6, 16).weight)


def test_auto_takes_the_fused_kernel_where_torch_has_one(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(optim, "fused_devices", lambda: ("cuda", "cpu"))
    assert optim.impl_flags("auto", cpu) == {"fused": True}
    monkeypatch.setattr(optim, "fused_devices", lambda: ("cuda",))
    assert optim.impl_flags("auto", cpu) == {"foreach": True}
    assert optim.impl_flags("loop", cpu) == {"foreach": False}
    with pytest.raises(ConfigError, match=r"optim.impl=fused.*optim.impl=auto or foreach"):
        optim.impl_flags("fused", cpu)


def test_the_loop_uses_fused_adam_on_cpu_by_default(make_cfg, tmp_path):
    """What a default run gets: its optimizer state is saved with the fused flag set."""
    if "cpu" not in optim.fused_devices():
        pytest.skip("this torch has no fused Adam on CPU")
    from aigc_cli.store.checkpoint import load_checkpoint
    from aigc_cli.training.loop import train

    train(make_cfg("trainer.max_steps=2"), run_dir=tmp_path)
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    groups = next(iter(ckpt["optimizers"].values()))["param_groups"]
    assert all(g["fused"] is True and not g["foreach"] for g in groups)
