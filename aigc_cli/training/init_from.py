"""Fine-tuning: `init_from=<run | checkpoint | export folder>` starts a new run (step 0, its own
optimizer, schedule, data and run dir) from another run's weights, the EMA ones when it kept
them. Tensors whose shape differs are listed and keep their fresh initial values; a family may
first carry weights across a change of data (the transformer moves its embedding rows to a
new character vocabulary). Loading runs no code (weights_only, safetensors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from aigc_cli.data.base import DataSpec
from aigc_cli.errors import ConfigError
from aigc_cli.store.checkpoint import load_checkpoint
from aigc_cli.store.export import load_weights, read_meta
from aigc_cli.store.runs import resolve_checkpoint

SHOWN = 6  # mismatched tensors named in the note; the rest are counted


def init_weights(model: Any, source: str) -> list[str]:
    """Load `source`'s weights into `model` where they fit; returns the notes to print."""

    path = resolve_checkpoint(source)
    state, name, spec = source_weights(path)
    if name != model.cfg.name:
        raise ConfigError(
            f"bad value for 'init_from': {source} is a run of model '{name}'; this run trains "
            f"'{model.cfg.name}'",
            hint=f"fine-tune with model={name}, or init_from a {model.cfg.name} run",
        )
    state, notes = model.adapt_weights(state, DataSpec.from_dict(spec))
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    differ = [k for k, v in state.items() if k in own and k not in fits]
    if not fits:
        raise ConfigError(
            f"bad value for 'init_from': no tensor of {path} fits this model (shapes differ "
            "in every one)",
            hint="fine-tune with the model settings the source run was trained with",
        )
    model.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in fits.items()}})
    notes.append(f"initialised from {path}: {len(fits)} of {len(own)} tensors")
    if differ:
        shown = ", ".join(f"{k} {_shape(state[k])} → {_shape(own[k])}" for k in differ[:SHOWN])
        more = f" and {len(differ) - SHOWN} more" if len(differ) > SHOWN else ""
        notes.append(f"left at their initial values (shape differs): {shown}{more}")
    fresh = [k for k in own if k not in state]
    if fresh:
        more = f" and {len(fresh) - SHOWN} more" if len(fresh) > SHOWN else ""
        notes.append(f"not in the source, initial values: {', '.join(fresh[:SHOWN])}{more}")
    return notes


def source_weights(path: Path) -> tuple[dict[str, torch.Tensor], str, dict[str, Any]]:
    """(state dict, model name, data spec) of a checkpoint or an export's safetensors."""
    if Path(path).suffix == ".safetensors":
        meta = read_meta(Path(path).parent)
        return load_weights(path), meta["model"]["name"], meta["dataset"]["spec"]

    ckpt = load_checkpoint(path)
    ema = ckpt.get("ema")
    state = ema["weights"] if ema else ckpt["model_state"]
    return state, ckpt["model"]["name"], ckpt["dataset"]["spec"]


def _shape(t: torch.Tensor) -> str:
    return "×".join(map(str, t.shape))
