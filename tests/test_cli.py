"""The command line end to end, in subprocesses, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from .helpers import event_tags, run_cli, tiny_overrides


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


def test_hydra_flags_work_after_subcommand(tmp_path, run_main):
    code, out, err = run_main("train", "model=vae", "optim.lr=3e-4", "--cfg", "job")
    assert code == 0, err
    assert "lr: 0.0003" in out and "name: vae" in out
    assert not (tmp_path / "outputs").exists() or not _run_dirs(tmp_path)
    code, out, err = run_main("train", "--help")
    models = "model: classifier, diffusion, flow, frames, gan, reader, transformer, vae"
    assert code == 0 and models in out


def test_multirun_train_sample_eval_end_to_end(tmp_path, run_main):
    """A 2-job sweep (one run dir per job); then the newest run is sampled with no arguments,
    and evaluated. In this process: each extra interpreter would pay for importing torch."""
    code, out, err = run_main("train", "-m", "optim.lr=1e-3,3e-4", *tiny_overrides())
    assert code == 0, err + out
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

    # no arguments: the newest run, 64 samples → 8x8 grid of 32px + 2px pad
    newest = max(runs, key=lambda r: (r / "checkpoints" / "last.pt").stat().st_mtime)
    code, out, err = run_main("sample")
    assert code == 0, err
    pngs = list((newest / "samples").glob("2*.png"))
    assert len(pngs) == 1 and pngs[0].name in out.replace("\n", "")
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
    record = json.loads((run / "metrics.json").read_text())
    assert "test/nelbo" in record and "test/nelbo" in record["eval"]["last"]


BAD_INPUTS = [
    (
        ["model=gna"],
        "unknown model 'gna'; choose from: classifier, diffusion, flow, frames, gan, reader, "
        "transformer, vae",
    ),
    (["dataset=nope"], "unknown dataset 'nope'; choose from:"),
    (["optim=sgdd"], "unknown optim 'sgdd'; choose from: adam, adamw"),
    (["trainer.max_step=3"], "'trainer.max_step' (did you mean 'trainer.max_steps'?); allowed"),
    (["model.latnt_dim=3"], "'model.latnt_dim' (did you mean 'model.latent_dim'?); allowed"),
    (["trainer.max_steps=many"], "'trainer.max_steps': 'many' is not a valid int"),
    (["optim.lr=-1"], "'optim.lr': -1.0 must be > 0"),
    (["trainer.batch_size=0"], "'trainer.batch_size': 0 must be >= 1"),
    (["trainer.precision=8"], "'trainer.precision': '8'; choose from: auto, 32, bf16, 16"),
    (["dataset.image_size=3"], "dataset.image_size"),
    (["dataset=gaussians"], "model 'vae' cannot train on points data"),
    (["model=gan", "dataset=pydoc"], "model 'gan' cannot train on text data"),
    (["model=transformer", "dataset=gaussians"], "model 'transformer' cannot train on points data"),
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


def test_sample_refuses_a_negative_token_count(run_main, tmp_path):
    """It used to write an empty file and exit 0."""
    out = tmp_path / "texts.txt"
    code, _, err = run_main("sample", f"run={tmp_path}", "max_new_tokens=-5", f"out={out}")
    assert code == 2 and "Traceback" not in err
    assert "'max_new_tokens': -5 must be >= 1" in err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
    assert not out.exists()


def test_unknown_command(run_main):
    code, _, err = run_main("trian")
    assert code == 2 and "unknown command 'trian'" in err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A finished 2-step VAE run to break in various ways."""
    from hydra import compose, initialize_config_module

    from aigc_cli.training.loop import train

    run = tmp_path_factory.mktemp("tiny_run")
    with initialize_config_module(config_module="aigc_cli.configs", version_base="1.3"):
        cfg = compose("train", overrides=[*tiny_overrides(), "trainer.max_steps=2"])
    train(cfg, run_dir=run)
    return run


def _broken_run(kind: str, tiny_run: Path, where: Path) -> Path:
    import shutil

    import torch

    run = where / f"run_{kind}"
    shutil.copytree(tiny_run, run)
    path = run / "checkpoints" / "last.pt"
    data = path.read_bytes()
    path.unlink()  # last.pt is a hard link: write a new file, not through the link
    if kind == "corrupt":
        path.write_bytes(b"not a checkpoint at all" * 10)
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 3])
    else:
        path.write_bytes(data)
        ckpt = torch.load(path, weights_only=True)
        if kind == "newer":
            ckpt["format_version"] += 1
        elif kind == "other_model":  # VAE weights labelled as a GAN's
            ckpt["model"] = {"name": "gan", "config": {"name": "gan"}}
        elif kind == "other_size":  # VAE weights for a VAE of another size
            ckpt["model"]["config"]["latent_dim"] += 3
            ckpt["config"]["model"]["latent_dim"] += 3
        torch.save(ckpt, path)
    return run


BROKEN_CHECKPOINTS = [
    ("corrupt", "is corrupt or truncated"),
    ("truncated", "is corrupt or truncated"),
    ("newer", "newer than this aigc reads"),
    ("other_model", "do not fit model 'gan'"),
    ("other_size", "do not fit model 'vae'"),
]


@pytest.mark.parametrize(("kind", "expected"), BROKEN_CHECKPOINTS)
@pytest.mark.parametrize("command", ["sample", "eval", "train"])
def test_broken_checkpoint_is_one_clear_line(run_main, tmp_path, tiny_run, kind, expected, command):
    run = _broken_run(kind, tiny_run, tmp_path)
    arg = "resume" if command == "train" else "run"
    code, out, err = run_main(command, f"{arg}={run}")
    assert code != 0 and "Traceback" not in err + out
    if command == "train" and kind in ("other_model", "other_size"):
        expected = "cannot resume"  # a weight mismatch found when restoring
    assert expected in err, err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err


@pytest.mark.parametrize(
    ("content", "expected"),
    [("", "is empty"), ("tiny text", "is too short")],
)
def test_unusable_text_file_is_one_clear_line(run_main, tmp_path, content, expected):
    (tmp_path / "corpus.txt").write_text(content)
    code, out, err = run_main(
        "train",
        "model=transformer",
        "dataset=text",
        "dataset.path=corpus.txt",
        "trainer.max_steps=1",
    )
    assert code != 0 and "Traceback" not in err + out
    assert expected in err and "corpus.txt" in err, err


def test_missing_dataset_offline_is_one_clear_line(run_main, tmp_path):
    code, out, err = run_main(
        "train", "dataset=mnist", f"dataset.root={tmp_path / 'no_data'}", "dataset.download=false"
    )
    assert code == 2 and "Traceback" not in err + out
    assert "dataset mnist not found" in err and "train-images-idx3-ubyte" in err, err


def test_resume_errors(run_main, tiny_run):
    code, _, err = run_main("train", "resume=latest")  # run_main's cwd has no outputs/
    assert code == 2 and "no trained run found" in err and "Traceback" not in err
    code, _, err = run_main("train", f"resume={tiny_run}", "model=gan")
    assert code == 2 and "cannot change 'model' from 'vae' to 'gan' when resuming" in err, err


def test_one_outputs_root_for_runs_and_every_lookup(run_main, tmp_path, monkeypatch):
    """paths.outputs (or AIGC_OUTPUTS) is where runs go and where run=, resume=latest and
    the classifier are looked for; an outputs root that cannot be made is one line."""
    from .helpers import tiny_overrides

    code, _, err = run_main("train", *tiny_overrides("classifier"), "paths.outputs=elsewhere")
    assert code == 0, err
    code, _, err = run_main("train", *tiny_overrides("vae"), "paths.outputs=elsewhere",
                            "metrics.names=[fid]", "metrics.num_samples=16")  # fmt: skip
    assert code == 0, err  # the classifier was found under elsewhere/
    assert not (tmp_path / "outputs").exists()
    runs = sorted((tmp_path / "elsewhere").glob("*/*_vae"))
    assert len(runs) == 1
    code, out, err = run_main("train", *tiny_overrides("vae"), "paths.outputs=elsewhere",
                              "resume=latest", "trainer.max_steps=8")  # fmt: skip
    assert code == 0, err
    assert "resumed from step 6" in out
    monkeypatch.setenv("AIGC_OUTPUTS", str(tmp_path / "elsewhere"))
    code, out, err = run_main("sample", "n=4")
    assert code == 0 and str(runs[0]) in out
    code, _, err = run_main("sample", "n=4", "paths.outputs=empty")
    assert code != 0 and "no trained run found under" in err and "empty" in err
    code, _, err = run_main("train", "paths.outputs=/proc/aigc-cannot")
    assert code != 0 and "cannot create the outputs root /proc/aigc-cannot" in err
