"""One worker thread per model, fed by a bounded queue; the event loop never runs a model.
Requests that arrive within a short window and fit together (equal `batch_key`, rows within
`max_rows`) run as one `sample_batch` call. Events go back to each request's own asyncio queue
through the loop (`call_soon_threadsafe`); a request whose client has gone is marked cancelled,
and the model drops its rows at the next token or step."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from aigc_cli.errors import AigcError
from aigc_cli.models.base import GenerativeModel, Request
from aigc_cli.results import SampleResult
from aigc_cli.serve.params import ApiError, from_aigc
from aigc_cli.serve.stats import Stats


@dataclass
class Job:
    """A request on its way through a worker, and the events it sends back:
    ("text", (row, text)), ("step", (k, total)), ("done", result) or ("error", ApiError)."""

    request: Request
    key: Any
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    gone: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.request.cancelled = self.gone.is_set

    def emit(self, kind: str, data: Any) -> None:
        if not self.gone.is_set():
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, data))


@dataclass
class Settings:
    max_queue: int = 64  # requests waiting per model; past it, 429
    window_ms: float = 10.0  # how long a batch waits for requests that fit with it; 0 = off
    max_rows: int = 64  # samples one batch holds


class Worker:
    """The thread that runs one model."""

    def __init__(self, name: str, model: GenerativeModel, settings: Settings, stats: Stats) -> None:
        self.name, self.model, self.settings, self.stats = name, model, settings, stats
        self.queue: deque[Job] = deque()
        self.cond = threading.Condition()
        self.closed = False
        self.busy = False
        self.thread = threading.Thread(target=self._run, name=f"aigc-{name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        """Queue the job, or a 429 when the queue is full."""
        with self.cond:
            if len(self.queue) >= self.settings.max_queue:
                raise ApiError(429, f"model '{self.name}' has {len(self.queue)} requests waiting; "
                               "retry shortly", kind="rate_limit_error",
                               headers={"Retry-After": "1"})  # fmt: skip
            self.queue.append(job)
            self.stats.depth[self.name] = len(self.queue)
            self.cond.notify_all()

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            batch = self._take()
            if batch is None:
                return
            batch = [j for j in batch if not j.gone.is_set()]
            if batch:
                self._sample(batch)

    def _take(self) -> list[Job] | None:
        """The next batch: the oldest job, and the jobs that fit with it and arrive within the
        window (None once closed)."""
        with self.cond:
            while not self.queue and not self.closed:
                self.cond.wait()
            if self.closed:
                return None
            first = self.queue.popleft()
            batch, rows = [first], first.request.n
            deadline = time.monotonic() + self.settings.window_ms / 1000
            while rows < self.settings.max_rows and first.key is not None:
                fits = next((j for j in self.queue if j.key == first.key and
                             rows + j.request.n <= self.settings.max_rows), None)  # fmt: skip
                if fits is not None:
                    self.queue.remove(fits)
                    batch.append(fits)
                    rows += fits.request.n
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    break
                self.cond.wait(left)
            self.stats.depth[self.name] = len(self.queue)
            return batch

    def _sample(self, batch: list[Job]) -> None:
        """One `sample_batch` call; each job's result goes out as soon as it is ready, and
        jobs that fit may join while it runs (families that decode token by token)."""
        self.stats.batch(self.name, sum(j.request.n for j in batch))
        running = list(batch)
        for j in batch:
            j.request.on_result = partial(_deliver, j)

        def more(active: int) -> list[Request]:
            joined = self._join(batch[0].key, active)
            running.extend(joined)
            return [j.request for j in joined]

        self.busy = True
        try:
            self.model.sample_batch([j.request for j in batch], more)
        except AigcError as e:
            for j in running:
                j.emit("error", from_aigc(e))
        except Exception as e:  # a bug, not the caller's: said as a 500, the worker goes on
            for j in running:
                j.emit("error", ApiError(500, f"the model failed: {type(e).__name__}: {e}",
                                         kind="server_error"))  # fmt: skip
        finally:
            self.busy = False

    def _join(self, key: Any, active: int) -> list[Job]:
        """Queued jobs that fit beside `active` rows now, taken off the queue."""
        if key is None or not self.queue:
            return []
        joined, room = [], self.settings.max_rows - active
        with self.cond:
            for j in list(self.queue):
                if j.key == key and j.request.n <= room and not j.gone.is_set():
                    self.queue.remove(j)
                    joined.append(j)
                    room -= j.request.n
                    j.request.on_result = partial(_deliver, j)
            self.stats.depth[self.name] = len(self.queue)
        if joined:
            self.stats.batch(self.name, sum(j.request.n for j in joined))
        return joined


def _deliver(job: Job, result: SampleResult | None) -> None:
    if result is not None:
        job.emit("done", result)
