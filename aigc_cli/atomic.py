"""Every file aigc writes goes through `write_atomic`: a crash at any moment leaves either the
old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from aigc_cli.errors import AigcError


class WriteError(AigcError):
    """A file could not be written (disk full, no permission); the previous one is kept."""


def write_atomic(
    path: Path,
    write: Callable[[BinaryIO], None],
    what: str = "file",
    error: type[AigcError] = WriteError,
) -> None:
    """Write a temporary file in the same folder, fsync it, rename it over `path`, fsync the
    folder (so the rename itself survives a power cut). An OSError becomes `error`'s one line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp's file is private (0600); the written file gets the usual permissions.
        os.chmod(tmp, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise error(
                f"could not write {what} {path}: {e.strerror or e}",
                hint=f"the previous {what} is kept; free disk space or change the output dir",
            ) from e
        raise
    fsync_dir(path.parent)


def write_bytes(path: Path, data: bytes, what: str = "file") -> None:
    write_atomic(path, lambda f: f.write(data), what)


def write_text(path: Path, text: str, what: str = "file") -> None:
    write_bytes(path, text.encode(), what)


def write_json(path: Path, obj: Any, what: str = "file") -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n", what)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
