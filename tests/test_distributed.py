"""Data-parallel training under torchrun (gloo on CPU): same result as one process with the same
global batch, one writer, shards that partition every epoch, clear refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aigc_cli import distributed
from aigc_cli.data.base import DataSpec, TensorData
from aigc_cli.distributed import ShardedBatches, World
from aigc_cli.errors import ConfigError

from .helpers import checkpoint, tiny_overrides, two_ranks

STEPS = [
    "trainer.max_steps=4",
    "trainer.batch_size=8",
    "trainer.eval_every=2",
    "trainer.ckpt_every=2",
    "trainer.sample_every=0",
]


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def test_shards_partition_each_global_batch():
    x = torch.arange(40).float().view(40, 1)
    data = TensorData(DataSpec(kind="points", shape=[1]), (x, torch.zeros(40)), (x, x))
    seen = {}
    for rank in range(2):
        it = ShardedBatches(data.train_iter(8, seed=3), World(rank=rank, size=2))
        seen[rank] = [next(it)[0].flatten().tolist() for _ in range(5)]  # one epoch
    whole = data.train_iter(8, seed=3)
    for step in range(5):
        full = next(whole)[0].flatten().tolist()
        assert seen[0][step] + seen[1][step] == full  # rank 0 first half, rank 1 second half
    epoch = sorted(v for r in seen.values() for batch in r for v in batch)
    assert epoch == list(range(40))  # disjoint, and together the whole epoch


def test_global_batch_must_split_evenly():
    assert distributed.check_batch_size(8, World(0, 2)) == 4
    with pytest.raises(ConfigError, match="not divisible by the 3 ranks"):
        distributed.check_batch_size(8, World(0, 3))


def test_noise_matches_torch_in_one_process_and_slices_the_global_draw():
    from aigc_cli.noise import Noise

    x = torch.empty(5, 3)
    torch.manual_seed(0)
    a = Noise().randn_like(x)
    torch.manual_seed(0)
    assert torch.equal(a, torch.randn_like(x))
    torch.manual_seed(0)
    full = torch.randn(10, 3)
    for rank in range(2):
        torch.manual_seed(0)
        assert torch.equal(Noise(rank, 2).randn_like(x), full[rank * 5 : (rank + 1) * 5])


def test_sweep_inside_torchrun_is_refused(tmp_path):
    env = {**_env(), "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    out = subprocess.run(
        [sys.executable, "-m", "aigc_cli", "train", "-m", "optim.lr=1e-3,3e-4"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 2
    assert "cannot run inside torchrun" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "outputs").exists()


def _train_cli(args: list[str], cwd: Path, nproc: int) -> subprocess.CompletedProcess[str]:
    launcher = (
        [sys.executable, "-m", "aigc_cli"]
        if nproc == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "aigc_cli",
        ]
    )
    return subprocess.run(
        [*launcher, "train", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=1200,
    )


def test_two_forked_ranks_match_one_process(make_cfg, tmp_path):
    """Two gloo ranks × 4 samples against one process × 8 samples, in forked children so that
    no new interpreter imports torch: same weights, data position and pooled test metrics, and
    rank 0 alone writes. (test_two_ranks_match_one_process does the same through torchrun.)"""
    import json

    from aigc_cli.training.loop import train

    cfg = make_cfg(*STEPS)
    one, two = tmp_path / "one", tmp_path / "two"
    two_ranks(cfg, two)
    train(cfg, run_dir=one)

    a, b = checkpoint(one), checkpoint(two)
    assert a["step"] == b["step"] == 4 and a["data_state"] == b["data_state"]
    for k, v in a["model_state"].items():
        assert torch.allclose(v, b["model_state"][k], atol=1e-5, rtol=1e-4), k
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    for k, v in m1.items():
        if k.startswith("test/"):
            assert m2[k] == pytest.approx(v, rel=1e-4, abs=1e-5), k
    assert len(list((two / "tb").glob("events.out.tfevents.*"))) == 1
    listing = sorted(p.name for p in (one / "checkpoints").iterdir())
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == listing  # one writer


@pytest.mark.slow  # four interpreters that import torch: torchrun, 2 ranks, 1 process
def test_two_ranks_match_one_process(tmp_path):
    """2 gloo ranks × 4 samples follow the run of one process × 8 samples: same weights, same
    pooled test metrics; rank 0 alone writes events and checkpoints, into one run dir."""
    from aigc_cli.store.checkpoint import load_checkpoint

    runs = {}
    for nproc in (1, 2):
        run = tmp_path / f"np{nproc}"
        args = [*tiny_overrides("vae"), *STEPS, f"hydra.run.dir={run}"]
        out = _train_cli(args, tmp_path, nproc)
        assert out.returncode == 0, out.stderr[-3000:]
        runs[nproc] = run
    one, two = (load_checkpoint(runs[n] / "checkpoints" / "last.pt") for n in (1, 2))
    assert one["step"] == two["step"] == 4
    assert one["data_state"] == two["data_state"]
    for k, v in one["model_state"].items():
        assert torch.allclose(v, two["model_state"][k], atol=1e-5, rtol=1e-4), k
    earlier = load_checkpoint(min((runs[2] / "checkpoints").glob("step_*.pt")))
    assert earlier["step"] == 2
    changed = any(
        not torch.equal(v, two["model_state"][k]) for k, v in earlier["model_state"].items()
    )
    assert changed  # the weights moved between steps 2 and 4: the comparison is not vacuous
    import json

    m1, m2 = (json.loads((runs[n] / "metrics.json").read_text()) for n in (1, 2))
    for k, v in m1.items():
        if k.startswith("test/"):
            assert m2[k] == pytest.approx(v, rel=1e-4, abs=1e-5), k
    assert len(list((runs[2] / "tb").glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (runs[2] / "checkpoints").iterdir()) == sorted(
        p.name for p in (runs[1] / "checkpoints").iterdir()
    )
    assert not (tmp_path / "outputs").exists()  # the second rank made no run dir of its own


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank via /proc")
def test_a_dead_rank_ends_the_run(tmp_path):
    """Kill rank 1 mid-training: rank 0 ends with one line of its own, and torchrun
    ends the job with a failure instead of hanging."""
    import signal
    import time

    log = tmp_path / "out.txt"
    args = [*tiny_overrides("vae"), "trainer.max_steps=1000000", "trainer.eval_every=0"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    with log.open("w") as f:
        proc = subprocess.Popen(
            [*cmd, "-m", "aigc_cli", "train", *args, f"hydra.run.dir={tmp_path / 'run'}"],
            cwd=tmp_path,
            env=_env(),
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.time() + 600
        while "2 ranks" not in log.read_text() and time.time() < deadline:
            time.sleep(1)
        assert "2 ranks" in log.read_text(), log.read_text()[-2000:]
        time.sleep(3)  # well into the training loop
        killed = 0
        for entry in Path("/proc").iterdir():
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                cmdline = (entry / "cmdline").read_bytes()
            except (OSError, ValueError):
                continue
            if b"aigc_cli" in cmdline and b"RANK=1" in environ:
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
        assert killed == 1
        assert proc.wait(timeout=600) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    # Rank 0 either fails its next collective or first gets torchrun's SIGTERM and stops
    # cleanly with a checkpoint; both end in one line of its own.
    line = next(x for x in out.splitlines() if x.startswith("aigc: error (rank 0 of 2):"))
    assert "lost contact with the other ranks" in line or "SIGTERM received" in line
