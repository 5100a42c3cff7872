"""`aigc export`: validate, load the run, write the export folder (store/export.py) atomically,
print what it holds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aigc_cli.config import command_options, validate
from aigc_cli.console import console
from aigc_cli.errors import ConfigError
from aigc_cli.store.export import (
    DTYPES,
    FORMATS,
    WEIGHTS,
    export_config,
    read_weights_into,
    replace_folder,
    save_weights,
    write_metadata,
)
from aigc_cli.store.onnx import export_onnx, require_onnx
from aigc_cli.store.rundir import RunDir
from aigc_cli.store.runs import load_run, resolve_checkpoint


@dataclass
class ExportConfig:
    run: str | None = None  # run dir or checkpoint file; null = the newest run
    checkpoint: str = "last"  # last | best
    out: str | None = None  # the folder to write; null = <run>/export
    format: str = "safetensors"  # safetensors | onnx (the safetensors folder plus ONNX graphs)
    ema: bool = True  # export the EMA weights when the run kept them
    dtype: str = "fp32"  # fp32 | bf16 | fp16: the stored weights' type
    overwrite: bool = False  # replace an existing `out` folder
    device: str = "cpu"  # where the ONNX check runs PyTorch's side


def run_export(node: Any) -> Path:
    """The command: validate, load the run, write the folder (atomically), print what it holds."""
    cfg = validate("export", ExportConfig, command_options(node))
    if cfg.format not in FORMATS:
        raise ConfigError(f"bad value for 'format': '{cfg.format}'; choose from: "
                          f"{', '.join(FORMATS)}")  # fmt: skip
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"bad value for 'dtype': '{cfg.dtype}'; choose from: {', '.join(DTYPES)}")
    if cfg.format == "onnx":
        require_onnx()
    ckpt_path = resolve_checkpoint(cfg.run, cfg.checkpoint)
    out = Path(cfg.out) if cfg.out else RunDir.of_checkpoint(ckpt_path).export
    if out.exists() and not cfg.overwrite:
        raise ConfigError(
            f"{out} already exists; nothing was written",
            hint="pass overwrite=true to replace it, or out=<another folder>",
        )
    model, ckpt = load_run(ckpt_path, "cpu", use_ema=cfg.ema)
    used_ema = bool(cfg.ema and ckpt.get("ema"))
    meta = export_config(model, ckpt, cfg.dtype, used_ema)
    meta.update(RunDir.of_checkpoint(ckpt_path).record_at(ckpt_path, int(ckpt["step"])))

    def fill(folder: Path) -> None:
        save_weights(model.state_dict(), folder / WEIGHTS, DTYPES[cfg.dtype])
        if cfg.format == "onnx":
            # The graphs carry the weights as stored (rounded to dtype), computed in fp32.
            exported = read_weights_into(model, folder)
            meta["onnx"] = export_onnx(exported, folder, torch.device(cfg.device))
        write_metadata(folder, meta, ckpt_path)

    replace_folder(out, fill)
    for g in meta.get("onnx", []):
        diff = f"largest difference {g['max_diff']:.2e} (tolerance {g['tolerance']:.0e})"
        console.print(f"{g['file']}: onnxruntime vs PyTorch, {diff}", soft_wrap=True)
    what = "EMA" if used_ema else "live"
    console.print(f"[green]exported[/] {ckpt_path} (step {ckpt['step']}, {what} weights, "
                  f"{cfg.dtype}) → {out}", soft_wrap=True)  # fmt: skip
    return out
