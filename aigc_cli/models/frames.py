"""Frames with independent notes: a causal transformer over the frames of a piece (the set of
pitches sounding at each grid step) gives each of the 88 notes of the next frame its own
Bernoulli probability, as the RNN and TCN baselines of the JSB Chorales benchmark do. Its test
figure is the frame negative log-likelihood in nats per time step (88 fair coins: 61.00)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aigc_cli.config import check
from aigc_cli.data.base import Batch, DataSpec
from aigc_cli.data.music import music_spec
from aigc_cli.models.base import GenerativeModel, OnnxGraph, Stage
from aigc_cli.models.transformer import GPT, Block
from aigc_cli.noise import LOCAL, Noise
from aigc_cli.registry import MODELS
from aigc_cli.results import Music


@MODELS.register("frames")
class FrameModel(GenerativeModel):
    """Music frames with independent notes: a causal transformer, 88 Bernoulli outputs."""

    data_kinds = ("frames",)

    @dataclass
    class Config:
        name: str = "frames"
        n_layer: int = 3  # transformer blocks
        n_head: int = 4  # attention heads
        n_embd: int = 128  # width
        dropout: float = 0.1  # dropout in the blocks (0 at sampling)

    def __init__(self, cfg: Config, data: DataSpec) -> None:
        super().__init__(cfg, data)
        check(cfg.n_embd % cfg.n_head == 0, "model.n_embd", "must be a multiple of model.n_head")
        self.window, keys = data.shape
        self.music = music_spec(data) or {}
        self.inp = nn.Linear(keys, cfg.n_embd)
        self.start = nn.Parameter(torch.zeros(keys))  # the "frame before the first"
        self.pos = nn.Embedding(self.window, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg.n_embd, cfg.n_head, cfg.dropout)
                                    for _ in range(cfg.n_layer))  # fmt: skip
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, keys)
        self.apply(GPT._init)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    def forward(self, frames: Tensor) -> Tensor:
        """(B, T, 88) frames → (B, T, 88) logits of frame t given frames before t."""
        b, t, _ = frames.shape
        prev = torch.cat([self.start.expand(b, 1, -1), frames[:, :-1]], dim=1)  # (B, T, 88)
        x = self.inp(prev) + self.pos(torch.arange(t, device=frames.device))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def frame_nll(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Each sample's summed negative log-likelihood of its frames, and its frame count."""
        frames, lengths = batch[0].float(), batch[1].long()
        logits = self(frames)
        bce = F.binary_cross_entropy_with_logits(logits, frames, reduction="none").sum(-1)
        valid = torch.arange(frames.shape[1], device=frames.device) < lengths[:, None]  # (B, T)
        return (bce * valid).sum(1), valid.sum(1).float()

    def training_step(self, batch: Batch, step: int, noise: Noise = LOCAL) -> Iterator[Stage]:
        nll, frames = self.frame_nll(batch)
        loss = nll.sum() / frames.sum()
        yield Stage("model", loss, {})

    @torch.no_grad()
    def evaluate(self, batch: Batch, **options: Any) -> dict[str, Tensor]:
        nll, frames = self.frame_nll(batch)
        return {"frame_nll": nll.sum(), "n": frames.sum()}

    def describe_metrics(self, options: dict[str, Any]) -> dict[str, str]:
        return {"frame_nll": "negative log-likelihood of the test frames, nats per time step "
                "(88 independent Bernoulli notes; a uniform guess scores 61.00)"}  # fmt: skip

    def onnx_graphs(self) -> list[OnnxGraph]:
        keys = self.start.numel()

        def example(n: int) -> dict[str, Tensor]:
            steps = max(1, min(n, self.window))
            return {"frames": (torch.rand(n, steps, keys) < 0.1).float()}

        dynamic = {"frames": {0: "batch", 1: "steps"}, "logits": {0: "batch", 1: "steps"}}
        about = (f"frames (batch, steps ≤ {self.window}, {keys}) 0/1 → logits of each frame's "
                 f"{keys} notes given the frames before it")  # fmt: skip
        return [OnnxGraph("frames", self, example, ["logits"], dynamic, about)]

    @torch.no_grad()
    def sample(
        self, n: int, *, generator: torch.Generator | None = None, steps: int = 0, **kw: Any
    ) -> Music:
        """`n` pieces of `steps` frames (0 = the training window), each note of a frame drawn
        from its Bernoulli given the frames before."""
        steps = steps or self.window
        check(1 <= steps <= self.window, "steps", f"{steps} must be in [1, {self.window}]")
        frames = torch.zeros(n, steps, self.start.numel(), device=self.device)
        for t in range(steps):
            p = self(frames[:, : t + 1])[:, t].sigmoid()  # (n, 88)
            u = torch.rand(p.shape, generator=generator).to(p.device)
            frames[:, t] = (u < p).float()
        return self.as_music(frames.transpose(1, 2))  # (n, 88, steps)
