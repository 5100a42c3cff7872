"""Built-in datasets generated in memory from a seed: no files, no network."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from aigc_cli.config import check
from aigc_cli.data.base import DataSpec, TensorData
from aigc_cli.data.cache import cached
from aigc_cli.registry import DATASETS
from aigc_cli.results import Points, SampleResult

SHAPE_NAMES = ["circle", "square", "triangle"]
SHAPES_VERSION = 1  # bump when render_shapes draws differently: cached renders are then stale


@dataclass
class ShapesConfig:
    name: str = "shapes"
    image_size: int = 32  # height and width in pixels
    channels: int = 3  # 3 = colour, 1 = grey
    train_size: int = 20000  # training images
    test_size: int = 2000  # test images
    min_size: float = 0.3  # smallest shape, as a fraction of the image
    max_size: float = 0.7  # largest shape, as a fraction of the image
    seed: int = 1234  # the data are a pure function of this seed


def render_shapes(n: int, cfg: ShapesConfig, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Draw `n` anti-aliased shapes on black: (n, C, S, S) uint8 images and (n,) labels.

    Each shape is a signed distance d(pixel) (negative inside); a pixel's coverage is
    clamp(0.5 - d, 0, 1), which anti-aliases edges without supersampling."""
    s = cfg.image_size
    labels = torch.randint(0, len(SHAPE_NAMES), (n,), generator=generator)
    half = torch.empty(n).uniform_(cfg.min_size / 2, cfg.max_size / 2, generator=generator) * s
    cx = half + torch.rand(n, generator=generator) * (s - 2 * half)
    cy = half + torch.rand(n, generator=generator) * (s - 2 * half)
    colour = torch.rand(n, 3, generator=generator) * 0.75 + 0.25
    colour[torch.arange(n), torch.randint(0, 3, (n,), generator=generator)] = 1.0  # vivid
    coords = torch.arange(s, dtype=torch.float32) + 0.5  # pixel centres
    grey = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    images = torch.empty(n, cfg.channels, s, s, dtype=torch.uint8)
    # Small chunks: the temporaries stay in memory the allocator reuses (fresh pages are slow).
    for start in range(0, n, 512):
        sl = slice(start, min(start + 512, n))
        lab, cover = labels[sl], torch.empty(sl.stop - start, s, s)
        for cls in range(len(SHAPE_NAMES)):  # one distance function per class
            idx = (lab == cls).nonzero().squeeze(1)
            dx = coords.view(1, 1, s) - cx[sl][idx].view(-1, 1, 1)  # (k, 1, S)
            dy = coords.view(1, s, 1) - cy[sl][idx].view(-1, 1, 1)  # (k, S, 1)
            r = half[sl][idx].view(-1, 1, 1)
            cover[idx] = shape_cover(cls, dx, dy, r)
        img = cover.unsqueeze(1) * colour[sl].view(-1, 3, 1, 1)  # (k, 3, S, S)
        if cfg.channels == 1:
            img = (img * grey).sum(1, keepdim=True)
        images[sl] = img.mul_(255).round_().clamp_(0, 255).to(torch.uint8)
    return images, labels


def shape_cover(cls: int, dx: Tensor, dy: Tensor, r: Tensor) -> Tensor:
    """Each pixel's coverage by shape `cls` of size r, from its offsets (dx, dy) to the centre
    (broadcast together): anti-aliased from the signed distance, clamp(0.5 - d, 0, 1)."""
    if cls == 0:  # circle of radius r
        d = torch.sqrt(dx**2 + dy**2) - r
    elif cls == 1:  # axis-aligned square of half-side 0.85 r
        d = torch.maximum(dx.abs(), dy.abs()) - 0.85 * r
    else:  # apex at (0, -r), base at dy = 0.8 r; half-width 0.6 per unit of depth
        slope = 0.6
        side = (dx.abs() - slope * (dy + r)) / math.sqrt(1 + slope**2)
        d = torch.maximum(side, dy - 0.8 * r)
    return (0.5 - d).clamp(0, 1)


@DATASETS.register("shapes", config=ShapesConfig)
def shapes(cfg: ShapesConfig) -> TensorData:
    """Procedural circles, squares and triangles of random size, place and colour (built in)."""
    check(8 <= cfg.image_size <= 256, "dataset.image_size", f"{cfg.image_size} not in [8, 256]")
    check(cfg.channels in (1, 3), "dataset.channels", f"{cfg.channels} must be 1 or 3")
    check(cfg.train_size >= 1 and cfg.test_size >= 1, "dataset.train_size", "sizes must be >= 1")
    check(0 < cfg.min_size <= cfg.max_size <= 1, "dataset.min_size", "need 0 < min <= max <= 1")

    def render() -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(cfg.seed)
        (x, y), (tx, ty) = (
            render_shapes(cfg.train_size, cfg, g),
            render_shapes(cfg.test_size, cfg, g),
        )
        return {"train_x": x, "train_y": y, "test_x": tx, "test_y": ty}

    t = cached("shapes", asdict(cfg), SHAPES_VERSION, render)
    train, test = (t["train_x"], t["train_y"]), (t["test_x"], t["test_y"])
    spec = DataSpec(
        kind="image",
        shape=[cfg.channels, cfg.image_size, cfg.image_size],
        num_classes=len(SHAPE_NAMES),
        class_names=list(SHAPE_NAMES),
    )
    return TensorData(spec, train, test)


@dataclass
class GaussiansConfig:
    name: str = "gaussians"
    modes: int = 8  # 8 = ring of radius 2 (std 0.02); 25 = 5x5 grid, spacing 2 (std 0.05)
    std: float = 0.0  # standard deviation of each mode; 0 = the papers' value for the layout
    train_size: int = 50000  # training points
    test_size: int = 5000  # test points
    seed: int = 1234  # the data are a pure function of this seed


class GaussianMixture(TensorData):
    """2-D points; knows its modes, so it can score generated points (mode coverage)."""

    def __init__(self, spec: DataSpec, train, test, centres: Tensor, std: float) -> None:
        super().__init__(spec, train, test)
        self.centres, self.std = centres, std

    def sample_metrics(self, samples: SampleResult) -> dict[str, float]:
        assert isinstance(samples, Points), "point data gets point samples"
        return mode_metrics(samples.points, self.centres, self.std)


def mode_metrics(samples: Tensor, centres: Tensor, std: float) -> dict[str, float]:
    """Mode metrics as defined by VEEGAN (Srivastava et al. 2017): a sample is high quality when
    it lies within 3 standard deviations of its nearest mode; a mode is covered when it is the
    nearest mode of at least one high-quality sample."""
    samples = samples.detach().float().cpu()
    d = torch.cdist(samples, centres.float())  # (N, modes)
    dist, nearest = d.min(dim=1)
    good = dist <= 3 * std
    counts = torch.bincount(nearest[good], minlength=centres.shape[0])
    covered = int((counts >= 1).sum())
    return {"modes_covered": float(covered), "high_quality": float(good.float().mean())}


def mixture_layout(modes: int) -> tuple[Tensor, float]:
    if modes == 25:
        g = torch.arange(-4.0, 5.0, 2.0)
        return torch.cartesian_prod(g, g), 0.05
    angles = torch.arange(modes) * (2 * math.pi / modes)
    return torch.stack([2 * angles.cos(), 2 * angles.sin()], dim=1), 0.02


@DATASETS.register("gaussians", config=GaussiansConfig)
def gaussians(cfg: GaussiansConfig) -> GaussianMixture:
    """2-D mixture of Gaussians: 8 on a ring or 25 on a grid, for GAN mode coverage (built in)."""
    check(cfg.modes >= 2, "dataset.modes", f"{cfg.modes} must be >= 2 (8 = ring, 25 = grid)")
    check(cfg.std >= 0, "dataset.std", "must be >= 0")
    centres, default_std = mixture_layout(cfg.modes)
    std = cfg.std or default_std
    g = torch.Generator().manual_seed(cfg.seed)

    def draw(n: int) -> tuple[Tensor, Tensor]:
        lab = torch.randint(0, centres.shape[0], (n,), generator=g)
        return centres[lab] + std * torch.randn(n, 2, generator=g), lab

    spec = DataSpec(
        kind="points",
        shape=[2],
        num_classes=centres.shape[0],
        # extent: fixed plot axes (± this), so scatter plots line up across steps
        extra={"centres": centres.tolist(), "std": std, "extent": float(centres.abs().max()) + 1.5},
    )
    return GaussianMixture(spec, draw(cfg.train_size), draw(cfg.test_size), centres, std)
