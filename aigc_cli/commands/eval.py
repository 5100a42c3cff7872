"""`aigc eval`: the test metrics of a run's checkpoint, printed, added to the run's
metrics.json and logged as a TensorBoard hparams session. The model comes from the checkpoint;
the data's places on disk (root, path, download) come from this command and the package's own
dataset config, never from the file being loaded."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from rich.table import Table
from torch.utils.tensorboard import SummaryWriter

from aigc_cli.build import build_data, resolve_device
from aigc_cli.commands.sample import sampler_options
from aigc_cli.config import check, command_options, validate
from aigc_cli.console import console
from aigc_cli.data.base import PATH_KEYS, has_sample_metrics
from aigc_cli.errors import ConfigError
from aigc_cli.metrics.quality import GROUPS, MetricsConfig
from aigc_cli.models.base import SamplerOptions
from aigc_cli.registry import DATASETS
from aigc_cli.store.rundir import RunDir
from aigc_cli.store.runs import load_run, load_sample_quality, resolve_checkpoint
from aigc_cli.training.evaluate import evaluate
from aigc_cli.training.logger import flatten, write_hparams


@dataclass
class EvalConfig(SamplerOptions):
    # SamplerOptions: the sampler of the sample-based metrics (diffusion and flow)
    run: str | None = None  # run dir or checkpoint file; null = the newest run
    checkpoint: str = "last"  # last | best
    metrics: list[str] | None = None  # nll, fid, kid, pr, coverage, prompts; null = all that apply
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    batch_size: int = 256  # evaluation batch size
    max_batches: int = 0  # 0 = the whole test split
    num_samples: int = 2500  # generated samples for sample-based metrics
    seed: int = 0  # seed of the Monte-Carlo estimates and samples
    ema: bool = True  # evaluate the EMA weights when the run kept them
    iwae_k: int = 0  # VAE: samples per image for the IWAE bound on NLL (papers: 5000)
    classifier: str | None = None  # feature classifier run; null = newest match in outputs/
    reader: str | None = None  # prompts: attribute reader run; null = newest match in outputs/
    inception_weights: str | None = None  # FID Inception .pth: fid/kid/pr use its features
    pr_k: int = 3  # precision/recall: k of the k-NN radii
    kid_subsets: int = 100  # KID: random subsets averaged over
    kid_subset_size: int = 1000  # KID: images per subset
    dataset: dict[str, Any] | None = None  # dataset=<name> [dataset.root=...]: where the data is


def run_eval(node: DictConfig) -> dict[str, float]:
    values = command_options(node)
    cfg = validate("eval", EvalConfig, values)
    check(cfg.batch_size >= 1, "batch_size", "must be >= 1")
    check(cfg.iwae_k >= 0, "iwae_k", "must be >= 0 (0 = off)")
    ckpt_path = resolve_checkpoint(cfg.run, cfg.checkpoint)
    device = resolve_device(cfg.device)
    model, ckpt = load_run(ckpt_path, device, use_ema=cfg.ema)
    options = {"iwae_k": cfg.iwae_k} if cfg.iwae_k else {}
    sampling = sampler_options(cfg, model)
    data = build_data(eval_dataset_config(ckpt["dataset"], cfg.dataset)).to(device)
    wanted, quality = quality_metrics(cfg, model, data, ckpt["dataset"]["name"], device)
    torch.manual_seed(cfg.seed)
    metrics: dict[str, float] = {}
    if "nll" in wanted:
        metrics = evaluate(
            model,
            data,
            batch_size=cfg.batch_size,
            max_batches=cfg.max_batches,
            num_samples=cfg.num_samples if has_sample_metrics(data) else 0,
            seed=cfg.seed,
            options=options,
            sample_options=sampling,
        )
    if quality is not None:
        with console.status(f"sampling {cfg.num_samples} images for {', '.join(quality.names)}"):
            metrics.update(quality(model, cfg.seed, **sampling))
    notes = {**model.describe_metrics(options), **(quality.describe() if quality else {})}
    print_table(ckpt_path, ckpt, metrics, quality is not None and not cfg.inception_weights)
    run_dir = RunDir.of_checkpoint(ckpt_path).path
    _record_eval(run_dir, ckpt_path, ckpt, metrics, notes)
    return metrics


def eval_dataset_config(saved: dict[str, Any], given: dict[str, Any] | None) -> dict[str, Any]:
    """The dataset to evaluate on: the checkpoint's dataset name and its settings that shape the
    data (image size, channels, split seed...), with the settings that name places on disk
    (PATH_KEYS) from this command (`dataset.root=...`) or, failing that, from the package's own
    YAML of that dataset. A checkpoint never names a place aigc reads: when the run was trained
    on data elsewhere, this says so in one line before any work. Nothing is downloaded unless
    the command asks (`dataset.download=true`)."""
    name = str(saved["name"])
    DATASETS.get(name)  # a registered name, or a one-line error listing the choices
    given = dict(given or {})
    if given.get("name", name) != name:
        raise ConfigError(
            f"the run was trained on dataset '{name}', not '{given['name']}'",
            hint=f"use dataset={name}, or leave dataset out",
        )
    yaml = resources.files("aigc_cli.configs") / "dataset" / f"{name}.yaml"
    defaults: dict[str, Any] = {}
    if yaml.is_file():
        defaults = OmegaConf.to_container(OmegaConf.load(str(yaml)), resolve=True)  # type: ignore[assignment]
    recorded = saved.get("config") or {}
    shape = {k: v for k, v in recorded.items() if k not in PATH_KEYS}
    places = {k: given[k] if k in given else defaults[k] for k in PATH_KEYS
              if k in given or k in defaults}  # fmt: skip
    for key in PATH_KEYS:
        if key == "download" or key in given or key not in recorded:
            continue
        if recorded[key] != defaults.get(key):
            raise ConfigError(
                f"the run was trained on {name} data at dataset.{key}={recorded[key]}; aigc eval "
                "reads only places this command names, never one a checkpoint names",
                hint=f"pass dataset.{key}={recorded[key]} (or another place with the same data)",
            )
    if "download" in places and "download" not in given:
        places["download"] = False
    return {**shape, **places, "name": name}


def quality_metrics(cfg: EvalConfig, model: Any, data: Any, dataset_name: str, device: Any):
    """The metric groups asked for (or, unasked, nll and those a feature network is at hand
    for) and the SampleQuality that computes the sample-based ones."""

    known = ("nll", *GROUPS)
    if cfg.metrics is not None:
        bad = [m for m in cfg.metrics if m not in known]
        check(not bad, "metrics", f"{bad}; choose from: {', '.join(known)}")
    mcfg = MetricsConfig(
        num_samples=cfg.num_samples,
        batch_size=min(cfg.batch_size, 250),
        classifier=cfg.classifier,
        reader=cfg.reader,
        inception_weights=cfg.inception_weights,
        pr_k=cfg.pr_k,
        kid_subsets=cfg.kid_subsets,
        kid_subset_size=cfg.kid_subset_size,
    )
    wanted = cfg.metrics if cfg.metrics is not None else ["nll"]
    groups = [m for m in wanted if m in GROUPS]
    if cfg.metrics is None and model.generates and data.spec.kind == "image":
        # Unasked, the sample metrics are added when a feature network is at hand.
        groups = [g for g in GROUPS if (g != "coverage" or data.spec.num_classes >= 2)
                  and (g != "prompts" or model.takes_prompts)]  # fmt: skip
        try:
            return wanted, load_sample_quality(mcfg, groups, data, dataset_name, device)
        except ConfigError as e:
            console.print(f"[yellow]fid/kid/pr/coverage skipped:[/] {e}", soft_wrap=True)
            return wanted, None
    if not groups:
        return wanted, None
    if not model.generates:
        raise ConfigError(
            f"{', '.join(groups)} judge generated samples; model '{model.cfg.name}' generates none",
            hint="use metrics=[nll]",
        )
    return wanted, load_sample_quality(mcfg, groups, data, dataset_name, device)


def print_table(ckpt_path: Path, ckpt: dict[str, Any], metrics: dict[str, float], note: bool):
    table = Table(title=f"eval of {ckpt_path} (step {ckpt['step']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(f"test/{k}", f"{v:.5g}")
    console.print(table)
    if note:
        console.print(
            "[dim]fid/kid/pr are computed on aigc classifier features: they rank runs scored "
            "with the same classifier and are not Inception-FID.[/]"
        )


def _record_eval(
    run_dir: Path,
    ckpt_path: Path,
    ckpt: dict[str, Any],
    metrics: dict[str, float],
    notes: dict[str, str],
) -> None:
    """Add the figures to metrics.json under "eval" → checkpoint name (training's own final
    figures stay as they are), and as an hparams session in tb/eval beside the run's events,
    so TensorBoard's HParams tab lists evaluated runs by their config."""

    run = RunDir(run_dir)
    record = run.read_metrics()
    record.setdefault("eval", {})[Path(ckpt_path).stem] = {
        "checkpoint": str(ckpt_path),
        "step": ckpt["step"],
        **{f"test/{k}": v for k, v in metrics.items()},
        "methods": {f"test/{k}": v for k, v in notes.items()},
    }
    run.write_metrics(record)
    console.print(f'[green]written[/] {run.metrics} (under "eval")')
    hp = {
        k: v
        for k, v in flatten(ckpt.get("config") or {}).items()
        if k.split(".")[0] in ("model", "dataset", "optim", "trainer", "seed")
    }
    writer = SummaryWriter(log_dir=str(run.tb_eval))
    write_hparams(writer, hp, {f"eval/{k}": v for k, v in metrics.items()}, int(ckpt["step"]))
    writer.close()
