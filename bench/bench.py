"""`make bench`: the tool's training loop against a bare PyTorch loop of the same model, data,
batch size, optimizer and thread count, measured side by side in one process, alternating.

    python bench/bench.py [--quick] [--data ../shared/data] [--out bench/results]

For every case it reports samples/s of both loops and their ratio (target >= 0.97), peak
memory, and, once: the time from `aigc train` start to its first step, the wall time of
`aigc --help` and `aigc list`, and the pytorch/examples MLP-VAE reference loop (a DataLoader
with a per-sample ToTensor) against the same model through aigc on MNIST. Results go to
bench/results/bench_<host>_<date>.json and .md. `--quick` runs a few steps of each built-in
case (CI uses it to check the script still runs) and writes nothing.

Timing on a shared machine is noisy: only ratios measured in the same run mean anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from aigc_cli import train as train_module
from aigc_cli.build import build_data, build_model
from aigc_cli.config import validate_optim

REPO = Path(__file__).resolve().parents[1]


def compose_cfg(overrides: list[str]) -> DictConfig:
    with initialize_config_module(config_module="aigc_cli.configs", version_base="1.3"):
        return compose("train", overrides=["trainer.device=cpu", *overrides])


def cpu_name() -> str:
    """The CPU model, so a results file says what it was measured on."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StepClock:
    """Wraps a batch iterator and notes when each batch is taken: the span between the
    warm-up-th and the last batch times exactly those steps, loop overhead included."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.times = inner, []

    def __next__(self) -> Any:
        self.times.append(time.perf_counter())
        return next(self.inner)

    def __iter__(self) -> StepClock:
        return self

    def __getattr__(self, name: str) -> Any:  # state_dict / load_state_dict
        return getattr(self.inner, name)

    def rate(self, warmup: int, batch_size: int) -> float:
        t = self.times[warmup:]
        return (len(t) - 1) * batch_size / (t[-1] - t[0])


def timed_data(clocks: list[StepClock]) -> Callable[[], Any]:
    """Make the loop's dataset hand out clocked batch iterators; returns the undo."""
    real = train_module.build_data

    def build(cfg: Any) -> Any:
        data = real(cfg)
        inner = data.train_iter

        def train_iter(batch_size: int, seed: int) -> StepClock:
            clocks.append(StepClock(inner(batch_size, seed)))
            return clocks[-1]

        data.train_iter = train_iter
        return data

    train_module.build_data = build

    def undo() -> None:
        train_module.build_data = real

    return undo


def tool_rate(cfg: DictConfig, steps: int, warmup: int) -> float:
    """Samples/s of `aigc`'s own loop over steps warmup..steps, at the default log cadence and
    with the progress bar. Checkpoints count at their default cadence: the run's final
    checkpoint (written after the timed window) is timed, and its cost divided by the default
    `trainer.ckpt_every` is added to every step. Writing one inside a window of a few dozen
    steps would charge it ten times over."""
    clocks: list[StepClock] = []
    saves: list[float] = []
    run_dir = Path(tempfile.mkdtemp(prefix="bench_tool_"))
    undo = timed_data(clocks)
    real_save = train_module.save_rotating

    def timed_save(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = real_save(*args, **kwargs)
        saves.append(time.perf_counter() - t0)
        return out

    train_module.save_rotating = timed_save
    ckpt_every = int(cfg.trainer.ckpt_every)
    try:
        cfg.trainer.max_steps = steps + 1  # +1: the last timed batch must finish its step
        cfg.trainer.eval_every = 0
        cfg.trainer.sample_every = 0
        cfg.trainer.ckpt_every = 0  # only the final one, outside the window
        train_module.train(cfg, run_dir=run_dir)
    finally:
        undo()
        train_module.save_rotating = real_save
        shutil.rmtree(run_dir, ignore_errors=True)
    batch = int(cfg.trainer.batch_size)
    seconds_per_step = batch / clocks[0].rate(warmup, batch)
    if ckpt_every > 0 and saves:
        seconds_per_step += statistics.median(saves) / ckpt_every
    return batch / seconds_per_step


def bare_rate(cfg: DictConfig, steps: int, warmup: int) -> float:
    """The same model, data iterator and optimizers in the plainest loop PyTorch allows; it
    clips gradients too when the config asks for it (part of the recipe, not overhead)."""
    torch.manual_seed(int(cfg.seed))
    clip = float(cfg.trainer.grad_clip)
    data = build_data(cfg.dataset)
    model = build_model(cfg.model, data.spec)
    opts = model.optimizers(validate_optim(cfg.optim))
    batches = StepClock(data.train_iter(int(cfg.trainer.batch_size), int(cfg.seed)))
    model.train()
    for step in range(steps + 1):
        batch = next(batches)
        for stage in model.training_step(batch, step):
            opt = opts[stage.opt_name]
            opt.zero_grad(set_to_none=True)
            stage.loss.backward()
            if clip > 0:
                params = [p for group in opt.param_groups for p in group["params"]]
                torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
            opt.step()
    return batches.rate(warmup, int(cfg.trainer.batch_size))


def compare(name: str, overrides: list[str], steps: int, warmup: int, rounds: int) -> dict:
    """Alternate tool and bare loop (swapping who goes first each round). Each side's rate is
    its fastest round: on a shared machine other tenants only ever slow a run down, so the
    fastest run is the closest to the undisturbed speed (timeit's reasoning); medians are kept
    beside it."""
    tool, bare = [], []
    for r in range(rounds):
        order: list[tuple[list[float], Callable]] = [(tool, tool_rate), (bare, bare_rate)]
        for results, fn in order if r % 2 == 0 else order[::-1]:
            results.append(fn(compose_cfg(overrides), steps, warmup))
    batch_size = int(compose_cfg(overrides).trainer.batch_size)
    entry = {
        "overrides": overrides,
        "batch_size": batch_size,
        "steps_timed": steps - warmup,
        "rounds": rounds,
        "tool_samples_per_s": max(tool),
        "bare_samples_per_s": max(bare),
        "tool_median_samples_per_s": statistics.median(tool),
        "bare_median_samples_per_s": statistics.median(bare),
        "tool_runs": tool,
        "bare_runs": bare,
    }
    entry["ratio"] = entry["tool_samples_per_s"] / entry["bare_samples_per_s"]
    # ms per optimizer step: how nanoGPT and most training logs report speed
    entry["tool_ms_per_step"] = 1000 * batch_size / entry["tool_samples_per_s"]
    entry["bare_ms_per_step"] = 1000 * batch_size / entry["bare_samples_per_s"]
    entry["peak_rss_mb"] = peak_rss_mb()
    print(
        f"{name:24s} tool {entry['tool_samples_per_s']:9.1f}/s  bare "
        f"{entry['bare_samples_per_s']:9.1f}/s  ratio {entry['ratio']:.3f}",
        flush=True,
    )
    return entry


def cli_seconds(*args: str, repeats: int = 3) -> float:
    """Median wall time of `aigc <args>` in a fresh interpreter."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "aigc_cli", *args], capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def seconds_to_first_step() -> float:
    """From launching the default `aigc train` to its first logged step (the event's time)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = Path(tempfile.mkdtemp(prefix="bench_first_"))
    try:
        t0 = time.time()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "aigc_cli",
                "train",
                "trainer.max_steps=2",
                "trainer.log_every=1",
                "trainer.progress=false",
                f"hydra.run.dir={run_dir}",
            ],
            capture_output=True,
            check=True,
        )
        acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
        acc.Reload()
        first = min(e.wall_time for e in acc.Scalars("model/loss"))
        return first - t0
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


BARE_FIRST_STEP = """
import time, torch
m = torch.nn.Linear(2, 2)
opt = torch.optim.Adam(m.parameters())
m(torch.randn(4, 2)).sum().backward()
opt.step()
print(time.time())
"""


def seconds_to_bare_first_step() -> float:
    """The floor under `aigc train`'s start-up: a fresh interpreter that imports torch and takes
    one Adam step on a 2x2 layer (the first optimizer also imports torch._dynamo)."""
    t0 = time.time()
    out = subprocess.run(
        [sys.executable, "-c", BARE_FIRST_STEP], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip()) - t0


def reference_mlp_vae(data_root: Path, epochs: int) -> dict:
    """pytorch/examples' vae/main.py on CPU (batch 128, Adam 1e-3, ToTensor per sample through a
    DataLoader, 784-400-20 MLP, BCE + KL) against the same model through aigc; images/s over
    whole epochs and the test loss after them (nats per image)."""
    import torch.nn.functional as F
    from torch import nn
    from torchvision import datasets, transforms

    class RefVAE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc21 = nn.Linear(784, 400), nn.Linear(400, 20)
            self.fc22, self.fc3 = nn.Linear(400, 20), nn.Linear(20, 400)
            self.fc4 = nn.Linear(400, 784)

        def forward(self, x):
            h = F.relu(self.fc1(x.view(-1, 784)))
            mu, logvar = self.fc21(h), self.fc22(h)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar

    def loss_fn(recon, x, mu, logvar):
        bce = F.binary_cross_entropy(recon, x.view(-1, 784), reduction="sum")
        return bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())

    torch.manual_seed(1)
    tf = transforms.ToTensor()
    train_loader = torch.utils.data.DataLoader(
        datasets.MNIST(str(data_root), train=True, transform=tf), batch_size=128, shuffle=True
    )
    test_loader = torch.utils.data.DataLoader(
        datasets.MNIST(str(data_root), train=False, transform=tf), batch_size=128
    )
    model = RefVAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    seen, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        model.train()
        for x, _ in train_loader:
            opt.zero_grad()
            recon, mu, logvar = model(x)
            loss = loss_fn(recon, x, mu, logvar)
            loss.backward()
            opt.step()
            seen += x.shape[0]
    ref_rate = seen / (time.perf_counter() - t0)
    model.eval()
    total = 0.0
    with torch.no_grad():
        for x, _ in test_loader:
            recon, mu, logvar = model(x)
            total += loss_fn(recon, x, mu, logvar).item()
    ref_loss = total / len(test_loader.dataset)

    cfg = compose_cfg(
        [
            "dataset=mnist",
            f"dataset.root={data_root}",
            "dataset.download=false",
            "model.arch=mlp",
            "model.latent_dim=20",
            "model.hidden=400",
            "model.likelihood=bernoulli",
            "optim.lr=1e-3",
            "trainer.batch_size=128",
            f"trainer.max_steps={epochs * (60000 // 128)}",
            "trainer.progress=false",
        ]
    )
    run_dir = Path(tempfile.mkdtemp(prefix="bench_ref_"))
    clocks: list[StepClock] = []
    undo = timed_data(clocks)
    try:
        t0 = time.perf_counter()
        metrics = train_module.train(cfg, run_dir=run_dir)
        total_wall = time.perf_counter() - t0
    finally:
        undo()
        shutil.rmtree(run_dir, ignore_errors=True)
    times = clocks[0].times
    aigc_rate = (len(times) - 1) * 128 / (times[-1] - times[0])
    return {
        "epochs": epochs,
        "reference_images_per_s": ref_rate,
        "reference_test_loss": ref_loss,
        "aigc_images_per_s": aigc_rate,
        "aigc_test_nelbo": metrics["test/nelbo"],
        "aigc_wall_s_incl_setup_and_eval": total_wall,
        "speedup": aigc_rate / ref_rate,
    }


def write_markdown(path: Path, results: dict) -> None:
    rounds = next(iter(results["cases"].values()), {}).get("rounds", 0)
    lines = [
        f"# bench: {results['host']}, {results['date']}",
        "",
        f"{results['cpu']}, {results['cpus']} CPUs, {results['threads']} torch threads, "
        f"torch {results['torch']}. Each rate is the fastest of {rounds} alternating rounds "
        "(medians in the JSON).",
        "",
        "| case | batch | aigc samples/s | bare loop samples/s | ratio | aigc ms/step | "
        "bare ms/step | peak RSS MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, e in results["cases"].items():
        lines.append(
            f"| {name} | {e['batch_size']} | {e['tool_samples_per_s']:.1f} | "
            f"{e['bare_samples_per_s']:.1f} | {e['ratio']:.3f} | {e['tool_ms_per_step']:.1f} | "
            f"{e['bare_ms_per_step']:.1f} | {e['peak_rss_mb']:.0f} |"
        )
    lines += ["", "| start-up | seconds |", "| --- | ---: |"]
    for k, v in results.get("startup", {}).items():
        lines.append(f"| {k} | {v:.2f} |")
    ref = results.get("mlp_vae_reference")
    if ref:
        lines += [
            "",
            f"MLP VAE on MNIST, {ref['epochs']} epoch(s): pytorch/examples loop "
            f"{ref['reference_images_per_s']:.0f} images/s (test loss "
            f"{ref['reference_test_loss']:.1f}), aigc {ref['aigc_images_per_s']:.0f} images/s "
            f"(test nelbo {ref['aigc_test_nelbo']:.1f}): {ref['speedup']:.2f}x.",
        ]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a few steps each; CI smoke run")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--only", nargs="*", default=[], help="case names to run")
    args = p.parse_args(argv)

    # Timed steps per family: about 5-15 s of training per run on a 2-core CPU, so the whole
    # bench stays under 10 minutes there.
    family_steps = {"vae": 50, "gan": 80, "transformer": 120}
    warmup, rounds = (1, 1) if args.quick else (10, 3)
    small = ["trainer.num_samples=8", "trainer.eval_samples=100"]
    cases: dict[str, list[str]] = {
        "vae_shapes": ["model=vae", *small, "dataset.test_size=500"],
        "gan_shapes": ["model=gan", *small, "dataset.test_size=500"],
        "transformer_pydoc": ["model=transformer", *small],
    }
    if args.quick:
        for name in cases:
            cases[name] += ["dataset.train_size=512", "dataset.test_size=64"] * (
                name != "transformer_pydoc"
            )
    mnist = args.data / "MNIST" / "raw"
    shakespeare = args.data / "tinyshakespeare" / "input.txt"
    if not args.quick and mnist.is_dir():
        data = [f"dataset.root={args.data}", "dataset.download=false"]
        cases["vae_mnist"] = ["model=vae", "dataset=mnist", *data, *small]
        cases["gan_mnist"] = ["model=gan", "dataset=mnist", *data, *small]
    if not args.quick and shakespeare.is_file():
        cases["gpt_shakespeare"] = [
            "experiment=gpt_shakespeare",
            f"dataset.path={shakespeare}",
            *small,
        ]
    if args.only:
        cases = {k: v for k, v in cases.items() if k in args.only}

    results: dict[str, Any] = {
        "host": platform.node(),
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "quick": args.quick,
        "cases": {},
    }
    stem = args.out / f"bench_{platform.node() or 'host'}_{results['date']}"

    def save() -> None:  # after every part, so a run cut short still leaves its figures
        if args.quick:
            return
        args.out.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
        write_markdown(stem.with_suffix(".md"), results)

    for name, overrides in cases.items():
        family = str(compose_cfg(overrides).model.name)
        steps = 4 if args.quick else warmup + family_steps[family]
        results["cases"][name] = compare(name, overrides, steps, warmup, rounds)
        save()
    if not args.only:
        results["startup"] = {
            "aigc --help": cli_seconds("--help", repeats=1 if args.quick else 3),
            "aigc list": cli_seconds("list", repeats=1 if args.quick else 3),
        }
        if not args.quick:
            results["startup"]["aigc train: start to first step"] = statistics.median(
                seconds_to_first_step() for _ in range(3)
            )
            results["startup"]["bare PyTorch: start to first Adam step"] = statistics.median(
                seconds_to_bare_first_step() for _ in range(3)
            )
        for k, v in results["startup"].items():
            print(f"{k:36s} {v:6.2f} s", flush=True)
        save()
    if not args.quick and mnist.is_dir() and (not args.only or "mlp_vae" in args.only):
        results["mlp_vae_reference"] = reference_mlp_vae(args.data, epochs=1)
        print(json.dumps(results["mlp_vae_reference"], indent=2), flush=True)
    if args.quick:
        return
    save()
    print(f"written {stem}.json and {stem}.md")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
