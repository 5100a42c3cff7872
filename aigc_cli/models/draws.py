"""Random draws for a batch made of several callers' rows: each caller's rows come from its own
generator, in the order it would draw them alone, so a seeded request gives the same samples
alone or beside others. Draws are made on the CPU, so a seed gives the same samples on every
device."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Draws:
    generators: list[torch.Generator | None]
    rows: list[int]  # how many of the batch's rows each generator owns, in batch order

    @classmethod
    def one(cls, generator: torch.Generator | None, n: int) -> Draws:
        return cls([generator], [n])

    def randn(self, shape: tuple[int, ...] | torch.Size, device: torch.device) -> Tensor:
        """Standard normal noise of `shape` (batch first, the batch being every owner's rows)."""
        if sum(self.rows) != shape[0]:
            raise ValueError(f"{shape[0]} rows drawn for owners of {sum(self.rows)}")
        parts = [torch.randn(n, *shape[1:], generator=g) for g, n in zip(self.generators,
                 self.rows, strict=True)]  # fmt: skip
        return torch.cat(parts).to(device)

    def keep(self, owners: list[int]) -> Draws:
        """The draws of the owners listed (indices into `generators`), in that order."""
        return Draws([self.generators[i] for i in owners], [self.rows[i] for i in owners])

    def row_index(self, owners: list[int]) -> Tensor:
        """The batch rows that the owners listed hold."""
        starts = [sum(self.rows[:i]) for i in range(len(self.rows))]
        return torch.cat([torch.arange(starts[i], starts[i] + self.rows[i]) for i in owners])
