"""The only place components are constructed: a dataset and a model from their registry names
and validated configs (store/runs.py rebuilds them from a checkpoint through here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from aigc_cli.config import validate
from aigc_cli.data.base import DataModule, DataSpec
from aigc_cli.errors import CheckpointError, ConfigError
from aigc_cli.models.base import TrainedModel, check_interface
from aigc_cli.registry import DATASETS, MODELS, Registry


def _section(node: Any) -> dict[str, Any]:
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    return dict(node or {})


def _entry_and_config(registry: Registry, section: str, node: Any) -> tuple[Any, Any]:
    values = _section(node)
    name = values.get("name")
    if not name:
        raise ConfigError(
            f"'{section}' has no name; pick one, e.g. {section}={registry.names()[0]}"
        )
    entry = registry.get(str(name))
    return entry.obj, validate(section, entry.config, values)


def build_data(dataset_cfg: Any) -> DataModule:
    builder, cfg = _entry_and_config(DATASETS, "dataset", dataset_cfg)
    return builder(cfg)


def build_model(model_cfg: Any, spec: DataSpec) -> TrainedModel:
    cls, cfg = _entry_and_config(MODELS, "model", model_cfg)
    model = cls(cfg, spec)
    check_interface(model)
    return model


def resolve_device(name: str) -> torch.device:
    """auto → cuda if present, else mps, else cpu; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(
            f"bad value for 'trainer.device': '{name}'; choose from: auto, cpu, cuda, cuda:N, mps"
        ) from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "trainer.device=cuda but no CUDA GPU is available",
            hint="use trainer.device=auto or cpu",
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"trainer.device={name} but only {torch.cuda.device_count()} GPU(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.device=mps but MPS is not available", hint="use auto or cpu")
    return dev


def no_paths(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """A saved model config with the paths it names cleared: a latent diffusion is rebuilt from
    its recorded autoencoder config and the weights in the file, so a loaded file never
    chooses a path aigc reads."""
    return {**model_cfg, "autoencoder": None} if "autoencoder" in model_cfg else dict(model_cfg)


def rebuild(record: dict[str, Any], weights: Any, where: Path, hint: str) -> TrainedModel:
    """A model from a saved record (its "model" config and "dataset" spec) and `weights()`, with
    one line naming `where` for a record that lacks a part or weights that do not fit. Paths the
    config names are cleared (`no_paths`)."""
    try:
        spec = DataSpec.from_dict(record["dataset"]["spec"])
        model = build_model(no_paths(record["model"]["config"]), spec)
        model.load_state_dict(weights())
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{where} is missing {e} and cannot be loaded", hint=hint) from e
    except RuntimeError as e:
        raise CheckpointError(
            f"the weights in {where} do not fit model '{record['model']['config']['name']}' "
            f"({str(e).splitlines()[0][:100]})",
            hint="it belongs to another model or version",
        ) from e
    return model
