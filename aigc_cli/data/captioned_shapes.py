"""`dataset=captioned_shapes` (built in): scenes of one or two shapes on black, each with a
size, a colour and a place, captioned from a small grammar (data/captions.py) in a few
phrasings. Some colour-shape pairs never appear in either split, to test composition. A batch
is (images, the first thing's shape, caption ids (N, L), the scene's attributes (N, 8))."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from aigc_cli.config import check
from aigc_cli.data.base import DataSpec, TensorData
from aigc_cli.data.cache import cached
from aigc_cli.data.captions import (
    COLOURS,
    SHAPES,
    SIZES,
    Scene,
    Thing,
    caption_spec,
    describe,
    encode_captions,
    parse,
)
from aigc_cli.data.synthetic import shape_cover
from aigc_cli.registry import DATASETS

VERSION = 2  # bump when the scenes or captions are drawn differently
CAPTION_LENGTH = 72  # ids per caption: the start id, up to 71 characters, padding
RGB = torch.tensor([[1.0, 0.15, 0.15], [0.15, 0.9, 0.2], [0.25, 0.4, 1.0], [1.0, 0.9, 0.15],
                    [0.95, 0.2, 0.95], [0.15, 0.9, 0.95]])  # fmt: skip
HELD_OUT = ("yellow circle", "cyan square", "magenta triangle")  # "colour shape" pairs
HALF = {0: (0.12, 0.15), 1: (0.19, 0.23)}  # half-size range, as a fraction of the image, by size


@dataclass
class CaptionedShapesConfig:
    name: str = "captioned_shapes"
    objects: int = 1  # things per scene: 1, or 2 with a relation (above, left of...)
    image_size: int = 32  # height and width in pixels
    train_size: int = 20000  # training images
    test_size: int = 2000  # test images
    held_out: list[str] = field(default_factory=lambda: list(HELD_OUT))  # pairs in no scene
    seed: int = 1234  # the data are a pure function of this seed


def held_out_pairs(names: list[str]) -> set[tuple[int, int]]:
    """(colour, shape) index pairs of "colour shape" names; a bad name is one line."""
    pairs = set()
    for name in names:
        words = name.split()
        check(len(words) == 2 and words[0] in COLOURS and words[1] in SHAPES,
              "dataset.held_out", f"'{name}' is not '<colour> <shape>' (colours: "
              f"{', '.join(COLOURS)}; shapes: {', '.join(SHAPES)})")  # fmt: skip
        pairs.add((COLOURS.index(words[0]), SHAPES.index(words[1])))
    return pairs


def draw_scenes(n: int, objects: int, banned: set[tuple[int, int]],
                g: torch.Generator) -> list[Scene]:  # fmt: skip
    """`n` random scenes whose things avoid the banned colour-shape pairs."""

    def thing() -> Thing:
        while True:
            size, colour, shape = (int(torch.randint(0, k, (1,), generator=g))
                                   for k in (len(SIZES), len(COLOURS), len(SHAPES)))  # fmt: skip
            if (colour, shape) not in banned:
                return Thing(size, colour, shape)

    if objects == 1:
        return [Scene(thing()) for _ in range(n)]
    return [Scene(thing(), thing(), int(torch.randint(0, 2, (1,), generator=g)))
            for _ in range(n)]  # fmt: skip


def render_scenes(scenes: list[Scene], size: int, g: torch.Generator) -> Tensor:
    """(N, 3, S, S) uint8: each thing's coverage times its colour (slightly varied), the
    brighter where two overlap; two things are kept apart along their layout's axis."""
    s = size
    coords = torch.arange(s, dtype=torch.float32) + 0.5
    out = torch.zeros(len(scenes), 3, s, s)
    for i, scene in enumerate(scenes):
        things = [scene.first] + ([scene.second] if scene.second else [])
        halves = [s * (lo + (hi - lo) * float(torch.rand(1, generator=g)))
                  for lo, hi in (HALF[t.size] for t in things)]  # fmt: skip
        centres = _places(halves, scene.layout, s, g)
        for t, h, (cx, cy) in zip(things, halves, centres, strict=True):
            cover = shape_cover(t.shape, coords.view(1, s) - cx, coords.view(s, 1) - cy,
                                torch.tensor(h))  # fmt: skip
            colour = (RGB[t.colour] + 0.08 * (torch.rand(3, generator=g) - 0.5)).clamp(0, 1)
            out[i] = torch.maximum(out[i], cover.unsqueeze(0) * colour.view(3, 1, 1))
    return out.mul_(255).round_().to(torch.uint8)


def _places(
    halves: list[float], layout: int, s: int, g: torch.Generator
) -> list[tuple[float, float]]:
    """Centres: one thing anywhere inside; two in order along the layout's axis (a gap of at
    least 2 pixels between them) and near each other across it."""
    rand = lambda: float(torch.rand(1, generator=g))  # noqa: E731
    if len(halves) == 1:
        h = halves[0]
        return [(h + rand() * (s - 2 * h), h + rand() * (s - 2 * h))]
    h1, h2 = halves
    free = max(0.0, s - 2 * h1 - 2 * h2 - 2)
    cut = sorted([rand() * free, rand() * free])
    along1 = cut[0] + h1
    along2 = along1 + h1 + 2 + (cut[1] - cut[0]) + h2
    across1 = max(h1, h2) + rand() * (s - 2 * max(h1, h2))
    across2 = min(max(across1 + (rand() - 0.5) * 0.3 * s, h2), s - h2)
    if layout == 0:  # vertical: the first is above
        return [(across1, along1), (across2, along2)]
    return [(along1, across1), (along2, across2)]


def example_prompts(objects: int, held_out: list[str]) -> list[str]:
    """The prompts of the training loop's sample grids (and of `aigc sample` without a
    prompt): six seen scenes, then two with held-out pairs where there are some."""
    seen = [Thing(0, 0, 0), Thing(1, 2, 1), Thing(0, 1, 2), Thing(1, 3, 1), Thing(0, 5, 2),
            Thing(1, 4, 0)]  # fmt: skip
    banned = held_out_pairs(held_out)
    unseen = [Thing(i % 2, c, sh) for i, (c, sh) in enumerate(sorted(banned))][:2]
    things = [t for t in seen if (t.colour, t.shape) not in banned] + unseen
    if objects == 1:
        return [describe(Scene(t), 0) for t in things]
    partners = things[1:] + things[:1]
    return [describe(Scene(a, b, i % 2), 0)
            for i, (a, b) in enumerate(zip(things, partners, strict=True))]  # fmt: skip


@DATASETS.register("captioned_shapes", config=CaptionedShapesConfig)
def captioned_shapes(cfg: CaptionedShapesConfig) -> TensorData:
    """Captioned scenes of one or two shapes (built in): text-to-image on a CPU."""
    check(cfg.objects in (1, 2), "dataset.objects", f"{cfg.objects} must be 1 or 2")
    check(16 <= cfg.image_size <= 128, "dataset.image_size", f"{cfg.image_size} not in [16, 128]")
    check(cfg.train_size >= 1 and cfg.test_size >= 1, "dataset.train_size", "sizes must be >= 1")
    banned = held_out_pairs(list(cfg.held_out))

    def make() -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(cfg.seed)
        out = {}
        for split, n in (("train", cfg.train_size), ("test", cfg.test_size)):
            scenes = draw_scenes(n, cfg.objects, banned, g)
            phrasing = torch.randint(0, 6, (n,), generator=g).tolist()
            captions = [describe(sc, p) for sc, p in zip(scenes, phrasing, strict=True)]
            assert all(parse(c) == sc for c, sc in zip(captions, scenes, strict=True))
            out[f"{split}_x"] = render_scenes(scenes, cfg.image_size, g)
            out[f"{split}_tokens"] = encode_captions(captions, CAPTION_LENGTH)
            out[f"{split}_attrs"] = torch.tensor([sc.row() for sc in scenes], dtype=torch.long)
        return out

    t = cached("captioned_shapes", asdict(cfg), VERSION, make)
    splits = [(t[f"{k}_x"], t[f"{k}_attrs"][:, 2], t[f"{k}_tokens"], t[f"{k}_attrs"])
              for k in ("train", "test")]  # fmt: skip
    captions = {**caption_spec(CAPTION_LENGTH), "objects": cfg.objects,
                "held_out": list(cfg.held_out),
                "examples": example_prompts(cfg.objects, list(cfg.held_out))}  # fmt: skip
    spec = DataSpec(kind="image", shape=[3, cfg.image_size, cfg.image_size],
                    num_classes=len(SHAPES), class_names=list(SHAPES),
                    extra={"captions": captions})  # fmt: skip
    return TensorData(spec, splits[0], splits[1])
