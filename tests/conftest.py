"""Fixtures: tiny CPU configs composed through Hydra exactly as the CLI composes them, `aigc`
run in this process, the dataset cache and CI's time budget. Shared helpers: helpers.py."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from .helpers import tiny_overrides


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
