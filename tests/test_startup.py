"""Start-up: one config composition per single run (compose_once), and the garbage collector
paused until the run is built (startup). Both must leave everything a run writes unchanged."""

from __future__ import annotations

import difflib
import gc
from pathlib import Path

import pytest

from aigc_cli import startup
from aigc_cli.cli import compose_once

from .helpers import tiny_overrides

ONE_STEP = [*tiny_overrides(), "trainer.max_steps=1", "trainer.log_every=1"]
GAN_STEP = [*tiny_overrides("gan", "gaussians"), "trainer.max_steps=1", "trainer.log_every=1"]


def _count_compositions(mp: pytest.MonkeyPatch) -> list[int]:
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    calls = [0]
    original = ConfigLoaderImpl.load_configuration

    def counted(self, *args, **kwargs):
        calls[0] += 1
        return original(self, *args, **kwargs)

    mp.setattr(ConfigLoaderImpl, "load_configuration", counted)
    return calls


def _hydra_files(run_dir: Path) -> dict[str, str]:
    return {
        name: (run_dir / ".hydra" / name).read_text().replace(str(run_dir), "<run>")
        for name in ("config.yaml", "hydra.yaml", "overrides.yaml")
    }


def _both_ways(run_main, tmp_path: Path, *args: str) -> list[tuple]:
    """The command with one composition, then with Hydra's two: (code, stderr, files, count)."""
    out = []
    for once in (True, False):
        run_dir = tmp_path / ("once" if once else "twice")
        with pytest.MonkeyPatch.context() as mp:
            calls = _count_compositions(mp)
            if not once:
                mp.setattr(compose_once, "install", lambda: False)
                compose_once.uninstall()
            code, _, err = run_main("train", *args, f"hydra.run.dir={run_dir}")
        files = _hydra_files(run_dir) if (run_dir / ".hydra").is_dir() else {}
        out.append((code, err.replace(str(run_dir), "<run>"), files, calls[0]))
    return out


@pytest.mark.parametrize(
    "args",
    [
        ONE_STEP,
        [*ONE_STEP, "hydra.mode=RUN", "optim.lr=3e-4"],
        [*GAN_STEP, "seed=3", "trainer.ema=false"],
    ],
    ids=["defaults", "explicit-mode", "other-model"],
)
def test_one_composition_writes_what_two_did(run_main, tmp_path, args):
    (code1, err1, files1, n1), (code2, err2, files2, n2) = _both_ways(run_main, tmp_path, *args)
    assert code1 == code2 == 0, err1 + err2
    assert (n1, n2) == (1, 2)
    for name, text in files2.items():
        diff = difflib.unified_diff(text.splitlines(), files1[name].splitlines(), lineterm="")
        assert files1[name] == text, f"{name}:\n" + "\n".join(diff)
    assert "mode: RUN" in files1["hydra.yaml"]


@pytest.mark.parametrize(
    "bad",
    ["optim.lr=1e-3,3e-4", "model=vea", "trainer.nope=1"],
    ids=["sweep-without-m", "unknown-model", "unknown-key"],
)
def test_errors_are_hydras_own(run_main, tmp_path, bad):
    (code1, err1, _, _), (code2, err2, _, _) = _both_ways(run_main, tmp_path, *ONE_STEP, bad)
    assert code1 == code2 == 2
    assert err1 == err2 and err1.strip()


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
