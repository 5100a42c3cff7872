"""trainer.precision=auto: bf16 autocast where it pays, fp32 elsewhere, decided when a run
starts and stored in its config (a resumed run keeps the choice).

CUDA devices with bf16 take bf16. A CPU with bf16 matrix units (AMX, or AVX-512 bf16) takes it
only for models of at least PROBE_MIN_PARAMS parameters, and only when a probe says so: the
model's training step (forward and backward, on a copy, outside the run's random streams and
data order) is timed in both precisions, alternating, and bf16 wins when it is at least MARGIN
faster. Small models lose to autocast's casts (and skipping the probe keeps their start-up
short and their runs deterministic); large matmuls run several times faster. Every other
device trains in fp32."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from aigc_cli.training.evaluate import isolated_rng

MARGIN = 1.2  # bf16 must be this much faster: near-ties stay in fp32, the safer numerics
PROBE_MIN_PARAMS = 2_000_000  # smaller models stay fp32 on CPUs without a probe
WARMUP, TIMED = 1, 3  # probe steps per precision


def cpu_bf16_units() -> str | None:
    """The CPU's bf16 matrix instructions, read from /proc/cpuinfo's flags (Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                  if ln.startswith("flags")), [])  # fmt: skip
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX-512 bf16"
    return None


def choose_precision(
    model: Any, batch: Callable[[], tuple], device: torch.device
) -> tuple[str, str]:
    """("bf16" | "32", why) for this model and device; `batch()` gives the probe's batch and is
    called only when a probe runs (fetching one may start a data loader)."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", f"{torch.cuda.get_device_name(device)} has bf16"
        return "32", "this GPU has no bf16"
    if device.type != "cpu":
        return "32", f"no bf16 autocast rule for {device.type}"
    units = cpu_bf16_units()
    if units is None:
        return "32", "this CPU has no bf16 matrix units (AMX or AVX-512 bf16)"
    n = model.num_parameters(trainable_only=True)
    if n < PROBE_MIN_PARAMS:
        return "32", (f"{n / 1e6:.2f}M parameters, under the {PROBE_MIN_PARAMS / 1e6:.0f}M below "
                      "which bf16 autocast does not pay on a CPU")  # fmt: skip
    fp32, bf16 = probe(model, batch(), device)
    speedup = fp32 / bf16
    timing = f"a training step took {bf16 * 1e3:.0f} ms in bf16, {fp32 * 1e3:.0f} ms in fp32"
    if speedup >= MARGIN:
        return "bf16", f"{units}: {timing} ({speedup:.2f}x)"
    return "32", f"{units}, but {timing} (bf16 needs {MARGIN:.1f}x to be chosen)"


def probe(model: Any, batch: tuple, device: torch.device) -> tuple[float, float]:
    """Median seconds of one forward and backward pass in fp32 and in bf16 autocast."""

    clone = copy.deepcopy(model).train()
    times: dict[bool, list[float]] = {False: [], True: []}
    with isolated_rng(device):
        for i in range(WARMUP + TIMED):
            for bf16 in (False, True):
                seconds = _step_seconds(clone, batch, device, bf16)
                if i >= WARMUP:
                    times[bf16].append(seconds)
    del clone
    return statistics.median(times[False]), statistics.median(times[True])


def _step_seconds(model: Any, batch: tuple, device: torch.device, bf16: bool) -> float:
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    stages = model.training_step(batch, 0)
    while True:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            stage = next(stages, None)
        if stage is None:
            break
        stage.loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
