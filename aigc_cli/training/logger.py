"""Where a run reports: TensorBoard events in the run dir, and the rich console (config tree,
progress bar, end-of-run summary)."""

from __future__ import annotations

import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.tree import Tree
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

from aigc_cli.console import console
from aigc_cli.store.rundir import RunDir


def config_tree(cfg: Mapping[str, Any], title: str = "config") -> Tree:
    tree = Tree(f"[bold]{title}")

    def add(node: Tree, value: Any) -> None:
        for k, v in value.items():
            if isinstance(v, Mapping):
                add(node.add(f"[cyan]{k}"), v)
            else:
                node.add(f"[cyan]{k}[/]: {v}")

    add(tree, cfg)
    return tree


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def write_hparams(
    writer: SummaryWriter, params: Mapping[str, Any], metrics: Mapping[str, float], step: int
) -> None:
    """One HParams session in `writer`'s event file: the config and the metrics it reached."""
    clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
    tagged = {f"hparam/{k}": float(v) for k, v in metrics.items()}
    for summary in hparams_summary(clean, tagged):
        writer.file_writer.add_summary(summary)
    for k, v in tagged.items():
        writer.add_scalar(k, v, step)


class RunLogger:
    """Events to TensorBoard; on a terminal a rich progress bar, elsewhere (nohup, a batch
    system, `| tee`) one plain flushed line per logged step; and every line, the config and
    any error with its traceback in <run>/train.log."""

    def __init__(self, run_dir: Path, *, progress: bool = True, purge_step: int | None = None):
        self.run_dir = Path(run_dir)
        # purge_step drops events past it, so a resumed run has no duplicate steps.
        self.writer = SummaryWriter(log_dir=str(RunDir(run_dir).tb), purge_step=purge_step)
        self.show_progress = progress and console.is_terminal
        self._progress: Progress | None = None
        self._task: Any = None
        self._total, self._first, self._start = 0, 0, time.monotonic()
        # Appended to (a resumed run continues its log); line-buffered, so a crash loses nothing.
        self._file = open(RunDir(run_dir).log, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        self._plain = Console(file=self._file, width=100, no_color=True, highlight=False,
                              force_terminal=False, soft_wrap=True)  # fmt: skip

    # ---- TensorBoard ------------------------------------------------------------------
    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def image(self, tag: str, grid: Tensor, step: int) -> None:
        self.writer.add_image(tag, grid.clamp(0, 1).cpu(), step)

    def audio(self, tag: str, audio: Tensor, step: int, rate: int) -> None:
        self.writer.add_audio(tag, audio.reshape(1, -1).cpu(), step, sample_rate=rate)

    def text(self, tag: str, text: str, step: int) -> None:
        # TensorBoard renders markdown: indent by 4 spaces so text shows verbatim.
        self.writer.add_text(tag, "    " + text.replace("\n", "\n    "), step)

    def hparams(self, params: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
        """hparams + final metrics in the run's own event file (add_hparams would make a new
        subfolder, splitting the run in two in TensorBoard's list)."""
        write_hparams(self.writer, params, metrics, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
        self._file.close()

    # ---- console and train.log ----------------------------------------------------------
    def print(self, *args: Any) -> None:
        # soft_wrap: a long path stays one unbroken string, to copy from the log
        (self._progress.console if self._progress else console).print(*args, soft_wrap=True)
        self._write(*args)

    def _write(self, *args: Any) -> None:
        if not self._file.closed:
            self._plain.print(*args, soft_wrap=True)

    def step_line(self, step: int, values: Mapping[str, float]) -> None:
        """One plain line for a logged step: step/total, each loss, samples/s, elapsed, ETA.
        Printed when there is no progress bar (off a terminal, or trainer.progress=false),
        and always written to train.log."""
        elapsed = time.monotonic() - self._start
        done = max(step - self._first, 1)
        eta = elapsed / done * max(self._total - step, 0)
        losses = [f"{k} {v:.4g}" for k, v in values.items() if k.endswith("loss")]
        rate = values.get("perf/samples_per_s")
        parts = [f"step {step}/{self._total}", *losses]
        if rate is not None:
            parts.append(f"{rate:.0f} samples/s")
        parts += [f"elapsed {_clock(elapsed)}", f"ETA {_clock(eta)}"]
        line = " | ".join(parts)
        if self._progress is None:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
            console.file.flush()
        self._write(line)

    def error(self, error: BaseException) -> None:
        """A failed run's error and traceback, into train.log."""
        if not self._file.closed:
            self._file.write("".join(traceback.format_exception(error)))

    def start_progress(self, total: int, completed: int = 0) -> None:
        self._total, self._first, self._start = total, completed, time.monotonic()
        if not self.show_progress:
            return
        self._progress = Progress(
            TextColumn("[bold blue]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} samples/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            # Redrawn from the training thread in advance(), not by rich's refresh thread: that
            # thread competes with the step for the GIL (docs/performance.md).
            auto_refresh=False,
        )
        self._last_draw = 0.0
        self._task = self._progress.add_task(
            "train", total=total, completed=completed, loss="-", rate="-"
        )
        self._progress.start()

    def advance(self, completed: int, **fields: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, **fields)
            now = time.monotonic()
            # At most 2 redraws a second: each redraw runs on the training thread, and rich's
            # default rate of 10 a second shows in the step time (docs/performance.md).
            if fields or now - self._last_draw >= 0.5:
                self._progress.refresh()
                self._last_draw = now

    def stop_progress(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def summary(self, metrics: Mapping[str, float], rows: Mapping[str, str]) -> None:
        table = Table(title="run summary", show_header=True, header_style="bold")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k, v in metrics.items():
            table.add_row(k, f"{v:.4g}")
        for k, v in rows.items():
            table.add_row(f"[dim]{k}", v)
        console.print(table)


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Throughput:
    """Samples per second between two calls of `rate()`."""

    def __init__(self) -> None:
        self.t = time.perf_counter()
        self.samples = 0

    def add(self, n: int) -> None:
        self.samples += n

    def rate(self) -> float:
        now = time.perf_counter()
        r = self.samples / max(now - self.t, 1e-9)
        self.t, self.samples = now, 0
        return r


__all__ = ["RunLogger", "Throughput", "config_tree", "console", "flatten"]


class QuietLogger(RunLogger):
    """The logger of a data-parallel rank other than 0: rank 0 alone writes events and prints."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.show_progress = False
        self._progress = None
        self._task = None
        self._total = self._first = 0
        self._start = time.monotonic()

    def step_line(self, step: int, values: Mapping[str, float]) -> None:
        pass

    def error(self, error: BaseException) -> None:
        pass

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        pass

    def image(self, tag: str, grid: Tensor, step: int) -> None:
        pass

    def text(self, tag: str, text: str, step: int) -> None:
        pass

    def audio(self, tag: str, audio: Tensor, step: int, rate: int) -> None:
        pass

    def hparams(self, params: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def print(self, *args: Any) -> None:
        pass

    def summary(self, metrics: Mapping[str, float], rows: Mapping[str, str]) -> None:
        pass
