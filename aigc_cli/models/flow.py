"""Flow matching on the straight path (Lipman et al. 2023; rectified flow, Liu et al. 2023):
x_t = (1 - t) x_0 + t x_1 between noise x_0 ~ N(0, I) at t = 0 and data x_1 at t = 1; the
network predicts the velocity x_1 - x_0. Samplers integrate dx/dt = v(x, t) from noise to data:
Euler (one evaluation per step) and Heun (two)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from aigc_cli.data.base import Batch, DataSpec
from aigc_cli.models.denoising import QUARTERS, DenoiserConfig, DenoisingModel
from aigc_cli.models.draws import Draws
from aigc_cli.noise import Noise
from aigc_cli.registry import MODELS

TIME_SCALE = 1000.0  # t in [0, 1] is embedded as t * 1000, the range diffusion's embedding sees


@MODELS.register("flow")
class Flow(DenoisingModel):
    """Flow matching (rectified flow) on images (UNet) or 2-D points (MLP)."""

    samplers = ("euler", "heun")

    @dataclass
    class Config(DenoiserConfig):
        name: str = "flow"
        sampler: str = "heun"  # euler | heun
        steps: int = 20  # integration steps (Heun: two network evaluations each)

    def __init__(self, cfg: Config, data: DataSpec) -> None:
        super().__init__(cfg, data)

    time_about = "t (batch,) in [0, 1] (0 = noise, 1 = data) → prediction: the velocity"

    def network_time(self, t: Tensor) -> Tensor:
        return t * TIME_SCALE

    def example_times(self, n: int) -> Tensor:
        return torch.rand(n)

    def velocity(self, x: Tensor, t: Tensor, y: Tensor | None, guidance: float = 1.0) -> Tensor:
        return self.guided(x, t * TIME_SCALE, y, guidance).float()

    def per_sample_loss(self, x1: Tensor, t: Tensor, x0: Tensor, y: Tensor | None) -> Tensor:
        tb = t.view(-1, *([1] * (x1.dim() - 1)))
        xt = (1 - tb) * x0 + tb * x1
        return (self.net(xt, t * TIME_SCALE, y).float() - (x1 - x0)).pow(2).flatten(1).mean(1)

    def train_times(self, x: Tensor, noise: Noise) -> Tensor:
        return noise.rand_like(x.new_empty(x.shape[0]))  # (B,) uniform in [0, 1)

    @torch.no_grad()
    def evaluate(self, batch: Batch, **options: Any) -> dict[str, Tensor]:
        """The velocity loss on held-out data, one time per quarter of [0, 1] per sample."""
        x1 = self.to_model(batch[0])
        y = self.condition_of(batch)

        def quarter(q: int, n: int) -> Tensor:  # times uniform in [q/4, (q+1)/4)
            return (q + torch.rand(n, device=x1.device)) / QUARTERS

        return self.quarter_losses(x1, y, quarter)

    def describe_metrics(self, options: dict[str, Any]) -> dict[str, str]:
        notes = {"loss": "velocity MSE on test data, averaged over the quarters of t in [0, 1]"}
        for q in range(QUARTERS):
            notes[f"loss_q{q + 1}"] = f"velocity MSE at times in quarter {q + 1} of [0, 1]"
        return notes

    def sampling_plan(self, sampler: str, steps: int) -> list[Any]:
        """(t0, t1) pairs from noise (0) to data (1)."""
        return list(itertools.pairwise(torch.linspace(0, 1, steps + 1).tolist()))

    def sampling_step(self, x: Tensor, y: Tensor | None, item: Any,
                      settings: tuple[str, int, float, float], draws: Draws) -> Tensor:  # fmt: skip
        sampler, _, guidance, _ = settings
        return integrate_step(self.velocity, x, item[0], item[1], y, guidance, sampler)

    def sampling_nfe(self, sampler: str, steps: int) -> int:
        return steps * (2 if sampler == "heun" else 1)

    def describe_sampler(self, sampler: str | None = None, steps: int | None = None) -> str:
        return f"{sampler or self.cfg.sampler}, {int(steps or self.cfg.steps)} steps"


def integrate_step(velocity: Any, x: Tensor, t0: float, t1: float, y: Tensor | None,
                   guidance: float, sampler: str) -> Tensor:  # fmt: skip
    """One step of dx/dt = v(x, t) from t0 to t1: Euler, or Heun's trapezoid (second order)."""
    h = t1 - t0
    v0 = velocity(x, torch.full((x.shape[0],), t0, device=x.device), y, guidance)
    if sampler == "euler":
        return x + h * v0
    x_euler = x + h * v0
    v1 = velocity(x_euler, torch.full((x.shape[0],), t1, device=x.device), y, guidance)
    return x + h * (v0 + v1) / 2
