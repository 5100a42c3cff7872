"""The cyclic garbage collector during a command's start-up. Importing torch (and Hydra, and
torch._dynamo with the first optimizer) allocates several hundred thousand long-lived objects:
modules, functions, classes. Every full collection on the way to the first step scans all of them
again, and those scans were a large part of aigc's start-up over a bare PyTorch script.

So `aigc` pauses the collector at launch (`pause`) and, once the run or model is built
(`resume`), freezes everything that exists then and turns the collector back on. Frozen objects
are never scanned again, so later full collections in the training loop are cheaper too. The
price is that cyclic garbage made during start-up is never freed; it is small (a collection at
that point frees no measurable memory), and reference counting still frees everything that is
not in a cycle, tensors included.

The command line pauses and, when the command returns, `end` gives the frozen objects back to
the collector, so `aigc ...` called in-process (tests, sweeps of the basic launcher) keeps
nothing beyond its own life. `aigc_cli.train()` and `aigc_cli.load()` in a user's process leave
its collector alone: `resume` does nothing unless `pause` turned the collector off."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

_state: str | None = None  # "paused", then "frozen"


def pause() -> None:
    """Stop cyclic collection until `resume`; a no-op when the collector is already off."""
    global _state
    if gc.isenabled() and _state is None:
        gc.disable()
        _state = "paused"


def resume() -> None:
    """Freeze what start-up made and turn the collector back on, if `pause` turned it off."""
    global _state
    if _state == "paused":
        gc.freeze()
        gc.enable()
        _state = "frozen"


def end() -> None:
    """The command is over: the collector back as it was, frozen objects collectable again."""
    global _state
    if _state == "paused":
        gc.enable()
    elif _state == "frozen":
        gc.unfreeze()
    _state = None


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """One command's life: paused at the start, everything given back at the end."""
    pause()
    try:
        yield
    finally:
        end()
