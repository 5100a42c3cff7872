"""`aigc train`: the config Hydra composed (or, when resuming, the checkpoint's own with this
command's overrides on top) goes to the training loop; a sweep's job goes through the sweep's
record keeping first."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from aigc_cli.commands.sweep import objective, run_job
from aigc_cli.errors import ConfigError
from aigc_cli.store.checkpoint import load_checkpoint
from aigc_cli.store.runs import resolve_checkpoint
from aigc_cli.training.loop import train

GROUPS = ("model", "dataset", "optim", "trainer", "experiment", "hparams_search")


def run_train(cfg: DictConfig) -> float | None:
    """Train one run (or one job of a sweep); returns what a sweeper optimises."""
    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    run_dir = Path(hydra.runtime.output_dir) if hydra else None
    if hydra is not None and hydra.mode == RunMode.MULTIRUN:
        return run_job(cfg, run_dir or Path("."), train_job)
    if cfg.get("resume_sweep"):
        raise ConfigError(
            "resume_sweep is for sweeps", hint="add -m, with the sweep's own overrides"
        )
    cfg, choices = job_config(cfg)
    metrics = train(cfg, run_dir=run_dir, choices=choices)
    return objective(metrics, cfg.get("optimized_metric"))


def train_job(cfg: DictConfig, run_dir: Path, resume: Path | None = None) -> dict[str, float]:
    """One job of a sweep, in its own dir; `resume` continues an interrupted one."""
    cfg, choices = job_config(cfg)
    return train(cfg, run_dir=run_dir, resume=resume, choices=choices)


def job_config(cfg: DictConfig) -> tuple[DictConfig, dict[str, str]]:
    """The config to train and the groups this command picked (a resumed run keeps the
    checkpoint's own)."""
    if cfg.get("resume"):
        return resumed_config(cfg), {}
    return cfg, hydra_choices()


def resumed_config(cfg: DictConfig) -> DictConfig:
    """The checkpoint's own config, with this command's `key=value` overrides on top: a resumed
    run trains the model it started with, e.g. `aigc train resume=latest trainer.max_steps=5000`.
    Re-running the command that started the run (a requeue) repeats its group choices
    (`model=gan`): those are accepted; only a real change of group is refused."""
    ckpt = load_checkpoint(resolve_checkpoint(cfg.resume))
    base = OmegaConf.create(ckpt["config"])
    before = {**_implied_choices(base), **(ckpt.get("choices") or {})}
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    dotlist = []
    for o in overrides:
        key, _, value = o.partition("=")
        key = key.lstrip("+~")
        if key in ("resume", "resume_sweep") or key.startswith("hydra"):
            continue
        if "." not in key and key not in ("seed", "optimized_metric"):
            if before.get(key) == value or (value == "null" and key not in before):
                continue  # the run's own choice, repeated
            was = f" from '{before[key]}'" if key in before else ""
            raise ConfigError(
                f"cannot change '{key}'{was} to '{value}' when resuming; the run continues "
                f"with its own {key}",
                hint="start a new run to train something else",
            )
        dotlist.append(o.lstrip("+"))
    merged = OmegaConf.merge(base, OmegaConf.from_dotlist(dotlist))
    merged.resume = cfg.resume
    return merged  # type: ignore[return-value]


def _implied_choices(cfg: DictConfig) -> dict[str, str]:
    """The group choices a config's own names imply (for checkpoints that carry none)."""
    out = {g: str(cfg[g].name) for g in ("model", "dataset", "optim") if cfg.get(g)}
    return {**out, "trainer": "default"}


def hydra_choices() -> dict[str, str]:
    """The config groups this command picked (model=gan, experiment=...), as Hydra saw them."""
    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    return {g: str(choices[g]) for g in GROUPS if choices.get(g) is not None}
