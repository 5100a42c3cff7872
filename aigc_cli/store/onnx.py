"""ONNX graphs of a model's generating path (each family's `onnx_graphs`), exported with
dynamic batch and sequence sizes and checked at once: onnxruntime and PyTorch run the graph on
fresh random inputs of another size than it was traced with, and an export whose largest
difference exceeds the tolerance fails."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from aigc_cli.errors import ConfigError

TOLERANCE = 1e-4  # |onnx - torch| <= TOLERANCE * (1 + |torch|), fp32 on both sides
TRACE_SIZE, CHECK_SIZE = 2, 3  # batch (and past / sequence length) traced, then checked
OPSET = 17


def require_onnx() -> None:
    try:
        # Deferred: onnx belongs to the optional `export` extra.
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            f"format=onnx needs the onnx and onnxruntime packages ({e.name} is missing)",
            hint="pip install 'aigc[export]' (make install includes it)",
        ) from e


def export_onnx(model: Any, folder: Path, device: torch.device) -> list[dict[str, Any]]:
    """Write <graph>.onnx for each of the model's graphs into `folder`; returns, per graph, its
    inputs, outputs and the largest difference the check found."""
    graphs = model.onnx_graphs()
    if not graphs:
        raise ConfigError(f"model '{model.cfg.name}' has no ONNX export",
                          hint="use format=safetensors")  # fmt: skip
    model = model.float().eval().to(device)
    out = []
    for g in graphs:
        # The wrapper must be in eval mode itself: the exporter puts the module back into its
        # own mode afterwards, and a fresh wrapper's training mode would reach the model.
        g.module.eval()
        path = Path(folder) / f"{g.name}.onnx"
        inputs = g.example(TRACE_SIZE)
        names = list(inputs)
        with torch.no_grad(), warnings.catch_warnings():
            # The tracer's notes on Python-side shape checks (constant in every graph) and the
            # exporter's deprecation notice are not the user's business.
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    g.module, tuple(v.to(device) for v in inputs.values()), str(path),
                    input_names=names, output_names=g.outputs, dynamic_axes=g.dynamic,
                    opset_version=OPSET, dynamo=False,
                )  # fmt: skip
            except torch.onnx.errors.OnnxExporterError as e:
                what = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise ConfigError(f"model '{model.cfg.name}' cannot be exported to ONNX: {what}",
                                  hint="use format=safetensors") from e  # fmt: skip
        diff = check_graph(g, path, device)
        out.append({"file": path.name, "inputs": names, "outputs": g.outputs,
                    "about": g.about, "max_diff": diff, "tolerance": TOLERANCE})  # fmt: skip
    return out


def check_graph(graph: Any, path: Path, device: torch.device) -> float:
    """The largest |onnxruntime - PyTorch| over every output, on inputs of CHECK_SIZE."""
    # Deferred: onnx and onnxruntime belong to the optional `export` extra.
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(path))
    inputs = graph.example(CHECK_SIZE)
    with torch.no_grad():
        expected = graph.module(*(v.to(device) for v in inputs.values()))
    if isinstance(expected, torch.Tensor):
        expected = (expected,)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})
    worst, bad = 0.0, []
    for name, e, o in zip(graph.outputs, expected, got, strict=True):
        e = e.float().cpu()
        o = torch.from_numpy(o).float()
        if o.shape != e.shape:
            bad.append(f"{name}: shape {tuple(o.shape)}, PyTorch {tuple(e.shape)}")
            continue
        d = (o - e).abs()
        worst = max(worst, float(d.max()) if d.numel() else 0.0)
        if (d > TOLERANCE * (1 + e.abs())).any():
            bad.append(f"{name}: largest difference {float(d.max()):.2e}")
    if bad:
        raise ConfigError(
            f"{path.name} does not match PyTorch on inputs of size {CHECK_SIZE}: " + "; ".join(bad),
            hint="nothing was written; report it with the run's model config",
        )
    return worst
