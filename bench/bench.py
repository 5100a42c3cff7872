"""`make bench`: the tool's training loop against a bare PyTorch loop of the same model, data,
batch size, optimizer and thread count, measured side by side in one process, alternating.

    python bench/bench.py [--quick] [--data ../shared/data] [--out bench/results]

For every case it reports samples/s of both loops and their ratio (target >= 0.97), peak
memory, model FLOPs utilisation (the step's FLOPs, counted by torch's FlopCounterMode, per
second, over this machine's fp32 or bf16 matmul peak measured in the same run), the precision
`trainer.precision=auto` picks for the case's model, and, once: the time from `aigc train`
start to its first step, the wall time of `aigc --help` and `aigc list`, and the
pytorch/examples MLP-VAE reference loop (a DataLoader with a per-sample ToTensor) against the
same model through aigc on MNIST. Results go to
bench/results/bench_<host>_<date>.json and .md. `--quick` runs a few steps of each built-in
case (CI uses it to check the script still runs) and writes nothing.

Timing on a shared machine is noisy: only ratios measured in the same run mean anything.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig
from rich.console import Console

from aigc_cli.build import build_data, build_model
from aigc_cli.config import validate_optim
from aigc_cli.training import logger as logger_module
from aigc_cli.training import loop as train_module

REPO = Path(__file__).resolve().parents[1]


# Mid-size models where bf16 can pay on a CPU: nanoGPT's GPU recipe size (10.7M parameters,
# block 256, batch 64) and a DCGAN at 64 pixels with the classic 64 channels, each in fp32 and
# bf16; a few steps each, after 2 of warm-up. bench/device_check.py runs them on a GPU too.
MID_CASES = {
    "gpt_mid": ["model=transformer", "dataset=pydoc", "dataset.block_size=256",
                "model.n_layer=6", "model.n_head=6", "model.n_embd=384", "model.dropout=0",
                "trainer.batch_size=64"],
    "dcgan64": ["model=gan", "dataset.image_size=64", "model.g_channels=64",
                "model.d_channels=64", "trainer.batch_size=64", "dataset.test_size=500"],
}  # fmt: skip


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
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss: Linux carries
    that over from the parent into a child it starts (vfork + exec), so a child of a large
    bench process would report the bench's own peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Stepper(Protocol):
    """A loop the bench interleaves with aigc's: `run(n)` takes n steps, returns seconds."""

    def run(self, steps: int) -> float: ...


class BareLoop:
    """The same model, data iterator and optimizers in the plainest loop PyTorch allows; it
    clips gradients too when the config asks for it (part of the recipe, not overhead)."""

    def __init__(self, cfg: DictConfig) -> None:
        torch.manual_seed(int(cfg.seed))
        self.clip = float(cfg.trainer.grad_clip)
        self.bf16 = str(cfg.trainer.precision) == "bf16"  # the recipe's autocast, as aigc's
        data = build_data(cfg.dataset)
        self.model = build_model(cfg.model, data.spec)
        self.opts = self.model.optimizers(validate_optim(cfg.optim))
        self.batches = data.train_iter(int(cfg.trainer.batch_size), int(cfg.seed))
        self.step = 0
        self.model.train()

    def run(self, steps: int) -> float:
        """Takes `steps` training steps; returns their wall time in seconds."""
        t0 = time.perf_counter()
        for _ in range(steps):
            batch = next(self.batches)
            stages = self.model.training_step(batch, self.step)
            while True:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                    stage = next(stages, None)
                if stage is None:
                    break
                opt = self.opts[stage.opt_name]
                opt.zero_grad(set_to_none=True)
                stage.loss.backward()
                if self.clip > 0:
                    params = [p for group in opt.param_groups for p in group["params"]]
                    torch.nn.utils.clip_grad_norm_(params, self.clip, foreach=True)
                opt.step()
            self.step += 1
        return time.perf_counter() - t0


class Interleaved:
    """Wraps aigc's batch iterator and takes one bare-loop step inside each fetch: after
    `warmup` steps of each, the two loops alternate step by step for `steps` steps. On a shared
    host the machine's speed drifts by ±10% over seconds; loops timed in turn a few seconds
    apart mostly measure that drift (a bare loop against a copy of itself varied by ±5-20% per
    pair of 25-step blocks here, and by ±3% per 25 steps alternated step by step). aigc's step
    is timed from the end of the bare step before it to the start of the bare step after it,
    so it carries all of its own cost, its batch fetch and logging included, and none of the
    bare loop's."""

    def __init__(self, inner: Any, bare: Stepper, warmup: int, steps: int) -> None:
        self.inner, self.bare = inner, bare
        self.warmup, self.steps = warmup, steps
        self.fetched = 0
        self.opened = 0.0
        self.tool: list[float] = []
        self.bare_times: list[float] = []
        self.paused = 0.0  # wall time spent in the bare loop so far, its warm-up included

    def __iter__(self) -> Interleaved:
        return self

    def __getattr__(self, name: str) -> Any:  # state_dict / load_state_dict
        return getattr(self.inner, name)

    def __next__(self) -> Any:
        now = time.perf_counter()
        i, self.fetched = self.fetched - self.warmup, self.fetched + 1
        if 0 < i <= self.steps:  # aigc's step i - 1 has just ended
            self.tool.append(now - self.opened)
        if 0 <= i < self.steps:
            if i == 0:
                self.bare.run(self.warmup)
            self.bare_times.append(self.bare.run(1))
            self.opened = time.perf_counter()
            self.paused += self.opened - now
        return next(self.inner)


class ToolTime:
    """The `time` module as aigc's logger sees it during an interleaved run: with the bare
    loop's time taken out, its time-throttled work (progress-bar redraws, at most 2 a second)
    comes as often per step as when aigc runs alone, not twice as often."""

    def __init__(self, clocks: list[Interleaved]) -> None:
        self.clocks = clocks

    def _paused(self) -> float:
        return self.clocks[0].paused if self.clocks else 0.0

    def monotonic(self) -> float:
        return time.monotonic() - self._paused()

    def perf_counter(self) -> float:
        return time.perf_counter() - self._paused()


@contextlib.contextmanager
def as_in_a_terminal(clocks: list[Interleaved]) -> Iterator[None]:
    """aigc's console output (progress bar, config, summary) drawn as in a terminal, where a
    redraw costs 10x what it does into a pipe, whatever the bench's own output goes to (the
    drawing itself is discarded), on aigc's own clock (`ToolTime`)."""
    real_console, real_time = logger_module.console, logger_module.time
    with open(os.devnull, "w") as sink:
        logger_module.console = Console(file=sink, force_terminal=True, width=120)
        logger_module.time = ToolTime(clocks)  # type: ignore[assignment]
        try:
            yield
        finally:
            logger_module.console, logger_module.time = real_console, real_time


def train_interleaved(
    cfg: DictConfig, bare: Stepper, warmup: int, steps: int
) -> tuple[Interleaved, dict[str, float]]:
    """Train aigc on `cfg` for exactly the steps `Interleaved` times, with `bare` stepping
    inside its batch fetches and aigc's console as in a terminal (`as_in_a_terminal`); returns
    the clock and the run's final metrics. The run dir is temporary."""
    clocks: list[Interleaved] = []
    real_build = train_module.build_data

    def build(data_cfg: Any) -> Any:
        data = real_build(data_cfg)
        inner = data.train_iter

        def train_iter(batch_size: int, seed: int) -> Interleaved:
            clocks.append(Interleaved(inner(batch_size, seed), bare, warmup, steps))
            return clocks[-1]

        data.train_iter = train_iter
        return data

    cfg.trainer.max_steps = warmup + steps + 1  # +1: the fetch that ends the last timed step
    run_dir = Path(tempfile.mkdtemp(prefix="bench_"))
    train_module.build_data = build
    try:
        with as_in_a_terminal(clocks):
            metrics = train_module.train(cfg, run_dir=run_dir)
    finally:
        train_module.build_data = real_build
        shutil.rmtree(run_dir, ignore_errors=True)
    return clocks[0], metrics


def run_interleaved(cfg: DictConfig, warmup: int, steps: int) -> Interleaved:
    """aigc's own loop with the bare loop interleaved (see `Interleaved`), at the default log
    cadence and with the progress bar. Checkpoints count at their default cadence: the run's
    final checkpoint (written after the timed steps) is timed, and its cost divided by the
    default `trainer.ckpt_every` is added to every aigc step. Writing one inside a window of a
    few hundred steps would charge it several times over."""
    bare = BareLoop(cfg.copy())
    saves: list[float] = []
    real_save = train_module.save_rotating

    def timed_save(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = real_save(*args, **kwargs)
        saves.append(time.perf_counter() - t0)
        return out

    train_module.save_rotating = timed_save
    ckpt_every = int(cfg.trainer.ckpt_every)
    try:
        cfg.trainer.eval_every = 0
        cfg.trainer.sample_every = 0
        cfg.trainer.ckpt_every = 0  # only the final one, after the timed steps
        clock, _ = train_interleaved(cfg, bare, warmup, steps)
    finally:
        train_module.save_rotating = real_save
    if ckpt_every > 0 and saves:
        per_step = statistics.median(saves) / ckpt_every
        clock.tool = [t + per_step for t in clock.tool]
    return clock


def ratio_interval(tool: list[float], bare: list[float], level: float = 0.9) -> list[float]:
    """A bootstrap interval for aigc's throughput relative to the bare loop's, sum(bare time) /
    sum(aigc time), resampling whole log intervals (so each draw has its share of logging)."""
    rng = random.Random(0)
    n, draws = len(tool), 2000
    ratios = []
    for _ in range(draws):
        idx = [rng.randrange(n) for _ in range(n)]
        ratios.append(sum(bare[i] for i in idx) / sum(tool[i] for i in idx))
    ratios.sort()
    lo = int((1 - level) / 2 * draws)
    return [ratios[lo], ratios[draws - 1 - lo]]


def matmul_peaks(n: int = 2048, repeats: int = 10, device: str = "cpu") -> dict[str, float]:
    """The device's matmul FLOP/s in fp32 (TF32 on a GPU where allowed) and bf16 (an n x n
    product, median of repeats): the peaks model FLOPs utilisation is measured against."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    out = {}
    for name, dtype in (("32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        a @ b  # warm-up
        sync()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            sync()
            times.append(time.perf_counter() - t0)
        out[name] = 2 * n**3 / statistics.median(times)
    return out


def step_flops(cfg: DictConfig) -> float:
    """FLOPs of one training step (forward and backward of every stage) of the case's model."""
    from torch.utils.flop_counter import FlopCounterMode

    data = build_data(cfg.dataset)
    model = build_model(cfg.model, data.spec).train()
    batch = next(data.train_iter(int(cfg.trainer.batch_size), 0))
    with FlopCounterMode(display=False) as counter:
        for stage in model.training_step(batch, 0):
            stage.loss.backward()
    return float(counter.get_total_flops())


def auto_pick(cfg: DictConfig, device: torch.device | None = None) -> str:
    """What trainer.precision=auto chooses for the case's model on this machine, and why."""
    from aigc_cli.training.precision import choose_precision

    device = device or torch.device("cpu")
    data = build_data(cfg.dataset).to(device)
    model = build_model(cfg.model, data.spec).to(device)
    batch_size = int(cfg.trainer.batch_size)

    def batch() -> tuple:
        return tuple(x.to(device) for x in next(data.train_iter(batch_size, 1)))

    choice, why = choose_precision(model, batch, device)
    return f"{choice} ({why})"


def compare(name: str, overrides: list[str], warmup: int, intervals: int, every: int = 0) -> dict:
    """aigc vs the bare loop on one case, alternating step by step over `intervals` log
    intervals of `every` steps (by default the case's `trainer.log_every`)."""
    cfg = compose_cfg(overrides)
    every = every or int(cfg.trainer.log_every)
    batch_size = int(cfg.trainer.batch_size)
    steps = intervals * every
    clock = run_interleaved(cfg, warmup, steps)
    tool = [sum(clock.tool[i : i + every]) for i in range(0, steps, every)]
    bare = [sum(clock.bare_times[i : i + every]) for i in range(0, steps, every)]
    tool_s, bare_s = sum(tool), sum(bare)
    entry = {
        "overrides": overrides,
        "batch_size": batch_size,
        "log_every": every,
        "intervals": intervals,
        "steps_timed": steps,
        "tool_samples_per_s": steps * batch_size / tool_s,
        "bare_samples_per_s": steps * batch_size / bare_s,
        "ratio": bare_s / tool_s,
        "ratio_90": ratio_interval(tool, bare),
        "interval_ratios": [b / t for t, b in zip(tool, bare, strict=True)],
        "tool_interval_s": tool,
        "bare_interval_s": bare,
    }
    # ms per optimizer step: how nanoGPT and most training logs report speed
    entry["tool_ms_per_step"] = 1000 * tool_s / steps
    entry["bare_ms_per_step"] = 1000 * bare_s / steps
    entry["peak_rss_mb"] = peak_rss_mb()
    entry["precision"] = str(cfg.trainer.precision)
    entry["step_flops"] = step_flops(cfg)
    lo, hi = entry["ratio_90"]
    print(
        f"{name:24s} tool {entry['tool_samples_per_s']:9.1f}/s  bare "
        f"{entry['bare_samples_per_s']:9.1f}/s  ratio {entry['ratio']:.3f} "
        f"(90% {lo:.3f}-{hi:.3f})",
        flush=True,
    )
    return entry


MEMORY_STEPS = 50


def peak_memory(overrides: list[str]) -> dict[str, float]:
    """Peak RSS (MB) of `aigc train <overrides>` for MEMORY_STEPS steps (with its final
    evaluation and checkpoint) in a fresh process, and of a bare loop of the same model, data
    and batch in another."""
    run_dir = Path(tempfile.mkdtemp(prefix="bench_mem_"))
    args = [*overrides, f"trainer.max_steps={MEMORY_STEPS}", "trainer.progress=false",
            f"hydra.run.dir={run_dir}"]  # fmt: skip
    try:
        out = {}
        for name, flag, rest in (("aigc", "--aigc-peak", args), ("bare", "--bare-peak", overrides)):
            cmd = [sys.executable, __file__, flag, *rest]
            text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            out[name] = float(text.rsplit("PEAK", 1)[1].split()[0])
        out["ratio"] = out["aigc"] / out["bare"]
        return out
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def bare_peak(overrides: list[str]) -> None:
    """The bare side of `peak_memory`, run as `bench.py --bare-peak <overrides>`."""
    BareLoop(compose_cfg(overrides)).run(MEMORY_STEPS)
    print("PEAK", peak_rss_mb())


def aigc_peak(args: list[str]) -> None:
    """aigc's side of `peak_memory`, run as `bench.py --aigc-peak <train args>`: the same
    process set-up as the bare side, then `aigc train`."""
    from aigc_cli.cli.app import main as aigc_main

    aigc_main(["train", *args])
    print("PEAK", peak_rss_mb())


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


class ReferenceVAE:
    """pytorch/examples' vae/main.py on CPU: a 784-400-20 MLP, BCE + KL, Adam 1e-3, batch 128,
    images decoded and converted by `ToTensor` one by one in a DataLoader. `run` takes steps
    the way its train() does, starting a new epoch when the loader runs out."""

    def __init__(self, data_root: Path) -> None:
        from torch import nn
        from torchvision import datasets, transforms

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.fc1, self.fc21 = nn.Linear(784, 400), nn.Linear(400, 20)
                self.fc22, self.fc3 = nn.Linear(400, 20), nn.Linear(20, 400)
                self.fc4 = nn.Linear(400, 784)

            def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
                h = torch.relu(self.fc1(x.view(-1, 784)))
                mu, logvar = self.fc21(h), self.fc22(h)
                z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
                return torch.sigmoid(self.fc4(torch.relu(self.fc3(z)))), mu, logvar

        torch.manual_seed(1)
        tf = transforms.ToTensor()
        self.train_loader = torch.utils.data.DataLoader(
            datasets.MNIST(str(data_root), train=True, transform=tf), batch_size=128, shuffle=True
        )
        self.test_loader = torch.utils.data.DataLoader(
            datasets.MNIST(str(data_root), train=False, transform=tf), batch_size=128
        )
        self.model = Net()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.batches = iter(self.train_loader)
        self.seen = 0

    @staticmethod
    def loss(
        recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
    ) -> torch.Tensor:
        import torch.nn.functional as F

        bce = F.binary_cross_entropy(recon, x.view(-1, 784), reduction="sum")
        return bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())

    def run(self, steps: int) -> float:
        t0 = time.perf_counter()
        self.model.train()
        for _ in range(steps):
            x = next(self.batches, None)
            if x is None:
                self.batches = iter(self.train_loader)
                x = next(self.batches)
            x = x[0]
            self.opt.zero_grad()
            recon, mu, logvar = self.model(x)
            loss = self.loss(recon, x, mu, logvar)
            loss.backward()
            self.opt.step()
            self.seen += x.shape[0]
        return time.perf_counter() - t0

    def test_loss(self) -> float:
        """Mean test loss per image (nats), as its test() prints it."""
        self.model.eval()
        total = 0.0
        with torch.no_grad():
            for x, _ in self.test_loader:
                recon, mu, logvar = self.model(x)
                total += self.loss(recon, x, mu, logvar).item()
        return total / len(self.test_loader.dataset)


def reference_mlp_vae(data_root: Path, epochs: int) -> dict:
    """The pytorch/examples MLP VAE (`ReferenceVAE`) against the same model through aigc, both
    training for `epochs` epochs, alternating step by step as in `Interleaved`: images/s over
    the epochs and the test loss after them (nats per image)."""
    steps = epochs * (60000 // 128)
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
            "trainer.progress=false",
        ]
    )
    ref = ReferenceVAE(data_root)
    clock, metrics = train_interleaved(cfg, ref, 0, steps)
    ref_rate = steps * 128 / sum(clock.bare_times)
    aigc_rate = steps * 128 / sum(clock.tool)
    return {
        "epochs": epochs,
        "steps": steps,
        "reference_images_per_s": ref_rate,
        "reference_test_loss": ref.test_loss(),
        "aigc_images_per_s": aigc_rate,
        "aigc_test_nelbo": metrics["test/nelbo"],
        "speedup": aigc_rate / ref_rate,
    }


def write_markdown(path: Path, results: dict) -> None:
    lines = [
        f"# bench: {results['host']}, {results['date']}",
        "",
        f"{results['cpu']}, {results['cpus']} CPUs, {results['threads']} torch threads, "
        f"torch {results['torch']}. Both loops run in one process, alternating step by step; "
        "the ratio is aigc's throughput over the bare loop's, with a 90% bootstrap interval "
        "over the log intervals timed.",
        "",
        "| case | precision | batch | steps | aigc samples/s | bare loop samples/s | ratio "
        "| 90% interval | aigc ms/step | bare ms/step | MFU | peak RSS MB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    peaks = results.get("matmul_peak_flops") or {}
    for name, e in results["cases"].items():
        lo, hi = e["ratio_90"]
        mfu = e.get("mfu")
        lines.append(
            f"| {name} | {e.get('precision', '32')} | {e['batch_size']} | "
            f"{e['intervals']} x {e['log_every']} | "
            f"{e['tool_samples_per_s']:.1f} | {e['bare_samples_per_s']:.1f} | {e['ratio']:.3f} | "
            f"{lo:.3f}-{hi:.3f} | {e['tool_ms_per_step']:.1f} | {e['bare_ms_per_step']:.1f} | "
            f"{'' if mfu is None else f'{100 * mfu:.1f}%'} | {e['peak_rss_mb']:.0f} |"
        )
    if peaks:
        lines += ["", "Matmul peak (2048 x 2048, this run): " + ", ".join(
            f"{k}: {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items()) + "."]  # fmt: skip
    picks = {n: e["auto_pick"] for n, e in results["cases"].items() if e.get("auto_pick")}
    if picks:
        lines += ["", "| case | trainer.precision=auto picks |", "| --- | --- |"]
        lines += [f"| {n} | {p} |" for n, p in picks.items()]
    lines += ["", "| start-up | seconds |", "| --- | ---: |"]
    for k, v in results.get("startup", {}).items():
        lines.append(f"| {k} | {v:.2f} |")
    mem = results.get("peak_memory_mb")
    if mem:
        lines += ["", f"| peak RSS, {MEMORY_STEPS} steps in a fresh process | aigc train MB | "
                  "bare loop MB | ratio |", "| --- | ---: | ---: | ---: |"]  # fmt: skip
        lines += [f"| {k} | {v['aigc']:.0f} | {v['bare']:.0f} | {v['ratio']:.2f} |"
                  for k, v in mem.items()]  # fmt: skip
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


def results_stem(folder: Path, name: str, results: dict) -> Path:
    """Where this run's figures go: bench_<host>_<date>, or with -2, -3... when that file holds
    another machine's figures (the same host name can be another CPU from one day to the next),
    so a run never overwrites another machine's results."""
    stem, n = folder / name, 1
    while stem.with_suffix(".json").is_file():
        try:
            if json.loads(stem.with_suffix(".json").read_text()).get("cpu") == results["cpu"]:
                return stem
        except (OSError, ValueError):
            pass
        n += 1
        stem = folder / f"{name}-{n}"
    return stem


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a few steps each; CI smoke run")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--only", nargs="*", default=[],
                   help="case names to run; also startup, memory, mlp_vae")  # fmt: skip
    p.add_argument("--intervals", type=int, default=0, help="log intervals per case (0: by family)")
    p.add_argument("--bare-peak", nargs="*", default=None, help=argparse.SUPPRESS)
    p.add_argument("--aigc-peak", nargs="*", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.bare_peak is not None:
        return bare_peak(args.bare_peak)
    if args.aigc_peak is not None:
        return aigc_peak(args.aigc_peak)

    # Log intervals per family: about 40-60 s of both loops per case on a 2-core CPU, so the
    # whole bench stays under 10 minutes there.
    family_intervals = {"vae": 10, "gan": 10, "transformer": 8, "diffusion": 6, "flow": 6,
                        "frames": 10}  # fmt: skip
    warmup = 1 if args.quick else 10
    small = ["trainer.num_samples=8", "trainer.eval_samples=100"]
    cases: dict[str, list[str]] = {
        "vae_shapes": ["model=vae", *small, "dataset.test_size=500"],
        "gan_shapes": ["model=gan", *small, "dataset.test_size=500"],
        "transformer_pydoc": ["model=transformer", *small],
        "diffusion_shapes": ["model=diffusion", *small, "dataset.test_size=500"],
        # music: the independent-notes frame model on the built-in tunes (no extra needed)
        "frames_tunes": [
            "model=frames",
            "dataset=tunes",
            "dataset.representation=frames",
            "dataset.window=32",
            *small,
        ],
    }
    mid_cases = {}
    if not args.quick:
        for base, overrides in MID_CASES.items():
            for p in ("32", "bf16"):
                mid_cases[f"{base}_{p}"] = [*overrides, *small, f"trainer.precision={p}",
                                            "trainer.log_every=2"]  # fmt: skip
    if args.quick:
        for name in cases:
            cases[name] += ["dataset.train_size=512", "dataset.test_size=64"] * (
                name not in ("transformer_pydoc", "frames_tunes")
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
    cases.update(mid_cases)
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
    stem = results_stem(args.out, f"bench_{platform.node() or 'host'}_{results['date']}", results)
    if args.only and stem.with_suffix(".json").is_file():  # a partial re-run updates its parts
        earlier = json.loads(stem.with_suffix(".json").read_text())
        results = {**earlier, **results, "cases": earlier.get("cases", {})}

    def save() -> None:  # after every part, so a run cut short still leaves its figures
        if args.quick:
            return
        args.out.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
        write_markdown(stem.with_suffix(".md"), results)

    if cases:
        results["matmul_peak_flops"] = matmul_peaks(512 if args.quick else 2048)
    for name, overrides in cases.items():
        family = str(compose_cfg(overrides).model.name)
        intervals = 1 if args.quick else args.intervals or family_intervals[family]
        every = 2 if args.quick else 0
        is_mid = name in mid_cases
        if is_mid:
            intervals = args.intervals or 3
        entry = compare(name, overrides, 2 if is_mid else warmup, intervals, every)
        peak = results["matmul_peak_flops"][entry["precision"] if entry["precision"] == "bf16"
                                             else "32"]  # fmt: skip
        entry["mfu"] = entry["step_flops"] * 1000 / entry["tool_ms_per_step"] / peak
        if not name.endswith("_bf16"):  # one pick per model
            entry["auto_pick"] = auto_pick(compose_cfg(overrides))
        results["cases"][name] = entry
        save()
    if not args.only or "startup" in args.only:
        results["startup"] = {
            "aigc --help": cli_seconds("--help", repeats=1 if args.quick else 3),
            "aigc list": cli_seconds("list", repeats=1 if args.quick else 3),
        }
        if not args.quick:
            # In turns, so both see the machine in the same state; the share is per pair.
            seconds_to_first_step()  # the first run on a machine renders and caches the shapes
            pairs = [(seconds_to_first_step(), seconds_to_bare_first_step()) for _ in range(9)]
            startup = results["startup"]
            startup["aigc train: start to first step"] = statistics.median(a for a, _ in pairs)
            startup["bare PyTorch: start to first Adam step"] = statistics.median(
                b for _, b in pairs
            )
            startup["aigc's own share (median of the pairs' differences)"] = statistics.median(
                a - b for a, b in pairs
            )
        for k, v in results["startup"].items():
            print(f"{k:36s} {v:6.2f} s", flush=True)
        save()
    if not args.quick and (not args.only or "memory" in args.only):
        memory = {"default (vae_shapes)": []}
        if shakespeare.is_file():
            memory["gpt_shakespeare"] = [
                "experiment=gpt_shakespeare",
                f"dataset.path={shakespeare}",
            ]
        results["peak_memory_mb"] = {k: peak_memory(v) for k, v in memory.items()}
        print(json.dumps(results["peak_memory_mb"], indent=2), flush=True)
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
