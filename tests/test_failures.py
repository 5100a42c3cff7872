"""What happens when training is interrupted or goes wrong: signals, non-finite losses, failed
checkpoint writes, out of memory."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from aigc_cli.errors import ConfigError, TrainingError
from aigc_cli.models.vae import VAE
from aigc_cli.noise import LOCAL
from aigc_cli.store.checkpoint import load_checkpoint
from aigc_cli.training.loop import train
from aigc_cli.training.signals import StopFlag, TrainingInterrupted

from .helpers import read_scalars, tiny_overrides


def _poison(monkeypatch, bad_steps: set[int], error: BaseException | None = None) -> None:
    """Make the VAE's loss NaN (or raise `error`) at the given steps."""
    original = VAE.training_step

    def training_step(self, batch, step, noise=LOCAL):
        if step in bad_steps and error is not None:
            raise error
        for stage in original(self, batch, step, noise):
            if step in bad_steps:
                stage.loss = stage.loss * float("nan")
                stage.scalars["loss"] = stage.loss.detach()
            yield stage

    monkeypatch.setattr(VAE, "training_step", training_step)


def _finite(state: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(make_cfg, tmp_path, monkeypatch):
    _poison(monkeypatch, {3})  # the 4th step (steps count from 0 inside training_step)
    cfg = make_cfg("trainer.log_every=1", "trainer.ckpt_every=1")
    with pytest.raises(TrainingError, match=r"non-finite loss by step 4: model/loss=nan") as e:
        train(cfg, run_dir=tmp_path)
    assert "model/recon=" in str(e.value) and "on_nonfinite=skip" in str(e.value)
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["step"] == 3 and _finite(ckpt["model_state"])


def test_nonfinite_loss_can_be_skipped(make_cfg, tmp_path, monkeypatch):
    _poison(monkeypatch, {1, 3})
    metrics = train(make_cfg("trainer.on_nonfinite=skip", "trainer.log_every=1"), run_dir=tmp_path)
    assert math.isfinite(metrics["test/nelbo"])
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["step"] == 6 and _finite(ckpt["model_state"])
    skipped = read_scalars(tmp_path)["train/skipped_steps"]
    assert skipped[-1] == (6, 2.0)


def test_failed_periodic_checkpoint_warns_and_training_goes_on(
    make_cfg, tmp_path, monkeypatch, capsys
):
    import aigc_cli.store.checkpoint as checkpoint

    real_save = torch.save
    calls = {"n": 0}

    def flaky_save(obj, f, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # writes at steps 2, 4, 6: the one at step 4 fails
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(checkpoint.torch, "save", flaky_save)
    train(make_cfg("trainer.ckpt_every=2"), run_dir=tmp_path)
    out = capsys.readouterr().out
    assert "No space left on device" in out and "previous checkpoint is kept" in out
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["last.pt", "step_0000002.pt", "step_0000006.pt"]
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 6


def test_out_of_memory_is_one_line_with_a_fix(run_main, monkeypatch):
    _poison(monkeypatch, {0}, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    code, out, err = run_main("train", *tiny_overrides())
    assert code != 0 and "Traceback" not in err + out
    assert "out of memory on cpu at trainer.batch_size=8" in err
    assert "smaller trainer.batch_size" in err


def test_sigterm_checkpoints_then_resume_matches_uninterrupted(make_cfg, tmp_path, monkeypatch):
    common = ["trainer.log_every=1", "trainer.deterministic=true"]
    full = tmp_path / "full"
    train(make_cfg(*common), run_dir=full)

    original = VAE.training_step

    def training_step(self, batch, step, noise=LOCAL):
        if step == 2:  # arrives during step 3; the loop finishes it, then stops
            os.kill(os.getpid(), signal.SIGTERM)
        yield from original(self, batch, step, noise)

    monkeypatch.setattr(VAE, "training_step", training_step)
    part = tmp_path / "part"
    with pytest.raises(TrainingInterrupted, match="SIGTERM received: stopped after step 3") as e:
        train(make_cfg(*common), run_dir=part)
    assert e.value.exit_code == 143 and f"aigc train resume={part}" in str(e.value)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    monkeypatch.undo()

    assert load_checkpoint(part / "checkpoints" / "last.pt")["step"] == 3
    train(make_cfg(*common), resume=part)
    a = load_checkpoint(full / "checkpoints" / "last.pt")["model_state"]
    b = load_checkpoint(part / "checkpoints" / "last.pt")["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    curve = read_scalars(part)["model/loss"]
    assert [s for s, _ in curve] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in curve] == [v for _, v in read_scalars(full)["model/loss"]]


def test_second_signal_exits_at_once():
    """The second SIGINT hands over to the handler that was there before: Python's own, which
    raises KeyboardInterrupt. A process started in the background by a non-interactive shell
    inherits SIGINT ignored (and pytest then has no KeyboardInterrupt to raise), so the test
    puts Python's handler in place first, as an interactive start has it."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        stop = StopFlag()
        with stop.installed():
            signal.raise_signal(signal.SIGINT)  # delivered to this thread, handled at once
            assert stop.signum == signal.SIGINT
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.slow
def test_ctrl_c_in_a_real_process_checkpoints_and_says_how_to_resume(tmp_path, run_main):
    """`aigc train` in a subprocess gets SIGINT mid-run: exit 130, a checkpoint, a resume hint;
    `aigc train resume=latest` then continues the same run to its end."""
    args = [*tiny_overrides(), "trainer.max_steps=100000", "trainer.ckpt_every=1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "aigc_cli", "train", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 900
        while not list(tmp_path.glob("outputs/*/*/checkpoints/last.pt")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "training never wrote a checkpoint"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err + out
    assert "SIGINT received: stopped after step" in err and "aigc train resume=" in err
    (ckpt_path,) = tmp_path.glob("outputs/*/*/checkpoints/last.pt")
    stopped_at = load_checkpoint(ckpt_path)["step"]
    assert 1 <= stopped_at < 100000

    code, _, err = run_main("train", "resume=latest", f"trainer.max_steps={stopped_at + 2}")
    assert code == 0, err
    assert load_checkpoint(ckpt_path)["step"] == stopped_at + 2
    steps = [s for s, _ in read_scalars(ckpt_path.parent.parent)["model/loss"]]
    assert steps == sorted(set(steps)) and steps[-1] == stopped_at + 2


def test_best_checkpoint_follows_the_chosen_metric(make_cfg, tmp_path, run_main):
    cfg = make_cfg("trainer.eval_every=2", "trainer.best_metric=nelbo")
    train(cfg, run_dir=tmp_path / "run")
    curve = read_scalars(tmp_path / "run")["test/nelbo"]  # steps 2, 4 and the final 6
    best_step, best_value = min(curve, key=lambda sv: sv[1])
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert best["step"] == best_step
    assert best["best"]["value"] == pytest.approx(best_value, rel=1e-5)
    code, out, err = run_main("eval", f"run={tmp_path / 'run'}", "checkpoint=best")
    assert code == 0 and f"(step {best_step})" in out.replace("\n", ""), err

    with pytest.raises(ConfigError, match=r"'elbo' is not a test metric.*choose from: nelbo"):
        train(make_cfg("trainer.best_metric=elbo"), run_dir=tmp_path / "bad")
    # a sample metric is known, but needs its group computed
    with pytest.raises(ConfigError, match=r"best_metric=fid is computed only when metrics.names"):
        train(make_cfg("trainer.best_metric=fid"), run_dir=tmp_path / "bad2")
