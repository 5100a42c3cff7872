"""Prompt following of trained text-to-image runs, for the figures in docs/text_to_image.md: a
guidance sweep of one run, or several runs side by side at one scale (cross-attention against
pooled-only conditioning), each judged by the attribute reader.

    python bench/t2i_figures.py RUN [RUN ...] --reader READER [--scales 0,1,2,3,4,5,7]
        [--samples 1000] [--out bench/results/t2i_<name>.json] [--plot docs/t2i-guidance.png]
        [--label NAME]

Every cell draws the same `--samples` random captions of the run's grammar (seen colour-shape
pairs; the same seed for every cell), one sample each (DDIM, the run's steps), and reports the
share with each part right, every part right, and for two things the share with the two
colours each on the other thing. The chance floor is the same reader's verdicts on those
samples against a derangement of the captions (no sample keeps its own). The reader only
reads: it never guides, stops or picks samples.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aigc_cli.data.captions import describe, verdicts  # noqa: E402
from aigc_cli.metrics.prompts import caption_set  # noqa: E402
from aigc_cli.store.runs import load_reader, load_run, resolve_checkpoint  # noqa: E402

BATCH = 250


def judge(model: Any, reader: Any, n: int, scale: float, seed: int = 0) -> dict[str, float]:
    """Shares of `n` samples at guidance `scale` with each part right; `*_floor`: the same
    against the captions deranged (each sample judged against another's caption)."""
    captions = model.captions
    scenes = caption_set(captions, n, False, seed + 1)
    g = torch.Generator().manual_seed(seed)
    phrasing = torch.randint(0, 6, (n,), generator=g).tolist()
    reads, wanted = [], []
    for start in range(0, n, BATCH):
        part = scenes[start : start + BATCH]
        prompts = [describe(s, p) for s, p in zip(part, phrasing[start:], strict=False)]
        images = model.sample(len(prompts), generator=g, prompts=prompts, guidance=scale).images
        reads.append(reader.read(images.float()))
        wanted.append(torch.tensor([s.row() for s in part]))
    read, want = torch.cat(reads), torch.cat(wanted)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7))
    deranged = torch.empty_like(want)
    deranged[order] = want[order.roll(-1)]  # each takes the next one's caption in a random cycle
    out = {k: float(v.float().mean()) for k, v in verdicts(read, want).items()}
    out |= {f"{k}_floor": float(v.float().mean()) for k, v in verdicts(read, deranged).items()}
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = results["cells"]
    scales = [c["guidance"] for c in cells]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    for key, label in (("all", "every part right"), ("shape", "shape"), ("colour", "colour"),
                       ("size", "size")):  # fmt: skip
        ax.plot(scales, [c[key] for c in cells], marker="o", label=label)
    ax.plot(scales, [c["all_floor"] for c in cells], ls="--", c="grey", label="chance (deranged)")
    ax.set_xlabel("classifier-free guidance scale")
    ax.set_ylabel(f"share of {results['samples']} samples")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"{results['label']}: prompt following against guidance", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--reader", required=True)
    p.add_argument("--scales", default="3", help="comma-separated guidance scales")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--out", type=Path)
    p.add_argument("--plot", type=Path)
    p.add_argument("--label", default="", help="the plot's name for the run (default: its dir)")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    scales = [float(s) for s in args.scales.split(",")]
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "samples": args.samples, "runs": [], "cells": [],
        "label": args.label or args.runs[0].name,
    }  # fmt: skip
    reader = None
    for run in args.runs:
        path = resolve_checkpoint(str(run))
        model, ckpt = load_run(path, "cpu")
        if reader is None:
            reader, about = load_reader(args.reader, "captioned_shapes", model.spec, "cpu")
            results["reader"] = about
        cross = ckpt["model"].get("cross_attention", True)
        results["runs"].append({"name": run.name, "checkpoint": str(path), "step": ckpt["step"],
                                "cross_attention": cross})  # fmt: skip
        for scale in scales:
            began = time.perf_counter()
            cell = {"run": run.name, "guidance": scale, **judge(model, reader, args.samples, scale)}
            cell["seconds"] = round(time.perf_counter() - began, 1)
            results["cells"].append(cell)
            print(json.dumps(cell), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    if args.plot:
        plot(results, args.plot)
    return results


if __name__ == "__main__":
    main()
