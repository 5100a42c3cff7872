"""GAN (Goodfellow et al. 2014) with DCGAN-style networks (Radford et al. 2016) for images and
MLPs for 2-D points; non-saturating, hinge or WGAN-GP (Gulrajani et al. 2017) losses; optional
spectral norm on D (Miyato et al. 2018); class-conditional G and projection D (Miyato &
Koyama 2018). Training is two stages per step: discriminator, then generator."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _sn
from torch.optim import Optimizer

from aigc_cli.config import OptimConfig, check
from aigc_cli.data.base import Batch, DataSpec
from aigc_cli.models.base import (
    GenerativeModel,
    Interpolates,
    OnnxGraph,
    Stage,
    class_rows,
    conditional_classes,
)
from aigc_cli.models.latent import slerp_rows
from aigc_cli.models.nets import ConvDecoder, conv_levels, level_channels, mlp
from aigc_cli.noise import LOCAL, Noise
from aigc_cli.optim import make_optimizer
from aigc_cli.registry import MODELS
from aigc_cli.results import SampleResult

LOSSES = ("non_saturating", "hinge", "wgan_gp")


class ConvDiscriminator(nn.Module):
    """(B, C, S, S) → features (B, F); no batch norm, so the WGAN-GP penalty stays per-sample."""

    def __init__(self, in_ch: int, size: int, base: int, cap: int, sn: bool) -> None:
        super().__init__()
        levels, _ = conv_levels(size)
        ch = level_channels(base, levels, cap)
        wrap = _sn if sn else (lambda m: m)
        layers: list[nn.Module] = [wrap(nn.Conv2d(in_ch, ch[0], 3, padding=1)), nn.LeakyReLU(0.2)]
        for i in range(levels):
            layers += [wrap(nn.Conv2d(ch[i], ch[i + 1], 4, 2, 1)), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers)
        # Kernel-4 stride-2 convolutions round odd sizes down (28 → 14 → 7 → 3): measure.
        with torch.no_grad():
            self.out_dim = self.net(torch.zeros(1, in_ch, size, size)).numel()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).flatten(1)


class Generator(nn.Module):
    def __init__(self, body: nn.Module, z_dim: int, num_classes: int) -> None:
        super().__init__()
        self.body = body
        self.embed = nn.Embedding(num_classes, z_dim) if num_classes else None

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(y)], dim=1)  # (B, 2 * z_dim)
        return self.body(z)


class Discriminator(nn.Module):
    """Features → one logit; conditional D adds the projection <embed(y), features>."""

    def __init__(
        self, features: nn.Module, feat_dim: int, num_classes: int, sn: bool, pack: int = 1
    ) -> None:
        super().__init__()
        wrap = _sn if sn else (lambda m: m)
        self.features, self.pack = features, pack
        self.head = wrap(nn.Linear(feat_dim, 1))
        self.embed = None
        if num_classes:
            embed = nn.Embedding(num_classes, feat_dim)
            # Xavier scale as in SNGAN's projection D: nn.Embedding's N(0, 1) init makes
            # <embed(y), h> over thousands of features swamp the unconditional logit.
            nn.init.xavier_uniform_(embed.weight)
            self.embed = wrap(embed)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """(B, ...) → (B // pack,) logits: with packing each logit judges `pack` samples."""
        if self.pack > 1:
            x = pack_samples(x, self.pack)
        h = self.features(x)  # (B // pack, F)
        out = self.head(h).squeeze(1)  # (B // pack,)
        if self.embed is not None:
            out = out + (self.embed(y) * h).sum(1)
        return out


def gradient_penalty(
    disc: nn.Module,
    real: Tensor,
    fake: Tensor,
    y: Tensor | None,
    eps: Tensor | None = None,
    noise: Noise = LOCAL,
) -> Tensor:
    """WGAN-GP: E[(||∇_x̂ D(x̂)||₂ − 1)²] at x̂ = ε·real + (1−ε)·fake, ε ~ U(0, 1) per sample.
    The norm is over all of a sample's dimensions (not per pixel, and not over the batch)."""
    if eps is None:
        eps = noise.rand_like(real.new_empty(real.shape[0], *([1] * (real.dim() - 1))))
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    out = disc(x_hat, y)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    # One norm per D input: a sample, or with PacGAN packing the `pack` samples D saw together.
    per = grad.shape[0] // out.shape[0]
    grad = grad[: out.shape[0] * per].reshape(out.shape[0], -1)
    return ((grad.norm(2, dim=1) - 1) ** 2).mean()


def pack_samples(x: Tensor, pack: int) -> Tensor:
    """PacGAN (Lin et al. 2018): D judges `pack` samples at once, concatenated along features
    (points) or channels (images), so a G that covers few modes is easy to spot. A batch that
    does not divide drops its last B % pack samples."""
    b = x.shape[0] - x.shape[0] % pack
    return x[:b].reshape(b // pack, pack * x.shape[1], *x.shape[2:])


@MODELS.register("gan")
class GAN(GenerativeModel, Interpolates):
    """DCGAN / MLP GAN: non-saturating, hinge or WGAN-GP loss; EMA, conditional, spectral norm."""

    data_kinds = ("image", "points")
    ema_networks = ("generator",)  # D is judged (test/d_real, d_fake) as it trained

    @dataclass
    class Config:
        name: str = "gan"
        loss: str = "non_saturating"  # non_saturating | hinge | wgan_gp
        latent_dim: int = 64  # size of z
        g_channels: int = 16  # G channels at full resolution; doubled per level going down
        d_channels: int = 16  # D channels at full resolution; doubled per level
        max_channels: int = 256  # cap on the doubling
        hidden: int = 256  # width of the MLPs used for 2-D point data
        spectral_norm: bool = False  # spectral normalisation on every D layer
        gp_weight: float = 10.0  # WGAN-GP penalty weight (wgan_gp only)
        n_critic: int = 1  # D updates per G update (5 is usual with wgan_gp)
        conditional: bool = False  # class-conditional G and projection D (needs labels)
        d_lr: float | None = None  # discriminator learning rate; null = optim.lr
        d_betas: list[float] | None = None  # discriminator Adam betas; null = optim.betas
        r1_weight: float = 0.0  # γ of the R1 penalty on D's gradient at real data; 0 = off
        pack: int = 1  # PacGAN: samples D judges together (2-4 counter mode collapse); 1 = off

    def __init__(self, cfg: Config, data: DataSpec) -> None:
        super().__init__(cfg, data)
        check(cfg.loss in LOSSES, "model.loss", f"'{cfg.loss}'; choose from: {', '.join(LOSSES)}")
        check(cfg.latent_dim >= 1, "model.latent_dim", "must be >= 1")
        check(cfg.n_critic >= 1, "model.n_critic", "must be >= 1")
        check(cfg.gp_weight >= 0, "model.gp_weight", "must be >= 0")
        check(cfg.r1_weight >= 0, "model.r1_weight", "must be >= 0 (0 = off)")
        check(cfg.pack >= 1, "model.pack", "must be >= 1 (1 = no packing)")
        check(
            not (cfg.pack > 1 and cfg.conditional),
            "model.pack",
            "packing mixes classes in one D input; use model.pack=1 with model.conditional=true",
        )
        classes = self.num_classes = conditional_classes(cfg.conditional, data)
        z_in = cfg.latent_dim * (2 if classes else 1)
        if data.kind == "points":
            dim = data.shape[0]
            g_body: nn.Module = mlp(
                [z_in, cfg.hidden, cfg.hidden, cfg.hidden, dim], nn.LeakyReLU(0.2)
            )
            feats = mlp(
                [dim * cfg.pack, cfg.hidden, cfg.hidden, cfg.hidden],
                nn.LeakyReLU(0.2),
                cfg.spectral_norm,
                last_act=True,
            )
            feat_dim = cfg.hidden
        else:
            c, h, w = data.shape
            check(h == w, "dataset.image_size", f"{h}x{w}: the GAN needs square images")
            g_body = ConvDecoder(z_in, c, h, cfg.g_channels, cfg.max_channels, dcgan=True)
            d_feats = ConvDiscriminator(
                c * cfg.pack, h, cfg.d_channels, cfg.max_channels, cfg.spectral_norm
            )
            feats, feat_dim = d_feats, d_feats.out_dim
        self.generator = Generator(g_body, cfg.latent_dim, classes)
        self.discriminator = Discriminator(feats, feat_dim, classes, cfg.spectral_norm, cfg.pack)

    # ---- data scaling: images live in [0, 1] outside, [-1, 1] inside (tanh output) --------
    def _labels(self, batch: Batch) -> Tensor | None:
        return batch[1].long() if self.num_classes else None

    def optimizers(self, optim: OptimConfig) -> dict[str, Optimizer]:
        return {
            "disc": make_optimizer(
                self.discriminator.parameters(), optim, lr=self.cfg.d_lr, betas=self.cfg.d_betas
            ),
            "gen": make_optimizer(self.generator.parameters(), optim),
        }

    def uncompiled(self) -> dict[str, str]:
        if self.cfg.loss == "wgan_gp" or self.cfg.r1_weight > 0:
            return {
                "discriminator": "WGAN-GP and R1 take gradients of gradients, which "
                "torch.compile does not support"
            }
        return {}

    def d_loss(
        self, real: Tensor, fake: Tensor, y: Tensor | None, noise: Noise = LOCAL
    ) -> tuple[Tensor, dict]:
        r1 = self.cfg.r1_weight > 0 and torch.is_grad_enabled()
        if r1:
            real = real.detach().requires_grad_(True)
        d_real, d_fake = self.discriminator(real, y), self.discriminator(fake, y)
        scalars = {"real": d_real.mean().detach(), "fake": d_fake.mean().detach()}
        if self.cfg.loss == "non_saturating":
            loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        elif self.cfg.loss == "hinge":
            loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        else:
            with torch.autocast(real.device.type, enabled=False):  # second-order grads in fp32
                gp = gradient_penalty(
                    self.discriminator, real.float(), fake.float(), y, noise=noise
                )
            loss = d_fake.mean() - d_real.mean() + self.cfg.gp_weight * gp
            scalars["gp"] = gp.detach()
        if r1:
            # R1 (Mescheder et al. 2018): ||∇_x D(x)||² on real data, per D input
            (grad,) = torch.autograd.grad(d_real.float().sum(), real, create_graph=True)
            penalty = grad.float().pow(2).sum() / d_real.numel()
            loss = loss + 0.5 * self.cfg.r1_weight * penalty
            scalars["r1"] = penalty.detach()
        return loss, scalars

    def g_loss(self, fake: Tensor, y: Tensor | None) -> Tensor:
        d_fake = self.discriminator(fake, y)
        if self.cfg.loss == "non_saturating":
            return F.softplus(-d_fake).mean()
        return -d_fake.mean()

    def training_step(self, batch: Batch, step: int, noise: Noise = LOCAL) -> Iterator[Stage]:
        real = self.to_signed(batch[0])
        y = self._labels(batch)
        z = noise.randn_like(real.new_empty(real.shape[0], self.cfg.latent_dim))
        fake = self.generator(z, y)
        loss, scalars = self.d_loss(real, fake.detach(), y, noise)
        yield Stage("disc", loss, {"loss": loss.detach(), **scalars})
        if (step + 1) % self.cfg.n_critic == 0:
            # D has just been updated: score the same fakes again through the new D.
            g = self.g_loss(fake, y)
            yield Stage("gen", g, {"loss": g.detach()})

    @torch.no_grad()
    def evaluate(self, batch: Batch, **options: Any) -> dict[str, Tensor]:
        """D's view of held-out real data vs fresh fakes (GAN quality is judged on samples)."""
        real = self.to_signed(batch[0])
        y = self._labels(batch)
        z = torch.randn(real.shape[0], self.cfg.latent_dim, device=real.device)
        fake = self.generator(z, y)
        d_real, d_fake = self.discriminator(real, y), self.discriminator(fake, y)
        n = torch.tensor(float(d_real.numel()), device=real.device)  # D outputs, after packing
        return {"d_real": d_real.sum(), "d_fake": d_fake.sum(), "n": n}

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        classes: list[int] | None = None,
        **kw: Any,
    ) -> SampleResult:
        """`n` samples; a conditional GAN gives one grid row per class (of `classes`, default
        all), n // len(classes) samples each."""
        n, y, nrow = class_rows(self.num_classes, n, classes, self.device)
        z = torch.randn(n, self.cfg.latent_dim, generator=generator).to(self.device)
        return self.as_result(self.from_signed(self.generator(z, y).float()), nrow)

    def onnx_graphs(self) -> list[OnnxGraph]:
        dim, k = self.cfg.latent_dim, self.num_classes

        def example(n: int) -> dict[str, Tensor]:
            z = {"z": torch.randn(n, dim)}
            return {**z, "y": torch.randint(0, k, (n,))} if k else z

        dynamic = {"z": {0: "batch"}, "image": {0: "batch"}, **({"y": {0: "batch"}} if k else {})}
        shape = ", ".join(map(str, self.spec.shape))
        about = f"z (batch, {dim}) from N(0, I)" + (f", y (batch,) class in [0, {k})" if k else "")
        return [OnnxGraph("generator", _Generate(self), example, ["image"], dynamic,
                          f"{about} → image (batch, {shape}) in [0, 1]")]  # fmt: skip

    @torch.no_grad()
    def interpolate(
        self, n: int, *, generator: torch.Generator | None = None, steps: int = 8
    ) -> SampleResult:
        """Rows of spherical interpolations between random latent pairs."""

        rows = max(1, math.ceil(n / steps))
        z = slerp_rows(rows, steps, self.cfg.latent_dim, generator).to(self.device)
        y = None
        if self.num_classes:
            y = torch.randint(0, self.num_classes, (rows,), generator=generator)
            y = y.repeat_interleave(steps).to(self.device)
        return self.as_result(self.from_signed(self.generator(z, y).float()), steps)


class _Generate(nn.Module):
    def __init__(self, gan: GAN) -> None:
        super().__init__()
        self.gan = gan

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return self.gan.from_signed(self.gan.generator(z, y).float())
