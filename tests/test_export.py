"""`aigc export` and the Python API: every registered family exports to a safetensors folder,
loads back through `aigc_cli.load` and samples exactly as the run does; its ONNX graphs agree
with PyTorch through onnxruntime, checked here on the sampling path itself."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import aigc_cli as aigc
from aigc_cli.commands.export import run_export
from aigc_cli.errors import AigcError, ConfigError
from aigc_cli.store.checkpoint import load_checkpoint
from aigc_cli.training.loop import train

from .helpers import KIND_DATA, SMALL, data_of, model_kinds, run_cli

FAMILIES = model_kinds()


def _id(mk: tuple[str, str]) -> str:
    return ":".join(mk)


def _train(make_cfg, tmp_path, name: str, kind: str, *extra: str):
    dataset, data_args = data_of(name, kind)
    run = tmp_path / f"{name}_{kind}"
    cfg = make_cfg(*SMALL.get(name, []), *data_args, "trainer.max_steps=4", "trainer.ema=true",
                   "trainer.ema_decay=0.5", *extra, model=name, dataset=dataset)  # fmt: skip
    train(cfg, run_dir=run)
    return run


def _export(run, out, **options):
    return run_export({"run": str(run), "out": str(out), **options})


def _payload(result):
    """The samples of an image or point result, as one tensor."""
    return result.images if hasattr(result, "images") else result.points


def _same(a, b) -> bool:
    """Two sample results of one kind hold the same samples, drawn the same way."""
    import dataclasses

    assert type(a) is type(b)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if not (torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y):
            return False
    return True


@pytest.mark.parametrize("mk", FAMILIES, ids=_id)
def test_export_loads_and_samples_as_the_run(mk, make_cfg, tmp_path):
    name, kind = mk
    run = _train(make_cfg, tmp_path, name, kind)
    out = _export(run, tmp_path / "export")
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.json", "README.md"}
    meta = json.loads((out / "config.json").read_text())
    assert meta["format"] == "aigc-export" and meta["model"]["name"] == name
    assert meta["weights"]["ema"] is True and meta["step"] == 4
    # the weights are the checkpoint's EMA weights, tensor for tensor
    ema = load_checkpoint(run / "checkpoints" / "last.pt")["ema"]["weights"]
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        stored = set(f.keys())
        for k in stored:
            assert torch.equal(f.get_tensor(k), ema[k]), k
    assert stored <= set(ema)
    from_export, from_run = aigc.load(out), aigc.load(run)
    if not from_run.module.generates:
        x = torch.rand(5, *from_run.spec.shape)
        a, b = from_export.module.logits(x), from_run.module.logits(x)
        if isinstance(a, dict):  # the reader: one set of logits per attribute
            a, b = torch.cat(list(a.values()), 1), torch.cat(list(b.values()), 1)
        assert torch.equal(a, b)
        return
    kw = {"max_new_tokens": 20} if kind == "text" else {}
    assert _same(from_export.sample(6, seed=3, **kw), from_run.sample(6, seed=3, **kw))


@pytest.mark.slow
@pytest.mark.parametrize("mk", FAMILIES, ids=_id)
def test_onnx_graphs_reproduce_pytorch_sampling(mk, make_cfg, tmp_path):
    """Each graph passes the export's own check; independently of it, the graphs drive the
    family's sampling (same noise) to PyTorch's samples."""
    import onnxruntime as ort

    name, kind = mk
    conditional = name in ("diffusion", "flow", "gan") and kind == "image"
    extra = ["model.conditional=true"] if conditional else []
    run = _train(make_cfg, tmp_path, name, kind, *extra)
    out = _export(run, tmp_path / "export", format="onnx")
    meta = json.loads((out / "config.json").read_text())
    assert meta["onnx"] and all(g["max_diff"] <= g["tolerance"] for g in meta["onnx"])
    model = aigc.load(out).module
    sessions = {g["file"]: ort.InferenceSession(str(out / g["file"])) for g in meta["onnx"]}
    z = torch.Generator().manual_seed(0)
    if name == "transformer":
        _check_kv_decoding(model, sessions)
    elif name in ("vae", "gan"):
        graph = "decoder.onnx" if name == "vae" else "generator.onnx"
        expected = _payload(model.sample(6, generator=torch.Generator().manual_seed(0)))
        feed = {"z": torch.randn(expected.shape[0], model.cfg.latent_dim, generator=z).numpy()}
        if getattr(model, "num_classes", 0):
            feed["y"] = torch.arange(model.num_classes).repeat_interleave(
                expected.shape[0] // model.num_classes).numpy()  # fmt: skip
        got = torch.from_numpy(sessions[graph].run(None, feed)[0])
        assert torch.allclose(got, expected, atol=1e-5)
    elif name in ("diffusion", "flow"):
        expected = _payload(model.sample(6, generator=torch.Generator().manual_seed(0), steps=3))
        model.net = _OrtNet(sessions["denoiser.onnx"], model)
        got = _payload(model.sample(6, generator=torch.Generator().manual_seed(0), steps=3))
        assert torch.allclose(got, expected, atol=1e-4)
    elif name == "frames":  # the graph scores frames as the model does, on another length
        x = (torch.rand(3, 5, 88) < 0.1).float()
        (logits,) = sessions["frames.onnx"].run(None, {"frames": x.numpy()})
        assert torch.allclose(torch.from_numpy(logits), model(x), atol=1e-4)
    elif name == "reader":  # the graph gives every column's logits, one after the other
        x = torch.rand(4, *model.spec.shape)
        (logits,) = sessions["reader.onnx"].run(None, {"image": x.numpy()})
        expected = torch.cat(list(model.logits(x).values()), dim=1)
        assert torch.allclose(torch.from_numpy(logits), expected, atol=1e-4)
    else:
        x = torch.rand(4, *model.spec.shape)
        logits, _ = sessions["classifier.onnx"].run(None, {"image": x.numpy()})
        assert torch.allclose(torch.from_numpy(logits), model.logits(x), atol=1e-4)


class _OrtNet(torch.nn.Module):
    """The denoiser graph standing in for the network inside the family's own sampler."""

    def __init__(self, session, model) -> None:
        super().__init__()
        self.session, self.scale = session, float(model.network_time(torch.ones(1)))
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # the model finds its device by it

    def forward(self, x, t, y=None):
        feed = {"x_t": x.numpy(), "t": (t / self.scale).float().numpy()}
        if y is not None:
            feed["y"] = y.numpy()
        return torch.from_numpy(self.session.run(None, feed)[0])


def _check_kv_decoding(model, sessions) -> None:
    """Greedy decoding through prefill + decode (the cache carried by onnxruntime) gives the
    logits PyTorch gives on the whole sequence at every position."""
    gpt = model.gpt
    ids = torch.randint(0, gpt.wte.num_embeddings, (2, 3))
    outs = sessions["prefill.onnx"].run(None, {"input_ids": ids.numpy()})
    logits, past = outs[0], outs[1:]
    seq = ids
    names = [i.name for i in sessions["decode.onnx"].get_inputs()][1:]
    for _ in range(4):
        nxt = torch.from_numpy(logits[:, -1]).argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
        outs = sessions["decode.onnx"].run(
            None, {"input_ids": nxt.numpy(), **dict(zip(names, past, strict=True))}
        )
        logits, past = outs[0], outs[1:]
        with torch.no_grad():
            full = gpt(seq)[:, -1:]
        assert torch.allclose(torch.from_numpy(logits), full, atol=1e-4)
    assert past[0].shape[2] == seq.shape[1]
    whole = sessions["model.onnx"].run(None, {"input_ids": seq.numpy()})[0]
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(whole), gpt(seq), atol=1e-4)


def test_tied_weights_bf16_and_no_pickle(make_cfg, tmp_path):
    run = _train(make_cfg, tmp_path, "transformer", "text")
    out = _export(run, tmp_path / "bf16", dtype="bf16", ema=False)
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
        assert f.get_tensor("gpt.wte.weight").dtype == torch.bfloat16
        assert json.loads(f.metadata()["aliases"]) == {"gpt.head.weight": "gpt.wte.weight"}
    assert "gpt.head.weight" not in keys  # stored once
    m = aigc.load(out).module
    assert m.gpt.head.weight.data_ptr() == m.gpt.wte.weight.data_ptr()  # still tied
    live = load_checkpoint(run / "checkpoints" / "last.pt")["model_state"]
    assert torch.equal(m.gpt.wte.weight, live["gpt.wte.weight"].bfloat16().float())
    assert not any(b"pickle" in p.read_bytes()[:4096] or p.suffix == ".pt" for p in out.iterdir())


def test_latent_diffusion_exports_its_autoencoder(make_cfg, tmp_path):
    import shutil

    vae = tmp_path / "vae"
    train(make_cfg("trainer.max_steps=2", *KIND_DATA["image"][1]), run_dir=vae)
    run = _train(make_cfg, tmp_path, "diffusion", "image", f"model.autoencoder={vae}")
    out = _export(run, tmp_path / "ldm", format="onnx")
    assert {"denoiser.onnx", "decoder.onnx"} <= {p.name for p in out.iterdir()}
    expected = aigc.load(run).sample(4, seed=1).images
    shutil.rmtree(vae)
    shutil.rmtree(run)  # the folder alone rebuilds VAE and denoiser
    assert torch.equal(aigc.load(out).sample(4, seed=1).images, expected)
    assert "vae.*" in (out / "README.md").read_text()


def test_bad_exports_are_one_line_and_overwrite_nothing(make_cfg, tmp_path, monkeypatch):
    run = _train(make_cfg, tmp_path, "vae", "image")
    out = _export(run, tmp_path / "e")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ConfigError, match="already exists; nothing was written"):
        _export(run, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(ConfigError, match="'format': 'tflite'; choose from: safetensors, onnx"):
        _export(run, tmp_path / "f", format="tflite")
    with pytest.raises(ConfigError, match="'dtype': 'int8'; choose from: fp32, bf16, fp16"):
        _export(run, tmp_path / "f", dtype="int8")
    with pytest.raises(AigcError, match="run not found"):
        _export(tmp_path / "nope", tmp_path / "f")
    from aigc_cli.models.vae import VAE

    monkeypatch.setattr(VAE, "onnx_graphs", lambda self: [])
    with pytest.raises(ConfigError, match="model 'vae' has no ONNX export"):
        _export(run, out, format="onnx", overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # a failed replace keeps it
    assert not list(tmp_path.glob(".e.*"))  # and leaves no half-written folder
    from aigc_cli.models.base import OnnxGraph

    class Unsupported(torch.nn.Module):  # ONNX has no expm1: the exporter refuses the graph
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.expm1(x)

    graph = OnnxGraph("odd", Unsupported(), lambda n: {"x": torch.randn(n, 3)}, ["y"])
    monkeypatch.setattr(VAE, "onnx_graphs", lambda self: [graph])
    with pytest.raises(ConfigError, match=r"model 'vae' cannot be exported to ONNX: .*expm1"):
        _export(run, out, format="onnx", overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    with pytest.raises(ConfigError, match=r"pip install 'aigc\[export\]'"):
        _export(run, tmp_path / "g", format="onnx")
    assert not (tmp_path / "g").exists()
    _export(run, out, overwrite=True, ema=False)
    assert json.loads((out / "config.json").read_text())["weights"]["ema"] is False


@pytest.mark.slow
def test_export_through_the_cli_samples_from_another_directory(tmp_path):
    from .helpers import tiny_overrides

    r = run_cli("train", *tiny_overrides("transformer", "pydoc"), "dataset.block_size=16",
                "model.n_layer=1", "model.n_embd=32", "model.n_head=2",
                "hydra.run.dir=outputs/gpt", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = run_cli("export", "out=models/gpt", cwd=tmp_path)  # the newest run
    assert r.returncode == 0, r.stderr
    assert "exported" in r.stdout and "models/gpt" in r.stdout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = run_cli("sample", f"run={tmp_path / 'models' / 'gpt'}", "prompt=The", "max_new_tokens=20",
                "out=s.txt", cwd=elsewhere)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (elsewhere / "s.txt").read_text().startswith("The")
    r = run_cli("export", "out=models/gpt", cwd=tmp_path)
    assert r.returncode != 0 and "already exists" in r.stderr and "Traceback" not in r.stderr
    script = ("import aigc_cli as aigc; m = aigc.load('models/gpt'); "
              "print(repr(m.sample(1, seed=0, prompt='The', max_new_tokens=10).texts[0]))"
              )  # fmt: skip
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("'The")


def test_python_train_api_composes_like_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    metrics = aigc.train(["model=vae", "trainer.max_steps=2", "trainer.batch_size=8",
                          "dataset.train_size=64", "dataset.test_size=16", "trainer.device=cpu",
                          "model.latent_dim=4", "trainer.progress=false"],
                         run_dir=tmp_path / "run")  # fmt: skip
    assert "test/nelbo" in metrics
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["step"] == 2 and ckpt["choices"]["model"] == "vae"
    m = aigc.load(tmp_path / "run")
    assert m.step == 2 and m.metrics["test/nelbo"] == pytest.approx(metrics["test/nelbo"])
    with pytest.raises(ConfigError, match=r"trainer\.max_stesp"):
        aigc.train(["trainer.max_stesp=3"])
