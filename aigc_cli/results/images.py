"""Images: (N, C, H, W) in [0, 1], written as one PNG grid."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor
from torchvision.utils import make_grid, save_image

from aigc_cli.atomic import write_bytes
from aigc_cli.results.base import Board, SampleResult


@dataclass(kw_only=True)
class Images(SampleResult):
    images: Tensor  # (N, C, H, W) in [0, 1]
    nrow: int = 0  # images per grid row (one row per class when conditional); 0 = square

    suffix = ".png"

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def row_length(self) -> int:
        return self.nrow or math.ceil(math.sqrt(len(self)))

    def grid(self) -> Tensor:
        return to_grid(self.images, self.row_length())

    def write(self, stem: Path) -> Path:
        path = Path(f"{stem}{self.suffix}")
        save_grid(self.images, path, self.row_length())
        return path

    def log(self, board: Board, tag: str, step: int) -> None:
        super().log(board, tag, step)
        board.image(tag, self.grid(), step)


def to_grid(images: Tensor, nrow: int = 8) -> Tensor:
    """(N, C, H, W) in [0, 1] → one (C, H', W') grid with 2-pixel gaps."""
    return make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=2)


def save_grid(images: Tensor, path: Path, nrow: int = 8) -> Tensor:
    """Save (N, C, H, W) images in [0, 1] as one PNG grid; returns the grid (C, H', W')."""
    grid = to_grid(images, nrow)
    write_bytes(Path(path), png_bytes(grid))
    return grid


def png_bytes(image: Tensor) -> bytes:
    """One (C, H, W) image in [0, 1] as a PNG file's bytes."""
    buf = io.BytesIO()
    save_image(image.detach().float().cpu().clamp(0, 1), buf, format="png")
    return buf.getvalue()
