"""Tiny CPU configs composed through Hydra exactly as the CLI composes them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Small enough that a whole run takes a second or two on a laptop CPU.
TINY = [
    "trainer.max_steps=6",
    "trainer.batch_size=8",
    "trainer.log_every=2",
    "trainer.eval_every=3",
    "trainer.sample_every=3",
    "trainer.ckpt_every=3",
    "trainer.num_samples=8",
    "trainer.progress=false",
    "trainer.device=cpu",
    "trainer.eval_samples=200",
]
TINY_DATA = {
    "shapes": ["dataset.train_size=64", "dataset.test_size=16"],
    "gaussians": ["dataset.train_size=256", "dataset.test_size=64"],
}
TINY_MODEL = {
    "vae": ["model.latent_dim=4", "model.base_channels=8", "model.max_channels=16"],
    "classifier": ["model.base_channels=8", "model.max_channels=16", "model.feature_dim=32"],
}


def tiny_overrides(model: str = "vae", dataset: str = "shapes") -> list[str]:
    return [
        f"model={model}",
        f"dataset={dataset}",
        *TINY,
        *TINY_DATA.get(dataset, []),
        *TINY_MODEL.get(model, []),
    ]


@pytest.fixture(scope="session", autouse=True)
def dataset_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Rendered built-in datasets are cached in a folder of this session (subprocesses inherit
    it), not in the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("aigc_cache")
    os.environ["AIGC_CACHE"] = str(folder)
    return folder


def pytest_runtest_setup(item: pytest.Item) -> None:
    """CI sets AIGC_TEST_DEADLINE (Unix time) for the slow tests: tests that would start after it
    are skipped, so the run ends with a report instead of being killed mid-test."""
    deadline = os.environ.get("AIGC_TEST_DEADLINE")
    if deadline and time.time() > float(deadline):
        pytest.skip("CI's time budget is spent (AIGC_TEST_DEADLINE)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked long run last: when CI's time budget cuts the slow tests off, it cuts the
    long trainings rather than the many short checks."""
    items.sort(key=lambda item: item.get_closest_marker("long") is not None)


@pytest.fixture
def make_cfg() -> Callable[..., DictConfig]:
    def _make(
        *overrides: str, model: str = "vae", dataset: str = "shapes", config: str = "train"
    ) -> DictConfig:
        with initialize_config_module(config_module="aigc_cli.configs", version_base="1.3"):
            base = tiny_overrides(model, dataset) if config == "train" else []
            return compose(config, overrides=[*base, *overrides])

    return _make


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 1800
) -> subprocess.CompletedProcess[str]:
    """`python -m aigc_cli ...` in a subprocess, as a user runs it."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    if env and "HYDRA_FULL_ERROR" in env:
        full_env["HYDRA_FULL_ERROR"] = env["HYDRA_FULL_ERROR"]
    return subprocess.run(
        [sys.executable, "-m", "aigc_cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def event_tags(run_dir: Path) -> dict[str, list[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    return acc.Tags()


@pytest.fixture
def run_main(tmp_path, monkeypatch, capsys):
    """`aigc ...` in this process (no interpreter start-up): returns (exit code, stdout, stderr)."""
    from hydra.core.global_hydra import GlobalHydra

    from aigc_cli.cli.app import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["aigc"])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def _run(*args: str) -> tuple[int, str, str]:
        GlobalHydra.instance().clear()
        capsys.readouterr()  # only this command's output: drop what the test printed before
        code = 0
        try:
            main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return _run
