"""Accelerator check: every family on CUDA in fp32, bf16 autocast and with torch.compile;
the presets' figures; throughput and (transformer) model FLOPs utilisation.

    python bench/device_check.py OUT_DIR [--text PATH_TO_TINY_SHAKESPEARE]

Writes OUT_DIR/device_results.json and a few sample images / texts. Needs a CUDA GPU."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from aigc_cli.training import train

# Dense bf16 peak of the GPUs we report on (vendor datasheets), for model FLOPs utilisation.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


def mean_rate(run_dir: Path) -> float:
    """Mean samples/s over the logged intervals, skipping the first (warm-up, compilation)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    values = [e.value for e in acc.Scalars("perf/samples_per_s")]
    rest = values[1:] or values
    return sum(rest) / len(rest)


ONLY: set[str] = set()


def run(name: str, overrides: list[str], out: Path, results: dict, keep: str | None = None):
    if ONLY and name not in ONLY:
        return None
    with initialize_config_module(config_module="aigc_cli.configs", version_base="1.3"):
        cfg = compose(
            "train", overrides=["trainer.device=cuda", "trainer.progress=false", *overrides]
        )
    run_dir = Path(tempfile.mkdtemp(prefix=name + "_"))
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        metrics = train(cfg, run_dir=run_dir)
    except Exception as e:  # record and go on: one broken path must not hide the others
        results[name] = {"overrides": overrides, "error": f"{type(e).__name__}: {e}"}
        print(name, "FAILED", e, flush=True)
        return None
    wall = time.perf_counter() - t0
    rate = mean_rate(run_dir)
    entry = {
        "overrides": overrides,
        "wall_s": round(wall, 2),
        "steps": cfg.trainer.max_steps,
        "samples_per_s": round(rate, 1),
        "ms_per_step": round(1000 * cfg.trainer.batch_size / rate, 3),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
        "metrics": {k: round(v, 4) for k, v in metrics.items()},
    }
    results[name] = entry
    print(name, json.dumps(entry), flush=True)
    if keep:
        samples = sorted((run_dir / "samples").glob("step_*"))
        if samples:
            shutil.copy(samples[-1], out / f"{keep}{samples[-1].suffix}")
    (out / "device_results.json").write_text(json.dumps(results, indent=2))
    return run_dir


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--text", default="../shared/data/tinyshakespeare/input.txt")
    p.add_argument("--only", default="", help="comma-separated run names to do (default: all)")
    args = p.parse_args()
    ONLY.update(filter(None, args.only.split(",")))
    args.out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU: this check needs one")
    gpu = torch.cuda.get_device_name()
    results: dict = {
        "gpu": gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(results, flush=True)
    fast = ["trainer.eval_every=0", "trainer.sample_every=0", "trainer.ckpt_every=0"]
    gpt = ["experiment=gpt_shakespeare", f"dataset.path={args.text}"]

    run("vae_fp32", ["model=vae"], args.out, results, keep="vae_samples")
    run("vae_sigma02", ["model=vae", "model.sigma=0.2"], args.out, results, keep="vae_sigma02")
    run("vae_sigma03", ["model=vae", "model.sigma=0.3"], args.out, results, keep="vae_sigma03")
    run(
        "gan_cond_ns",
        ["model=gan", "model.conditional=true", "trainer.max_steps=2000"],
        args.out,
        results,
        keep="gan_cond_ns",
    )
    run(
        "vae_base16",
        ["model=vae", "model.base_channels=16"],
        args.out,
        results,
        keep="vae_base16_samples",
    )
    run(
        "vae_bf16_compile",
        ["model=vae", "trainer.precision=bf16", "trainer.compile=true", *fast],
        args.out,
        results,
    )
    run(
        "vae_fp16_scaler",
        ["model=vae", "trainer.precision=16", "trainer.max_steps=300", *fast],
        args.out,
        results,
    )
    run("gpt_shakespeare_fp32", gpt, args.out, results, keep="gpt_shakespeare_sample")
    run(
        "gpt_shakespeare_bf16_compile",
        [*gpt, "trainer.precision=bf16", "trainer.compile=true"],
        args.out,
        results,
    )
    run("gan_fp32", ["model=gan"], args.out, results, keep="gan_samples")
    run(
        "gan_3000",
        ["model=gan", "trainer.max_steps=3000"],
        args.out,
        results,
        keep="gan_3000_samples",
    )
    run(
        "gan_gaussians8",
        [
            "model=gan",
            "dataset=gaussians",
            "trainer.max_steps=3000",
            "trainer.batch_size=256",
            "optim.lr=1e-3",
            "model.latent_dim=16",
            *fast,
        ],
        args.out,
        results,
        keep="gan_gaussians8",
    )
    run(
        "gan_bf16_compile",
        ["model=gan", "trainer.precision=bf16", "trainer.compile=true", *fast],
        args.out,
        results,
    )
    run(
        "gan_wgan_gp",
        ["model=gan", "model.loss=wgan_gp", "model.n_critic=5", "trainer.max_steps=1500"],
        args.out,
        results,
        keep="gan_wgan_gp",
    )
    run(
        "gan_hinge_sn_conditional",
        [
            "model=gan",
            "model.loss=hinge",
            "model.spectral_norm=true",
            "model.conditional=true",
            "trainer.max_steps=3000",
        ],
        args.out,
        results,
        keep="gan_conditional",
    )
    # A GPU-sized GPT for throughput and MFU (tokens/s x 6N + attention FLOPs per token).
    big = [
        *gpt,
        "model.n_layer=6",
        "model.n_head=6",
        "model.n_embd=384",
        "dataset.block_size=256",
        "trainer.batch_size=64",
        "trainer.max_steps=300",
        "trainer.precision=bf16",
        "trainer.compile=true",
        "trainer.log_every=25",
        *fast,
    ]
    run_dir = run("gpt_6L384_bf16_compile", big, args.out, results)
    if run_dir is not None:
        entry = results["gpt_6L384_bf16_compile"]
        ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
        n_params = sum(
            v.numel()
            for k, v in ckpt["model_state"].items()
            if not k.endswith("wpe.weight") and not k.endswith("head.weight")
        )
        layers, dim, t = 6, 384, 256
        flops_per_token = 6 * n_params + 12 * layers * dim * t
        tokens = entry["samples_per_s"] * t
        peak = next((v for k, v in PEAK_BF16.items() if k in gpu), None)
        entry["tokens_per_s"] = round(tokens)
        entry["params"] = n_params
        if peak:
            entry["mfu"] = round(tokens * flops_per_token / peak, 4)
    (args.out / "device_results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
