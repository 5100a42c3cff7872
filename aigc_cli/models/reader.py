"""The judge of prompt following: an attribute reader trained by aigc on the dataset's own
renders. It reads a captioned_shapes image back into the scene's columns (how many things,
their layout, each thing's shape, colour and size); `verdicts` compares those with the scene a
caption asks for, part by part, and an image follows its prompt when every part is right (the
scoring of GenEval and DALL-Eval). It generates nothing and never guides, stops or picks the
samples of the model it judges. Trained with blurred and noisy copies too, so that it reads
imperfect samples as well as clean renders."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aigc_cli.config import check
from aigc_cli.data.base import Batch, DataSpec
from aigc_cli.data.captions import PARTS, follows_grammar, verdicts
from aigc_cli.errors import ConfigError
from aigc_cli.models.base import OnnxGraph, Stage, TrainedModel
from aigc_cli.models.classifier import conv_trunk
from aigc_cli.noise import LOCAL, Noise
from aigc_cli.registry import MODELS


def degrade(x: Tensor, generator: torch.Generator | None = None,
            eps: Tensor | None = None) -> Tensor:  # fmt: skip
    """A blurred (Gaussian, sigma 0.8 px) and noisy (std 0.05) copy of images in [0, 1]; the
    standard normal noise is `eps` when given (training draws it through the loop's Noise,
    so every rank count gets the same), else drawn from `generator`."""
    k = torch.tensor([0.2, 0.6, 0.2], device=x.device)  # about sigma 0.8
    kernel = (k[:, None] * k[None, :]).expand(x.shape[1], 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=x.shape[1])
    if eps is None:
        eps = torch.randn(x.shape, generator=generator).to(x.device)
    noise = eps * 0.05
    return (blurred + noise).clamp(0, 1)


@MODELS.register("reader")
class AttributeReader(TrainedModel):
    """Reads captioned_shapes images back into their scene's attributes (no samples)."""

    @dataclass
    class Config:
        name: str = "reader"
        base_channels: int = 32  # channels after the stem; doubled at each stride-2 level
        max_channels: int = 128  # cap on the doubling
        degraded: float = 0.5  # share of each training batch blurred and noised first

    def __init__(self, cfg: Config, data: DataSpec) -> None:
        super().__init__(cfg, data)
        captions = data.extra.get("captions")
        if not captions or not follows_grammar(captions):
            raise ConfigError("model 'reader' reads captioned scenes",
                              hint="use dataset=captioned_shapes")  # fmt: skip
        check(0 <= cfg.degraded <= 1, "model.degraded", "must be in [0, 1]")
        self.columns: list[str] = list(captions["columns"])
        self.trunk, width = conv_trunk(data.shape, cfg.base_channels, cfg.max_channels)
        self.heads = nn.ModuleDict({c: nn.Linear(width, captions["choices"][c])
                                    for c in self.columns})  # fmt: skip

    def logits(self, x: Tensor) -> dict[str, Tensor]:
        h = self.trunk(x * 2 - 1)
        return {c: head(h).float() for c, head in self.heads.items()}

    def onnx_graphs(self) -> list[OnnxGraph]:
        shape, sizes = list(self.spec.shape), [h.out_features for h in self.heads.values()]
        return [OnnxGraph(
            "reader", _Logits(self), lambda n: {"image": torch.rand(n, *shape)}, ["logits"],
            {k: {0: "batch"} for k in ("image", "logits")},
            f"image (batch, {', '.join(map(str, shape))}) in [0, 1] → logits (batch, "
            f"{sum(sizes)}): the columns {', '.join(self.columns)} in turn, {sizes} each",
        )]  # fmt: skip

    @torch.no_grad()
    def read(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images in [0, 1] → (B, 8) the columns it reads."""
        out = self.logits(x)
        return torch.stack([out[c].argmax(1) for c in self.columns], dim=1)

    def training_step(self, batch: Batch, step: int, noise: Noise = LOCAL) -> Iterator[Stage]:
        x, attrs = batch[0], batch[3].long()
        worse = noise.rand_like(x[:, 0, 0, 0]) < self.cfg.degraded
        x = torch.where(worse.view(-1, 1, 1, 1), degrade(x, eps=noise.randn_like(x)), x)
        logits = self.logits(x)
        two = (attrs[:, 0] == 1).float()
        loss = x.new_zeros(())
        for i, c in enumerate(self.columns):
            each = F.cross_entropy(logits[c], attrs[:, i], reduction="none")
            weight = two if c in ("layout", "shape2", "colour2", "size2") else torch.ones_like(two)
            loss = loss + (each * weight).sum() / weight.sum().clamp(min=1)
        yield Stage("model", loss, {"loss": loss.detach()})

    @torch.no_grad()
    def evaluate(self, batch: Batch, **options: Any) -> dict[str, Tensor]:
        """Each part read right, and every part, on clean renders and on degraded ones."""
        x, attrs = batch[0], batch[3].long()
        out = {"n": torch.tensor(float(x.shape[0]), device=x.device)}
        g = torch.Generator().manual_seed(0)
        for suffix, images in (("", x), ("_degraded", degrade(x, g))):
            for part, ok in verdicts(self.read(images), attrs).items():
                if part != "swapped":  # a sample's fault, not a reader's measure
                    out[f"{part}_accuracy{suffix}"] = ok.float().sum()
        return out

    def describe_metrics(self, options: dict[str, Any]) -> dict[str, str]:
        notes = {f"{p}_accuracy": f"share of test renders whose {p} is read right"
                 for p in PARTS}  # fmt: skip
        notes["all_accuracy"] = "share of test renders with every part read right: the ceiling"
        notes.update({f"{k}_degraded": f"{v}, after a Gaussian blur (sigma 0.8 px) and noise "
                      "(std 0.05)" for k, v in list(notes.items())})  # fmt: skip
        return notes


class _Logits(nn.Module):
    def __init__(self, reader: AttributeReader) -> None:
        super().__init__()
        self.reader = reader

    def forward(self, image: Tensor) -> Tensor:
        return torch.cat(list(self.reader.logits(image).values()), dim=1)
