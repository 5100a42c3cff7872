"""Per-sample random draws for a training step, handed to `training_step` by the loop.

Under data parallelism every rank draws the whole global batch's noise (all ranks share one
seed) and keeps its own rows, so the noise each sample gets, and the run's trajectory, do not
depend on the number of processes. A model only says what it needs ("noise shaped like this
per-sample tensor"); it never learns about ranks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Noise:
    rank: int = 0  # this process's slice of the global batch
    size: int = 1  # processes sharing the global batch

    def randn_like(self, x: Tensor) -> Tensor:
        """Standard normal noise shaped like the per-sample tensor `x` (batch first)."""
        return self._draw(torch.randn, x)

    def rand_like(self, x: Tensor) -> Tensor:
        """Uniform [0, 1) noise shaped like the per-sample tensor `x`."""
        return self._draw(torch.rand, x)

    def randint(self, high: int, like: Tensor) -> Tensor:
        """One integer in [0, high) per sample of `like`: (B,) int64 (diffusion timesteps)."""
        n = like.shape[0]
        full = torch.randint(0, high, (n * self.size,), device=like.device)
        return full[self.rank * n : (self.rank + 1) * n]

    def _draw(self, draw: Callable[..., Tensor], x: Tensor) -> Tensor:
        n = x.shape[0]
        full = draw((n * self.size, *x.shape[1:]), dtype=x.dtype, device=x.device)
        return full if self.size == 1 else full[self.rank * n : (self.rank + 1) * n]


LOCAL = Noise()  # one process: plain torch draws
