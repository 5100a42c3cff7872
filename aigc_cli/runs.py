"""Glue between the Hydra apps and the library: where the run dir comes from, how a resumed
run's config is rebuilt, what a sweep optimises."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from aigc_cli.config import check, validate
from aigc_cli.errors import AigcError, ConfigError


class UserExit(BaseException):
    """Carries an AigcError out of a single Hydra run. A BaseException passes Hydra's job
    runner untouched, so it prints no 'Error executing job' banner before our one line."""

    def __init__(self, error: AigcError) -> None:
        super().__init__(str(error))
        self.error = error


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """In a multirun, errors stay ordinary exceptions: Hydra marks that job failed and the
    sweep goes on."""
    try:
        yield
    except AigcError as e:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        raise UserExit(e) from e


def _hydra_run_dir() -> Path | None:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None


def resumed_config(cfg: DictConfig) -> DictConfig:
    """The checkpoint's own config, with this command's `key=value` overrides on top: a resumed
    run trains the model it started with, e.g. `aigc train resume=latest trainer.max_steps=5000`."""
    from hydra.core.hydra_config import HydraConfig

    from aigc_cli.build import resolve_checkpoint
    from aigc_cli.checkpoint import load_checkpoint

    ckpt = load_checkpoint(resolve_checkpoint(cfg.resume))
    base = OmegaConf.create(ckpt["config"])
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    dotlist = []
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key == "resume" or key.startswith("hydra"):
            continue
        if "." not in key and key not in ("seed", "optimized_metric", "resume_sweep"):
            raise ConfigError(
                f"cannot change '{key}' when resuming; the run continues with its own {key}",
                hint="start a new run to train something else",
            )
        dotlist.append(o.lstrip("+"))
    merged = OmegaConf.merge(base, OmegaConf.from_dotlist(dotlist))
    merged.resume = cfg.resume
    return merged  # type: ignore[return-value]


def run_train(cfg: DictConfig) -> float | None:
    with user_errors():
        return _run_train(cfg)


def run_sample(cfg: DictConfig) -> Path:
    from aigc_cli.sample import sample

    with user_errors():
        return sample(cfg)


def run_eval(cfg: DictConfig) -> dict[str, float]:
    with user_errors():
        return _run_eval(cfg)


def _run_train(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        from aigc_cli.sweep import run_job

        return run_job(cfg, _hydra_run_dir() or Path("."), _train_one)
    if cfg.get("resume_sweep"):
        raise ConfigError(
            "resume_sweep is for sweeps", hint="add -m, with the sweep's own overrides"
        )
    return objective(_train_one(cfg, run_dir=_hydra_run_dir()), cfg.get("optimized_metric"))


def objective(metrics: dict[str, float], key: str | None) -> float | None:
    """What `aigc train` returns to a sweeper: the final metric named by optimized_metric."""
    if key and key not in metrics:
        raise ConfigError(
            f"optimized_metric '{key}' is not among the final metrics; "
            f"choose from: {', '.join(metrics)}"
        )
    return float(metrics[key]) if key else None


def _train_one(
    cfg: DictConfig, run_dir: Path | None, resume: Path | None = None
) -> dict[str, float]:
    from aigc_cli.config import validate_optim, validate_trainer

    if cfg.get("resume"):
        cfg = resumed_config(cfg)
    # Fail on a bad trainer/optim value before paying for importing torch.
    validate_trainer(cfg.trainer)
    validate_optim(cfg.optim)
    from aigc_cli.train import train

    return train(cfg, run_dir=run_dir, resume=resume)


def _run_eval(node: DictConfig) -> dict[str, float]:
    """`aigc eval`: the test metrics of a run's checkpoint, printed, added to the run's
    metrics.json and logged as a TensorBoard hparams session."""
    from dataclasses import dataclass

    import torch

    from aigc_cli.build import build_data, load_run, resolve_checkpoint, resolve_device, run_dir_of
    from aigc_cli.console import console
    from aigc_cli.evaluate import evaluate
    from aigc_cli.metrics.quality import GROUPS, MetricsConfig, SampleQuality
    from aigc_cli.train import _has_sample_metrics

    @dataclass
    class EvalConfig:
        run: str | None = None  # run dir or checkpoint file; null = the newest run
        checkpoint: str = "last"  # last | best
        metrics: list[str] | None = None  # nll, fid, kid, pr, coverage; null = all that apply
        device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
        batch_size: int = 256  # evaluation batch size
        max_batches: int = 0  # 0 = the whole test split
        num_samples: int = 2500  # generated samples for sample-based metrics
        seed: int = 0  # seed of the Monte-Carlo estimates and samples
        ema: bool = True  # evaluate the EMA weights when the run kept them
        iwae_k: int = 0  # VAE: samples per image for the IWAE bound on NLL (papers: 5000)
        classifier: str | None = None  # feature classifier run; null = newest match in outputs/
        inception_weights: str | None = None  # FID Inception .pth: fid/kid/pr use its features
        pr_k: int = 3  # precision/recall: k of the k-NN radii
        kid_subsets: int = 100  # KID: random subsets averaged over
        kid_subset_size: int = 1000  # KID: images per subset

    cfg = validate("eval", EvalConfig, {k: v for k, v in node.items() if k != "hydra"})
    check(cfg.batch_size >= 1, "batch_size", "must be >= 1")
    check(cfg.iwae_k >= 0, "iwae_k", "must be >= 0 (0 = off)")
    known = ("nll", *GROUPS)
    if cfg.metrics is not None:
        bad = [m for m in cfg.metrics if m not in known]
        check(not bad, "metrics", f"{bad}; choose from: {', '.join(known)}")
    ckpt_path = resolve_checkpoint(cfg.run, cfg.checkpoint)
    device = resolve_device(cfg.device)
    model, ckpt = load_run(ckpt_path, device, use_ema=cfg.ema)
    options = {"iwae_k": cfg.iwae_k} if cfg.iwae_k else {}
    data = build_data(ckpt["dataset"]["config"]).to(device)
    dataset_name = ckpt["dataset"]["name"]
    mcfg = MetricsConfig(
        num_samples=cfg.num_samples,
        batch_size=min(cfg.batch_size, 250),
        classifier=cfg.classifier,
        inception_weights=cfg.inception_weights,
        pr_k=cfg.pr_k,
        kid_subsets=cfg.kid_subsets,
        kid_subset_size=cfg.kid_subset_size,
    )
    wanted = cfg.metrics if cfg.metrics is not None else ["nll"]
    quality = None
    groups = [m for m in wanted if m in GROUPS]
    if cfg.metrics is None and model.generates and data.spec.kind == "image":
        # Unasked, the sample metrics are added when a feature network is at hand.
        groups = [g for g in GROUPS if g != "coverage" or data.spec.num_classes >= 2]
        try:
            quality = SampleQuality(mcfg, groups, data, dataset_name, device)
        except ConfigError as e:
            console.print(f"[yellow]fid/kid/pr/coverage skipped:[/] {e}", soft_wrap=True)
            groups = []
    elif groups:
        if not model.generates:
            raise ConfigError(
                f"{', '.join(groups)} judge generated samples; model '{model.cfg.name}' "
                "generates none",
                hint="use metrics=[nll]",
            )
        quality = SampleQuality(mcfg, groups, data, dataset_name, device)

    torch.manual_seed(cfg.seed)
    metrics: dict[str, float] = {}
    if "nll" in wanted:
        metrics = evaluate(
            model,
            data,
            batch_size=cfg.batch_size,
            max_batches=cfg.max_batches,
            num_samples=cfg.num_samples if _has_sample_metrics(data) else 0,
            seed=cfg.seed,
            options=options,
        )
    if quality is not None:
        with console.status(f"sampling {cfg.num_samples} images for {', '.join(groups)}"):
            metrics.update(quality(model, cfg.seed))
    notes = {**model.describe_metrics(options), **(quality.describe() if quality else {})}

    from rich.table import Table

    table = Table(title=f"eval of {ckpt_path} (step {ckpt['step']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(f"test/{k}", f"{v:.5g}")
    console.print(table)
    if quality is not None and not cfg.inception_weights:
        console.print(
            "[dim]fid/kid/pr are computed on aigc classifier features: they rank runs scored "
            "with the same classifier and are not Inception-FID.[/]"
        )
    run_dir = run_dir_of(ckpt_path)
    _record_eval(run_dir, ckpt_path, ckpt, metrics, notes)
    console.print(f'[green]written[/] {run_dir / "metrics.json"} (under "eval")')
    return metrics


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
    from aigc_cli.checkpoint import atomic_write_text
    from aigc_cli.logger import flatten, write_hparams

    path = run_dir / "metrics.json"
    record: dict[str, Any] = {}
    if path.is_file():
        with contextlib.suppress(ValueError):
            record = json.loads(path.read_text())
    record.setdefault("eval", {})[Path(ckpt_path).stem] = {
        "checkpoint": str(ckpt_path),
        "step": ckpt["step"],
        **{f"test/{k}": v for k, v in metrics.items()},
        "methods": {f"test/{k}": v for k, v in notes.items()},
    }
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    hp = {
        k: v
        for k, v in flatten(ckpt.get("config") or {}).items()
        if k.split(".")[0] in ("model", "dataset", "optim", "trainer", "seed")
    }
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(run_dir / "tb" / "eval"))
    write_hparams(writer, hp, {f"eval/{k}": v for k, v in metrics.items()}, int(ckpt["step"]))
    writer.close()
