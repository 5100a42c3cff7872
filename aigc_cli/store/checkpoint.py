"""Self-describing checkpoints: written atomically, read without running any pickled code."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from aigc_cli.atomic import fsync_dir, write_atomic
from aigc_cli.errors import CheckpointError

FORMAT_VERSION = 1


def save_checkpoint(obj: dict[str, Any], path: Path) -> None:
    """Atomically write `obj`, stamped with the format version, as a torch checkpoint."""
    stamped = {"format_version": FORMAT_VERSION, **obj}
    write_atomic(path, lambda f: torch.save(stamped, f), "checkpoint", CheckpointError)


def save_rotating(obj: dict[str, Any], folder: Path, step: int, keep: int) -> Path:
    """Write `folder/step_XXXXXXX.pt`, point `folder/last.pt` at it, and delete all but the
    newest `keep` step files. `last.pt` is a hard link (no second copy on disk) swapped in with
    a rename, so at every instant it is a complete checkpoint: the old one or the new one."""
    folder = Path(folder)
    # Temporary files of a writer that was killed mid-write (one run has one writer).
    for stale in folder.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    path = folder / f"step_{step:07d}.pt"
    save_checkpoint(obj, path)
    last = folder / "last.pt"
    tmp = folder / ".last.pt.link"
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:  # a filesystem without hard links: a second atomic write instead
        save_checkpoint(obj, last)
    else:
        os.replace(tmp, last)
        fsync_dir(folder)
    for old in sorted(folder.glob("step_*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with `weights_only=True`: tensors and plain containers only, never code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # The safe unpickler names the global it refused to import; anything else it rejects
        # (an unknown opcode) is bytes that are not a pickle at all.
        if "global" not in str(e).lower():
            raise CheckpointError(
                f"checkpoint {path} is corrupt or truncated ({str(e).splitlines()[0][:120]})",
                hint="use another checkpoint of the run, or retrain",
            ) from e
        raise CheckpointError(
            f"refused to load {path}: it holds objects other than tensors and plain data "
            "(it may try to run code)",
            hint="only load checkpoints written by aigc",
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError,
            IndexError, TypeError, AttributeError) as e:  # fmt: skip
        # weights_only's unpickler reads plain data only, so any other exception from it is
        # bytes that are not a checkpoint (a text file fails on an unknown memo key).
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({str(e).splitlines()[0][:120]})",
            hint="use another checkpoint of the run, or retrain",
        ) from e
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        raise CheckpointError(f"{path} is not an aigc checkpoint (no format_version)")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {ckpt['format_version']}, newer than this aigc "
            f"reads ({FORMAT_VERSION})",
            hint="upgrade aigc",
        )
    return ckpt
