"""Optimizers and learning-rate schedules built from `optim` config; models call
`make_optimizer` for each of their parameter groups, the loop calls `make_scheduler`."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from aigc_cli.config import OptimConfig
from aigc_cli.errors import ConfigError


def fused_devices() -> tuple[str, ...]:
    """Device types this torch has a fused Adam kernel for (recent releases include CPU)."""
    try:
        # Deferred: a private torch helper, read only where asked, with a fallback.
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # a torch that moved it: CUDA has had the kernel longest
        return ("cuda",)
    return tuple(_get_fused_kernels_supported_devices())


def impl_flags(impl: str, device: torch.device | None) -> dict[str, bool]:
    """torch's flags for `optim.impl`. The fused kernel updates each tensor in one pass where
    foreach makes about eight (lerp, mul, addcmul, sqrt, div, add, addcdiv...), so fused is
    several times faster on small models (figures in docs/performance.md)."""
    supported = device is not None and device.type in fused_devices()
    if impl == "auto":
        impl = "fused" if supported else "foreach"
    if impl == "fused":
        if not supported:  # torch itself would only say so at the first step
            raise ConfigError(
                f"optim.impl=fused: this torch has no fused Adam for {device}",
                hint=f"use optim.impl=auto or foreach (fused runs on {', '.join(fused_devices())})",
            )
        return {"fused": True}
    return {"foreach": impl == "foreach"}


def make_optimizer(
    params: Iterable[Any],
    cfg: OptimConfig,
    *,
    lr: float | None = None,
    betas: list[float] | None = None,
) -> Optimizer:
    """Adam or AdamW over `params` (tensors or param-group dicts); lr/betas override the config
    for models that tune one network differently (a GAN's discriminator)."""
    params = list(params)
    tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
    device = tensors[0].device if tensors else None
    kwargs: dict[str, Any] = {
        "lr": lr if lr is not None else cfg.lr,
        "betas": tuple(betas if betas is not None else cfg.betas),
        "eps": cfg.eps,
        "weight_decay": cfg.weight_decay,
    }
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(params, **kwargs, **impl_flags(cfg.impl, device))


def lr_factor(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Multiplier of the peak lr at `step`: linear warmup, then constant or cosine decay."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    decay = (cfg.decay_steps or max_steps) - cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, decay))
    floor = cfg.min_lr / cfg.lr
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(opt: Optimizer, cfg: OptimConfig, max_steps: int) -> LambdaLR:
    return LambdaLR(opt, lambda step: lr_factor(step, cfg, max_steps))
