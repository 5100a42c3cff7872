import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch

from aigc_cli.errors import CheckpointError
from aigc_cli.store.checkpoint import (
    FORMAT_VERSION,
    load_checkpoint,
    save_checkpoint,
    save_rotating,
)


def test_round_trip(tmp_path):
    path = tmp_path / "c" / "last.pt"
    save_checkpoint({"step": 3, "w": torch.arange(4.0), "rng": (3, (1, 2), None)}, path)
    ckpt = load_checkpoint(path)
    assert ckpt["format_version"] == FORMAT_VERSION and ckpt["step"] == 3
    assert torch.equal(ckpt["w"], torch.arange(4.0))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp files left


def test_failed_write_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(CheckpointError, match=r"No space left.*previous checkpoint is kept"):
        save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"w": torch.randn(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_newer_format_refused(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"format_version": FORMAT_VERSION + 1}, path)
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(path)


class _Payload:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.makedirs, (self.target,))


def test_malicious_checkpoint_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "x": _Payload(str(marker))}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


def test_rotation_keeps_newest_and_last_points_at_it(tmp_path):
    folder = tmp_path / "checkpoints"
    for step in range(1, 6):
        save_rotating({"step": step, "w": torch.full((3,), float(step))}, folder, step, keep=2)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["last.pt", "step_0000004.pt", "step_0000005.pt"]
    assert load_checkpoint(folder / "last.pt")["step"] == 5
    assert load_checkpoint(folder / "step_0000004.pt")["step"] == 4
    # last.pt shares the newest file's data instead of being a second copy
    assert os.path.samefile(folder / "last.pt", folder / "step_0000005.pt")


def test_rotation_clears_temporary_files_of_a_killed_writer(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / ".step_0000002.pt.abc.tmp").write_bytes(b"half a checkpoint")
    save_rotating({"step": 3}, folder, 3, keep=3)
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt", "step_0000003.pt"]


WRITER = """
import sys, torch
from aigc_cli.store.checkpoint import save_rotating
w = torch.randint(0, 10**6, (4_000_000,), dtype=torch.int32)  # 16 MB: slow enough to kill mid-write
for step in range(1, 1000):
    print("writing", step, flush=True)
    save_rotating({"step": step, "w": w + step}, sys.argv[1], step, keep=2)
"""


@pytest.mark.slow  # a second interpreter that imports torch
def test_sigkill_while_writing_leaves_a_loadable_checkpoint(tmp_path):
    folder = tmp_path / "checkpoints"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        for _ in range(3):  # two complete checkpoints, then kill during the third write
            assert proc.stdout.readline().startswith("writing"), "the writer did not start"
        time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    newest = load_checkpoint(folder / "last.pt")
    assert newest["step"] >= 2
    steps = sorted(folder.glob("step_*.pt"))
    assert steps, "no step checkpoint left"
    w = newest["w"] - newest["step"]
    for path in steps:  # every file with a final name is complete and consistent
        ckpt = load_checkpoint(path)
        assert path.name == f"step_{ckpt['step']:07d}.pt"
        assert torch.equal(ckpt["w"] - ckpt["step"], w)
