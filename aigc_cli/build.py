"""The only place components are constructed: from registry names and validated configs, for
training, and from a checkpoint alone, for sampling and evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from aigc_cli import startup
from aigc_cli.checkpoint import load_checkpoint
from aigc_cli.config import validate
from aigc_cli.data.base import DataModule, DataSpec
from aigc_cli.errors import CheckpointError, ConfigError
from aigc_cli.models.base import GenerativeModel
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


def no_paths(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """A saved model config with the paths it names cleared: a latent diffusion is rebuilt from
    its recorded autoencoder config and the weights in the file, so a loaded file never
    chooses a path aigc reads."""
    return {**model_cfg, "autoencoder": None} if "autoencoder" in model_cfg else dict(model_cfg)


def build_model(model_cfg: Any, spec: DataSpec) -> GenerativeModel:
    cls, cfg = _entry_and_config(MODELS, "model", model_cfg)
    return cls(cfg, spec)


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


# ---- runs -------------------------------------------------------------------------------


def find_runs(root: Path | None = None) -> list[Path]:
    """Run dirs under `root` (default: the outputs root) holding a checkpoint, oldest first."""
    from aigc_cli.paths import outputs_root

    root = Path(root) if root is not None else outputs_root()
    if not root.is_dir():
        return []
    runs = {p.parent.parent for p in root.rglob("checkpoints/last.pt")}
    return sorted(runs, key=lambda p: (p / "checkpoints" / "last.pt").stat().st_mtime)


def resolve_checkpoint(
    run: str | Path | None, which: str = "last", root: Path | None = None
) -> Path:
    """A checkpoint file from a run dir, a checkpoint path, or None (= the newest run)."""
    if run in (None, "", "latest"):
        from aigc_cli.paths import outputs_root

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
    from aigc_cli.export import WEIGHTS, is_export

    if is_export(path):  # an `aigc export` folder stands in for a run
        return path / WEIGHTS
    ckpt = path / "checkpoints" / f"{which}.pt"
    if not ckpt.is_file():
        raise CheckpointError(
            f"{path} has no checkpoints/{which}.pt", hint="is it a run dir of `aigc train`?"
        )
    return ckpt


def run_dir_of(ckpt_path: Path) -> Path:
    ckpt_path = Path(ckpt_path)
    return ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent


def load_run(
    ckpt_path: Path, device: torch.device | str = "cpu", use_ema: bool = True
) -> tuple[GenerativeModel, dict[str, Any]]:
    """Rebuild the model from a checkpoint alone: registry name + saved config + data spec (or
    from an export folder's model.safetensors and config.json)."""
    startup.resume()  # `aigc sample/eval/export`: the heavy imports are done by now
    if Path(ckpt_path).suffix == ".safetensors":
        from aigc_cli.export import read_export

        return read_export(Path(ckpt_path).parent, device)
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")

    def weights() -> dict[str, torch.Tensor]:
        ema = ckpt.get("ema") if use_ema and ckpt.get("ema") else None
        return ema["weights"] if ema else ckpt["model_state"]

    model = rebuild(ckpt, weights, Path(ckpt_path), "it was not written by aigc train")
    return model.to(device).eval(), ckpt


def rebuild(record: dict[str, Any], weights: Any, where: Path, hint: str) -> GenerativeModel:
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
