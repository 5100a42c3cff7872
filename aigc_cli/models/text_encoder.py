"""The text side of text-to-image: a small bidirectional transformer over a caption's tokens,
trained with the denoiser, and the network that joins them (`TextDenoiser`), called as
net(x_t, t, caption ids) like any denoiser, so samplers, guidance and export need no change."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aigc_cli.models.nets import Context, UNet

PAD = 0  # the padding id of caption tokens (data/captions.py)


class EncoderBlock(nn.Module):
    """Pre-LayerNorm self-attention over every token (no causal mask; padding masked) and an
    MLP, each with a residual."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.qkv, self.proj = (
            nn.LayerNorm(width),
            nn.Linear(width, 3 * width),
            nn.Linear(width, width),
        )
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = (z.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)
                   for z in self.qkv(self.ln1(x)).chunk(3, dim=-1))  # fmt: skip
        # q, k, v: (B, heads, L, C/heads); every query sees every real token
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        x = x + self.proj(y.transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(self.ln2(x))


class TextEncoder(nn.Module):
    """(B, L) caption ids → token vectors (B, L, D), their mask, and their mean (B, D)."""

    def __init__(self, vocab: int, length: int, width: int, layers: int, heads: int = 4) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, width), nn.Embedding(length, width)
        self.blocks = nn.ModuleList(EncoderBlock(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def forward(self, ids: Tensor) -> Context:
        mask = ids != PAD  # (B, L); the start id is never padding, so no row is empty
        h = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            h = block(h, mask)
        h = self.norm(h)
        pooled = (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        return h, mask, pooled


class TextDenoiser(nn.Module):
    """The UNet conditioned on a caption: (B, C, S, S) x_t, (B,) t, (B, L) caption ids."""

    def __init__(self, encoder: TextEncoder, unet: UNet) -> None:
        super().__init__()
        self.encoder, self.unet = encoder, unet

    def forward(self, x: Tensor, t: Tensor, ids: Tensor | None = None) -> Tensor:
        assert ids is not None, "a text denoiser needs caption ids (the empty caption: START)"
        return self.unet(x, t, None, self.encoder(ids))
