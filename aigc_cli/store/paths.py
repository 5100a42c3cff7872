"""The one outputs root: where runs and sweeps go, and where every "newest run" lookup
(`run=` left out, `resume=latest`, `resume_sweep=latest`, the FID classifier) searches.
`paths.outputs=<dir>` on any command sets it, else $AIGC_OUTPUTS, else ./outputs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from aigc_cli.errors import ConfigError

ENV = "AIGC_OUTPUTS"
KEY = "paths.outputs="
_root: str | None = None  # this command's paths.outputs, when given


def outputs_root() -> Path:
    return Path(_root or os.environ.get(ENV) or "outputs").expanduser()


def ensure_root() -> None:
    """Create an outputs root the user set (./outputs is left to Hydra), or say in one line why
    it cannot be."""
    if not (_root or os.environ.get(ENV)):
        return
    root = outputs_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"cannot create the outputs root {root}: {e.strerror or e}",
            hint=f"set paths.outputs=<dir> or ${ENV} to a writable place",
        ) from e


@contextlib.contextmanager
def command_line_root(args: list[str]) -> Iterator[None]:
    """paths.outputs from a command's overrides, for the command's life: it is read before
    Hydra composes (the resume and sweep shortcuts resolve `latest` before that), and the next
    command in the same process starts without it."""
    global _root
    given = [a[len(KEY) :] for a in args if a.startswith(KEY)]
    before, _root = _root, (given[-1] if given else None)
    try:
        yield
    finally:
        _root = before
