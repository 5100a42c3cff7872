"""Distances between two sets of feature vectors (real vs generated), as the papers define them.
Everything is computed in float64 on the CPU: the sets are small (thousands × hundreds), and the
matrix square root in FID loses digits in float32."""

from __future__ import annotations

import torch
from torch import Tensor


def _f64(x: Tensor) -> Tensor:
    return x.detach().to("cpu", torch.float64)


def mean_cov(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features."""
    f = _f64(features)
    if f.shape[0] < 2:
        raise ValueError("need at least 2 feature vectors for a covariance")
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def _psd_sqrt(a: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix through its eigendecomposition."""
    vals, vecs = torch.linalg.eigh((a + a.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """Fréchet distance between N(mu1, cov1) and N(mu2, cov2) (Heusel et al. 2017):
    |mu1 - mu2|² + tr(cov1) + tr(cov2) - 2 tr((cov1 cov2)^½).

    tr((cov1 cov2)^½) is computed as tr((s cov2 s)^½) with s = cov1^½: the same eigenvalues, but
    of a symmetric matrix, so there is no complex-valued sqrtm to clean up when cov1 is singular.
    """
    mu1, cov1, mu2, cov2 = map(_f64, (mu1, cov1, mu2, cov2))
    s = _psd_sqrt(cov1)
    m = s @ cov2 @ s
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    diff = mu1 - mu2
    fd = diff @ diff + cov1.trace() + cov2.trace() - 2 * tr_sqrt
    return max(float(fd), 0.0)


def fid(real: Tensor, fake: Tensor) -> float:
    """FID between two (N, D) feature sets."""
    return frechet_distance(*mean_cov(real), *mean_cov(fake))


def polynomial_mmd2(x: Tensor, y: Tensor) -> float:
    """Unbiased MMD² with the kernel k(a, b) = (a·b / D + 1)³ (Bińkowski et al. 2018)."""
    x, y = _f64(x), _f64(y)
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    m, n = x.shape[0], y.shape[0]
    sum_xx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    sum_yy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(sum_xx + sum_yy - 2 * kxy.mean())


def kid(
    real: Tensor, fake: Tensor, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID: mean and standard deviation of the unbiased polynomial MMD² over random subsets of
    `subset_size` (capped by the smaller set), as in the paper's reference implementation."""
    size = min(subset_size, real.shape[0], fake.shape[0])
    if size < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        i = torch.randperm(real.shape[0], generator=g)[:size]
        j = torch.randperm(fake.shape[0], generator=g)[:size]
        values.append(polynomial_mmd2(real[i], fake[j]))
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if subsets > 1 else 0.0


def _kth_neighbour_radii(f: Tensor, k: int, chunk: int) -> Tensor:
    """Distance from each row of f to its k-th nearest other row."""
    radii = []
    for start in range(0, f.shape[0], chunk):
        d = torch.cdist(f[start : start + chunk], f)  # (chunk, N); includes the point itself at 0
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _fraction_inside(points: Tensor, centres: Tensor, radii: Tensor, chunk: int) -> float:
    """Share of `points` inside at least one ball (centre, radius)."""
    inside = 0
    for start in range(0, points.shape[0], chunk):
        d = torch.cdist(points[start : start + chunk], centres)  # (chunk, M)
        inside += int((d <= radii[None, :]).any(dim=1).sum())
    return inside / points.shape[0]


def precision_recall(
    real: Tensor, fake: Tensor, *, k: int = 3, chunk: int = 1024
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): the real manifold is the union
    of balls around real features reaching their k-th nearest real neighbour; precision is the
    share of generated features inside it. Recall swaps the roles."""
    real, fake = _f64(real), _f64(fake)
    if min(real.shape[0], fake.shape[0]) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples in each set")
    precision = _fraction_inside(fake, real, _kth_neighbour_radii(real, k, chunk), chunk)
    recall = _fraction_inside(real, fake, _kth_neighbour_radii(fake, k, chunk), chunk)
    return precision, recall


def class_coverage(probs: Tensor) -> tuple[float, float]:
    """From a classifier's (N, classes) probabilities on generated samples: the share of classes
    predicted for at least one sample, and the mean confidence of the predictions."""
    conf, pred = probs.max(dim=1)
    return pred.unique().numel() / probs.shape[1], float(conf.mean())
