"""A plain (non-editable) `pip install .` carries the configs: aigc trains from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from .helpers import REPO


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


def test_wheel_holds_every_module_and_config(tmp_path):
    """Packages are discovered, not listed: a wheel built from the tree holds every module and
    every YAML config, so a new family needs no packaging edit."""
    import shutil
    import zipfile

    src = tmp_path / "src"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(
        REPO / "aigc_cli", src / "aigc_cli", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    on_disk = {
        p.relative_to(REPO).as_posix()
        for pattern in ("*.py", "*.yaml")
        for p in (REPO / "aigc_cli").rglob(pattern)
        if "__pycache__" not in p.parts
    }
    assert on_disk - names == set()
