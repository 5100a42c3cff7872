"""The HTTP routes: OpenAI's `/v1/models`, `/v1/completions` and `/v1/images/generations`,
aigc's `/v1/music/generations`, `/health`, `/ready`, `/metrics` and the page at `/`. A handler
checks the body, queues a job with the model's worker and relays the worker's events; it never
runs the model. Models are named by their id in `/v1/models`, never by a path."""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.responses import StreamingResponse as _Streaming

from aigc_cli.data.music import music_spec
from aigc_cli.errors import AigcError
from aigc_cli.models.base import GenerativeModel, HasSamplers
from aigc_cli.models.base import Request as SampleRequest
from aigc_cli.serve.params import ApiError, Body, Limits, from_aigc, json_body
from aigc_cli.serve.responses import image_items, music_items
from aigc_cli.serve.stats import Stats
from aigc_cli.serve.workers import Job, Settings, Worker

OPEN_ROUTES = ("/health", "/ready", "/", "/favicon.ico")  # no key needed: the page asks for it


class Guard:
    """The key on every route but the open ones (compared in constant time), and each
    response counted by route and status. Plain ASGI, so streams pass through untouched."""

    def __init__(self, app: Any, state: State) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = path if path in ROUTES else "other"
        key = self.state.api_key
        if key and path not in OPEN_ROUTES and scope["method"] != "OPTIONS":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, f"Bearer {key}".encode()):
                denied = ApiError(401, "a valid API key is required: send Authorization: "
                                  "Bearer <key>", kind="authentication_error")  # fmt: skip
                await error_response(denied)(scope, receive, send)
                self.state.stats.request(route, 401)
                return
        status = [0]

        async def counted(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            self.state.stats.request(route, status[0] or 499)


@dataclass
class Served:
    """One model the server holds, under its id."""

    id: str
    model: GenerativeModel
    worker: Worker

    @property
    def kind(self) -> str:
        """What it makes: text, image, points or music."""
        return "music" if music_spec(self.model.spec) is not None else self.model.spec.kind

    def card(self, limits: Limits) -> dict[str, Any]:
        m, spec = self.model, self.model.spec
        about: dict[str, Any] = {"id": self.id, "object": "model", "created": 0,
                                 "owned_by": "aigc", "kind": self.kind, "family": m.cfg.name,
                                 "shape": list(spec.shape)}  # fmt: skip
        classes = int(getattr(m, "num_classes", 0) or 0)
        about["classes"] = list(spec.class_names or range(classes)) if classes else []
        if isinstance(m, HasSamplers):
            about["samplers"] = list(m.samplers)
            about["sampler_options"] = list(m.sampler_options)
            about["defaults"] = {"sampler": m.cfg.sampler, "steps": m.cfg.steps,
                                 "guidance": m.cfg.guidance}  # fmt: skip
        if self.kind == "text":
            about["context"] = int(m.gpt.block_size)  # type: ignore[attr-defined]
            about["limits"] = {"max_tokens": limits.max_tokens, "n": limits.max_texts}
        elif self.kind == "music":
            about["limits"] = {"n": limits.max_pieces, "max_tokens": limits.max_tokens}
        else:
            about["limits"] = {"n": limits.max_images, "steps": limits.max_steps}
        return about


@dataclass
class State:
    """What the routes share: the models (filled in once loaded), limits, key and counters."""

    limits: Limits
    settings: Settings
    api_key: str | None = None
    models: dict[str, Served] = field(default_factory=dict)
    ready: threading.Event = field(default_factory=threading.Event)
    failure: str | None = None
    stats: Stats = field(default_factory=Stats)

    def add(self, name: str, model: GenerativeModel) -> Served:
        worker = Worker(name, model, self.settings, self.stats)
        worker.start()
        self.models[name] = served = Served(name, model, worker)
        return served

    def close(self) -> None:
        for served in self.models.values():
            served.worker.close()


def create_app(state: State, cors_origins: list[str] | None = None) -> FastAPI:
    app = FastAPI(title="aigc serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, state=state)
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins),
                           allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])  # fmt: skip

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> Response:
        return error_response(e)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> Response:
        if state.failure:
            return JSONResponse({"status": "failed", "error": state.failure}, status_code=503)
        if not state.ready.is_set():
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ready", "models": list(state.models)})

    @app.get("/metrics")
    async def metrics() -> Response:
        return PlainTextResponse(state.stats.text(), media_type="text/plain; version=0.0.4")

    @app.get("/")
    async def page() -> Response:
        html = resources.files("aigc_cli.serve").joinpath("page.html").read_text("utf-8")
        return HTMLResponse(html, headers={"Content-Security-Policy": CSP})

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [s.card(state.limits) for s in state.models.values()]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await complete(state, request)

    @app.post("/v1/images/generations")
    async def images(request: Request) -> Response:
        return await generate(state, request, "image")

    @app.post("/v1/music/generations")
    async def music(request: Request) -> Response:
        return await generate(state, request, "music")

    return app


ROUTES = ("/health", "/ready", "/metrics", "/", "/v1/models", "/v1/completions",
          "/v1/images/generations", "/v1/music/generations")  # fmt: skip
# The page runs only its own inline script and talks only to this server.
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
       "img-src data:; media-src data: blob:; connect-src 'self'")  # fmt: skip


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def read_body(state: State, request: Request) -> Body:
    """The JSON body, read no further than the size limit."""
    limit = state.limits.max_body
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the body is {declared} bytes; the limit is {limit}")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise ApiError(413, f"the body is over the limit of {limit} bytes")
    return Body(json_body(bytes(raw), request.headers.get("content-type"), state.limits))


def pick(state: State, body: Body, kind: str) -> Served:
    """The model the body names: by its id in /v1/models, of the route's kind."""
    if not state.ready.is_set():
        raise ApiError(503, "the models are still loading; see GET /ready",
                       kind="server_error", headers={"Retry-After": "1"})  # fmt: skip
    name = body.string("model")
    fitting = [s.id for s in state.models.values() if s.kind in KINDS[kind]]
    if name is None and len(fitting) == 1:
        name = fitting[0]
    if name is None or name not in state.models:
        shown = f"'{name}'" if name is not None else "no model"
        raise ApiError(404 if name else 400, f"bad value for 'model': {shown}; choose from: "
                       f"{', '.join(fitting) or 'none served of this kind'}", "model",
                       kind="invalid_request_error")  # fmt: skip
    served = state.models[name]
    if served.kind not in KINDS[kind]:
        route = ROUTE_OF[served.kind]
        raise ApiError(400, f"bad value for 'model': '{name}' makes {served.kind}; use {route}",
                       "model")  # fmt: skip
    return served


KINDS = {"text": ("text",), "image": ("image", "points"), "music": ("music",)}
ROUTE_OF = {"text": "/v1/completions", "image": "/v1/images/generations",
            "points": "/v1/images/generations", "music": "/v1/music/generations"}  # fmt: skip


def new_job(served: Served, n: int, seed: int | None, options: dict[str, Any],
            stream: bool) -> Job:  # fmt: skip
    """A job for the worker, its generator seeded by the request (or at random); a streamed
    one gets each piece of text or each step as it comes."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)))
    request = SampleRequest(n, torch.Generator().manual_seed(seed), options)
    try:
        key = served.model.batch_key(options)  # checks the sampler options now: a 400 early
    except AigcError as e:
        raise from_aigc(e) from None
    job = Job(request, key, asyncio.get_running_loop())
    if stream:
        request.on_text = lambda row, text: job.emit("text", (row, text))
        request.on_step = lambda k, total: job.emit("step", (k, total))
    served.worker.submit(job)
    return job


async def outcome(job: Job, request: Request) -> Any:
    """The job's result, watching the client: if it goes, so does the job."""
    try:
        while True:
            try:
                kind, data = await asyncio.wait_for(job.events.get(), timeout=0.2)
            except TimeoutError:
                if await request.is_disconnected():
                    job.gone.set()
                    raise ApiError(499, "the client closed the request") from None
                continue
            if kind == "done":
                return data
            if kind == "error":
                raise data
    finally:
        job.gone.set()  # finished, failed or abandoned: the worker owes it nothing more


class StreamingResponse(_Streaming):
    """Server-sent events, never cached or buffered by a proxy."""

    def __init__(self, events: AsyncIterator[str]) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(events, media_type="text/event-stream", headers=headers)


def sse(data: Any) -> str:
    return f"data: {json.dumps(data)}\n\n"


async def complete(state: State, request: Request) -> Response:
    """POST /v1/completions: OpenAI's legacy completions, with streaming."""
    started = time.perf_counter()
    body = await read_body(state, request)
    served = pick(state, body, "text")
    limits = state.limits
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "bad value for 'prompt': send one string", "prompt")
    options = {
        "prompt": prompt,
        "max_new_tokens": body.integer("max_tokens", 16, 1, limits.max_tokens),
        "temperature": body.number("temperature", 1.0, 0.0, 2.0),
        "top_k": body.integer("top_k", 0, 0),
        "top_p": body.number("top_p", 1.0, 0.0, 1.0, low_open=True),
    }
    n = body.integer("n", 1, 1, limits.max_texts)
    seed = body.integer("seed", None, 0, 2**63 - 1)
    stream = body.boolean("stream")
    body.finish()
    if options["temperature"] == 0.0:  # OpenAI's greedy decoding
        options["temperature"], options["top_k"] = 1.0, 1
    check_prompt(served, prompt)
    job = new_job(served, n, seed, options, stream)
    reply = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion",
             "created": int(time.time()), "model": served.id}  # fmt: skip
    if stream:
        return StreamingResponse(text_events(state, job, reply, n, started))
    result = await outcome(job, request)
    state.stats.made(served.id, "tokens", sum(result.new_tokens))
    choices = [{"text": t, "index": i, "logprobs": None, "finish_reason": "length"}
               for i, t in enumerate(result.continuations)]  # fmt: skip
    used = sum(result.new_tokens)
    usage = {"prompt_tokens": result.prompt_tokens, "completion_tokens": used,
             "total_tokens": result.prompt_tokens + used}  # fmt: skip
    return JSONResponse({**reply, "choices": choices, "usage": usage})


def check_prompt(served: Served, prompt: str) -> None:
    """A prompt the model can read, within its window."""
    tokenizer = served.model.tokenizer  # type: ignore[attr-defined]
    try:
        tokens = tokenizer.encode(prompt) if prompt else []
    except AigcError as e:
        raise ApiError(400, f"bad value for 'prompt': {e}", "prompt") from None
    window = int(served.model.gpt.block_size)  # type: ignore[attr-defined]
    if len(tokens) > window:
        raise ApiError(400, f"bad value for 'prompt': {len(tokens)} tokens; the model's window "
                       f"is {window}", "prompt")  # fmt: skip


async def text_events(state: State, job: Job, reply: dict[str, Any], n: int,
                      started: float) -> AsyncIterator[str]:  # fmt: skip
    """The completion as SSE chunks, whole characters each, then `data: [DONE]`."""
    first, tokens = True, 0
    try:
        while True:
            kind, data = await job.events.get()
            if kind == "text":
                if first:
                    state.stats.first_token(time.perf_counter() - started)
                    first = False
                row, text = data
                tokens += 1
                yield sse({**reply, "choices": [{"text": text, "index": row, "logprobs": None,
                                                 "finish_reason": None}]})  # fmt: skip
            elif kind == "done":
                state.stats.made(reply["model"], "tokens", sum(data.new_tokens))
                for i in range(n):
                    yield sse({**reply, "choices": [{"text": "", "index": i, "logprobs": None,
                                                     "finish_reason": "length"}]})  # fmt: skip
                break
            elif kind == "error":
                yield sse(data.body())
                break
        yield "data: [DONE]\n\n"
    finally:
        job.gone.set()  # the client went away, or the stream ended: stop the rows either way


async def generate(state: State, request: Request, kind: str) -> Response:
    """POST /v1/images/generations and /v1/music/generations."""
    body = await read_body(state, request)
    served = pick(state, body, kind)
    model, limits = served.model, state.limits
    most = limits.max_images if kind == "image" else limits.max_pieces
    n = body.integer("n", 1, 1, most)
    seed = body.integer("seed", None, 0, 2**63 - 1)
    stream = body.boolean("stream")
    prompt = body.string("prompt")
    if model.takes_prompts:  # text-to-image: the prompt is the condition
        if not prompt or not prompt.strip():
            raise ApiError(400, f"bad value for 'prompt': model '{served.id}' draws what a "
                           "prompt describes; send a non-empty prompt", "prompt")  # fmt: skip
    elif prompt:
        raise ApiError(400, f"bad value for 'prompt': model '{served.id}' takes no text prompt; "
                       "send an empty prompt (and classes= for a class-conditional model)",
                       "prompt")  # fmt: skip
    if kind == "image":
        if body.choice("response_format", ("b64_json", "url")) == "url":
            raise ApiError(400, "bad value for 'response_format': 'url' is not served; use "
                           "b64_json", "response_format")  # fmt: skip
        check_size(body.string("size"), served)
    options = sample_options(body, model, limits)
    if model.takes_prompts:
        options["prompt"] = prompt
    body.finish()
    job = new_job(served, n, seed, options, stream)
    items = image_items if kind == "image" else music_items
    if stream:
        return StreamingResponse(progress_events(state, job, served, kind, items))
    result = await outcome(job, request)
    data = await asyncio.to_thread(items, result)  # encoding PNGs and audio: off the loop
    state.stats.made(served.id, "images" if kind == "image" else "pieces", len(result))
    return JSONResponse({"created": int(time.time()), "model": served.id, "data": data,
                         "sampler": result.sampler, "nfe": result.nfe})  # fmt: skip


def check_size(size: str | None, served: Served) -> None:
    shape = served.model.spec.shape
    if size is None or served.kind != "image":
        return
    mine = f"{shape[-1]}x{shape[-2]}"
    if size != mine:
        raise ApiError(400, f"bad value for 'size': '{size}'; model '{served.id}' makes "
                       f"{mine} images", "size")  # fmt: skip


def sample_options(body: Body, model: GenerativeModel, limits: Limits) -> dict[str, Any]:
    """The family's own options: classes, sampler options, and for token models the text
    options; an option the model does not take is refused by name, as `aigc sample` does."""
    options: dict[str, Any] = {}
    classes = body.integers("classes")
    if classes is not None:
        count = int(getattr(model, "num_classes", 0) or 0)
        if not count:
            raise ApiError(400, f"bad value for 'classes': model '{model.cfg.name}' is "
                           "unconditional", "classes")  # fmt: skip
        bad = [c for c in classes if not 0 <= c < count]
        if bad or not classes:
            raise ApiError(400, f"bad value for 'classes': {bad or classes}; choose class "
                           f"indices in [0, {count})", "classes")  # fmt: skip
        options["classes"] = classes
    given = {k: body.values[k] for k in ("sampler", "steps", "guidance", "eta")
             if body.values.get(k) is not None}  # fmt: skip
    allowed = model.sampler_options if isinstance(model, HasSamplers) else ()
    other = [k for k in given if k not in allowed]
    if other:
        raise ApiError(400, f"bad value for '{other[0]}': model '{model.cfg.name}' has no such "
                       f"sampler option" + (f"; its options are: {', '.join(allowed)}" if allowed
                                            else ""), other[0])  # fmt: skip
    if isinstance(model, HasSamplers):
        options["sampler"] = body.choice("sampler", model.samplers)
        options["steps"] = body.integer("steps", None, 1, limits.max_steps)
        options["guidance"] = body.number("guidance", None, 0.0, 50.0)
        if "eta" in allowed:
            options["eta"] = body.number("eta", None, 0.0, 10.0)
    if model.spec.kind == "text":  # music as tokens
        options["max_new_tokens"] = body.integer("max_tokens", 256, 1, limits.max_tokens)
        options["temperature"] = body.number("temperature", 1.0, 0.0, 2.0, low_open=True)
        options["top_k"] = body.integer("top_k", 0, 0)
        options["top_p"] = body.number("top_p", 1.0, 0.0, 1.0, low_open=True)
    return {k: v for k, v in options.items() if v is not None}


Items = Callable[[Any], list[dict[str, Any]]]


async def progress_events(
    state: State, job: Job, served: Served, kind: str, items: Items
) -> AsyncIterator[str]:
    """Step k of N after each sampler step, then each image (or piece), then [DONE]."""
    try:
        while True:
            event, data = await job.events.get()
            if event == "step":
                yield sse({"type": "progress", "step": data[0], "total": data[1]})
            elif event == "done":
                encoded = await asyncio.to_thread(items, data)
                state.stats.made(served.id, "images" if kind == "image" else "pieces", len(data))
                for i, item in enumerate(encoded):
                    yield sse({"type": f"{kind}_generation.completed", "index": i, **item})
                break
            elif event == "error":
                yield sse(data.body())
                break
        yield "data: [DONE]\n\n"
    finally:
        job.gone.set()
