"""The benchmark's bookkeeping: which seconds are charged to aigc's loop and which to the bare
loop when the two alternate step by step, and the interval put on their ratio."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from .helpers import REPO, tiny_overrides


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("aigc_bench", REPO / "bench" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["aigc_bench"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("aigc_bench", None)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeBare:
    """A bare loop whose every step takes 10 s on the fake clock."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock, self.calls = clock, []

    def run(self, steps: int) -> float:
        self.calls.append(steps)
        self.clock.now += 10.0 * steps
        return 10.0 * steps


def test_interleaving_charges_each_loop_only_its_own_time(bench, monkeypatch):
    """aigc's steps take 1 s, 2 s, 3 s, ... and the bare loop's 10 s each: the recorded aigc
    times must be exactly 1, 2, 3, ... after the warm-up, untouched by the bare steps run in
    between, and the bare loop warms up once, then takes one step per aigc step."""
    clock = FakeClock()
    monkeypatch.setattr(bench.time, "perf_counter", clock)
    bare = FakeBare(clock)
    warmup, steps = 2, 4
    it = bench.Interleaved(iter(range(100)), bare, warmup, steps)
    for k in range(warmup + steps + 1):  # the +1 fetch ends the last timed step
        assert next(it) == k  # aigc still gets its batches, in order
        clock.now += float(k + 1)  # aigc's step k
    assert it.tool == [3.0, 4.0, 5.0, 6.0]  # steps 2..5, the first two being the warm-up
    assert it.bare_times == [10.0] * steps
    assert bare.calls == [warmup] + [1] * steps
    next(it)  # past the window: no more bare steps, no more timing
    assert len(it.tool) == steps and bare.calls == [warmup] + [1] * steps
    # aigc's logger sees a clock that skips the bare loop's 60 s (its warm-up included)
    assert it.paused == 10.0 * (warmup + steps)
    assert bench.ToolTime([it]).perf_counter() == clock.now - 60.0


def test_ratio_interval_brackets_the_ratio(bench):
    tool = [1.0, 1.1, 0.9, 1.05, 0.95, 1.0]
    bare = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    lo, hi = bench.ratio_interval(tool, bare)
    point = sum(bare) / sum(tool)
    assert lo < point < hi and hi - lo < 0.15
    assert bench.ratio_interval([2.0] * 5, [1.0] * 5) == [0.5, 0.5]  # no spread, no width


def test_compare_times_both_loops_on_a_real_run(bench):
    """One tiny case end to end: every timed step of both loops is counted, and the figures
    derived from them agree with each other."""
    overrides = [o for o in tiny_overrides() if not o.startswith("trainer.max_steps")]
    e = bench.compare("tiny", overrides, warmup=1, intervals=3, every=2)
    assert e["steps_timed"] == 6
    assert len(e["tool_interval_s"]) == len(e["bare_interval_s"]) == 3
    assert all(t > 0 for t in e["tool_interval_s"] + e["bare_interval_s"])
    assert e["ratio"] == pytest.approx(e["tool_samples_per_s"] / e["bare_samples_per_s"])
    assert e["ratio_90"][0] <= e["ratio"] <= e["ratio_90"][1]
    assert e["tool_ms_per_step"] == pytest.approx(8 * 1000 / e["tool_samples_per_s"])


def test_step_flops_of_an_mlp_vae_match_a_hand_count(bench):
    """A linear layer's forward is 2·B·in·out FLOPs and its backward twice that (input and
    weight gradients), less the input gradient of the first layer (the data needs none)."""
    from .helpers import tiny_overrides as tiny

    cfg = bench.compose_cfg([*tiny(), "model.arch=mlp", "model.hidden=32", "model.latent_dim=4",
                             "dataset.image_size=16", "dataset.channels=1"])  # fmt: skip
    b, d, h, z = int(cfg.trainer.batch_size), 16 * 16, 32, 4
    layers = [(d, h), (h, 2 * z), (z, h), (h, d)]
    forward = sum(2 * b * i * o for i, o in layers)
    expected = 3 * forward - 2 * b * d * h  # the first layer's input gradient is not computed
    assert bench.step_flops(cfg) == expected


def test_results_of_another_machine_are_never_overwritten(bench, tmp_path):
    """The host name can stay while the CPU changes: a second machine's run of the same day
    goes to a new file; the same machine's run updates its own."""
    amd, intel = {"cpu": "AMD EPYC"}, {"cpu": "Intel Xeon"}
    name = "bench_vm_2026-12-02"
    assert bench.results_stem(tmp_path, name, amd) == tmp_path / name
    (tmp_path / f"{name}.json").write_text(json.dumps(amd))
    assert bench.results_stem(tmp_path, name, amd) == tmp_path / name
    assert bench.results_stem(tmp_path, name, intel) == tmp_path / f"{name}-2"
    (tmp_path / f"{name}-2.json").write_text(json.dumps(intel))
    assert bench.results_stem(tmp_path, name, intel) == tmp_path / f"{name}-2"
    assert bench.results_stem(tmp_path, name, {"cpu": "Arm"}) == tmp_path / f"{name}-3"


@pytest.mark.slow
@pytest.mark.full
def test_device_check_runs_every_family_and_mid_size_case(tmp_path):
    """The GPU script's plumbing, on the CPU (--smoke: a few steps, a quick compile backend):
    every registered family in each variant and both mid-size cases run through aigc's loop
    and report throughput, MFU and auto's pick, in the JSON and the markdown table."""
    from aigc_cli.registry import MODELS

    spec = importlib.util.spec_from_file_location(
        "aigc_device_check", REPO / "bench" / "device_check.py"
    )
    dc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dc)
    results = dc.main([str(tmp_path), "--smoke"])
    cases = results["cases"]
    assert {k: v["error"] for k, v in cases.items() if "error" in v} == {}
    assert {name.split("_")[0] for name in cases} >= set(MODELS.names())
    assert {"gpt_mid_32", "gpt_mid_bf16", "dcgan64_32", "dcgan64_bf16"} <= set(cases)
    for name, entry in cases.items():
        assert entry["samples_per_s"] > 0 and entry["mfu"] > 0, name
        assert entry["precision"] == ("bf16" if "bf16" in name else "32"), name
    assert all("auto_pick" in e for n, e in cases.items() if n.endswith(("_fp32", "_32")))
    table = (tmp_path / "device_results.md").read_text()
    assert all(f"| {name} |" in table for name in cases)
    assert (
        json.loads((tmp_path / "device_results.json").read_text())["cases"].keys() == cases.keys()
    )
