"""The one outputs root: where runs and sweeps go, and where every "newest run" lookup
(`run=` left out, `resume=latest`, `resume_sweep=latest`, the FID classifier) searches.
`paths.outputs=<dir>` on any command sets it, else $AIGC_OUTPUTS, else ./outputs."""

from __future__ import annotations

import os
from pathlib import Path

ENV = "AIGC_OUTPUTS"
KEY = "paths.outputs="
_root: str | None = None  # this command's paths.outputs, when given


def outputs_root() -> Path:
    return Path(_root or os.environ.get(ENV) or "outputs").expanduser()


def ensure_root() -> None:
    """Create an outputs root the user set (./outputs is left to Hydra), or say in one line why
    it cannot be."""
    from aigc_cli.errors import ConfigError

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


def use_command_line(args: list[str]) -> None:
    """Take paths.outputs from a command's overrides, before Hydra composes (the resume and
    sweep shortcuts resolve `latest` before that)."""
    global _root
    given = [a[len(KEY) :] for a in args if a.startswith(KEY)]
    _root = given[-1] if given else None
