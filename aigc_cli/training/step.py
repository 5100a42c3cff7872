"""One optimizer step of any model: its stages → backward (AMP-scaled) → average over ranks →
clip → optimizer step; then the schedules. The loop calls `train_step` and nothing else per
step, so every family gets the same mechanics, including what a non-finite loss does."""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from aigc_cli import distributed
from aigc_cli.data.base import Batch
from aigc_cli.models.base import Stage, TrainedModel
from aigc_cli.noise import Noise


@dataclass
class Optimization:
    """Everything a step updates besides the model: explicit state, built once per run."""

    optimizers: dict[str, Optimizer]
    schedulers: dict[str, LRScheduler]
    scaler: torch.amp.GradScaler
    autocast_dtype: torch.dtype | None  # bf16 / fp16 autocast, or None for fp32
    device_type: str
    grad_clip: float = 0.0
    skip_nonfinite: bool = False  # trainer.on_nonfinite=skip
    world: distributed.World = field(default_factory=distributed.World)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)


@dataclass
class StepResult:
    skipped: bool  # a stage's loss was non-finite: nothing was updated
    scalars: dict[str, Tensor]  # "<opt_name>/<key>" → value, only of the stages that ran
    norms: dict[str, Tensor]  # "<opt_name>/grad_norm" → gradient norm (when asked for)


def train_step(
    model: TrainedModel,
    batches: Batch | list[Batch],
    step: int,
    opt: Optimization,
    noise: Noise,
    want_norm: bool = False,
) -> StepResult:
    """Run the model's stages for one batch, or for the micro-batches of one step under
    gradient accumulation: each stage runs on every micro-batch (gradients summed, each loss
    weighted 1/N), then its optimizer steps once, so N micro-batches make the step one N-times
    batch would (BatchNorm aside, which sees each micro-batch alone). Under `skip_nonfinite`, a
    non-finite loss in any stage (of any micro-batch, on any rank: the ranks decide together)
    undoes the stages already applied in this step (a GAN's D update when G's loss is bad), so
    a skipped step changes no weight and no optimizer state; the schedules still advance, being
    functions of the loop's step."""
    micro = batches if isinstance(batches, list) else [batches]
    # Buffers (BatchNorm's running statistics) move in the forward pass, before a bad loss is
    # seen; they are small, so a step that may be skipped keeps a copy.
    buffers = [b.detach().clone() for b in model.buffers()] if opt.skip_nonfinite else []
    noises = noise.split(len(micro))
    runs = [model.training_step(b, step, z) for b, z in zip(micro, noises, strict=True)]
    undo: list[tuple[Optimizer, dict[str, Any], list[Tensor]]] = []
    scalars: dict[str, Tensor] = {}
    norms: dict[str, Tensor] = {}
    stepped = skipped = False
    while True:
        with opt.autocast():
            stages = [next(r, None) for r in runs]
        if stages[0] is None:
            break
        if opt.skip_nonfinite and not distributed.all_finite(
            torch.stack([s.loss.detach().float() for s in stages]), opt.world
        ):
            skipped = True
            break
        name = stages[0].opt_name
        if opt.skip_nonfinite and len(opt.optimizers) > 1:
            undo.append(snapshot(opt.optimizers[name]))
        norm = apply_stage(stages, opt, want_norm)
        stepped = True
        scalars.update(stage_scalars(name, stages))
        if norm is not None:
            norms[f"{name}/grad_norm"] = norm.float()
    for r in runs:
        r.close()
    if stepped:  # the GradScaler's inf checks of this step's optimizers
        opt.scaler.update()
    if skipped:
        undo_step(model, opt, undo, buffers)
        scalars, norms = {}, {}
    for s in opt.schedulers.values():
        s.step()
    return StepResult(skipped, scalars, norms)


def stage_scalars(name: str, stages: list[Stage]) -> dict[str, Tensor]:
    """A stage's scalars as <opt_name>/<key>, its loss among them (logged by the loop for every
    model; a model's own "loss" scalar takes precedence). Under accumulation, the mean over
    the micro-batches; one batch costs no extra kernel."""
    out: dict[str, Tensor] = {}
    first = stages[0]
    keys = list(first.scalars) + ([] if "loss" in first.scalars else ["loss"])
    for k in keys:
        values = [s.scalars[k] if k in s.scalars else s.loss.detach() for s in stages]
        v = values[0] if len(values) == 1 else torch.stack([x.float() for x in values]).mean()
        out[f"{name}/{k}"] = v.float()
    return out


def undo_step(
    model: TrainedModel,
    opt: Optimization,
    undo: list[tuple[Optimizer, dict[str, Any], list[Tensor]]],
    buffers: list[Tensor],
) -> None:
    """Put back what the stages applied before a non-finite loss: optimizer states, weights
    and buffers; drop the gradients."""
    for optimizer, state, saved in reversed(undo):
        restore(optimizer, state, saved)
    with torch.no_grad():
        for b, saved_b in zip(model.buffers(), buffers, strict=True):
            b.copy_(saved_b)
    for o in opt.optimizers.values():
        o.zero_grad(set_to_none=True)


def apply_stage(
    stages: Stage | list[Stage], opt: Optimization, want_norm: bool = True
) -> Tensor | None:
    """backward (of each micro-batch's stage) → (average over ranks) → unscale → clip → step;
    returns the gradient norm (a tensor, so reading it costs no sync), or None when there is no
    clipping and `want_norm` is false: the norm is a full pass over the gradients, so the loop
    asks for it only on steps it logs. Only `optimizers[stage.opt_name]` steps: a GAN's
    generator stage leaves the discriminator's weights alone even though gradients reach them.
    The ranks average once, after the last micro-batch, so the others cost no communication."""
    stages = stages if isinstance(stages, list) else [stages]
    optimizer = opt.optimizers[stages[0].opt_name]
    optimizer.zero_grad(set_to_none=True)
    for stage in stages:
        loss = stage.loss if len(stages) == 1 else stage.loss / len(stages)
        opt.scaler.scale(loss).backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    # Before clipping, so the clip sees the global batch's gradient.
    distributed.average_gradients(params, opt.world)
    opt.scaler.unscale_(optimizer)
    norm = None
    if opt.grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, opt.grad_clip, foreach=True)
    elif want_norm:
        norm = total_norm([p.grad for p in params if p.grad is not None])
    opt.scaler.step(optimizer)
    return norm


def snapshot(optimizer: Optimizer) -> tuple[Optimizer, dict[str, Any], list[Tensor]]:
    """A copy of an optimizer's state and parameters, to undo its step."""
    params = [p.detach().clone() for g in optimizer.param_groups for p in g["params"]]
    return optimizer, copy.deepcopy(optimizer.state_dict()), params


@torch.no_grad()
def restore(optimizer: Optimizer, state: dict[str, Any], saved: list[Tensor]) -> None:
    live = [p for g in optimizer.param_groups for p in g["params"]]
    for p, s in zip(live, saved, strict=True):
        p.copy_(s)
    optimizer.load_state_dict(state)


def total_norm(grads: list[Tensor]) -> Tensor:
    """The global L2 norm of `grads` without touching them (clip_grad_norm_ with an infinite
    limit would also rescale every gradient by 1)."""
    if not grads:
        return torch.zeros(())
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6
        return torch.nn.utils.get_total_norm(grads, foreach=True)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


class Tally:
    """Logged scalars summed between flushes, each with its own count: a GAN's generator with
    n_critic > 1 reports on one step in n_critic, and its mean is over those steps only."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: dict[str, Tensor]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v
            self.counts[k] = self.counts.get(k, 0) + 1

    def means(self) -> dict[str, Tensor]:
        return {k: v / self.counts[k] for k, v in self.sums.items()}

    def clear(self) -> None:
        self.sums, self.counts = {}, {}

    def __bool__(self) -> bool:
        return bool(self.sums)
