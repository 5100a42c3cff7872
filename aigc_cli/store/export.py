"""The export folder: a trained run, self-contained. `model.safetensors` holds the weights
(plain tensors behind a JSON header: loading runs no code), `config.json` everything needed to
rebuild the model (registry name, model config, data spec with its tokenizer and class names)
and the run's final metrics, `README.md` a model card. `format=onnx` adds the family's
generating graphs, each checked against PyTorch (store/onnx.py).

An export folder works wherever a run does: `aigc sample run=<folder>`, `aigc eval`,
`init_from=`, and `aigc_cli.load(<folder>)` from Python."""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save

from aigc_cli.atomic import current_umask, write_bytes, write_text
from aigc_cli.build import rebuild
from aigc_cli.errors import CheckpointError, ConfigError
from aigc_cli.registry import MODELS

EXPORT_FORMAT = "aigc-export"
EXPORT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FORMATS = ("safetensors", "onnx")


def is_export(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / WEIGHTS).is_file() and (path / CONFIG).is_file()


def replace_folder(out: Path, fill: Any) -> None:
    """Build the folder beside its destination and move it into place only when complete, so a
    failed export (an ONNX check above tolerance) leaves no half folder and the old one intact."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise ConfigError(f"cannot write to {out.parent}: {e.strerror or e}") from e
    try:
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp's 0700 would keep the folder private
        fill(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_metadata(folder: Path, meta: dict[str, Any], ckpt_path: Path) -> None:
    write_text(folder / CONFIG, json.dumps(meta, indent=2) + "\n")
    write_text(folder / "README.md", model_card(meta, ckpt_path))


def read_weights_into(model: Any, folder: Path) -> Any:
    """A copy of `model` holding the folder's weights (as stored, back in fp32)."""
    clone = copy.deepcopy(model)
    clone.load_state_dict(load_weights(folder / WEIGHTS))
    return clone.eval()


def save_weights(state: dict[str, torch.Tensor], path: Path, dtype: torch.dtype) -> None:
    """safetensors refuses tensors that share memory (the transformer's tied embedding and
    output head): each shared tensor is stored once and its other names recorded in the
    header's metadata, to be filled in again on load."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        t = t.detach().cpu()
        tensors[name] = (t.to(dtype) if t.is_floating_point() else t).contiguous()
    data = save(tensors, metadata={"format": EXPORT_FORMAT, "aliases": json.dumps(aliases)})
    write_bytes(path, data)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
            aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})",
                              hint="export the run again with `aigc export`") from e  # fmt: skip
    for name, source in aliases.items():
        state[name] = state[source]
    return state


def export_config(model: Any, ckpt: dict[str, Any], dtype: str, used_ema: bool) -> dict:
    """config.json: what rebuilds the model; RunDir.record_at adds what the run measured."""
    spec = model.spec.to_dict()
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "model": {"name": model.cfg.name, "config": asdict(model.cfg)},
        "dataset": {
            "name": ckpt["dataset"]["name"],
            "spec": spec,
            "config": ckpt["dataset"].get("config") or {},
        },
        "tokenizer": spec.get("tokenizer") or None,
        "class_names": spec.get("class_names") or [],
        "step": int(ckpt["step"]),
        "weights": {"dtype": dtype, "ema": used_ema, "parameters": model.num_parameters()},
        "choices": ckpt.get("choices") or {},
    }


def model_card(meta: dict[str, Any], ckpt_path: Path) -> str:

    name = meta["model"]["name"]
    spec = meta["dataset"]["spec"]
    shape = "×".join(str(s) for s in spec["shape"])
    doc = (MODELS.get(name).obj.__doc__ or "").strip().split("\n\n")[0]
    what = (f"windows of {shape} tokens" if spec["kind"] == "text"
            else f"{spec['kind']} of shape {shape}")  # fmt: skip
    lines = [
        f"# {name} on {meta['dataset']['name']}",
        "",
        f"{' '.join(doc.split())} Trained with aigc for {meta['step']} steps; exported "
        f"from `{ckpt_path}` ({'EMA' if meta['weights']['ema'] else 'live'} weights, "
        f"{meta['weights']['dtype']}).",
        "",
        f"- parameters: {meta['weights']['parameters'] / 1e6:.2f}M",
        f"- data: {meta['dataset']['name']}, {what}"
        + (f", classes: {', '.join(spec['class_names'])}" if spec.get("class_names") else ""),
    ]
    if spec.get("tokenizer"):
        lines.append(f"- tokenizer: {spec['tokenizer'].get('kind')}, {spec['vocab_size']} tokens")
    command = " ".join(["aigc train", *meta["overrides"]]) if meta["overrides"] else ""
    if command:
        lines.append(f"- trained by: `{command}`")
    if meta["metrics"]:
        lines += ["", "## Metrics", "", "| metric | value | how |", "|---|---|---|"]
        for k, v in meta["metrics"].items():
            value = f"{v:.5g}" if isinstance(v, float) else str(v)
            lines.append(f"| {k} | {value} | {meta['methods'].get(k, '')} |")
    lines += [
        "",
        "## Use",
        "",
        "```",
        "aigc sample run=<this folder>" + (' prompt="..."' if spec["kind"] == "text" else ""),
        "```",
        "```python",
        "import aigc_cli as aigc",
        "model = aigc.load('<this folder>')",
        "samples = model.sample(4, seed=0)" + ("  # .texts" if spec["kind"] == "text" else
                                               "  # .images in [0, 1], (n, C, H, W)"),
        "```",
    ]  # fmt: skip
    if (spec.get("extra") or {}).get("music"):
        lines += ["", "Music: `aigc sample` writes one MIDI file and one WAV preview per piece "
                  "and a piano-roll PNG into a folder; listen to the `.wav` files, or open the "
                  "`.mid` files in any MIDI player. From Python, `samples.notes(i)`, "
                  "`samples.audio(i)` and `samples.write('<folder>')`."]  # fmt: skip
    if meta["model"]["config"].get("autoencoder_config"):
        lines += ["", "The frozen VAE of this latent diffusion is part of the weights (`vae.*`)."]
    if meta.get("onnx"):
        lines += ["", "## ONNX", "", "Batch and sequence sizes are dynamic; each graph was run "
                  "by onnxruntime against PyTorch on inputs of other sizes than it was traced "
                  "with.", "", "| graph | inputs → outputs | largest difference |",
                  "|---|---|---|"]  # fmt: skip
        for g in meta["onnx"]:
            lines.append(f"| {g['file']} | {g['about']} | {g['max_diff']:.1e} (tolerance "
                         f"{g['tolerance']:.0e}) |")  # fmt: skip
    return "\n".join(lines) + "\n"


def read_meta(folder: Path) -> dict[str, Any]:
    """An export folder's config.json, checked to be one this version reads."""
    try:
        meta = json.loads((Path(folder) / CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{Path(folder) / CONFIG} cannot be read ({e})",
                              hint="export the run again with `aigc export`") from e  # fmt: skip
    if meta.get("format") != EXPORT_FORMAT or int(meta.get("format_version", 0)) > EXPORT_VERSION:
        raise CheckpointError(
            f"{folder} is not an aigc export of format version {EXPORT_VERSION} or older",
            hint="export it again with this version's `aigc export`",
        )
    return meta


def read_export(folder: Path, device: torch.device | str = "cpu") -> tuple[Any, dict[str, Any]]:
    """The model of an export folder and a checkpoint-like record (model, dataset, step,
    metrics) for the commands that take a run. Reads only the folder's two files; the
    config names registry entries, never paths (a latent diffusion's autoencoder is rebuilt
    from its recorded config, its weights are in the file)."""

    folder = Path(folder)
    meta = read_meta(folder)
    model = rebuild(meta, lambda: load_weights(folder / WEIGHTS), folder,
                    "export the run again with `aigc export`")  # fmt: skip
    record = {
        "model": meta["model"],
        "dataset": meta["dataset"],
        "step": meta["step"],
        "metrics": meta.get("metrics", {}),
        "config": {},
        "ema": None,
    }
    return model.to(device).eval(), record
