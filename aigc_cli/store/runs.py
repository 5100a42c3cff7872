"""Finding runs and loading them: the newest run, a run's checkpoint, a model rebuilt from a
checkpoint or an export alone (registry name + saved config + data spec), the FID classifier."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from aigc_cli import startup
from aigc_cli.build import build_model, rebuild
from aigc_cli.data.base import DataModule, DataSpec
from aigc_cli.data.music import music_spec, roll_image_spec
from aigc_cli.errors import CheckpointError, ConfigError
from aigc_cli.metrics.quality import MetricsConfig, SampleQuality, needs_classifier
from aigc_cli.models.base import TrainedModel
from aigc_cli.registry import MODELS
from aigc_cli.store.checkpoint import load_checkpoint
from aigc_cli.store.export import WEIGHTS, is_export, read_export
from aigc_cli.store.paths import outputs_root
from aigc_cli.store.rundir import RunDir


def find_runs(root: Path | None = None) -> list[Path]:
    """Run dirs under `root` (default: the outputs root) holding a checkpoint, oldest first."""
    root = Path(root) if root is not None else outputs_root()
    if not root.is_dir():
        return []
    last = RunDir(".").last.relative_to(".")
    runs = {RunDir.of_checkpoint(p).path for p in root.rglob(str(last))}
    return sorted(runs, key=lambda p: RunDir(p).last.stat().st_mtime)


def resolve_checkpoint(
    run: str | Path | None, which: str = "last", root: Path | None = None
) -> Path:
    """A checkpoint file from a run dir, a checkpoint path, or None (= the newest run)."""
    if run in (None, "", "latest"):
        root = Path(root) if root is not None else outputs_root()
        runs = find_runs(root)
        if not runs:
            raise CheckpointError(
                f"no trained run found under {root.resolve()}",
                hint="train one first with `aigc train`, or pass run=<run dir>",
            )
        run = runs[-1]
    path = Path(str(run)).expanduser()
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"run not found: {path}", hint="pass run=<run dir>")
    if is_export(path):  # an `aigc export` folder stands in for a run
        return path / WEIGHTS
    ckpt = RunDir(path).checkpoint(which)
    if not ckpt.is_file():
        raise CheckpointError(
            f"{path} has no {ckpt.relative_to(path)}", hint="is it a run dir of `aigc train`?"
        )
    return ckpt


def load_run(
    ckpt_path: Path, device: torch.device | str = "cpu", use_ema: bool = True
) -> tuple[TrainedModel, dict[str, Any]]:
    """Rebuild the model from a checkpoint alone: registry name + saved config + data spec (or
    from an export folder's model.safetensors and config.json)."""
    startup.resume()  # `aigc sample/eval/export`: the heavy imports are done by now
    if Path(ckpt_path).suffix == ".safetensors":
        return read_export(Path(ckpt_path).parent, device)
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")

    def weights() -> dict[str, torch.Tensor]:
        ema = ckpt.get("ema") if use_ema and ckpt.get("ema") else None
        return ema["weights"] if ema else ckpt["model_state"]

    model = rebuild(ckpt, weights, Path(ckpt_path), "it was not written by aigc train")
    return model.to(device).eval(), ckpt


def find_classifier(dataset_name: str, spec: DataSpec, root: Path | None = None,
                    model: str = "classifier") -> Path:  # fmt: skip
    """The newest classifier (or `model`) run under `root` trained on `dataset_name` images of
    `spec`'s shape (and, for captions, as many things per scene). Runs are picked by their
    config.yaml, so only candidates' checkpoints are opened."""
    root = Path(root) if root is not None else outputs_root()
    objects = (spec.extra.get("captions") or {}).get("objects")
    for path in reversed(find_runs(root)):
        run = RunDir(path)
        try:
            cfg = OmegaConf.load(run.config)
            if cfg.model.name != model or cfg.dataset.name != dataset_name:
                continue
            if objects is not None and cfg.dataset.get("objects") != objects:
                continue
            ckpt = load_checkpoint(run.last)
        except Exception:
            continue  # another tool's folder, a broken run: not a candidate
        if list(ckpt["dataset"]["spec"]["shape"]) == list(spec.shape):
            return run.last
    if model == "reader":
        raise ConfigError(
            f"no reader run for dataset '{dataset_name}' ({objects} things per scene) under "
            f"{root.resolve()}; prompts are judged by it",
            hint=f"train one: aigc train model=reader dataset={dataset_name} "
            f"dataset.objects={objects}, or pass metrics.reader=<run dir>",
        )
    shape = "x".join(map(str, spec.shape))
    roll = (spec.extra.get("music") or {}).get("representation") == "roll"
    options = " dataset.representation=roll" if roll else " (with the same dataset options)"
    raise ConfigError(
        f"no classifier run for dataset '{dataset_name}' ({shape} images) under "
        f"{root.resolve()}; fid/kid/pr/coverage are computed on its features",
        hint=f"train one: aigc train model=classifier dataset={dataset_name}{options}, or pass "
        "classifier=<run dir> or inception_weights=<file>",
    )


def load_classifier(
    where: str | Path | None, dataset_name: str, spec: DataSpec, device: torch.device
) -> tuple[Any, str]:
    """The classifier model that sample-quality metrics embed with, and a description of it
    for the metrics' notes."""
    path = resolve_checkpoint(where) if where else find_classifier(dataset_name, spec)
    model, ckpt = load_run(path, device, use_ema=True)
    if ckpt["model"]["name"] != "classifier":
        raise ConfigError(
            f"{path} is a run of model '{ckpt['model']['name']}', not a classifier",
            hint=f"pass the run dir of `aigc train model=classifier dataset={dataset_name}`",
        )
    if list(model.spec.shape) != list(spec.shape):
        raise ConfigError(
            f"the classifier {path} was trained on {model.spec.shape} images, "
            f"these are {spec.shape}",
            hint="train a classifier with the same dataset options",
        )
    acc = RunDir.of_checkpoint(path).read_metrics().get("test/accuracy")
    accuracy = f", test accuracy {acc:.4f}" if isinstance(acc, float) else ""
    return model, f"aigc classifier {path} (step {ckpt['step']}{accuracy})"


def load_sample_quality(
    cfg: MetricsConfig, names: list[str], data: DataModule, dataset_name: str,
    device: torch.device,
) -> SampleQuality:  # fmt: skip
    """The sample-quality metrics of `names`, with the classifier they embed with loaded."""
    classifier = reader = None
    if needs_classifier(cfg, names):
        # music in frames or tokens is embedded as the roll representation's images
        images = roll_image_spec() if music_spec(data.spec) and data.spec.kind != "image" else None
        classifier = load_classifier(cfg.classifier, dataset_name, images or data.spec, device)
    if "prompts" in names:
        reader = load_reader(cfg.reader, dataset_name, data.spec, device)
    return SampleQuality(cfg, names, data, device, classifier, reader)


def load_reader(
    where: str | Path | None, dataset_name: str, spec: DataSpec, device: torch.device
) -> tuple[Any, str]:
    """The attribute reader that judges prompt following, and a description of it."""
    path = resolve_checkpoint(where) if where else find_classifier(dataset_name, spec,
                                                                   model="reader")  # fmt: skip
    model, ckpt = load_run(path, device, use_ema=True)
    if ckpt["model"]["name"] != "reader":
        raise ConfigError(f"{path} is a run of model '{ckpt['model']['name']}', not a reader",
                          hint=f"pass the run dir of `aigc train model=reader "
                          f"dataset={dataset_name}`")  # fmt: skip
    acc = RunDir.of_checkpoint(path).read_metrics().get("test/all_accuracy")
    accuracy = (
        f", all parts right on {acc:.4f} of the test renders" if isinstance(acc, float) else ""
    )
    return model, f"the attribute reader {path} (step {ckpt['step']}{accuracy})"


def build_with_parts(model_cfg: dict[str, Any], spec: DataSpec) -> TrainedModel:
    """`build_model`, after loading the runs the config names as parts (`part_runs`: latent
    diffusion's autoencoder): their configs go into the model's config, so the checkpoint
    carries them, and their weights into the built model's child."""
    name = str(model_cfg.get("name", ""))
    fields = MODELS.get(name).obj.part_runs if name in MODELS else {}
    loaded: dict[str, TrainedModel] = {}
    for field, child in fields.items():
        where = model_cfg.get(field)
        if where and not model_cfg.get(f"{field}_config"):
            part, _ = load_run(resolve_checkpoint(where))
            record = {"model": asdict(part.cfg), "spec": part.spec.to_dict()}
            model_cfg = {**model_cfg, f"{field}_config": record}
            loaded[child] = part
    model = build_model(model_cfg, spec)
    for child, part in loaded.items():
        getattr(model, child).load_state_dict(part.state_dict())
        getattr(model, child).eval().requires_grad_(False)
    return model
