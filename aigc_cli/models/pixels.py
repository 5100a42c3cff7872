"""Images as token sequences for an autoregressive Transformer (ImageGPT-style, Chen et al.
2020): each pixel's channels are quantised to a few levels and packed into one token, and the
pixels are read in raster order. ImageGPT clusters colours into a 512-entry palette; a uniform
grid of levels per channel needs no fitting and stays exact to invert."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from aigc_cli.config import check


class PixelCodec:
    """(B, C, H, W) images in [0, 1] ↔ (B, T) token ids, T = (H/downscale)·(W/downscale).

    A token packs the C quantised channels as digits base `levels`, so the vocabulary has
    levels**C symbols (4 levels: 4 greys, or 64 colours for RGB). `downscale` average-pools the
    image first, shortening the sequence by downscale² (attention cost falls with its square);
    decoding repeats each pixel back to the full size.
    """

    def __init__(self, shape: list[int], levels: int, downscale: int) -> None:
        c, h, w = shape
        check(levels >= 2, "model.levels", "must be >= 2 (values per channel)")
        check(levels**c <= 65536, "model.levels", f"{levels}**{c} colours is too many tokens")
        check(
            downscale >= 1 and h % downscale == 0 and w % downscale == 0,
            "model.downscale",
            f"{downscale} must be >= 1 and divide the image size {h}x{w}",
        )
        self.levels, self.downscale = levels, downscale
        self.height, self.width = h // downscale, w // downscale
        self.vocab_size = levels**c
        self.seq_len = self.height * self.width
        self._place = levels ** torch.arange(c)  # digit weights, channel 0 least significant

    def encode(self, images: Tensor) -> Tensor:
        x = images.float()
        if self.downscale > 1:
            x = F.avg_pool2d(x, self.downscale)
        q = (x.clamp(0, 1) * (self.levels - 1)).round().long()  # (B, C, h, w) in [0, levels)
        tokens = (q * self._place.to(q.device).view(1, -1, 1, 1)).sum(1)  # (B, h, w)
        return tokens.flatten(1)  # (B, T), raster order

    def decode(self, tokens: Tensor) -> Tensor:
        b = tokens.shape[0]
        t = tokens.view(b, 1, self.height, self.width)
        digits = (t // self._place.to(t.device).view(1, -1, 1, 1)) % self.levels  # (B, C, h, w)
        images = digits.float() / (self.levels - 1)
        if self.downscale > 1:
            images = images.repeat_interleave(self.downscale, 2).repeat_interleave(
                self.downscale, 3
            )
        return images  # (B, C, H, W) in [0, 1]
