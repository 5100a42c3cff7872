"""The run folder: the one place that knows its names and layout.

    <run>/config.yaml           the resolved config
    <run>/checkpoints/          step_N.pt, last.pt (the newest), best.pt (trainer.best_metric)
    <run>/metrics.json          the final test figures; `aigc eval`'s under "eval"
    <run>/train.log             the console's lines
    <run>/tb/                   TensorBoard events (tb/eval: `aigc eval`'s HParams session)
    <run>/samples/              grids, texts and the other files `aigc sample` and the loop write
    <run>/export/               `aigc export`'s default folder
    <run>/job.json              a sweep job's record (error.txt: a failed job's traceback)
    <run>/.hydra/overrides.yaml Hydra's record of the command line

Every file it writes goes through `aigc_cli.atomic`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from aigc_cli.atomic import write_json, write_text


class RunDir:
    CHECKPOINTS = "checkpoints"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def of_checkpoint(cls, ckpt: str | Path) -> RunDir:
        """The run a checkpoint file belongs to (an export's weights: the export folder)."""
        ckpt = Path(ckpt)
        parent = ckpt.parent
        return cls(parent.parent if parent.name == cls.CHECKPOINTS else parent)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    # ---- names ----------------------------------------------------------------------------
    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    def checkpoint(self, which: str = "last") -> Path:
        """checkpoints/<which>.pt: last, best or step_NNNNNNN."""
        return self.checkpoints / f"{which}.pt"

    @property
    def last(self) -> Path:
        return self.checkpoint("last")

    @property
    def best(self) -> Path:
        return self.checkpoint("best")

    def has_checkpoint(self) -> bool:
        return self.last.is_file()

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def log(self) -> Path:
        return self.path / "train.log"

    @property
    def tb(self) -> Path:
        return self.path / "tb"

    @property
    def tb_eval(self) -> Path:
        return self.tb / "eval"

    @property
    def samples(self) -> Path:
        return self.path / "samples"

    def sample_file(self, stem: str) -> Path:
        """samples/<stem>; the writer of the result's kind adds the suffix."""
        return self.samples / stem

    @property
    def export(self) -> Path:
        return self.path / "export"

    @property
    def error(self) -> Path:
        """A failed sweep job's traceback."""
        return self.path / "error.txt"

    @property
    def job(self) -> Path:
        return self.path / "job.json"

    @property
    def overrides(self) -> Path:
        return self.path / ".hydra" / "overrides.yaml"

    # ---- files ----------------------------------------------------------------------------
    def read_metrics(self) -> dict[str, Any]:
        """metrics.json, or {} when there is none (or it cannot be read)."""
        return _read_json(self.metrics) or {}

    def write_metrics(self, record: dict[str, Any]) -> None:
        write_json(self.metrics, record)

    def record_at(self, ckpt_path: Path, step: int) -> dict[str, Any]:
        """The figures the run measured at this checkpoint's step (metrics.json's final ones,
        and `aigc eval`'s of this checkpoint), with their methods, and the command line that
        trained it (Hydra's record in the run dir)."""
        out: dict[str, Any] = {"metrics": {}, "methods": {}, "overrides": []}
        record = self.read_metrics()
        figures = dict(record) if record.get("step") == step else {}
        evaluated = (record.get("eval") or {}).get(Path(ckpt_path).stem) or {}
        if evaluated.get("step") == step:
            figures.update(evaluated)
        for k, v in figures.items():
            if k.startswith("test/") and isinstance(v, int | float):
                out["metrics"][k] = v
        out["methods"] = {k: v for k, v in (figures.get("methods") or {}).items()
                          if k in out["metrics"]}  # fmt: skip
        if self.overrides.is_file():
            try:
                out["overrides"] = [str(o) for o in OmegaConf.load(self.overrides)]
            except Exception:  # a damaged Hydra record only loses the card's command line
                out["overrides"] = []
        return out

    def write_config(self, yaml_text: str) -> None:
        write_text(self.config, yaml_text)

    def read_job(self) -> dict[str, Any] | None:
        return _read_json(self.job)

    def write_job(self, record: dict[str, Any]) -> None:
        write_json(self.job, record)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
