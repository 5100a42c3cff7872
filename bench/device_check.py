"""Accelerator check, one script for a short loan of a GPU: every registered family in fp32,
bf16 autocast, bf16 + torch.compile and channels_last, then make bench's mid-size cases
(bench/bench.py's MID_CASES) in fp32 and bf16, each timed through aigc's own loop with its
model FLOPs utilisation against the matmul rate measured on the same device in the same run,
and what trainer.precision=auto picks for it. `--presets` then trains the default presets to
their figures.

    python bench/device_check.py OUT_DIR [--only NAME,...] [--presets] [--steps N]
    python bench/device_check.py OUT_DIR --smoke     # on the CPU, a few steps: the plumbing

Writes OUT_DIR/device_results.json and device_results.md after every case, so a loan that ends
early still leaves what it measured. Needs a CUDA GPU unless --smoke."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aigc_cli.training.loop import train
from bench import MID_CASES, auto_pick, compose_cfg, matmul_peaks, step_flops

# The variants of the family matrix; compile falls back to a quick backend in --smoke.
VARIANTS = {
    "fp32": ["trainer.precision=32", "trainer.channels_last=false"],
    "bf16": ["trainer.precision=bf16", "trainer.channels_last=false"],
    "bf16_compile": ["trainer.precision=bf16", "trainer.compile=true"],
    "channels_last": ["trainer.precision=32", "trainer.channels_last=true"],
}


# Families that cannot train on the default images: their built-in data, then its tiny size.
OWN_DATA = {
    "frames": (
        ["dataset=tunes", "dataset.representation=frames"],
        ["trainer.batch_size=8", "dataset.pieces=40", "dataset.window=16"],
    ),
    "reader": (
        ["dataset=captioned_shapes"],
        ["trainer.batch_size=8", "dataset.train_size=64", "dataset.test_size=16"],
    ),
}


def families() -> list[str]:
    """Every registered model family, each on its default dataset or its OWN_DATA (latent
    diffusion is the diffusion family on a trained VAE's latents, left to the presets)."""
    from aigc_cli.registry import MODELS

    return MODELS.names()


PRESETS = {
    "default_run": [],
    "flow_shapes": ["model=flow"],
    "gan_shapes": ["experiment=gan_shapes"],
    "diffusion_gaussians": ["experiment=diffusion_gaussians"],
    "flow_gaussians": ["experiment=flow_gaussians"],
}
QUIET = ["trainer.progress=false", "trainer.eval_every=0", "trainer.sample_every=0",
         "trainer.ckpt_every=0"]  # fmt: skip


def logged_rate(run_dir: Path) -> float:
    """Mean samples/s over the logged intervals after the first (warm-up, compilation)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    values = [e.value for e in acc.Scalars("perf/samples_per_s")]
    rest = values[1:] or values
    return sum(rest) / len(rest)


def run_case(name: str, overrides: list[str], ctx: dict) -> dict:
    """One training run through aigc's loop; its throughput, memory, MFU and final metrics."""
    device = ctx["device"]
    cfg = compose_cfg([f"trainer.device={device.type}", *overrides])
    run_dir = Path(tempfile.mkdtemp(prefix=f"{name}_"))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    metrics = train(cfg, run_dir=run_dir)
    wall = time.perf_counter() - t0
    rate = logged_rate(run_dir)
    ms = 1000 * int(cfg.trainer.batch_size) * int(cfg.trainer.accumulate) / rate
    precision = str(cfg.trainer.precision)
    peak = ctx["rates"]["bf16" if precision == "bf16" else "32"]
    entry = {
        "overrides": overrides,
        "precision": precision,
        "wall_s": round(wall, 2),
        "samples_per_s": round(rate, 1),
        "ms_per_step": round(ms, 3),
        "metrics": {k: round(float(v), 4) for k, v in metrics.items()},
    }
    if device.type == "cuda":
        entry["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    flops = step_flops(cfg)
    entry["step_gflop"] = round(flops / 1e9, 3)
    entry["mfu"] = round(flops / (ms / 1000) / peak, 4)
    return entry


def write(out: Path, results: dict) -> None:
    (out / "device_results.json").write_text(json.dumps(results, indent=2) + "\n")
    rates = results.get("matmul_flops", {})
    lines = [
        f"# device check: {results['device']}, {results['date']}",
        "",
        f"torch {results['torch']}, CUDA {results['cuda']}. Matmul ({results['matmul_n']}²): "
        + ", ".join(f"{k}: {v / 1e12:.1f} TFLOP/s" for k, v in rates.items())
        + ". MFU is each case's FlopCounterMode count of a training step per second over "
        "the rate of its precision.",
        "",
        "| case | precision | samples/s | ms/step | MFU | peak GiB | auto picks |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, e in results["cases"].items():
        if "error" in e:
            lines.append(f"| {name} | | | | | | failed: {e['error'][:80]} |")
            continue
        mfu = f"{100 * e['mfu']:.1f}%" if "mfu" in e else ""
        cells = [name, e["precision"], e["samples_per_s"], e["ms_per_step"], mfu,
                 e.get("peak_mem_gib", ""), e.get("auto_pick", "")]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    for name, e in results.get("presets", {}).items():
        figures = ", ".join(f"{k} {v}" for k, v in e.get("metrics", {}).items())
        lines.append(f"\n- preset {name}: {e.get('wall_s')} s; {figures or e.get('error')}")
    (out / "device_results.md").write_text("\n".join(lines) + "\n")


def cases(smoke: bool, steps: int) -> dict[str, list[str]]:
    """Name → overrides: the family × variant matrix, then the mid-size cases."""
    length = [f"trainer.max_steps={steps}", f"trainer.log_every={max(1, steps // 5)}"]
    tiny = ["trainer.batch_size=8", "dataset.train_size=64", "dataset.test_size=16"]
    out = {}
    for family in families():
        for variant, extra in VARIANTS.items():
            data, small = OWN_DATA.get(family, ([], tiny))
            size = (["trainer.batch_size=4"] if family == "transformer" else small) if smoke else []
            backend = ["trainer.compile_backend=eager"] if smoke and "compile" in variant else []
            out[f"{family}_{variant}"] = [f"model={family}", *data, *extra, *backend, *size,
                                          *length, *QUIET]  # fmt: skip
    for base, overrides in MID_CASES.items():
        for precision in ("32", "bf16"):
            size = ["trainer.batch_size=2"] if smoke else []
            if smoke:  # the text split has no test_size; its windows shrink instead
                size += ["dataset.block_size=32"] if "gpt" in base else ["dataset.test_size=16"]
            out[f"{base}_{precision}"] = [*overrides, f"trainer.precision={precision}", *size,
                                          *length, *QUIET]  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--only", default="", help="comma-separated case names (default: all)")
    p.add_argument("--steps", type=int, default=0, help="steps per case (default 200; smoke 3)")
    p.add_argument("--presets", action="store_true", help="also train the presets to figures")
    p.add_argument("--smoke", action="store_true", help="CPU, a few steps, quick compile")
    args = p.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("no CUDA GPU: this check needs one (--smoke runs its plumbing on the CPU)")
    device = torch.device("cpu" if args.smoke else "cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    n = 256 if args.smoke else 8192
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": time.strftime("%Y-%m-%d"),
        "matmul_n": n,
        "matmul_flops": matmul_peaks(n, device=device.type),
        "cases": {},
    }
    ctx = {"device": device, "rates": results["matmul_flops"]}
    only = set(filter(None, args.only.split(",")))
    todo = cases(args.smoke, args.steps or (3 if args.smoke else 200))
    for name, overrides in todo.items():
        if only and name not in only:
            continue
        try:  # one broken path must not hide the others
            entry = run_case(name, overrides, ctx)
            if name.endswith(("_fp32", "_32")):
                auto = [o for o in overrides if "precision" not in o]
                entry["auto_pick"] = auto_pick(compose_cfg(auto), device)
        except Exception as e:
            entry = {"overrides": overrides, "error": f"{type(e).__name__}: {e}"}
        results["cases"][name] = entry
        print(name, json.dumps(entry), flush=True)
        write(args.out, results)
    if args.presets:
        results["presets"] = {}
        for name, overrides in PRESETS.items():
            try:
                full = [f"trainer.device={device.type}", "trainer.progress=false", *overrides]
                t0 = time.perf_counter()
                metrics = train(compose_cfg(full), run_dir=tempfile.mkdtemp(prefix=name))
                entry = {
                    "overrides": overrides,
                    "wall_s": round(time.perf_counter() - t0, 1),
                    "metrics": {k: round(float(v), 4) for k, v in metrics.items()},
                }
            except Exception as e:
                entry = {"overrides": overrides, "error": f"{type(e).__name__}: {e}"}
            results["presets"][name] = entry
            write(args.out, results)
    return results


if __name__ == "__main__":
    main()
