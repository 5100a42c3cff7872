"""Off a terminal (nohup, a batch system, `| tee`) a run prints one plain line per logged step,
and <run>/train.log holds the same lines, the config and a failed run's traceback."""

from __future__ import annotations

import re

from .conftest import run_cli, tiny_overrides

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
