"""`aigc serve` as its clients meet it: the official OpenAI client, plain HTTP with bad
parameters, concurrent seeded requests against the same requests one at a time, clients that
go away, limits and keys. Servers bind 127.0.0.1 only and stop at the end of each test."""

import base64
import concurrent.futures as cf
import io
import os
import time

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from aigc_cli.data.base import DataSpec
from aigc_cli.data.text import ByteTokenizer
from aigc_cli.models.transformer import Transformer
from aigc_cli.serve.app import State
from aigc_cli.serve.background import background
from aigc_cli.serve.params import Limits
from aigc_cli.serve.workers import Settings

from .helpers import tiny_model


def gpt(block: int = 64) -> Transformer:
    torch.manual_seed(0)
    tok = ByteTokenizer()
    spec = DataSpec(kind="text", shape=[block], vocab_size=tok.vocab_size, tokenizer=tok.to_dict())
    model = Transformer(Transformer.Config(n_layer=2, n_head=2, n_embd=32), spec).eval()
    with torch.no_grad():  # far from uniform logits, so the sampled text depends on the seed
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def diffusion():
    torch.manual_seed(0)
    spec = DataSpec(kind="image", shape=[1, 8, 8], num_classes=3)
    return tiny_model("diffusion", spec, base_channels=8, conditional=True, timesteps=50).eval()


def state(settings: Settings | None = None, key: str | None = None, **limits) -> State:
    s = State(Limits(**limits), settings or Settings(), key)
    s.add("gpt", gpt())
    s.add("diffusion", diffusion())
    s.ready.set()
    return s


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))), dtype=np.int16)


def test_the_openai_client_streams_text_and_draws_images():
    openai = pytest.importorskip("openai")
    served = state()
    with background(served) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assert {m.id for m in client.models.list()} == {"gpt", "diffusion"}
        whole = client.completions.create(model="gpt", prompt="Once", max_tokens=40, seed=3)
        chunks = list(client.completions.create(model="gpt", prompt="Once", max_tokens=40,
                                                seed=3, stream=True))  # fmt: skip
        streamed = "".join(c.choices[0].text for c in chunks)
        assert streamed == whole.choices[0].text and len(whole.choices[0].text) > 0
        assert whole.usage.completion_tokens == 40 and whole.usage.prompt_tokens == 4
        assert chunks[-1].choices[0].finish_reason == "length"
        # what the Python API (and `aigc sample`) gives for the same seed
        model = served.models["gpt"].model
        direct = model.sample(1, generator=torch.Generator().manual_seed(3), prompt="Once",
                              max_new_tokens=40)  # fmt: skip
        assert direct.continuations[0] == whole.choices[0].text
        extra = {"classes": [2], "steps": 5, "seed": 1}  # aigc's own parameters
        images = client.images.generate(model="diffusion", prompt="", n=3, extra_body=extra)
        assert len(images.data) == 3
        assert pixels(images.data[0].b64_json).shape[:2] == (8, 8)


def test_bad_parameters_get_a_4xx_that_names_them():
    bad = [
        ("/v1/completions", {"model": "gpt", "max_tokens": 0}, 400, "max_tokens"),
        ("/v1/completions", {"model": "gpt", "max_tokens": 5000}, 400, "max_tokens"),
        ("/v1/completions", {"model": "gpt", "temperature": -1}, 400, "temperature"),
        ("/v1/completions", {"model": "gpt", "top_p": 0}, 400, "top_p"),
        ("/v1/completions", {"model": "gpt", "n": 9}, 400, "n"),
        ("/v1/completions", {"model": "gpt", "prompt": "x" * 65}, 400, "prompt"),
        ("/v1/completions", {"model": "gpt", "prompt": 7}, 400, "prompt"),
        ("/v1/completions", {"model": "gpt", "tempreature": 1}, 400, "tempreature"),
        ("/v1/completions", {"model": "nope"}, 404, "model"),
        ("/v1/completions", {"model": "diffusion"}, 400, "model"),
        ("/v1/completions", {"model": "gpt", "stream": "yes"}, 400, "stream"),
        ("/v1/images/generations", {"model": "diffusion", "steps": 1001}, 400, "steps"),
        ("/v1/images/generations", {"model": "diffusion", "steps": 60}, 400, "steps"),
        ("/v1/images/generations", {"model": "diffusion", "sampler": "heun"}, 400, "sampler"),
        ("/v1/images/generations", {"model": "diffusion", "classes": [3]}, 400, "classes"),
        ("/v1/images/generations", {"model": "diffusion", "n": 65}, 400, "n"),
        ("/v1/images/generations", {"model": "diffusion", "prompt": "a cat"}, 400, "prompt"),
        ("/v1/images/generations", {"model": "diffusion", "size": "64x64"}, 400, "size"),
        ("/v1/images/generations", {"model": "diffusion", "response_format": "url"}, 400,
         "response_format"),
        ("/v1/images/generations", {"model": "diffusion", "guidance": "high"}, 400, "guidance"),
        ("/v1/music/generations", {"model": "diffusion"}, 400, "model"),
    ]  # fmt: skip
    with background(state()) as url, httpx.Client(base_url=url, timeout=30) as http:
        for path, body, status, param in bad:
            r = http.post(path, json=body)
            assert r.status_code == status, (body, r.text)
            error = r.json()["error"]
            assert error["param"] == param and param in error["message"], (body, error)
        assert http.post("/v1/completions", content=b"{", headers={"content-type":
                         "application/json"}).status_code == 400  # fmt: skip
        plain = http.post("/v1/completions", content=b'{"model": "gpt"}',
                          headers={"content-type": "text/plain"})  # fmt: skip
        assert plain.status_code == 415  # a cross-site form post never reaches the model
        big = http.post("/v1/completions", json={"model": "gpt", "prompt": "a" * 2_000_000})
        assert big.status_code == 413


def test_seeded_requests_give_the_same_output_batched_as_one_at_a_time():
    texts = [{"model": "gpt", "prompt": "ab" * (i % 5), "max_tokens": 24, "seed": i,
              "temperature": 0.9, "top_k": 20 * (i % 2)} for i in range(16)]  # fmt: skip
    images = [{"model": "diffusion", "n": 2, "seed": i, "steps": 6, "eta": 1.0,
               "classes": [i % 3]} for i in range(8)]  # fmt: skip
    served = state()
    with background(served) as url, httpx.Client(base_url=url, timeout=60) as http:
        alone_t = [http.post("/v1/completions", json=b).json() for b in texts]
        alone_i = [http.post("/v1/images/generations", json=b).json() for b in images]
        with cf.ThreadPoolExecutor(16) as pool:
            batch_t = list(pool.map(lambda b: http.post("/v1/completions", json=b).json(), texts))
            batch_i = list(pool.map(lambda b: http.post("/v1/images/generations",
                                                        json=b).json(), images))  # fmt: skip
    assert [r["choices"][0]["text"] for r in batch_t] == [r["choices"][0]["text"] for r in alone_t]
    assert len({r["choices"][0]["text"] for r in alone_t}) == 16
    for a, b in zip(alone_i, batch_i, strict=True):
        for x, y in zip(a["data"], b["data"], strict=True):
            assert np.abs(pixels(x["b64_json"]) - pixels(y["b64_json"])).max() <= 1
    sizes = served.stats.batches["gpt"]
    assert sizes.count < 32 and sizes.sum == 32  # the concurrent 16 shared batches


def test_a_client_that_leaves_stops_the_work_within_a_step():
    served = state()
    model = served.models["gpt"].model
    calls = []
    forward = model.gpt.forward
    model.gpt.forward = lambda *a, **k: (calls.append(1), forward(*a, **k))[1]
    with background(served) as url, httpx.Client(base_url=url, timeout=60) as http:
        body = {"model": "gpt", "prompt": "a", "max_tokens": 1024, "stream": True}
        with http.stream("POST", "/v1/completions", json=body) as r:
            events = 0
            for line in r.iter_lines():
                events += line.startswith("data: ")
                if events == 3:
                    break  # the client goes: the connection closes here
        deadline = time.monotonic() + 5
        while served.models["gpt"].worker.busy and time.monotonic() < deadline:
            time.sleep(0.01)
        stopped_at = len(calls)
        assert not served.models["gpt"].worker.busy and stopped_at < 200  # of 1024 tokens
        start = time.perf_counter()
        r = http.post("/v1/completions", json={"model": "gpt", "max_tokens": 8})
        assert r.status_code == 200 and time.perf_counter() - start < 2.0
        # the same for an image request mid-sampling
        steps = []
        image = {"model": "diffusion", "n": 4, "steps": 50, "stream": True}
        with http.stream("POST", "/v1/images/generations", json=image) as r:
            for line in r.iter_lines():
                steps += [line] if '"progress"' in line else []
                if len(steps) == 3:
                    break
        deadline = time.monotonic() + 5
        while served.models["diffusion"].worker.busy and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not served.models["diffusion"].worker.busy
    assert served.stats.made  # the finished requests were counted


def test_a_full_queue_answers_429_with_retry_after_and_health_stays_quick():
    served = state(Settings(max_queue=2, window_ms=0))
    with background(served) as url, httpx.Client(base_url=url, timeout=60) as http:
        body = {"model": "gpt", "max_tokens": 300}
        with cf.ThreadPoolExecutor(12) as pool:
            waiting = [pool.submit(http.post, "/v1/completions", json=body) for _ in range(12)]
            time.sleep(0.3)
            took = []
            for _ in range(5):
                start = time.perf_counter()
                assert http.get("/health").status_code == 200
                took.append(time.perf_counter() - start)
            statuses = [f.result().status_code for f in waiting]
    assert 429 in statuses and 200 in statuses and set(statuses) <= {200, 429}
    assert sorted(took)[2] < 0.05  # the median /health while the model is busy


def test_keys_cors_and_readiness():
    served = state(key="s3cret")
    with background(served) as url, httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/health").status_code == 200
        assert http.get("/").status_code == 200  # the page asks for the key itself
        assert http.get("/v1/models").status_code == 401
        wrong = http.get("/v1/models", headers={"Authorization": "Bearer s3cre"})
        assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
        ok = http.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert http.get("/metrics").status_code == 401
        cross = http.get("/v1/models", headers={"Authorization": "Bearer s3cret",
                                               "Origin": "http://elsewhere.example"})  # fmt: skip
        assert "access-control-allow-origin" not in cross.headers  # CORS off by default
    loading = State(Limits(), Settings())
    with background(loading) as url, httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/ready").status_code == 503
        assert http.post("/v1/completions", json={"model": "gpt"}).status_code == 503


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.slow
def test_load_200_requests_at_concurrency_16_a_tenth_invalid_then_1000_for_memory():
    if not os.path.exists("/proc/self/statm"):
        pytest.skip("memory is read from /proc (Linux)")
    invalid = [
        {"model": "gpt", "max_tokens": -1},
        {"model": "gpt", "top_p": 2},
        {"model": "diffusion", "steps": 0},
        {"model": "diffusion", "classes": [9]},
    ]
    valid = [("/v1/completions", {"model": "gpt", "prompt": "ab", "max_tokens": 8}),
             ("/v1/completions", {"model": "gpt", "max_tokens": 4, "stream": True}),
             ("/v1/images/generations", {"model": "diffusion", "n": 2, "steps": 2})]  # fmt: skip

    def one(i: int, http: httpx.Client) -> tuple[int, str | None, dict]:
        if i % 10 == 0:
            body = invalid[(i // 10) % len(invalid)]
            route = "/v1/completions" if body["model"] == "gpt" else "/v1/images/generations"
            r = http.post(route, json=body)
            return r.status_code, r.json()["error"]["param"], body
        route, body = valid[i % len(valid)]
        r = http.post(route, json=body)
        return r.status_code, None, body

    limits = httpx.Limits(max_connections=16)
    with (
        background(state()) as url,
        httpx.Client(base_url=url, timeout=60, limits=limits) as http,
        cf.ThreadPoolExecutor(16) as pool,
    ):
        first = list(pool.map(lambda i: one(i, http), range(200)))
        before = rss_mb()
        list(pool.map(lambda i: one(i, http), range(1000)))
        grown = rss_mb() - before
    statuses = [s for s, _, _ in first]
    assert all(s < 500 for s in statuses)
    for status, param, body in first:
        if param is not None or status >= 400:
            assert status == 400 and param in {k for k in body if k != "model"}
    assert statuses.count(400) == 20 and statuses.count(200) == 180
    assert grown < 50, f"memory grew by {grown:.1f} MB over 1000 requests"


def test_a_text_to_image_model_takes_its_prompt_and_refuses_an_empty_one():
    from aigc_cli.build import build_data

    data = build_data({"name": "captioned_shapes", "image_size": 16, "train_size": 32,
                       "test_size": 8})  # fmt: skip
    served = State(Limits(), Settings())
    served.add("t2i", tiny_model("flow", data.spec, text=True, base_channels=8, steps=2,
                                 text_width=16, text_layers=1).eval())  # fmt: skip
    served.ready.set()
    with background(served) as url, httpx.Client(base_url=url, timeout=60) as http:
        route = "/v1/images/generations"
        ok = http.post(route, json={"model": "t2i", "prompt": "a small red circle", "n": 2})
        assert ok.status_code == 200 and len(ok.json()["data"]) == 2
        for prompt in ("", "a purple dog"):
            r = http.post(route, json={"model": "t2i", "prompt": prompt})
            assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text
