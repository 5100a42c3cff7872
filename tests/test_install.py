"""A plain (non-editable) `pip install .` carries the configs: aigc trains from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from .conftest import REPO


@pytest.mark.slow
def test_pip_install_then_train_elsewhere(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    # Only aigc itself is installed into the new venv; pip, setuptools and aigc's dependencies
    # (torch, ...) are borrowed from this environment through a .pth file, not reinstalled.
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(REPO)],
        check=True,
        timeout=900,
    )
    where = subprocess.run(
        [str(py), "-c", "import aigc_cli; print(aigc_cli.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    assert str(venv) in where, where  # the installed copy, not the source tree
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    out = subprocess.run(
        [
            str(venv / "bin" / "aigc"),
            "train",
            "trainer.max_steps=2",
            "trainer.progress=false",
            "dataset.train_size=64",
            "dataset.test_size=16",
            "trainer.batch_size=8",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert list(work.glob("outputs/*/*/checkpoints/last.pt"))


def test_every_subpackage_is_packaged():
    """pyproject lists packages by hand (configs/ is mapped into aigc_cli.configs), so a new
    subpackage left off that list would be missing from a plain `pip install .`."""
    tomllib = pytest.importorskip("tomllib")
    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    on_disk = {
        ".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "aigc_cli").rglob("__init__.py")
    }
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert "aigc_cli.configs" in listed
