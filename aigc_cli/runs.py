"""Glue between the Hydra apps and the library: where the run dir comes from, how a resumed
run's config is rebuilt, what a sweep optimises."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

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


GROUPS = ("model", "dataset", "optim", "trainer", "experiment", "hparams_search")


def resumed_config(cfg: DictConfig) -> DictConfig:
    """The checkpoint's own config, with this command's `key=value` overrides on top: a resumed
    run trains the model it started with, e.g. `aigc train resume=latest trainer.max_steps=5000`.
    Re-running the command that started the run (a requeue) repeats its group choices
    (`model=gan`): those are accepted; only a real change of group is refused."""
    from hydra.core.hydra_config import HydraConfig

    from aigc_cli.build import resolve_checkpoint
    from aigc_cli.checkpoint import load_checkpoint

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
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    return {g: str(choices[g]) for g in GROUPS if choices.get(g) is not None}


def run_train(cfg: DictConfig) -> float | None:
    with user_errors():
        return _run_train(cfg)


def run_sample(cfg: DictConfig) -> Path:
    from aigc_cli.sample import sample

    with user_errors():
        return sample(cfg)


def run_eval(cfg: DictConfig) -> dict[str, float]:
    from aigc_cli.eval_command import run_eval as _run_eval

    with user_errors():
        return _run_eval(cfg)


def run_export(cfg: DictConfig) -> Path:
    from aigc_cli.export import run_export as _run_export

    with user_errors():
        return _run_export(cfg)


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

    choices = hydra_choices()
    if cfg.get("resume"):
        cfg = resumed_config(cfg)
        choices = {}  # the checkpoint's own
    # Fail on a bad trainer/optim value before paying for importing torch.
    validate_trainer(cfg.trainer)
    validate_optim(cfg.optim)
    from aigc_cli.training import train

    return train(cfg, run_dir=run_dir, resume=resume, choices=choices)
