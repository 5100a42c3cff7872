"""The command line end to end, in subprocesses, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from .conftest import event_tags, run_cli, tiny_overrides


def _run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent.parent for p in (root / "outputs").rglob("checkpoints/last.pt"))


def test_help_lists_subcommands(tmp_path):
    out = run_cli("--help", cwd=tmp_path)
    assert out.returncode == 0
    for cmd in ("train", "sample", "eval", "list"):
        assert f"  {cmd}" in out.stdout


def test_list_shows_registries(run_main):
    code, out, err = run_main("list")
    assert code == 0, err
    for name in ("vae", "gan", "transformer", "shapes", "gaussians", "pydoc", "text"):
        assert name in out


def test_hydra_flags_work_after_subcommand(tmp_path):
    out = run_cli("train", "model=vae", "optim.lr=3e-4", "--cfg", "job", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "lr: 0.0003" in out.stdout and "name: vae" in out.stdout
    assert not (tmp_path / "outputs").exists() or not _run_dirs(tmp_path)
    helped = run_cli("train", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "model: gan, transformer, vae" in helped.stdout


def test_multirun_train_sample_eval_end_to_end(tmp_path, run_main):
    """One process trains a 2-job sweep (one run dir per job); then the newest run is sampled
    in a fresh process, as a user would, and evaluated."""
    out = run_cli("train", "-m", "optim.lr=1e-3,3e-4", *tiny_overrides(), cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    runs = _run_dirs(tmp_path)
    assert len(runs) == 2 and all("multirun" in str(r) for r in runs)
    lrs = sorted(yaml.safe_load((r / "config.yaml").read_text())["optim"]["lr"] for r in runs)
    assert lrs == [3e-4, 1e-3]
    run = runs[0]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["step"] == 6 and "test/nelbo" in metrics and "test/bits_per_dim" in metrics
    tags = event_tags(run)
    for tag in (
        "model/loss",
        "model/recon",
        "model/kl",
        "model/grad_norm",
        "lr/model",
        "perf/samples_per_s",
        "test/nelbo",
        "hparam/test/nelbo",
    ):
        assert tag in tags["scalars"], tag
    assert {"samples", "reconstructions"} <= set(tags["images"])
    assert "config/text_summary" in tags["tensors"]
    # hparams live in the run's own event file: no extra run folder under tb/
    assert list(run.glob("tb/events.out.tfevents.*"))
    assert not [p for p in (run / "tb").iterdir() if p.is_dir()]
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == [
        "step_000003.png",
        "step_000006.png",
    ]

    # a fresh process, no arguments: the newest run, 64 samples → 8x8 grid of 32px + 2px pad
    newest = max(runs, key=lambda r: (r / "checkpoints" / "last.pt").stat().st_mtime)
    out = run_cli("sample", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    pngs = list((newest / "samples").glob("2*.png"))
    assert len(pngs) == 1 and pngs[0].name in out.stdout.replace("\n", "")
    assert Image.open(pngs[0]).size == (8 * 34 + 2, 8 * 34 + 2)

    target = tmp_path / "grid.png"
    code, _, err = run_main("sample", f"run={run}", "n=16", "seed=1", f"out={target}")
    assert code == 0, err
    assert Image.open(target).size == (4 * 34 + 2, 4 * 34 + 2)
    code, out_text, err = run_main(
        "sample", f"run={run}", "n=16", "mode=interpolate", f"out={tmp_path / 'interp.png'}"
    )
    assert code == 0, err
    assert Image.open(tmp_path / "interp.png").size == (8 * 34 + 2, 2 * 34 + 2)

    code, out_text, err = run_main("eval", f"run={run}")
    assert code == 0, err
    assert "test/nelbo" in out_text
    assert "test/nelbo" in json.loads((run / "eval.json").read_text())


BAD_INPUTS = [
    (["model=gna"], "unknown model 'gna'; choose from: gan, transformer, vae"),
    (["dataset=nope"], "unknown dataset 'nope'; choose from:"),
    (["optim=sgdd"], "unknown optim 'sgdd'; choose from: adam, adamw"),
    (["trainer.max_step=3"], "'trainer.max_step' (did you mean 'trainer.max_steps'?); allowed"),
    (["model.latnt_dim=3"], "'model.latnt_dim' (did you mean 'model.latent_dim'?); allowed"),
    (["trainer.max_steps=many"], "'trainer.max_steps': 'many' is not a valid int"),
    (["optim.lr=-1"], "'optim.lr': -1.0 must be > 0"),
    (["trainer.batch_size=0"], "'trainer.batch_size': 0 must be >= 1"),
    (["trainer.precision=8"], "'trainer.precision': '8'; choose from: 32, bf16, 16"),
    (["dataset.image_size=3"], "dataset.image_size"),
    (["dataset=gaussians"], "model 'vae' cannot train on points data"),
    (["model=gan", "dataset=pydoc"], "model 'gan' cannot train on text data"),
    (["model=transformer", "dataset=shapes"], "model 'transformer' cannot train on image data"),
    (["trainer.device=cuda:7"], "trainer.device"),
    (["dataset=text"], "dataset=text needs a file"),
    (["dataset=text", "dataset.path=/nonexistent.txt"], "text file not found"),
    (["optim.lr=[1,"], "overrides are key=value"),
]


@pytest.mark.parametrize(("args", "expected"), BAD_INPUTS)
def test_bad_input_is_one_clear_line(run_main, args, expected):
    code, out, err = run_main("train", "trainer.max_steps=1", "trainer.progress=false", *args)
    assert code != 0
    assert "Traceback" not in err + out
    assert expected in err, err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err


def test_bad_input_in_a_real_process(tmp_path):
    out = run_cli("train", "model=gna", cwd=tmp_path)
    assert out.returncode == 2
    assert "unknown model 'gna'" in out.stderr and "Traceback" not in out.stderr
    out = run_cli("train", "optim.lr=-1", cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert out.returncode != 0 and "Traceback" in out.stderr  # the full error on request


def test_sample_without_runs_is_clear(run_main):
    code, _, err = run_main("sample")
    assert code == 2 and "Traceback" not in err
    assert "no trained run found" in err and "aigc train" in err


def test_unknown_command(run_main):
    code, _, err = run_main("trian")
    assert code == 2 and "unknown command 'trian'" in err
