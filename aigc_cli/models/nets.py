"""Network blocks several families share: the conv ladders sized from the image (encoder,
decoder), MLPs, and the helpers that size them."""

from __future__ import annotations

import math

from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

from aigc_cli.config import check


def conv_levels(image_size: int) -> tuple[int, int]:
    """Number of stride-2 levels that bring `image_size` down to at most 4, and the size there."""
    check(8 <= image_size <= 256, "dataset.image_size", f"{image_size}: the conv nets take 8..256")
    levels = max(1, math.ceil(math.log2(image_size / 4)))
    return levels, math.ceil(image_size / 2**levels)


def level_channels(base: int, levels: int, cap: int) -> list[int]:
    return [min(base * 2**i, cap) for i in range(levels + 1)]


class ConvEncoder(nn.Module):
    """(B, C, S, S) → (B, out_dim) through `levels` stride-2 convolutions."""

    def __init__(self, in_ch: int, image_size: int, base: int, cap: int, out_dim: int) -> None:
        super().__init__()
        levels, self.final = conv_levels(image_size)
        ch = level_channels(base, levels, cap)
        layers: list[nn.Module] = [nn.Conv2d(in_ch, ch[0], 3, padding=1), nn.SiLU()]
        for i in range(levels):
            # kernel 3, stride 2, padding 1 halves the size rounding up: 28 → 14 → 7 → 4
            layers += [nn.Conv2d(ch[i], ch[i + 1], 3, stride=2, padding=1), nn.SiLU()]
        self.net = nn.Sequential(*layers)
        self.head = nn.Linear(ch[-1] * self.final**2, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.net(x).flatten(1))


class ConvDecoder(nn.Module):
    """(B, in_dim) → (B, C, S, S): upsample from the encoder's final size, crop to S."""

    def __init__(self, in_dim: int, out_ch: int, image_size: int, base: int, cap: int) -> None:
        super().__init__()
        levels, self.start = conv_levels(image_size)
        ch = level_channels(base, levels, cap)[::-1]
        self.image_size = image_size
        self.ch0 = ch[0]
        self.fc = nn.Linear(in_dim, ch[0] * self.start**2)
        layers: list[nn.Module] = [nn.SiLU()]
        for i in range(levels):
            layers += [nn.ConvTranspose2d(ch[i], ch[i + 1], 4, stride=2, padding=1), nn.SiLU()]
        layers.append(nn.Conv2d(ch[-1], out_ch, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        h = self.fc(z).view(-1, self.ch0, self.start, self.start)  # (B, ch0, s0, s0)
        out = self.net(h)  # (B, C, s0 * 2^levels, same)
        off = (out.shape[-1] - self.image_size) // 2
        return out[..., off : off + self.image_size, off : off + self.image_size]


class MLPEncoder(nn.Module):
    """(B, C, H, W) → (B, out_dim): flatten, one hidden ReLU layer (Kingma & Welling's MLP)."""

    def __init__(self, dims: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dims, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))


class MLPDecoder(nn.Module):
    """(B, in_dim) → (B, C, H, W)."""

    def __init__(self, in_dim: int, hidden: int, shape: list[int]) -> None:
        super().__init__()
        self.shape = list(shape)
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, math.prod(shape))
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(-1, *self.shape)


def mlp(
    sizes: list[int], act: nn.Module, sn: bool = False, last_act: bool = False
) -> nn.Sequential:
    wrap = _sn if sn else (lambda m: m)
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(wrap(nn.Linear(sizes[i], sizes[i + 1])))
        if i < len(sizes) - 2 or last_act:
            layers.append(act)
    return nn.Sequential(*layers)
