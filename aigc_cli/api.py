"""aigc from Python: `aigc_cli.load(path)` gives a trained model ready to sample, from an export
folder, a run dir or a checkpoint; `aigc_cli.training.loop(overrides=[...])` trains through the same
Hydra configs as `aigc train` and returns the final metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

from aigc_cli.build import resolve_device
from aigc_cli.cli.app import describe_error
from aigc_cli.commands.train import GROUPS
from aigc_cli.errors import AigcError, ConfigError
from aigc_cli.results import SampleResult
from aigc_cli.store.rundir import RunDir
from aigc_cli.store.runs import load_run, resolve_checkpoint
from aigc_cli.training.loop import train as _train


class Model:
    """A trained model in eval mode. `sample(n, seed=...)` returns a typed result
    (aigc_cli.results): `Images` (`.images`, an (n, C, H, W) tensor in [0, 1]), `Points`
    (`.points`, (n, D)) or `Texts` (`.texts`, n strings), with `.sampler` and `.nfe`, and
    `.write(path_stem)` to save it as `aigc sample` does. Keyword options are the family's own
    (`prompt=`, `temperature=` for text; `sampler=`, `steps=`, `guidance=` for diffusion and
    flow; `classes=` for conditional models). The same seed gives the same samples as
    `aigc sample seed=...` on the run."""

    def __init__(self, module: Any, record: dict[str, Any], source: Path) -> None:
        self.module = module  # the torch module (a GenerativeModel)
        self.source = source
        self.name: str = record["model"]["name"]
        self.config: dict[str, Any] = dict(record["model"]["config"])
        self.spec = module.spec
        self.step = int(record.get("step", 0))
        self.metrics: dict[str, Any] = dict(record.get("metrics") or {})

    def sample(self, n: int = 1, seed: int = 0, **options: Any) -> SampleResult:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            return self.module.sample(n, generator=g, **options)

    def to(self, device: Any) -> Model:
        self.module.to(device)
        return self

    def __repr__(self) -> str:
        params = self.module.num_parameters()
        return (
            f"aigc Model({self.name}, {self.spec.kind} {self.spec.shape}, "
            f"{params / 1e6:.2f}M parameters, step {self.step}, from {self.source})"
        )


def load(
    path: str | Path, device: str = "cpu", ema: bool = True, checkpoint: str = "last"
) -> Model:
    """The model of an export folder, a run dir (its `checkpoint`: last or best) or a checkpoint
    file, on `device`; EMA weights when the run kept them (unless ema=False). Loading runs no
    code from the file (safetensors, or torch.load with weights_only)."""
    ckpt_path = resolve_checkpoint(Path(path), checkpoint)
    module, record = load_run(ckpt_path, resolve_device(device), use_ema=ema)
    if "metrics" not in record:
        record = {**record, "metrics": _final_metrics(ckpt_path, int(record["step"]))}
    return Model(module, record, Path(path))


def train(
    overrides: list[str] | None = None, run_dir: str | Path | None = None
) -> dict[str, float]:
    """Train as `aigc train <overrides>` does (the same configs, groups and validation) and
    return the final test metrics. The run goes to `run_dir`, or to a new dated folder under
    the outputs root."""
    overrides = list(overrides or [])
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="aigc_cli.configs", version_base="1.3"):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
    except AigcError:
        raise
    except Exception as e:  # Hydra's composition errors, said as `aigc train` says them
        message, _ = describe_error(e, overrides)
        if message is None:
            raise
        raise ConfigError(message) from e
    picked = OmegaConf.to_container(cfg.hydra.runtime.choices)
    choices = {g: str(picked[g]) for g in GROUPS if picked.get(g) is not None}  # type: ignore[union-attr]
    if run_dir is None:
        run_dir = str(cfg.hydra.run.dir)
    with open_dict(cfg):
        del cfg["hydra"]
    return _train(cfg, run_dir=run_dir, choices=choices)


def _final_metrics(ckpt_path: Path, step: int) -> dict[str, Any]:
    return RunDir.of_checkpoint(ckpt_path).record_at(ckpt_path, step)["metrics"]
