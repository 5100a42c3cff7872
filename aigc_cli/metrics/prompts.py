"""Prompt following of a text-to-image model: random captions of the dataset's grammar (seen
colour-shape pairs, and separately scenes with a held-out pair), one sample each, read by the
attribute reader (models/reader.py) and judged part by part against the scene each caption
asks for. The reader only reads: it never guides, stops or picks the samples it judges."""

from __future__ import annotations

from typing import Any

import torch

from aigc_cli.data.captioned_shapes import draw_scenes, held_out_pairs
from aigc_cli.data.captions import COLOURS, PARTS, SHAPES, Scene, describe, verdicts

#: what the group adds to the results
KEYS = ("prompt_accuracy", *(f"{p}_accuracy" for p in PARTS), "prompt_accuracy_held_out",
        "colour_swap_rate")  # fmt: skip


def caption_set(captions: dict[str, Any], n: int, held_out: bool, seed: int) -> list[Scene]:
    """`n` scenes drawn as the dataset draws them: with no held-out pair (seen), or each with
    at least one held-out colour-shape pair in it."""
    g = torch.Generator().manual_seed(seed)
    banned = held_out_pairs(list(captions["held_out"]))
    if not held_out:
        return draw_scenes(n, int(captions["objects"]), banned, g)
    allowed = {(c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES))} - banned
    out: list[Scene] = []
    while len(out) < n:
        (scene,) = draw_scenes(1, int(captions["objects"]), allowed, g)  # held-out pairs only
        if scene.second is not None and torch.rand(1, generator=g) < 0.5:  # one unseen thing
            (other,) = draw_scenes(1, 1, banned, g)
            scene = Scene(scene.first, other.first, scene.layout)
        out.append(scene)
    return out


class PromptFollowing:
    def __init__(self, reader: Any, captions: dict[str, Any], num_samples: int,
                 batch_size: int) -> None:  # fmt: skip
        self.reader, self.captions = reader, captions
        self.num_samples, self.batch_size = num_samples, batch_size
        self.two = int(captions["objects"]) == 2

    @torch.no_grad()
    def __call__(self, model: Any, seed: int = 0, **sample_options: Any) -> dict[str, float]:
        out: dict[str, float] = {}
        seen = self.judge(model, caption_set(self.captions, self.num_samples, False, seed + 1),
                          seed, sample_options)  # fmt: skip
        for part, ok in seen.items():
            if part == "swapped":
                if self.two:
                    out["colour_swap_rate"] = ok
            elif part != "relation" or self.two:
                out["prompt_accuracy" if part == "all" else f"{part}_accuracy"] = ok
        if self.captions.get("held_out"):
            unseen = caption_set(self.captions, self.num_samples, True, seed + 2)
            out["prompt_accuracy_held_out"] = self.judge(model, unseen, seed, sample_options)["all"]
        return out

    def judge(self, model: Any, scenes: list[Scene], seed: int,
              options: dict[str, Any]) -> dict[str, float]:  # fmt: skip
        """The share of samples with each part right (and every part), one sample per scene."""
        g = torch.Generator().manual_seed(seed)
        phrasing = torch.randint(0, 6, (len(scenes),), generator=g).tolist()
        totals: dict[str, float] = {}
        for start in range(0, len(scenes), self.batch_size):
            part = scenes[start : start + self.batch_size]
            prompts = [describe(s, p) for s, p in zip(part, phrasing[start:], strict=False)]
            images = model.sample(len(prompts), generator=g, prompts=prompts, **options).images
            wanted = torch.tensor([s.row() for s in part], device=images.device)
            for key, ok in verdicts(self.reader.read(images.float()), wanted).items():
                totals[key] = totals.get(key, 0.0) + float(ok.float().sum())
        return {k: v / len(scenes) for k, v in totals.items()}

    def describe(self, reader_about: str, n: int) -> dict[str, str]:
        base = (f"share of {n} samples, one per random caption of the dataset's grammar (seen "
                f"colour-shape pairs), read by {reader_about}")  # fmt: skip
        notes = {"prompt_accuracy": f"{base}, with every part of the caption right"}
        for p in PARTS:
            if p != "relation" or self.two:
                notes[f"{p}_accuracy"] = f"{base}, with the {p} right"
        if self.two:
            notes["colour_swap_rate"] = (f"share of {n} samples with the caption's two colours "
                                         "each drawn on the other thing")  # fmt: skip
        notes["prompt_accuracy_held_out"] = (
            f"as prompt_accuracy, on {n} captions each naming a held-out colour-shape pair"
        )
        return notes
