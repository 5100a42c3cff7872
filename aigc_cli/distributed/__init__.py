"""Data parallelism across the processes torchrun starts (env:// rendezvous): NCCL on GPUs,
gloo on CPU.

Gradients are averaged here, once per optimizer stage, rather than by wrapping the model in
DistributedDataParallel: the loop runs each model's own `training_step`, whose stages (a GAN's
D then G step) call sub-networks directly and back-propagate through networks they do not
update. DDP's hooks need every forward to go through its wrapper and would reduce those
discarded gradients too. One flat all-reduce per stage is the same arithmetic as DDP's,
without overlap of communication and backward.

`trainer.batch_size` is the global batch: each rank takes its slice of every global batch, so a
run on N processes follows the same data order, and (models draw their noise through the
`Noise` the loop hands them, and batch norm is synchronised) the same trajectory, as a single
process.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from aigc_cli.build import resolve_device
from aigc_cli.data.base import Batch, BatchIterator
from aigc_cli.errors import ConfigError


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel ranks (a single process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


def world_from_env() -> World:
    """The rank layout torchrun exports; a plain `aigc train` is a world of one."""
    try:
        return World(
            rank=int(os.environ.get("RANK", 0)),
            size=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )
    except ValueError as e:
        raise ConfigError(
            f"bad torchrun environment: {e}", hint="start parallel runs with torchrun"
        ) from e


def current() -> World:
    """The world of the initialised process group, or a world of one."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), world_from_env().local_rank)
    return World()


def init(device_name: str, timeout_s: float = 1800.0) -> tuple[World, torch.device]:
    """Join the process group torchrun describes and pick this rank's device. Without torchrun
    this only resolves the device."""
    world = world_from_env()
    if not world.parallel:
        return world, resolve_device(device_name)
    if device_name.startswith("cuda:") or device_name == "mps":
        raise ConfigError(
            f"trainer.device={device_name} cannot be used with torchrun",
            hint="use trainer.device=auto, cuda or cpu: each rank takes the GPU numbered by its "
            "LOCAL_RANK",
        )
    if device_name in ("auto", "cuda") and torch.cuda.is_available():
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device_name == "cuda":
        raise ConfigError(
            "trainer.device=cuda but no CUDA GPU is available", hint="use trainer.device=cpu"
        )
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend, init_method="env://", timeout=datetime.timedelta(seconds=timeout_s)
        )
    return world, device


def is_comm_failure(e: BaseException) -> bool:
    """A collective that failed because a peer went away (not a bug in this rank)."""
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e)
    return any(w in text for w in ("Connection closed", "Connection reset", "gloo", "NCCL"))


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_batch_size(batch_size: int, world: World) -> int:
    """The per-rank share of the global batch."""
    if batch_size % world.size:
        raise ConfigError(
            f"bad value for 'trainer.batch_size': {batch_size} is not divisible by the "
            f"{world.size} ranks (it is the global batch, split evenly between them)",
            hint=f"use a multiple of {world.size}, e.g. "
            f"trainer.batch_size={max(world.size, batch_size // world.size * world.size)}",
        )
    return batch_size // world.size


class ShardedBatches(BatchIterator):
    """This rank's slice of each global batch. Every rank advances the same global iterator, so
    the shards of an epoch are disjoint and the position (saved in checkpoints) is shared."""

    def __init__(self, inner: BatchIterator, world: World) -> None:
        self.inner, self.world = inner, world

    def __next__(self) -> Batch:
        batch = next(self.inner)
        per = batch[0].shape[0] // self.world.size
        lo = self.world.rank * per
        return tuple(t[lo : lo + per] for t in batch)

    def state_dict(self) -> dict[str, int]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.inner.load_state_dict(state)


def average_gradients(params: Iterable[Tensor], world: World) -> None:
    """Mean of each gradient over the ranks, in one flat all-reduce."""
    if not world.parallel:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(world.size)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_module(module: torch.nn.Module, world: World) -> None:
    """Rank 0's weights and buffers everywhere, as DDP does at construction."""
    if not world.parallel:
        return
    for t in module.state_dict().values():
        if isinstance(t, Tensor):
            dist.broadcast(t, src=0)


def mean_tensor(t: Tensor, world: World) -> Tensor:
    """The mean of `t` over the ranks (training scalars: the whole global batch's figures)."""
    if not world.parallel:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t.div_(world.size)


def any_rank(flag: int, world: World) -> int:
    """The largest value of `flag` over the ranks: a stop signal seen by one rank stops all of
    them after the same step."""
    if not world.parallel:
        return flag
    t = torch.tensor([flag], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def sum_objects(values: dict[str, float], world: World) -> dict[str, float]:
    """Key-wise sums of every rank's dict (evaluation totals over test-set shards)."""
    if not world.parallel:
        return values
    gathered: list[Any] = [None] * world.size
    dist.all_gather_object(gathered, values)
    out: dict[str, float] = {}
    for d in gathered:
        for k, v in d.items():
            out[k] = out.get(k, 0.0) + v
    return out


def broadcast_object(obj: Any, world: World) -> Any:
    """Rank 0's value of `obj` on every rank."""
    if not world.parallel:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_finite(loss: Tensor, world: World) -> bool:
    """Whether `loss` is finite on every rank: the ranks skip a step together or not at all,
    so their collectives keep matching."""
    ok = torch.isfinite(loss.detach()).all().to(torch.int64).reshape(1)
    if world.parallel:
        ok = ok.to(_comm_device())
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())
