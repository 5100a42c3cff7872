"""Variational autoencoder (Kingma & Welling 2014) with a convolutional encoder and decoder sized
from the dataset's image shape."""

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
from aigc_cli.models.base import GenerativeModel, Interpolates, OnnxGraph, Stage
from aigc_cli.models.latent import slerp_rows
from aigc_cli.models.nets import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from aigc_cli.noise import LOCAL, Noise
from aigc_cli.registry import MODELS
from aigc_cli.results import SampleResult


@MODELS.register("vae")
class VAE(GenerativeModel, Interpolates):
    """VAE (conv or MLP nets): Gaussian or Bernoulli likelihood, beta-weighted KL."""

    @dataclass
    class Config:
        name: str = "vae"
        latent_dim: int = 8  # size of z
        arch: str = "conv"  # conv | mlp (one hidden layer each way, as in the VAE paper)
        hidden: int = 400  # mlp: width of the hidden layer
        base_channels: int = 16  # channels after the stem; doubled at each stride-2 level
        max_channels: int = 128  # cap on the doubling
        beta: float = 1.0  # weight of the KL term in the training loss (eval always uses 1)
        # gaussian (fixed sigma, density on [0, 1] pixels) | bernoulli (on binarised pixels:
        # each grey level is the probability of a 1, drawn anew each step and once per eval seed)
        likelihood: str = "gaussian"
        # std of the Gaussian decoder in [0, 1] pixel units; smaller = sharper reconstructions
        # but a weaker KL pull, so prior samples get patchier
        sigma: float = 0.3

    def __init__(self, cfg: Config, data: DataSpec) -> None:
        super().__init__(cfg, data)
        check(cfg.latent_dim >= 1, "model.latent_dim", "must be >= 1")
        check(cfg.beta >= 0, "model.beta", "must be >= 0")
        check(cfg.sigma > 0, "model.sigma", "must be > 0")
        check(
            cfg.likelihood in ("gaussian", "bernoulli"),
            "model.likelihood",
            f"'{cfg.likelihood}'; choose from: gaussian, bernoulli",
        )
        check(cfg.arch in ("conv", "mlp"), "model.arch", f"'{cfg.arch}'; choose from: conv, mlp")
        c, h, w = data.shape
        self.dims = c * h * w
        if cfg.arch == "mlp":
            check(cfg.hidden >= 1, "model.hidden", "must be >= 1")
            self.encoder = MLPEncoder(self.dims, cfg.hidden, 2 * cfg.latent_dim)
            self.decoder = MLPDecoder(cfg.latent_dim, cfg.hidden, list(data.shape))
            return
        check(h == w, "dataset.image_size", f"{h}x{w}: the conv VAE needs square images")
        self.encoder = ConvEncoder(c, h, cfg.base_channels, cfg.max_channels, 2 * cfg.latent_dim)
        self.decoder = ConvDecoder(cfg.latent_dim, c, h, cfg.base_channels, cfg.max_channels)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.encoder(x).float().chunk(2, dim=1)  # (B, latent) each
        return mu, logvar.clamp(-30.0, 20.0)

    def decode(self, z: Tensor) -> Tensor:
        """Decoder output: the Gaussian mean, or Bernoulli logits. The mean is left unbounded:
        squashing it through a sigmoid saturates on the mostly-black images early in training,
        the gradient to the shape pixels vanishes and the posterior collapses."""
        return self.decoder(z).float()

    def mean_image(self, z: Tensor) -> Tensor:
        out = self.decode(z)
        return out if self.cfg.likelihood == "gaussian" else torch.sigmoid(out)

    def terms(self, x: Tensor, noise: Noise = LOCAL) -> tuple[Tensor, Tensor]:
        """Per-image reconstruction NLL and KL(q(z|x) || N(0, I)), both in nats: (B,), (B,)."""
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * noise.randn_like(mu)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
        return -self.log_likelihood(x, self.decode(z)), kl.sum(1)

    def observe(self, x: Tensor, noise: Noise = LOCAL) -> Tensor:
        """The data the likelihood scores. A Bernoulli likelihood is a normalised density of
        binary images only, so grey levels are binarised (x ~ Bernoulli(grey level), the usual
        stochastic binarisation of MNIST); binary data passes through unchanged."""
        if self.cfg.likelihood != "bernoulli":
            return x
        return (noise.rand_like(x.float()) < x.float()).to(x.dtype)

    def training_step(self, batch: Batch, step: int, noise: Noise = LOCAL) -> Iterator[Stage]:
        recon, kl = self.terms(self.observe(batch[0], noise), noise)
        loss = (recon + self.cfg.beta * kl).mean()
        yield Stage(
            "model",
            loss,
            {"loss": loss.detach(), "recon": recon.mean().detach(), "kl": kl.mean().detach()},
        )

    def log_likelihood(self, x: Tensor, out: Tensor) -> Tensor:
        """log p(x | z) per image from the decoder output: (B,)."""
        x = x.float()
        if self.cfg.likelihood == "gaussian":
            s = self.cfg.sigma
            nll = 0.5 * ((x - out) / s) ** 2 + math.log(s) + 0.5 * math.log(2 * math.pi)
        else:
            nll = F.binary_cross_entropy_with_logits(out, x, reduction="none")
        return -nll.flatten(1).sum(1)

    @torch.no_grad()
    def iwae_nll(self, x: Tensor, k: int, chunk: int = 0) -> Tensor:
        """The importance-weighted bound (Burda et al. 2016) on -log p(x), per image, in nats:
        -log (1/k) sum_i p(x, z_i) / q(z_i | x), z_i ~ q(z | x). k=1 is the negative ELBO in
        expectation; the bound tightens as k grows. Drawn `chunk` samples at a time, so k=5000
        fits in memory; the running log-sum-exp is exact."""
        b = x.shape[0]
        chunk = chunk or max(1, 4096 // b)
        mu, logvar = self.encode(x)
        std = torch.exp(0.5 * logvar)
        log2pi = math.log(2 * math.pi)
        total = torch.full((b,), -math.inf, device=x.device)
        done = 0
        while done < k:
            c = min(chunk, k - done)
            eps = torch.randn(c, *mu.shape, device=x.device)  # (c, B, latent)
            z = mu + std * eps
            log_q = (-0.5 * eps**2 - 0.5 * logvar - 0.5 * log2pi).sum(-1)  # (c, B)
            log_pz = (-0.5 * z**2 - 0.5 * log2pi).sum(-1)  # (c, B)
            out = self.decode(z.flatten(0, 1))  # (c * B, C, H, W)
            xs = x.unsqueeze(0).expand(c, *x.shape).flatten(0, 1)
            log_px = self.log_likelihood(xs, out).view(c, b)
            total = torch.logaddexp(total, torch.logsumexp(log_px + log_pz - log_q, dim=0))
            done += c
        return -(total - math.log(k))

    @torch.no_grad()
    def evaluate(self, batch: Batch, **options: Any) -> dict[str, Tensor]:
        x = self.observe(batch[0])  # one binarisation for every figure of this batch
        recon, kl = self.terms(x)
        n = torch.tensor(float(recon.shape[0]), device=recon.device)
        out = {"nelbo": (recon + kl).sum(), "recon": recon.sum(), "kl": kl.sum(), "n": n}
        k = int(options.get("iwae_k") or 0)
        if k:
            out["iwae_nll"] = self.iwae_nll(x, k).sum()
        return out

    def finalize_metrics(self, means: dict[str, float]) -> dict[str, float]:
        out = dict(means)
        # A density on [0, 1] pixels scores the 256-level discrete data with 8 more bits per
        # dimension (bin width 1/256); Bernoulli likelihoods are already discrete.
        offset = 8.0 if self.cfg.likelihood == "gaussian" else 0.0
        out["bits_per_dim"] = means["nelbo"] / (self.dims * math.log(2)) + offset
        if "iwae_nll" in means:
            out["iwae_bits_per_dim"] = means["iwae_nll"] / (self.dims * math.log(2)) + offset
        return out

    def describe_metrics(self, options: dict[str, Any]) -> dict[str, str]:
        unit = "nats per image"
        notes = {
            "nelbo": f"negative ELBO (one posterior sample per image, KL weight 1), {unit}",
            "recon": f"reconstruction term -log p(x|z), {unit}",
            "kl": f"KL(q(z|x) || N(0, I)), {unit}",
            "bits_per_dim": "nelbo / (dims * ln 2)",
        }
        if self.cfg.likelihood == "gaussian":
            notes["bits_per_dim"] += " + 8 (density on [0,1] scored as 256-level pixels)"
        else:
            binarised = (
                "on the test images binarised stochastically (each pixel 1 with probability "
                "its grey level, drawn from the eval seed): a bound on -log p of binarised "
                "images, not comparable with figures on grey levels"
            )
            notes = {k: f"{v}, {binarised}" for k, v in notes.items()}
        if options.get("iwae_k"):
            notes["iwae_nll"] = (
                f"importance-weighted bound on -log p(x) (Burda et al. 2016), "
                f"k={options['iwae_k']} samples per image, {unit}"
            )
            notes["iwae_bits_per_dim"] = "iwae_nll converted like bits_per_dim"
        return notes

    @torch.no_grad()
    def sample(
        self, n: int, *, generator: torch.Generator | None = None, **kw: object
    ) -> SampleResult:
        z = torch.randn(n, self.cfg.latent_dim, generator=generator).to(self.device)
        return self.as_result(self.mean_image(z).clamp(0, 1))

    def onnx_graphs(self) -> list[OnnxGraph]:
        return [decoder_graph(self)]

    @torch.no_grad()
    def interpolate(
        self, n: int, *, generator: torch.Generator | None = None, steps: int = 8
    ) -> SampleResult:
        """Rows of spherical interpolations between random latents from the prior."""

        z = slerp_rows(max(1, math.ceil(n / steps)), steps, self.cfg.latent_dim, generator)
        return self.as_result(self.mean_image(z.to(self.device)).clamp(0, 1), steps)

    @torch.no_grad()
    def log_images(self, batch: Batch) -> dict[str, Tensor]:
        x = batch[0][:8]
        mu, _ = self.encode(x)
        recon = self.mean_image(mu).clamp(0, 1)
        return {"reconstructions": torch.cat([x.float(), recon])}  # originals, then recons


class _MeanImage(nn.Module):
    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, z: Tensor) -> Tensor:
        return self.vae.mean_image(z).clamp(0, 1)


def decoder_graph(vae: VAE) -> OnnxGraph:
    """z → the decoder's mean image in [0, 1], as `sample` draws it (latent diffusion decodes
    its samples with the same graph)."""
    dim = vae.cfg.latent_dim
    return OnnxGraph(
        "decoder", _MeanImage(vae), lambda n: {"z": torch.randn(n, dim)}, ["image"],
        {"z": {0: "batch"}, "image": {0: "batch"}},
        f"z (batch, {dim}) from N(0, I) → image (batch, {', '.join(map(str, vae.spec.shape))}) "
        "in [0, 1]",
    )  # fmt: skip
