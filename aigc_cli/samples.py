"""The samples a run logs as it trains: an image grid, a scatter plot of points, or text, drawn
from a fixed seed so the grids of successive steps are comparable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from aigc_cli.config import TrainerConfig
from aigc_cli.logger import RunLogger, save_grid, to_grid
from aigc_cli.plots import scatter_image


def log_samples(
    log: RunLogger, model: Any, data: Any, t: TrainerConfig, seed: int, step: int, run_dir: Path
) -> None:
    g = torch.Generator().manual_seed(seed)
    samples_dir = run_dir / "samples"
    name = samples_dir / f"step_{step:06d}"
    if data.spec.kind == "text":
        out = model.sample(2, generator=g, max_new_tokens=300)
        text = "\n\n---\n\n".join(out)
        log.text("samples", text, step)
        samples_dir.mkdir(parents=True, exist_ok=True)
        from aigc_cli.checkpoint import atomic_write_text

        atomic_write_text(name.with_suffix(".txt"), text + "\n")
        return
    out = model.sample(t.num_samples, generator=g)
    if data.spec.kind == "points":
        real = data.test[0][: t.num_samples * 4]
        img = scatter_image(real, out, data.spec.extra.get("extent", 0.0))
        log.image("samples", img, step)
        save_grid(img.unsqueeze(0), name.with_suffix(".png"), nrow=1)
        return
    if hasattr(model, "last_nfe"):
        log.scalars({"samples/nfe": model.last_nfe}, step)
    nrow = getattr(model, "grid_nrow", 0) or 8
    log.image("samples", save_grid(out, name.with_suffix(".png"), nrow=nrow), step)
    first_test = next(data.eval_iter(t.batch_size, 1))
    batch = tuple(x.to(model.device) for x in first_test)
    for tag, images in model.log_images(batch).items():
        log.image(tag, to_grid(images), step)
