"""Latent-space helpers shared by the latent-variable families (VAE, GAN)."""

from __future__ import annotations

import torch
from torch import Tensor


def slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation between rows of `a` and `b` (the path a Gaussian latent's
    typical set follows; a straight line would pass through low-norm, atypical points)."""
    an, bn = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((an * bn).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b


def slerp_rows(rows: int, steps: int, dim: int, generator: torch.Generator | None) -> Tensor:
    """(rows * steps, dim): each row walks from one random latent to another."""
    a = torch.randn(rows, 1, dim, generator=generator)
    b = torch.randn(rows, 1, dim, generator=generator)
    t = torch.linspace(0, 1, steps).view(1, steps, 1)
    return slerp(a, b, t).reshape(rows * steps, dim)
