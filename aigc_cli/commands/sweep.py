"""Sweeps that survive their jobs: each job records its outcome in `<job dir>/job.json`; a failed
job is recorded and the sweep goes on; at the end a table lists every job's overrides, status
and metric (also written to `<sweep dir>/summary.json`); `resume_sweep=<sweep dir>|latest` runs
the sweep again, skipping jobs that finished and resuming interrupted ones from their last
checkpoint.

The records live on disk, not in the launcher's memory, so the same works for jobs run in
joblib worker processes or on SLURM nodes."""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from aigc_cli.atomic import write_json, write_text
from aigc_cli.console import console
from aigc_cli.errors import AigcError, ConfigError, UserExit
from aigc_cli.store.paths import outputs_root
from aigc_cli.store.rundir import RunDir

RECORD = RunDir(".").job.name
SUMMARY = "summary.json"
SWEEPS = "multirun"  # sweeps live in <outputs root>/multirun


class SweepFailed(AigcError):
    """Raised after the summary table when some job of the sweep did not complete."""

    exit_code = 1


def job_overrides() -> list[str]:
    """This job's own overrides (those that tell it apart from its siblings), as Hydra lists
    them, without the resume_sweep flag."""
    return [o for o in HydraConfig.get().overrides.task if not o.startswith("resume_sweep=")]


def read_record(job_dir: Path) -> dict[str, Any] | None:
    return RunDir(job_dir).read_job()


def write_record(job_dir: Path, record: dict[str, Any]) -> None:
    RunDir(job_dir).write_job(record)


def objective(metrics: dict[str, float], key: str | None) -> float | None:
    """What `aigc train` returns to a sweeper: the final metric named by optimized_metric."""
    if key and key not in metrics:
        raise ConfigError(
            f"optimized_metric '{key}' is not among the final metrics; "
            f"choose from: {', '.join(metrics)}"
        )
    return float(metrics[key]) if key else None


def finished_job(sweep_dir: Path, overrides: list[str]) -> dict[str, Any] | None:
    """The record of a job of this sweep that completed with exactly these overrides."""
    want = sorted(overrides)
    for path in sorted(sweep_dir.glob(f"*/{RECORD}")):
        rec = read_record(path.parent)
        if rec and rec.get("status") == "completed" and sorted(rec.get("overrides", [])) == want:
            return rec
    return None


def resolve_sweep_dir(value: str, root: Path | None = None) -> Path:
    """`latest` → the newest sweep under <outputs root>/multirun; otherwise a sweep dir that
    exists."""
    root = root if root is not None else outputs_root() / SWEEPS
    if value == "latest":
        found = [p.parent.parent for p in root.glob(f"*/*/*/{RECORD}")]
        if not found:
            raise ConfigError(
                f"resume_sweep=latest but there is no sweep with job records under {root}",
                hint="give the sweep dir: resume_sweep=outputs/multirun/<date>/<time>",
            )
        return max(found, key=lambda p: p.stat().st_mtime)
    path = Path(value)
    if not path.is_dir():
        raise ConfigError(
            f"resume_sweep={value}: no such sweep dir",
            hint="give the dir a sweep printed at its start, e.g. outputs/multirun/<date>/<time>",
        )
    return path


def run_job(
    cfg: DictConfig, job_dir: Path, train_fn: Callable[..., dict[str, float]]
) -> float | None:
    """One job of a sweep: skip it if an earlier pass finished it, resume it if an earlier pass
    was cut off, train it otherwise, and record the outcome. A failure is recorded, printed in
    one line and returned as NaN (a failed trial to Optuna) instead of ending the sweep."""
    overrides = job_overrides()
    key = cfg.get("optimized_metric")
    resume = None
    if cfg.get("resume_sweep"):
        done = finished_job(job_dir.parent, overrides)
        # A finished job is reused only if it recorded the metric this sweep optimises.
        if done is not None and (not key or key in done.get("metrics", {})):
            console.print(f"[green]skipped[/] {' '.join(overrides)}: finished in {done['dir']}")
            return objective(done["metrics"], key)
        previous = read_record(job_dir)
        last = RunDir(job_dir).last
        same = previous and sorted(previous.get("overrides", [])) == sorted(overrides)
        if same and last.exists():
            resume = last
    record: dict[str, Any] = {
        "overrides": overrides,
        "dir": str(job_dir),
        "status": "running",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_record(job_dir, record)
    try:
        metrics = train_fn(cfg, run_dir=job_dir, resume=resume)
        value = objective(metrics, key)
    except Exception as e:  # any failure ends this job only
        if isinstance(e, AigcError):
            record["error"] = f"{e}" + (f" ({e.hint})" if e.hint else "")
        else:
            record["error"] = f"{type(e).__name__}: {e}"
            write_text(RunDir(job_dir).error, traceback.format_exc())
        record["status"] = "failed"
        write_record(job_dir, record)
        console.print(f"[bold red]job failed:[/] {' '.join(overrides)}: {record['error']}")
        return math.nan if key else None
    record.update(status="completed", metrics=metrics)
    write_record(job_dir, record)
    return value


def summarise(sweep_dir: Path, metric: str | None = None) -> list[dict[str, Any]]:
    """Every job record of a sweep, in job order, with the metric to show."""
    rows = []
    for path in sorted(sweep_dir.glob(f"*/{RECORD}"), key=_job_number):
        rec = read_record(path.parent) or {}
        metrics = rec.get("metrics", {})
        shown = metric or next(iter(metrics), None)
        rows.append(
            {
                "job": path.parent.name,
                "overrides": rec.get("overrides", []),
                "status": rec.get("status", "unknown"),
                "metric": shown,
                "value": metrics.get(shown) if shown else None,
                "error": rec.get("error"),
            }
        )
    return rows


def _job_number(path: Path) -> tuple[int, str]:
    head = path.parent.name.split("_", 1)[0]
    return (int(head) if head.isdigit() else 1 << 30, path.parent.name)


def print_summary(rows: list[dict[str, Any]], sweep_dir: Path, maximize: bool = False) -> None:
    table = Table(title=f"sweep {sweep_dir}", header_style="bold")
    for col in ("job", "overrides", "status", "metric"):
        table.add_column(col, justify="right" if col == "metric" else "left")
    style = {"completed": "green", "failed": "bold red"}
    # Show what tells the jobs apart: overrides every job shares are left out of the table.
    shared = set.intersection(*(set(r["overrides"]) for r in rows)) if len(rows) > 1 else set()
    for r in rows:
        own = [o for o in r["overrides"] if o not in shared]
        if r["value"] is not None:
            value = f"{r['metric']}={r['value']:.5g}"
        else:
            value = (r["error"] or "")[:80]
        status = r["status"]
        table.add_row(r["job"], " ".join(own), f"[{style.get(status, 'yellow')}]{status}", value)
    console.print(table)
    done = [r for r in rows if r["value"] is not None and not math.isnan(r["value"])]
    if done:
        pick = max if maximize else min
        best = pick(done, key=lambda r: r["value"])
        own = " ".join(o for o in best["overrides"] if o not in shared)
        console.print(f"best: job {best['job']} ({own}) {best['metric']}={best['value']:.5g}")


class SweepSummary(Callback):
    """Hydra callback (train.yaml's hydra.callbacks): the table at the end of a sweep."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = summarise(sweep_dir, config.get("optimized_metric"))
        if not rows:
            return
        direction = str(OmegaConf.select(config, "hydra.sweeper.direction") or "minimize")
        print_summary(rows, sweep_dir, maximize=direction == "maximize")
        write_json(sweep_dir / SUMMARY, rows)
        failed = sum(r["status"] != "completed" for r in rows)
        if failed:
            # Hydra turns a callback's Exception into a warning; a UserExit passes through to
            # the command line, which says it in one line and exits 1.
            raise UserExit(
                SweepFailed(f"{failed} job(s) of the sweep did not complete (table above)")
            )
