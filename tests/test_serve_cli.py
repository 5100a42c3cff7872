"""`aigc serve` run as a user runs it: a tiny run of every generative family on each kind of
data it takes (read from the registries, so a new family joins by itself) and music as
tokens, each exported, all served by one `aigc serve` process, each asked once on its route."""

import base64
import io
import os
import signal
import subprocess
import sys
import time
import wave

import httpx
import mido
import pytest

from aigc_cli.api import train
from aigc_cli.commands.export import run_export

from .helpers import KIND_DATA, SMALL, TINY, free_port, model_kinds, run_cli

ROUTES = {"text": "/v1/completions", "image": "/v1/images/generations",
          "points": "/v1/images/generations", "music": "/v1/music/generations"}  # fmt: skip
EVENTS = ["dataset.representation=events", "dataset.window=16", "dataset.pieces=40"]
EXTRA_ROWS = {"transformer:tunes_events": ("tunes", EVENTS)}


def rows() -> dict[str, tuple[str, str, list[str]]]:
    """name → (family, dataset, overrides) for every generative family and data kind."""
    out = {}
    from aigc_cli.registry import MODELS

    for family, kind in model_kinds():
        if not MODELS.get(family).obj.generates:
            continue  # the classifier, the reader: nothing to serve
        dataset, args = KIND_DATA[kind]
        out[f"{family}_{kind}"] = (family, dataset, args)
    for row, (dataset, args) in EXTRA_ROWS.items():
        family = row.split(":")[0]
        out[row.replace(":", "_")] = (family, dataset, args)
    return out


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    out = {}
    for name, (family, dataset, args) in rows().items():
        run = root / "runs" / name
        train([f"model={family}", f"dataset={dataset}", *TINY, *SMALL.get(family, []), *args,
               "trainer.sample_every=0", "trainer.eval_every=0"], run_dir=run)  # fmt: skip
        out[name] = run_export({"run": str(run), "out": str(root / name)})
    return out


def request_for(card: dict) -> tuple[str, dict]:
    body = {"model": card["id"], "n": 2, "seed": 0}
    if card["kind"] == "text":
        body["max_tokens"] = 12
    if card["kind"] == "music" and card["family"] == "transformer":
        body["max_tokens"] = 40
    if card.get("samplers"):
        body["steps"] = 2
    return ROUTES[card["kind"]], body


@pytest.mark.slow
def test_aigc_serve_serves_an_export_of_every_family(exports, tmp_path):
    port = free_port()
    listed = ",".join(str(p) for p in exports.values())
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115  (the server's output, read on failure)
    server = subprocess.Popen([sys.executable, "-m", "aigc_cli", "serve", f"models=[{listed}]",
                               f"port={port}", "device=cpu"], stdout=log, stderr=subprocess.STDOUT,
                              env=env)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=120) as http:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                try:
                    if http.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert server.poll() is None, (tmp_path / "serve.log").read_text()
                time.sleep(0.5)
            cards = http.get("/v1/models").json()["data"]
            assert sorted(c["id"] for c in cards) == sorted(exports)
            for card in cards:
                route, body = request_for(card)
                r = http.post(route, json=body)
                assert r.status_code == 200, (card["id"], r.text)
                check_reply(card, r.json())
            page = http.get("/")
            assert page.status_code == 200 and "aigc serve" in page.text
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        finally:
            server.kill()
            log.close()
    assert server.returncode is not None


def check_reply(card: dict, reply: dict) -> None:
    """What came back is what the route promises, read by independent readers."""
    if card["kind"] == "text":
        assert len(reply["choices"]) == 2 and reply["usage"]["completion_tokens"] == 24
        return
    data = reply["data"]
    assert data, card["id"]
    if card["kind"] == "music":
        for item in data:
            midi = mido.MidiFile(file=io.BytesIO(base64.b64decode(item["b64_midi"])))
            notes = sum(1 for m in midi if m.type == "note_on" and m.velocity > 0)
            assert notes == item["notes"]
            with wave.open(io.BytesIO(base64.b64decode(item["b64_wav"]))) as w:
                assert w.getnframes() > 0
        return
    assert base64.b64decode(data[0]["b64_json"])[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_public_bind_without_a_key_is_one_line(tmp_path):
    r = run_cli("serve", "host=0.0.0.0", "port=8123", cwd=tmp_path)
    assert r.returncode != 0
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "api_key" in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_without_the_serve_extra_it_is_one_line_naming_it(tmp_path):
    shim = tmp_path / "shim" / "uvicorn"
    shim.mkdir(parents=True)
    missing = "raise ImportError('No module named uvicorn', name='uvicorn')\n"
    (shim / "__init__.py").write_text(missing)
    env = {"PYTHONPATH": f"{shim.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = run_cli("serve", cwd=tmp_path, env=env)
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert r.returncode != 0 and len(lines) == 1, r.stderr
    assert "aigc[serve]" in lines[0] and "uvicorn" in lines[0]
