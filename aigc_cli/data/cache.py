"""A disk cache for built-in datasets that are pure functions of their config (the rendered
shapes): the first run renders and stores them, later runs read the tensors back (far
faster than rendering), so `aigc train` reaches its first step sooner. Files are safetensors
(no code runs on load) under $AIGC_CACHE or ~/.cache/aigc, written atomically; a damaged or
unwritable cache only costs the rendering. AIGC_CACHE=off disables it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from safetensors.torch import load_file, save
from torch import Tensor

from aigc_cli.atomic import write_bytes

ENV = "AIGC_CACHE"


def cache_dir() -> Path | None:
    value = os.environ.get(ENV)
    if value == "off":
        return None
    return Path(value).expanduser() if value else Path.home() / ".cache" / "aigc"


def cached(
    name: str, key: dict, version: int, make: Callable[[], dict[str, Tensor]]
) -> dict[str, Tensor]:
    """`make()`'s tensors, from the cache when an entry for (`name`, `key`, `version`) exists.
    `version` changes whenever `make` would draw something else from the same key."""
    folder = cache_dir()
    digest = hashlib.sha256(json.dumps([name, key, version], sort_keys=True).encode()).hexdigest()
    path = folder / f"{name}-{digest[:20]}.safetensors" if folder else None
    if path is not None and path.is_file():
        with contextlib.suppress(Exception):  # a damaged entry: render again and replace it
            return load_file(str(path))
    tensors = make()
    if path is not None:
        # a read-only home or a full disk: the cache is only a speed-up
        with contextlib.suppress(Exception):
            write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}))
    return tensors
