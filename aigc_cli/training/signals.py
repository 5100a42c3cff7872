"""Stopping a run cleanly: the first SIGINT/SIGTERM/SIGUSR1 asks the loop to stop after the
current step (it writes a checkpoint); a second one exits at once."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from aigc_cli.errors import AigcError


class TrainingInterrupted(AigcError):
    """SIGINT/SIGTERM: a checkpoint was written; exit with 128 + the signal number."""

    def __init__(self, signum: int, message: str, hint: str) -> None:
        super().__init__(message, hint)
        self.exit_code = 128 + signum


class StopFlag:
    """First SIGINT/SIGTERM asks the loop to stop after the current step; a second one exits at
    once (the default handler's KeyboardInterrupt / termination)."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:  # second signal: give up immediately
            self.restore()
            signal.raise_signal(signum)
            return
        self.signum = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals can only be handled in the main thread
            return
        # SIGUSR1 is the usual pre-emption warning of batch systems (SLURM --signal).
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            self._previous[s] = signal.signal(s, self._handle)
        try:
            yield self
        finally:
            self.restore()

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()
