"""Restoring a run from its checkpoint: weights, EMA, optimizer and schedule state, AMP scaler,
data position and RNG, so the resumed run continues exactly. The optimizer's hyperparameters
(lr, betas, weight decay) and the schedule's shape come from this command's config, so
`aigc train resume=<run> optim.lr=1e-5` trains on at the new rate."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from aigc_cli.errors import CheckpointError
from aigc_cli.training.logger import flatten
from aigc_cli.training.rng import set_rng_state
from aigc_cli.training.step import Optimization


def restore(
    ckpt: dict[str, Any], model: Any, ema: Any, opt: Optimization, batches: Any, cfg: DictConfig
) -> list[str]:
    """Load `ckpt` into the run's parts; return notes of the settings this command changed."""
    fresh = {k: [_hyper(g) for g in o.param_groups] for k, o in opt.optimizers.items()}
    try:
        model.load_state_dict(ckpt["model_state"])
        if ema is not None and ckpt.get("ema"):
            ema.load_state_dict(ckpt["ema"])
        for k, o in opt.optimizers.items():
            o.load_state_dict(ckpt["optimizers"][k])
        for k, s in opt.schedulers.items():
            s.load_state_dict(ckpt["schedulers"][k])
        opt.scaler.load_state_dict(ckpt["scaler"])
        batches.load_state_dict(ckpt["data_state"])
        set_rng_state(ckpt["rng"])
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(
            f"cannot resume from this checkpoint: {str(e).splitlines()[0][:120]}",
            hint="resume with the same model and dataset settings the run was started with",
        ) from e
    for k, o in opt.optimizers.items():
        for group, hyper in zip(o.param_groups, fresh[k], strict=True):
            group.update(hyper)
        s = opt.schedulers[k]
        # The schedule resumes at its step, from this config's peak lr and shape.
        s.base_lrs = [g["initial_lr"] for g in o.param_groups]
        for group, base, factor in zip(o.param_groups, s.base_lrs, s.lr_lambdas, strict=True):
            group["lr"] = base * factor(s.last_epoch)
        s._last_lr = [g["lr"] for g in o.param_groups]
    old = ckpt.get("config") or {}
    new = OmegaConf.to_container(cfg, resolve=True)
    return [f"resume: {key} {a!r} → {b!r} (from this command)" for key, a, b in
            changed_keys(old, new, ("optim", "trainer"))]  # fmt: skip


def _hyper(group: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in group.items() if k != "params"}


def changed_keys(
    old: Mapping[str, Any], new: Mapping[str, Any], sections: Iterable[str]
) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) for each dotted key of `sections` whose value differs."""
    out = []
    for sec in sections:
        a, b = flatten(old.get(sec) or {}, f"{sec}."), flatten(new.get(sec) or {}, f"{sec}.")
        out += [(k, a.get(k), v) for k, v in b.items() if k in a and a[k] != v]
    return out
