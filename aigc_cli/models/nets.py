"""Network blocks several families share: the conv ladders sized from the image (encoder,
decoder), MLPs, and the helpers that size them."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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
    """(B, in_dim) → (B, C, S, S): upsample from the encoder's final size, crop to S.

    `dcgan=True` is DCGAN's generator (Radford et al. 2016): BatchNorm and ReLU after the
    projection and every upsampling (whose bias the norm makes redundant), tanh out, so the
    output is in [-1, 1]. Otherwise SiLU between layers and a linear output (the VAE's)."""

    def __init__(
        self, in_dim: int, out_ch: int, image_size: int, base: int, cap: int, dcgan: bool = False
    ) -> None:
        super().__init__()
        levels, self.start = conv_levels(image_size)
        ch = level_channels(base, levels, cap)[::-1]
        self.image_size = image_size
        self.ch0 = ch[0]
        width = ch[0] * self.start**2
        layers: list[nn.Module] = []
        if dcgan:
            self.fc: nn.Module = nn.Sequential(
                nn.Linear(in_dim, width), nn.BatchNorm1d(width), nn.ReLU()
            )
            for i in range(levels):
                layers += [nn.ConvTranspose2d(ch[i], ch[i + 1], 4, 2, 1, bias=False),
                           nn.BatchNorm2d(ch[i + 1]), nn.ReLU()]  # fmt: skip
            layers += [nn.Conv2d(ch[-1], out_ch, 3, padding=1), nn.Tanh()]
        else:
            self.fc = nn.Linear(in_dim, width)
            layers.append(nn.SiLU())
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


# ---- denoising networks (diffusion, flow matching) -----------------------------------------


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal features of (B,) times (Vaswani et al.; DDPM): (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([args.sin(), args.cos()], dim=1)


class TimeEmbedding(nn.Module):
    """(B,) times (and optional labels; the last index means "no label", for classifier-free
    guidance) → (B, dim) conditioning vector."""

    def __init__(self, dim: int, num_classes: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), nn.SiLU(), nn.Linear(dim * 4, dim * 4))
        self.label = nn.Embedding(num_classes + 1, dim * 4) if num_classes else None

    def forward(self, t: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self.mlp(timestep_embedding(t, self.dim))
        if self.label is not None and y is not None:
            emb = emb + self.label(y)
        return emb


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, plus the conditioning vector, → GroupNorm → SiLU → dropout →
    conv, with a residual connection (the DDPM/ADM block)."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.drop, self.conv2 = nn.Dropout(dropout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]  # (B, C, 1, 1) broadcast over pixels
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return h + self.skip(x)


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, with a residual."""

    def __init__(self, ch: int, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads if ch % heads == 0 else 1
        self.norm, self.qkv = nn.GroupNorm(_groups(ch), ch), nn.Conv2d(ch, 3 * ch, 1)
        self.out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        # (B, heads, head_dim, HW) → attention over the HW positions
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2),
                                             v.transpose(-1, -2))  # fmt: skip
        return x + self.out(out.transpose(-1, -2).reshape(b, c, h, w))


class CrossAttention2d(nn.Module):
    """The pixels of a feature map attend to a text's tokens (their context vectors), with a
    residual; the output projection starts at zero, so the block starts as the identity."""

    def __init__(self, ch: int, context_dim: int, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads if ch % heads == 0 else 1
        self.norm, self.q = nn.GroupNorm(_groups(ch), ch), nn.Linear(ch, ch)
        self.kv, self.out = nn.Linear(context_dim, 2 * ch), nn.Linear(ch, ch)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor) -> Tensor:
        """x (B, C, H, W); context (B, L, D); mask (B, L), True for a token (not padding)."""
        b, c, h, w = x.shape
        split = lambda z: z.reshape(b, -1, self.heads, c // self.heads).transpose(1, 2)  # noqa: E731
        q = split(self.q(self.norm(x).flatten(2).transpose(1, 2)))  # (B, heads, HW, C/heads)
        k, v = (split(z) for z in self.kv(context).chunk(2, dim=-1))  # (B, heads, L, C/heads)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        out = self.out(out.transpose(1, 2).reshape(b, h * w, c))  # (B, HW, C)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


#: a text's conditioning: token vectors (B, L, D), their mask (B, L), a pooled vector (B, D)
Context = tuple[Tensor, Tensor, Tensor]


def unet_levels(size: int) -> int:
    """Stride-2 downsamplings that keep every feature map even-sized and at least 7 pixels:
    28 → 14 → 7 (2), 32 → 16 → 8 (2), 64 → 32 → 16 → 8 (3)."""
    levels = 0
    while size % 2 == 0 and size // 2 >= 7:
        size, levels = size // 2, levels + 1
    return levels


class UNet(nn.Module):
    """(B, C, S, S) noisy images, (B,) times, labels → (B, C, S, S), sized from the image:
    `base` channels at full resolution, doubled per level (capped at 4×), two residual blocks
    per level, self-attention at the lowest resolution."""

    def __init__(self, ch: int, size: int, base: int, dropout: float, num_classes: int,
                 attention: bool = True, context_dim: int = 0,
                 cross_attention: bool = True) -> None:  # fmt: skip
        super().__init__()
        check(8 <= size <= 256, "dataset.image_size", f"{size}: the UNet takes 8..256 pixels")
        levels = unet_levels(size)
        chs = [base * min(2**i, 4) for i in range(levels + 1)]
        emb = base * 4
        self.embed = TimeEmbedding(base, num_classes)
        self.stem = nn.Conv2d(ch, base, 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i in range(levels + 1):
            cin = chs[max(i - 1, 0)]
            self.down.append(nn.ModuleList([ResBlock(cin, chs[i], emb, dropout),
                                            ResBlock(chs[i], chs[i], emb, dropout)]))  # fmt: skip
            if i < levels:
                self.downsample.append(nn.Conv2d(chs[i], chs[i], 3, stride=2, padding=1))
        mid = chs[-1]
        self.mid1, self.mid2 = ResBlock(mid, mid, emb, dropout), ResBlock(mid, mid, emb, dropout)
        self.attn = SelfAttention2d(mid) if attention else nn.Identity()
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(levels + 1)):
            cin = chs[min(i + 1, levels)] if i < levels else mid
            self.up.append(nn.ModuleList([ResBlock(cin + chs[i], chs[i], emb, dropout),
                                          ResBlock(chs[i] * 2, chs[i], emb, dropout)]))  # fmt: skip
            if i > 0:
                self.upsample.append(nn.ConvTranspose2d(chs[i], chs[i], 4, stride=2, padding=1))
        # Text: a pooled vector joins the time embedding; with cross_attention, every level
        # below full resolution (and the middle) also attends to the tokens.
        self.pooled = nn.Linear(context_dim, emb) if context_dim else None
        self.cross = nn.ModuleDict()
        if context_dim and cross_attention:
            for i in range(1, levels + 1):
                self.cross[f"down{i}"] = CrossAttention2d(chs[i], context_dim)
                self.cross[f"up{i}"] = CrossAttention2d(chs[i], context_dim)
            self.cross["mid"] = CrossAttention2d(mid, context_dim)
        self.head = nn.Sequential(nn.GroupNorm(_groups(base), base), nn.SiLU(),
                                  nn.Conv2d(base, ch, 3, padding=1))  # fmt: skip
        nn.init.zeros_(self.head[-1].weight)  # start as the zero prediction (ADM's init)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None,
                context: Context | None = None) -> Tensor:  # fmt: skip
        emb = self.embed(t, y)
        if context is not None and self.pooled is not None:
            emb = emb + self.pooled(context[2])
        h = self.stem(x)
        skips = []
        for i, (b1, b2) in enumerate(self.down):
            h1 = b1(h, emb)
            h2 = self._cross(f"down{i}", b2(h1, emb), context)
            skips.append((h1, h2))
            h = self.downsample[i](h2) if i < len(self.downsample) else h2
        h = self.mid2(self._cross("mid", self.attn(self.mid1(h, emb)), context), emb)
        levels = len(self.up) - 1
        for i, (b1, b2) in enumerate(self.up):
            s1, s2 = skips.pop()
            h = b1(torch.cat([h, s2], 1), emb)
            h = self._cross(f"up{levels - i}", b2(torch.cat([h, s1], 1), emb), context)
            if i < len(self.upsample):
                h = self.upsample[i](h)
        return self.head(h)

    def _cross(self, name: str, h: Tensor, context: Context | None) -> Tensor:
        if context is None or name not in self.cross:
            return h
        return self.cross[name](h, context[0], context[1])


class PointDenoiser(nn.Module):
    """(B, D) noisy points, (B,) times, labels → (B, D): an MLP on the points and the
    conditioning vector."""

    def __init__(self, dim: int, hidden: int, num_classes: int, context_dim: int = 0) -> None:
        super().__init__()
        self.embed = TimeEmbedding(hidden // 4, num_classes)
        self.pooled = nn.Linear(context_dim, hidden) if context_dim else None
        self.net = mlp([dim + hidden, hidden, hidden, hidden, dim], nn.SiLU())

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None,
                context: Context | None = None) -> Tensor:  # fmt: skip
        emb = self.embed(t, y)
        if context is not None and self.pooled is not None:  # a text's pooled vector
            emb = emb + self.pooled(context[2])
        return self.net(torch.cat([x, emb], dim=1))


def _groups(ch: int) -> int:
    return next(g for g in (32, 16, 8, 4, 2, 1) if ch % g == 0)
