"""Scatter plots of 2-D points drawn straight into an image tensor (no plotting library)."""

from __future__ import annotations

import torch
from torch import Tensor


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
