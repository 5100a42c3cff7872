"""Sweeps: a failed job leaves the others running and shows in the summary table; a rerun with
resume_sweep skips finished jobs; parallel jobs through joblib; an Optuna search reports its best
trial. Launchers and sweepers are the `sweep` extra (installed by `make install`). Sweeps run in
this process where they can: every extra interpreter pays for importing torch."""

from __future__ import annotations

import json

import pytest
import yaml

from aigc_cli.cli.app import describe_error

from .helpers import run_cli, tiny_overrides


def _records(sweep_dir):
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/job.json")}


def _sweep_args(sweep) -> list[str]:
    return [
        "-m",
        "optim.lr=1e-3,-1",  # the second job fails its config check inside the job
        *tiny_overrides(),
        "trainer.threads=1",
        "optimized_metric=test/nelbo",
        f"hydra.sweep.dir={sweep}",
    ]


def _check_failed_sweep(sweep, code: int, out: str, err: str) -> None:
    assert code == 1, err[-3000:]
    assert "1 job(s) of the sweep did not complete" in err
    assert "Traceback" not in err
    assert "completed" in out and "failed" in out  # the summary table
    recs = _records(sweep)
    assert {r["status"] for r in recs.values()} == {"completed", "failed"}
    good = next(r for r in recs.values() if r["status"] == "completed")
    bad = next(r for r in recs.values() if r["status"] == "failed")
    assert "optim.lr=0.001" in good["overrides"] and good["metrics"]["test/nelbo"] > 0
    assert "optim.lr" in bad["error"] and "must be > 0" in bad["error"]
    summary = json.loads((sweep / "summary.json").read_text())
    assert [r["status"] for r in summary] == ["completed", "failed"]  # in job order
    assert summary[0]["metric"] == "test/nelbo"
    assert summary[0]["value"] == pytest.approx(good["metrics"]["test/nelbo"])


def test_failed_job_is_recorded_and_the_rest_finish_then_resume_skips_them(tmp_path, run_main):
    sweep = tmp_path / "sweep"
    code, out, err = run_main("train", *_sweep_args(sweep))
    _check_failed_sweep(sweep, code, out, err)

    # Again, same sweep: the finished job is not retrained; the failed one is tried again.
    ckpt = next(sweep.glob("*/checkpoints/last.pt"))
    before = ckpt.stat().st_mtime_ns
    again = [a for a in _sweep_args(sweep) if not a.startswith("hydra.sweep")]
    code, out, err = run_main("train", *again, f"resume_sweep={sweep}")
    assert code == 1, err[-3000:]
    assert "skipped" in out
    assert ckpt.stat().st_mtime_ns == before
    assert len(json.loads((sweep / "summary.json").read_text())) == 2


@pytest.mark.slow  # joblib's worker processes each import torch
def test_parallel_jobs_through_joblib(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    out = run_cli("train", *_sweep_args(sweep), "hydra/launcher=local", cwd=tmp_path)
    _check_failed_sweep(sweep, out.returncode, out.stdout, out.stderr)


def test_optuna_search_reports_its_best_trial(tmp_path, run_main):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "search"
    code, out, err = run_main(
        "train",
        "hparams_search=vae_optuna",
        "hydra.sweeper.n_trials=3",
        *tiny_overrides(),
        f"hydra.sweep.dir={sweep}",
    )
    assert code == 0, err[-3000:]
    rows = json.loads((sweep / "summary.json").read_text())
    assert len(rows) == 3 and all(r["status"] == "completed" for r in rows)
    assert all(r["metric"] == "test/nelbo" for r in rows)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(min(r["value"] for r in rows))
    # model.latent_dim is fixed by the command line, so Optuna searches the other two
    assert set(best["best_params"]) == {"optim.lr", "model.beta"}
    assert "best" in out


def test_missing_sweep_plugin_names_the_extra():
    from hydra.errors import MissingConfigException

    e = MissingConfigException(
        "In 'hydra/launcher/local': Could not find 'hydra/launcher/joblib'\n\nAvailable options"
    )
    message, code = describe_error(e, [])
    assert code == 2 and "hydra/launcher/joblib" in message and "aigc[sweep]" in message
