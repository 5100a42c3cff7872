"""Gaussian diffusion (Ho et al. 2020, DDPM): linear or cosine (Nichol & Dhariwal 2021) noise
schedules over T steps; the network predicts the noise eps, the velocity v (Salimans & Ho 2022)
or the clean data x0; plain MSE or min-SNR-γ weighting (Hang et al. 2023). Samplers: ancestral
DDPM (all T steps) and DDIM (Song et al. 2021; N steps, eta). `evaluate` gives the variational
bound in bits/dim with DDPM's discretised decoder, estimated by stratified timesteps."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from aigc_cli.config import check
from aigc_cli.data.base import Batch, DataSpec
from aigc_cli.models.denoising import QUARTERS, DenoiserConfig, DenoisingModel
from aigc_cli.models.draws import Draws
from aigc_cli.noise import Noise
from aigc_cli.registry import MODELS

PREDICTIONS = ("eps", "v", "x0")


def make_schedule(kind: str, timesteps: int) -> Tensor:
    """betas (T,) in float64: linear from 1e-4 to 0.02 scaled to T steps (DDPM), or cosine
    alpha-bar with offset s = 0.008, betas clipped at 0.999 (improved DDPM)."""
    if kind == "linear":
        scale = 1000 / timesteps
        betas = torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
        return betas.clamp(max=0.999)  # a short schedule would otherwise pass beta = 1
    s = 0.008
    t = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64) / timesteps
    abar = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)


class Schedule:
    """The per-step constants of q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), index
    t = 0..T-1 (t = 0 is the first, smallest noise level)."""

    def __init__(self, betas: Tensor) -> None:
        self.T = betas.numel()
        self.betas = betas
        self.abar = torch.cumprod(1 - betas, 0)
        self.abar_prev = torch.cat([torch.ones(1, dtype=betas.dtype), self.abar[:-1]])
        # posterior q(x_{t-1} | x_t, x_0): variance and the two mean coefficients
        self.post_var = betas * (1 - self.abar_prev) / (1 - self.abar)
        self.coef_x0 = betas * self.abar_prev.sqrt() / (1 - self.abar)
        self.coef_xt = (1 - self.abar_prev) * (1 - betas).sqrt() / (1 - self.abar)

    def at(self, values: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """values[t] per sample, shaped to broadcast against `like`."""
        v = values.to(like.device)[t].to(like.dtype)
        return v.view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        a = self.at(self.abar, t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps

    def split(self, pred: Tensor, xt: Tensor, t: Tensor, kind: str) -> tuple[Tensor, Tensor]:
        """(x0, eps) implied by the network's prediction of `kind` at x_t."""
        a = self.at(self.abar, t, xt)
        sa, sb = a.sqrt(), (1 - a).sqrt()
        if kind == "eps":
            return (xt - sb * pred) / sa, pred
        if kind == "x0":
            return pred, (xt - sa * pred) / sb
        return sa * xt - sb * pred, sb * xt + sa * pred  # v = sa * eps - sb * x0

    def target(self, x0: Tensor, eps: Tensor, t: Tensor, kind: str) -> Tensor:
        if kind == "eps":
            return eps
        if kind == "x0":
            return x0
        a = self.at(self.abar, t, x0)
        return a.sqrt() * eps - (1 - a).sqrt() * x0

    def snr(self, t: Tensor) -> Tensor:
        a = self.abar.to(t.device)[t]
        return a / (1 - a)


@MODELS.register("diffusion")
class Diffusion(DenoisingModel):
    """DDPM / DDIM on images (UNet) or 2-D points (MLP); eps, v or x0 prediction."""

    samplers = ("ddim", "ddpm")
    sampler_options = ("sampler", "steps", "guidance", "eta")

    @dataclass
    class Config(DenoiserConfig):
        name: str = "diffusion"
        timesteps: int = 1000  # T, the number of noise levels
        schedule: str = "cosine"  # linear | cosine
        prediction: str = "v"  # eps | v | x0: what the network predicts
        loss_weight: str = "mse"  # mse (plain) | min_snr (min-SNR-γ weighting)
        min_snr_gamma: float = 5.0  # γ of min_snr
        sampler: str = "ddim"  # ddim | ddpm (ancestral, T steps)
        eta: float = 0.0  # DDIM: 0 = deterministic, 1 = DDPM-like noise
        clip_x0: bool = True  # images: clip the predicted x0 to [-1, 1] while sampling

    @property
    def time_about(self) -> str:  # type: ignore[override]
        return (f"t (batch,) the step index 0..{self.sched.T - 1} as float (0 = least noise) → "
                f"prediction: {self.cfg.prediction}")  # fmt: skip

    def example_times(self, n: int) -> Tensor:
        return torch.randint(0, self.sched.T, (n,)).float()

    def __init__(self, cfg: Config, data: DataSpec) -> None:
        check(cfg.timesteps >= 2, "model.timesteps", "must be >= 2")
        check(cfg.schedule in ("linear", "cosine"), "model.schedule",
              f"'{cfg.schedule}'; choose from: linear, cosine")  # fmt: skip
        check(cfg.prediction in PREDICTIONS, "model.prediction",
              f"'{cfg.prediction}'; choose from: {', '.join(PREDICTIONS)}")  # fmt: skip
        check(cfg.loss_weight in ("mse", "min_snr"), "model.loss_weight",
              f"'{cfg.loss_weight}'; choose from: mse, min_snr")  # fmt: skip
        check(cfg.eta >= 0, "model.eta", "must be >= 0")
        super().__init__(cfg, data)
        check(cfg.steps <= cfg.timesteps, "model.steps", f"{cfg.steps} > T={cfg.timesteps}")
        self.sched = Schedule(make_schedule(cfg.schedule, cfg.timesteps))

    # ---- training --------------------------------------------------------------------------
    def per_sample_loss(self, x0: Tensor, t: Tensor, eps: Tensor, y: Tensor | None) -> Tensor:
        xt = self.sched.q_sample(x0, t, eps)
        pred = self.net(xt, t.float(), y).float()
        target = self.sched.target(x0, eps, t, self.cfg.prediction)
        mse = (pred - target).pow(2).flatten(1).mean(1)  # (B,)
        if self.cfg.loss_weight == "min_snr":
            snr = self.sched.snr(t).float()
            clipped = snr.clamp(max=self.cfg.min_snr_gamma)
            # weight on the x0 error is min(snr, γ); in other parameterisations it is rescaled
            w = {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1)}
            mse = mse * w[self.cfg.prediction]
        return mse

    def train_times(self, x: Tensor, noise: Noise) -> Tensor:
        return noise.randint(self.sched.T, x)  # (B,) timesteps in [0, T)

    # ---- evaluation: test loss per quarter of the timesteps, and the variational bound -----
    @torch.no_grad()
    def evaluate(self, batch: Batch, **options: Any) -> dict[str, Tensor]:
        x0 = self.to_model(batch[0])
        y = self.condition_of(batch)
        b, T = x0.shape[0], self.sched.T

        def quarter(q: int, n: int) -> Tensor:  # timesteps in [qT/4, (q+1)T/4)
            return torch.randint(q * T // QUARTERS, (q + 1) * T // QUARTERS, (n,), device=x0.device)

        out = self.quarter_losses(x0, y, quarter)
        if self.vae is not None:
            return out  # a bound on latents would be no bound on the images
        # The decoder term (t = 0) exactly; the T - 1 KL terms, which fall off about as 1/t,
        # by one timestep in each of the strata [1, 2), [2, 4), [4, 8), ...
        zero = torch.zeros(b, dtype=torch.long, device=x0.device)
        terms = self.bound_term(x0, zero, torch.randn_like(x0), y)
        for lo, hi in log_strata(T):
            t = torch.randint(lo, hi, (b,), device=x0.device)
            terms = terms + (hi - lo) * self.bound_term(x0, t, torch.randn_like(x0), y)
        out["nelbo"] = (terms + self.prior_kl(x0)).sum()
        return out

    def bound_term(self, x0: Tensor, t: Tensor, eps: Tensor, y: Tensor | None) -> Tensor:
        """Per-sample term t of the bound, in nats: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))
        for t > 0, -log p(x_0 | x_1) for t = 0 (DDPM's discretised Gaussian over 256 levels for
        images, a Gaussian density for points). The reverse variance is beta_t, the larger of
        DDPM's two choices: with the posterior variance the terms near t = 0 each cost about
        half a nat per dimension even for the optimal denoiser."""
        s = self.sched
        xt = s.q_sample(x0, t, eps)
        x0_hat, _ = s.split(self.net(xt, t.float(), y).float(), xt, t, self.cfg.prediction)
        if self.pixel_space:
            x0_hat = x0_hat.clamp(-1, 1)
        coef_x0, coef_xt = s.at(s.coef_x0, t, x0), s.at(s.coef_xt, t, x0)
        mean_q, mean_p = coef_x0 * x0 + coef_xt * xt, coef_x0 * x0_hat + coef_xt * xt
        var_q, var_p = s.at(s.post_var, t, x0), s.at(s.betas, t, x0)
        ratio = var_q / var_p
        kl = 0.5 * (ratio - 1 - ratio.clamp(min=1e-30).log() + (mean_q - mean_p) ** 2 / var_p)
        kl = kl.flatten(1).sum(1)
        sigma0 = var_p.sqrt()  # decoder std at t = 0: sqrt(beta_0)
        if self.pixel_space:
            nll0 = discretised_gaussian_nll(x0, x0_hat, sigma0)
        else:
            nll0 = 0.5 * (((x0 - x0_hat) / sigma0) ** 2 + 2 * sigma0.log() + math.log(2 * math.pi))
            nll0 = nll0.flatten(1).sum(1)
        return torch.where(t == 0, nll0, kl)

    def prior_kl(self, x0: Tensor) -> Tensor:
        """KL(q(x_T | x_0) || N(0, I)) per sample, in nats."""
        a = self.sched.abar[-1].item()
        mean2, var = a * x0.pow(2), 1 - a
        return (0.5 * (mean2 + var - 1 - math.log(var))).flatten(1).sum(1)

    def finalize_metrics(self, means: dict[str, float]) -> dict[str, float]:
        out = dict(means)
        if "nelbo" not in means:
            return out
        dims = math.prod(self.spec.shape)
        out["bits_per_dim"] = means["nelbo"] / (dims * math.log(2))
        return out

    def describe_metrics(self, options: dict[str, Any]) -> dict[str, str]:
        data = ("256-level pixels, DDPM's discretised Gaussian decoder" if self.spec.kind ==
                "image" else "points, a Gaussian decoder density")  # fmt: skip
        notes = {
            "nelbo": f"variational bound on -log p(x) in nats per sample ({data}): the decoder "
            f"term exactly, the sum of the T-1={self.sched.T - 1} KL terms estimated with one "
            f"random timestep in each of {len(log_strata(self.sched.T))} strata [1,2), [2,4), "
            "[4,8)... per test sample (stratified, unbiased), and the prior term; reverse "
            "variance beta_t",
            "bits_per_dim": "nelbo / (dims * ln 2)",
            "loss": "the training loss (unweighted by the bound), averaged over the quarters",
        }
        for q in range(QUARTERS):
            notes[f"loss_q{q + 1}"] = f"training loss at timesteps in quarter {q + 1} of the range"
        if self.vae is not None:
            notes = {k: v + ", on the autoencoder's latents" for k, v in notes.items()
                     if k.startswith("loss")}  # fmt: skip
        return notes

    # ---- sampling --------------------------------------------------------------------------
    def sampler_settings(self, options: dict[str, Any]) -> tuple[str, int, float, float]:
        sampler, steps, guidance, eta = super().sampler_settings(options)
        if sampler == "ddpm":
            steps = self.sched.T
        check(steps <= self.sched.T, "steps", f"{steps} is more than T={self.sched.T}")
        return sampler, steps, guidance, eta

    def sampling_plan(self, sampler: str, steps: int) -> list[Any]:
        """(t, prev) pairs from T-1 down to the data (prev = -1)."""
        times = ddim_times(self.sched.T, steps)
        return list(zip(times, [*times[1:], -1], strict=True))

    def sampling_step(self, x: Tensor, y: Tensor | None, item: Any,
                      settings: tuple[str, int, float, float], draws: Draws) -> Tensor:  # fmt: skip
        sampler, _, guidance, eta = settings
        return self.denoise_step(x, item[0], item[1], y, guidance, eta, sampler, draws)

    def denoise_step(
        self, x: Tensor, t: int, prev: int, y: Tensor | None, guidance: float, eta: float,
        sampler: str, draws: Draws,
    ) -> Tensor:  # fmt: skip
        """x_t → x_prev (prev = -1: the data). DDPM's ancestral step uses the posterior
        q(x_{t-1} | x_t, x0_hat) with its variance; DDIM moves along the implied eps."""
        s = self.sched
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        x0, eps = s.split(
            self.guided(x, tt.float(), y, guidance).float(), x, tt, self.cfg.prediction
        )
        if self.pixel_space and self.cfg.clip_x0:
            x0 = x0.clamp(-1, 1)
            if prev >= 0:  # the eps consistent with the clipped x0
                a = s.abar[t].item()
                eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
        z = draws.randn(x.shape, x.device) if prev >= 0 else 0.0
        if sampler == "ddpm":
            mean = s.coef_x0[t].item() * x0 + s.coef_xt[t].item() * x
            return mean + math.sqrt(s.post_var[t].item()) * z if prev >= 0 else mean
        a, a_prev = s.abar[t].item(), (s.abar[prev].item() if prev >= 0 else 1.0)
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        return math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps + sigma * z

    def describe_sampler(self, sampler: str | None = None, steps: int | None = None) -> str:
        sampler = sampler or self.cfg.sampler
        steps = self.sched.T if sampler == "ddpm" else int(steps or self.cfg.steps)
        return f"{sampler}, {steps} steps"


def log_strata(T: int) -> list[tuple[int, int]]:
    """[1, 2), [2, 4), [4, 8), ... up to T: strata for the bound's KL terms."""
    out, lo = [], 1
    while lo < T:
        out.append((lo, min(2 * lo, T)))
        lo *= 2
    return out


def ddim_times(T: int, steps: int) -> list[int]:
    """`steps` timesteps from T-1 down to 0, evenly spaced (the first step starts from pure
    noise, the last lands on the data). Spacing is at least 1, so rounding keeps them apart."""
    return [int(v) for v in torch.linspace(T - 1, 0, steps).round().tolist()]


def discretised_gaussian_nll(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """-log P(x) per sample for 256-level data in [-1, 1] under N(mean, std²) integrated over
    each level's bin (width 2/255; the end bins extend to ±inf), as in DDPM."""
    half = 1.0 / 255
    normal = torch.distributions.Normal(0.0, 1.0)
    upper = torch.where(x > 1 - 1e-3, torch.ones_like(x), normal.cdf((x + half - mean) / std))
    lower = torch.where(x < -1 + 1e-3, torch.zeros_like(x), normal.cdf((x - half - mean) / std))
    return -(upper - lower).clamp(min=1e-12).log().flatten(1).sum(1)
