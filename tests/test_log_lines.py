"""Off a terminal (nohup, a batch system, `| tee`) a run prints one plain line per logged step,
and <run>/train.log holds the same lines, the config and a failed run's traceback."""

from __future__ import annotations

import re

from .helpers import run_cli, tiny_overrides

LINE = re.compile(r"^step (\d+)/6 \| model/loss [0-9.e+-]+ \| \d+ samples/s \| elapsed "
                  r"\d+:\d\d:\d\d \| ETA \d+:\d\d:\d\d$", re.M)  # fmt: skip


def test_plain_lines_off_a_terminal_and_in_train_log(tmp_path):
    args = [a for a in tiny_overrides() if a != "trainer.progress=false"]
    out = run_cli("train", *args, "hydra.run.dir=run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert [int(m) for m in LINE.findall(out.stdout)] == [2, 3, 4, 6]  # log, eval, ckpt steps
    log = (tmp_path / "run" / "train.log").read_text()
    assert [int(m) for m in LINE.findall(log)] == [2, 3, 4, 6]
    assert "latent_dim: 4" in log  # the resolved config


def test_progress_false_keeps_the_lines_and_a_failure_is_logged(tmp_path):
    out = run_cli("train", *tiny_overrides(), "hydra.run.dir=ok", cwd=tmp_path)  # progress=false
    assert [int(m) for m in LINE.findall(out.stdout)] == [2, 3, 4, 6]
    out = run_cli("train", *tiny_overrides(), "optim.lr=1e6", "trainer.max_steps=40",
                  "hydra.run.dir=bad", cwd=tmp_path)  # fmt: skip
    assert out.returncode != 0 and "non-finite loss" in out.stderr
    assert "Traceback" not in out.stderr
    log = (tmp_path / "bad" / "train.log").read_text()
    assert "Traceback" in log and "non-finite loss" in log


def _run_until_first_line(args: list[str], cwd, stop_after: str | None) -> int:
    """The CLI as a batch system runs it; SIGUSR1 (a pre-emption warning) once a step line
    containing `stop_after` appears."""
    import os
    import signal
    import subprocess
    import sys

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen([sys.executable, "-m", "aigc_cli", "train", *args], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        if stop_after and line.startswith("step ") and stop_after in line:
            proc.send_signal(signal.SIGUSR1)
            stop_after = None
    return proc.wait(timeout=600)


def test_requeued_command_line_ends_at_the_unbroken_run(tmp_path):
    """`resume=auto` + the same command line three times, pre-empted twice: the weights end
    where one unbroken run ends."""
    import torch

    from aigc_cli.store.checkpoint import load_checkpoint

    common = [*tiny_overrides(), "trainer.max_steps=12", "trainer.log_every=1",
              "trainer.ckpt_every=100"]  # fmt: skip
    assert _run_until_first_line([*common, "hydra.run.dir=whole"], tmp_path, None) == 0
    job = [*common, "resume=auto", "hydra.run.dir=job"]
    assert _run_until_first_line(job, tmp_path, "step 3/") == 128 + 10  # SIGUSR1
    assert _run_until_first_line(job, tmp_path, "step 7/") == 128 + 10
    assert _run_until_first_line(job, tmp_path, None) == 0
    a, b = (load_checkpoint(tmp_path / d / "checkpoints" / "last.pt") for d in ("whole", "job"))
    assert a["step"] == b["step"] == 12
    assert all(torch.equal(v, b["model_state"][k]) for k, v in a["model_state"].items())
