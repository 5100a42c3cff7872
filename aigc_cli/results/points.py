"""Points: (N, D) samples of a 2-D distribution, written as a scatter plot (PNG) over the real
points, drawn straight into an image tensor (no plotting library)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from aigc_cli.results.base import Board, SampleResult
from aigc_cli.results.images import save_grid


@dataclass(kw_only=True)
class Points(SampleResult):
    points: Tensor  # (N, D)
    extent: float = 0.0  # the plot's axes are [-extent, extent]²; 0 = from the points
    real: Tensor | None = None  # real points drawn grey beneath, for comparison

    suffix = ".png"

    def __len__(self) -> int:
        return int(self.points.shape[0])

    def plot(self) -> Tensor:
        real = self.real if self.real is not None else self.points[:0]
        return scatter_image(real, self.points, self.extent)

    def write(self, stem: Path) -> Path:
        path = Path(f"{stem}{self.suffix}")
        save_grid(self.plot().unsqueeze(0), path, nrow=1)
        return path

    def log(self, board: Board, tag: str, step: int) -> None:
        super().log(board, tag, step)
        board.image(tag, self.plot(), step)


def scatter_image(real: Tensor, fake: Tensor, extent: float = 0.0, size: int = 256) -> Tensor:
    """(3, size, size) image in [0, 1]: real points grey, generated points blue, on fixed axes
    [-extent, extent]² (from the real points when 0), so plots compare across steps."""
    real, fake = real.detach().float().cpu(), fake.detach().float().cpu()
    if extent <= 0:
        extent = float(real.abs().max()) * 1.2 + 1e-6
    img = torch.ones(3, size, size)
    mid = size // 2
    img[:, mid, :] = 0.85  # axes through the origin
    img[:, :, mid] = 0.85
    for points, colour in ((real, (0.6, 0.6, 0.6)), (fake, (0.1, 0.3, 0.9))):
        # x to the right, y up: row index is flipped
        col = ((points[:, 0] / extent + 1) * 0.5 * (size - 1)).round().long()
        row = ((1 - (points[:, 1] / extent + 1) * 0.5) * (size - 1)).round().long()
        for dr in (0, 1):
            for dc in (0, 1):
                r, c = row + dr, col + dc
                ok = (r >= 0) & (r < size) & (c >= 0) & (c < size)
                for ch in range(3):
                    img[ch, r[ok], c[ok]] = colour[ch]
    return img
