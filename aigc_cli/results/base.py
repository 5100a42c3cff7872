"""The shape every sample result has: what was made, and how (sampler, network evaluations)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from torch import Tensor


class Board(Protocol):
    """Where results are logged: the run's TensorBoard writer (training/logger.py)."""

    def scalars(self, values: dict[str, float], step: int) -> None: ...
    def image(self, tag: str, grid: Tensor, step: int) -> None: ...
    def text(self, tag: str, text: str, step: int) -> None: ...
    def audio(self, tag: str, audio: Tensor, step: int, rate: int) -> None: ...


@dataclass(kw_only=True)
class SampleResult:
    sampler: str = ""  # how the samples were drawn ("DDIM, 50 steps, eta 0"); "" = one pass
    nfe: int | None = None  # network evaluations per sample, for families with samplers

    #: the file suffix `write` adds to its stem
    suffix = ""

    def __len__(self) -> int:
        raise NotImplementedError

    def write(self, stem: Path) -> Path:
        """Write the result as `<stem><suffix>` (atomically); returns the path written."""
        raise NotImplementedError

    def log(self, board: Board, tag: str, step: int) -> None:
        """Log the result to TensorBoard under `tag` (and the sampler's NFE)."""
        if self.nfe is not None:
            board.scalars({f"{tag}/nfe": float(self.nfe)}, step)

    def describe(self) -> str:
        """One line for the console: what was drawn, how."""
        if self.nfe is None:
            return ""
        return f"sampler {self.sampler}: {self.nfe} network evaluations (NFE)"
