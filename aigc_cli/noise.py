"""Per-sample random draws for a training step, handed to `training_step` by the loop.

Under data parallelism every rank draws the whole global batch's noise (all ranks share one
seed) and keeps its own rows, so the noise each sample gets, and the run's trajectory, do not
depend on the number of processes. A model only says what it needs ("noise shaped like this
per-sample tensor"); it never learns about ranks.

Gradient accumulation splits a step into micro-batches the same way: micro-batch i of rank r
holds slice i * ranks + r of the step's whole batch. The first micro-batch draws each full
tensor and the others take their slices of that same draw, so N micro-batches get the noise
one N-times batch would."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class Noise:
    rank: int = 0  # this slice of the step's batch (process, or micro-batch and process)
    size: int = 1  # slices the step's batch is made of
    # Micro-batches of one step share their full draws (in call order); None = draw afresh.
    shared: list[Tensor] | None = field(default=None, compare=False, repr=False)
    cursor: list[int] = field(default_factory=lambda: [0], compare=False, repr=False)

    def split(self, parts: int) -> list[Noise]:
        """The noise of each of `parts` micro-batches of this slice's batch."""
        if parts == 1:
            return [self]
        shared: list[Tensor] = []
        return [Noise(i * self.size + self.rank, self.size * parts, shared) for i in range(parts)]

    def randn_like(self, x: Tensor) -> Tensor:
        """Standard normal noise shaped like the per-sample tensor `x` (batch first)."""
        return self._draw(torch.randn, x)

    def rand_like(self, x: Tensor) -> Tensor:
        """Uniform [0, 1) noise shaped like the per-sample tensor `x`."""
        return self._draw(torch.rand, x)

    def randint(self, high: int, like: Tensor) -> Tensor:
        """One integer in [0, high) per sample of `like`: (B,) int64 (diffusion timesteps)."""
        n = like.shape[0]
        full = self._full(lambda: torch.randint(0, high, (n * self.size,), device=like.device))
        return full[self.rank * n : (self.rank + 1) * n]

    def _draw(self, draw: Callable[..., Tensor], x: Tensor) -> Tensor:
        n = x.shape[0]
        full = self._full(
            lambda: draw((n * self.size, *x.shape[1:]), dtype=x.dtype, device=x.device)
        )
        return full if self.size == 1 else full[self.rank * n : (self.rank + 1) * n]

    def _full(self, draw: Callable[[], Tensor]) -> Tensor:
        if self.shared is None:
            return draw()
        i = self.cursor[0]
        self.cursor[0] += 1
        if i == len(self.shared):  # the first micro-batch to get here draws
            self.shared.append(draw())
        return self.shared[i]


LOCAL = Noise()  # one process: plain torch draws
