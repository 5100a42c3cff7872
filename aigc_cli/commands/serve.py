"""`aigc serve`: load exported models (or runs), then serve them over HTTP until stopped
(aigc_cli/serve/). The port opens at once: /health answers while the models load, /ready says
503 until each is loaded and has run once."""

from __future__ import annotations

import ipaddress
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aigc_cli.build import resolve_device
from aigc_cli.config import check, command_options, validate
from aigc_cli.console import console
from aigc_cli.errors import AigcError, ConfigError
from aigc_cli.models.base import GenerativeModel, HasSamplers, Request


@dataclass
class ServeConfig:
    models: list[str] = field(default_factory=list)  # exports or run dirs; [] = the newest run
    host: str = "127.0.0.1"  # address to bind; another than loopback needs api_key
    port: int = 8000  # TCP port
    api_key: str | None = None  # Bearer key for all but /health, /ready and /; null = $AIGC_API_KEY
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    checkpoint: str = "last"  # run dirs: last | best
    ema: bool = True  # the EMA weights where the run kept them
    batch_window_ms: float = 10.0  # how long a batch waits for requests that fit with it; 0 = off
    max_batch: int = 64  # samples (rows) in one batch
    max_queue: int = 64  # requests waiting per model; past it, 429 with Retry-After
    max_tokens: int = 1024  # tokens one text request may ask for
    max_texts: int = 8  # texts per request (n)
    max_images: int = 64  # images per request (n)
    max_pieces: int = 16  # music pieces per request (n)
    max_steps: int = 1000  # sampler steps per request
    max_body: int = 1_000_000  # request body, bytes
    cors_origins: list[str] = field(default_factory=list)  # origins allowed by CORS; [] = off


def serve(node: Any) -> None:
    """The command: check the settings, open the port, load the models, serve until Ctrl-C."""
    cfg = validate("serve", ServeConfig, command_options(node))
    check(1 <= cfg.port <= 65535, "port", f"{cfg.port} must be in [1, 65535]")
    for key in ("max_batch", "max_queue", "max_tokens", "max_texts", "max_images", "max_pieces",
                "max_steps", "max_body"):  # fmt: skip
        check(getattr(cfg, key) >= 1, key, f"{getattr(cfg, key)} must be >= 1")
    check(cfg.batch_window_ms >= 0, "batch_window_ms", "must be >= 0 (0 = off)")
    key = cfg.api_key or os.environ.get("AIGC_API_KEY") or None
    if not loopback(cfg.host) and not key:
        raise ConfigError(
            f"bad value for 'host': {cfg.host} is reachable from other machines and no API key "
            "is set",
            hint="pass api_key=<secret> (or set AIGC_API_KEY), or keep host=127.0.0.1",
        )
    uvicorn, state, app = build(cfg, key)
    console.print(f"[green]aigc serve[/] on http://{cfg.host}:{cfg.port} (the page is at /; "
                  f"{'a key is required' if key else 'no key'}); loading {len(cfg.models) or 1} "
                  "model(s)", soft_wrap=True)  # fmt: skip
    loader = threading.Thread(target=load_all, args=(state, cfg), daemon=True)
    loader.start()
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning",
                                           timeout_graceful_shutdown=2))  # fmt: skip
    try:
        server.run()
    finally:
        state.close()
    if state.failure:
        raise ConfigError(state.failure)


def build(cfg: ServeConfig, key: str | None) -> tuple[Any, Any, Any]:
    """(uvicorn, the shared state, the app), or the one line naming the `serve` extra."""
    try:
        import uvicorn  # the optional `serve` extra, with fastapi

        from aigc_cli.serve.app import State, create_app
        from aigc_cli.serve.params import Limits
        from aigc_cli.serve.workers import Settings
    except ImportError as e:
        raise ConfigError(
            f"aigc serve needs the optional `serve` extra (FastAPI, uvicorn): {e.name} is missing",
            hint="pip install 'aigc[serve]' (from a checkout: pip install -e '.[serve]')",
        ) from None
    limits = Limits(cfg.max_tokens, cfg.max_texts, cfg.max_images, cfg.max_pieces,
                    cfg.max_steps, cfg.max_body)  # fmt: skip
    settings = Settings(cfg.max_queue, cfg.batch_window_ms, cfg.max_batch)
    state = State(limits, settings, key)
    return uvicorn, state, create_app(state, cfg.cors_origins)


def load_all(state: Any, cfg: ServeConfig) -> None:
    """Each model, under its id, run once (so the first request meets a warm model); then
    ready. A model that cannot be served fails /ready with the reason, and the server stops."""
    from aigc_cli.store.runs import load_run, resolve_checkpoint

    try:
        device = resolve_device(cfg.device)
        for source in cfg.models or [None]:
            ckpt = resolve_checkpoint(source, cfg.checkpoint)
            model, _ = load_run(ckpt, device, use_ema=cfg.ema)
            if not isinstance(model, GenerativeModel):
                raise ConfigError(f"{source} is a model '{model.cfg.name}', which generates "
                                  "nothing to serve")  # fmt: skip
            name = model_id(ckpt, state.models)
            warm_up(model.eval())
            state.add(name, model)
            console.print(f"  serving [bold]{name}[/] ({model.cfg.name}, {model.spec.kind})")
        state.ready.set()
        console.print("[green]ready[/]")
    except AigcError as e:
        state.failure = str(e)
        console.print(f"[red]error:[/] {e}", soft_wrap=True)
        os.kill(os.getpid(), 2)  # stop the server: nothing it holds is complete


def model_id(ckpt: Path, taken: dict[str, Any]) -> str:
    """The folder's name (a run's, for its export or checkpoints folder), unique."""
    folder = ckpt.parent
    if folder.name in ("export", "checkpoints"):
        folder = folder.parent
    name, k = folder.name or "model", 2
    while name in taken:
        name, k = f"{folder.name}-{k}", k + 1
    return name


def warm_up(model: GenerativeModel) -> None:
    """One small sample, so the first request pays no first-call costs."""
    import torch

    options: dict[str, Any] = {}
    if isinstance(model, HasSamplers):
        options = {"sampler": model.samplers[0], "steps": 1}
    elif model.spec.kind == "text":
        options = {"max_new_tokens": 2}
    model.sample_batch([Request(1, torch.Generator().manual_seed(0), options)])


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
