"""Start-up: the cyclic garbage collector paused until the run is built (startup), and a
config that asks for a sweep still sweeps."""

from __future__ import annotations

import gc

from aigc_cli import startup

from .helpers import tiny_overrides

ONE_STEP = [*tiny_overrides(), "trainer.max_steps=1", "trainer.log_every=1"]


def test_a_config_that_asks_for_a_sweep_still_sweeps(run_main, tmp_path):
    """hydra.mode=MULTIRUN from the command line (as an hparams_search config sets it) runs
    one job per value, in the sweep dir."""
    code, out, err = run_main("train", *ONE_STEP, "hydra.mode=MULTIRUN", "optim.lr=1e-3,3e-4",
                              f"hydra.sweep.dir={tmp_path / 'sweep'}")  # fmt: skip
    assert code == 0, err + out
    assert len(list((tmp_path / "sweep").rglob("checkpoints/last.pt"))) == 2


def _record_collector(monkeypatch) -> dict:
    """The collector's state (enabled, frozen count) as setup starts and at the first step."""
    import aigc_cli.training.loop as training

    seen = {}
    real_setup, real_step = training.setup, training.train_step

    def setup(*args, **kwargs):
        seen["setup"] = (gc.isenabled(), gc.get_freeze_count())
        return real_setup(*args, **kwargs)

    def train_step(*args, **kwargs):
        seen.setdefault("loop", (gc.isenabled(), gc.get_freeze_count()))
        return real_step(*args, **kwargs)

    monkeypatch.setattr(training, "setup", setup)
    monkeypatch.setattr(training, "train_step", train_step)
    return seen


def test_collector_paused_until_the_loop_then_given_back(run_main, monkeypatch):
    seen = _record_collector(monkeypatch)
    assert gc.isenabled() and gc.get_freeze_count() == 0
    code, _, err = run_main("train", *ONE_STEP)
    assert code == 0, err
    assert seen["setup"][0] is False  # paused while building the run
    enabled, frozen = seen["loop"]
    assert enabled and frozen > 10_000  # on in the loop, start-up's objects out of its scans
    assert gc.isenabled() and gc.get_freeze_count() == 0  # the command gave them back


def test_a_failed_command_turns_the_collector_back_on(run_main):
    code, _, _ = run_main("train", *ONE_STEP, "model=vea")
    assert code == 2
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_library_use_leaves_the_collector_alone(monkeypatch, tmp_path):
    """aigc_cli.train and aigc_cli.load in a user's process: the collector stays on, nothing
    frozen, at every point; and startup.resume without a pause does nothing."""
    import aigc_cli

    seen = _record_collector(monkeypatch)
    aigc_cli.train(ONE_STEP, run_dir=tmp_path / "api")
    assert seen == {"setup": (True, 0), "loop": (True, 0)}
    aigc_cli.load(tmp_path / "api")
    assert gc.isenabled() and gc.get_freeze_count() == 0
    startup.resume()
    startup.end()
    assert gc.isenabled() and gc.get_freeze_count() == 0
    gc.disable()
    try:
        startup.pause()  # the user's own choice: off, and it stays off
        startup.resume()
        startup.end()
        assert not gc.isenabled() and gc.get_freeze_count() == 0
    finally:
        gc.enable()
