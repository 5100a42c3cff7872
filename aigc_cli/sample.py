"""`aigc sample`: rebuild a trained model from its checkpoint and write samples to its run dir."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aigc_cli.build import load_run, resolve_checkpoint, resolve_device, run_dir_of
from aigc_cli.config import check, command_options, validate
from aigc_cli.errors import ConfigError
from aigc_cli.logger import console, save_grid
from aigc_cli.plots import scatter_image


@dataclass
class SampleConfig:
    run: str | None = None  # run dir or checkpoint file; null = the newest run under outputs/
    checkpoint: str = "last"  # which checkpoint of the run: last | best
    n: int = 0  # images (or texts) to generate; 0 = 64 images or 1 text
    seed: int = 0  # sampling seed; the same seed gives the same samples
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    ema: bool = True  # use the EMA weights when the run kept them
    nrow: int = 0  # images per grid row; 0 = the model's choice (square, or one row per class)
    out: str | None = None  # output file; null = <run>/samples/<time>.png (or .txt)
    mode: str = "sample"  # sample | interpolate (latent interpolation grid)
    prompt: str = ""  # text models: the text to continue
    max_new_tokens: int = 500  # text models: tokens to generate after the prompt
    temperature: float = 1.0  # text models: softmax temperature (lower = more conservative)
    top_k: int = 0  # text models: keep the k most likely tokens; 0 = all
    top_p: float = 1.0  # text models: keep the smallest set with this total probability
    sampler: str | None = None  # diffusion: ddim | ddpm; flow: euler | heun; null = the model's
    steps: int | None = None  # sampler steps; null = the model's
    guidance: float | None = None  # classifier-free guidance scale (conditional models)
    eta: float | None = None  # DDIM noise; null = the model's


def sample(node: Any) -> Path:
    """Write samples of a trained run; returns the file written."""
    cfg = validate("sample", SampleConfig, command_options(node))
    check(cfg.n >= 0, "n", f"{cfg.n} must be >= 1 (or 0 for the default)")
    check(cfg.temperature > 0, "temperature", "must be > 0")
    check(0 < cfg.top_p <= 1, "top_p", "must be in (0, 1]")
    check(cfg.mode in ("sample", "interpolate"), "mode", "choose from: sample, interpolate")
    ckpt_path = resolve_checkpoint(cfg.run, cfg.checkpoint)
    model, _ = load_run(ckpt_path, resolve_device(cfg.device), use_ema=cfg.ema)
    run_dir = run_dir_of(ckpt_path)
    if not model.generates:
        raise ConfigError(
            f"{run_dir} is a run of model '{model.cfg.name}', which generates no samples",
            hint="pass run=<dir> of a generative run (vae, gan, transformer)",
        )
    if cfg.mode == "interpolate" and not hasattr(model, "interpolate"):
        raise ConfigError(
            f"bad value for 'mode': model '{model.cfg.name}' has no latent space to interpolate",
            hint="use mode=sample",
        )
    g = torch.Generator().manual_seed(cfg.seed)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kind = model.spec.kind
    n = cfg.n or (1 if kind == "text" else 64)
    suffix = ".txt" if kind == "text" else ".png"
    out = Path(cfg.out) if cfg.out else run_dir / "samples" / f"{stamp}{suffix}"
    out.parent.mkdir(parents=True, exist_ok=True)

    if kind == "text":

        def stream(piece: str) -> None:
            sys.stdout.write(piece)
            sys.stdout.flush()

        texts = model.sample(
            n,
            generator=g,
            prompt=cfg.prompt,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            stream=stream,
        )
        sys.stdout.write("\n")
        out.write_text("\n\n---\n\n".join(texts) + "\n")
    elif cfg.mode == "interpolate":
        images, nrow = model.interpolate(n, generator=g)
        save_grid(images, out, nrow=nrow)
    elif kind == "points":
        points = model.sample(n, generator=g, **sampler_options(cfg, model))
        img = scatter_image(points[:0], points, model.spec.extra.get("extent", 0.0))
        save_grid(img.unsqueeze(0), out, nrow=1)
    else:
        images = model.sample(n, generator=g, **sampler_options(cfg, model))
        nrow = cfg.nrow or getattr(model, "grid_nrow", 0) or math.ceil(math.sqrt(n))
        save_grid(images, out, nrow=nrow)
    if hasattr(model, "last_nfe"):
        about = model.describe_sampler(cfg.sampler, cfg.steps)
        console.print(f"sampler {about}: {model.last_nfe} network evaluations (NFE)")
    console.print(f"[green]samples written to[/] {out}", soft_wrap=True)
    return out


def sampler_options(cfg: Any, model: Any) -> dict[str, Any]:
    """sampler=, steps=, guidance=, eta= for the families that have samplers; elsewhere
    they are refused in one line rather than ignored."""
    given = {k: getattr(cfg, k) for k in ("sampler", "steps", "guidance", "eta")}
    given = {k: v for k, v in given.items() if v is not None}
    if given and not hasattr(model, "samplers"):
        raise ConfigError(
            f"{', '.join(given)}: model '{model.cfg.name}' has no sampler options",
            hint="they apply to diffusion and flow runs",
        )
    if "eta" in given and model.cfg.name != "diffusion":
        raise ConfigError("eta is DDIM's noise; it applies to diffusion runs only")
    return given
