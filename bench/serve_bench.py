"""`make bench`'s serving part: `aigc serve` with batching on against the same server with
batching off (max_batch=1), measured side by side in one process, alternating rounds.

    python bench/serve_bench.py [--quick] [--out bench/results]

Method: the default GPT (`model=transformer`, built-in pydoc text) and the default diffusion
model (`model=diffusion`, built-in shapes) each train for one step and are exported, so the
server loads real exports (the weights do not change the cost of a step). Each is served on
127.0.0.1 in this process; clients are threads with their own connections, each sending its
next request when its last one ends (a closed loop). Text: max_tokens=64, concurrency 16,
tokens/s; time to first token (streamed) at concurrency 1, its p50 and p95. Images: 25 DDIM
steps, one image per request, concurrency 8, images/s. Each figure is the median of the
rounds; the ratios are of medians of the same run. `--quick` runs one short round (CI checks
the script still runs) and writes nothing.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from aigc_cli.api import train  # noqa: E402
from aigc_cli.commands.export import run_export  # noqa: E402
from aigc_cli.serve.app import State  # noqa: E402
from aigc_cli.serve.background import background  # noqa: E402
from aigc_cli.serve.params import Limits  # noqa: E402
from aigc_cli.serve.workers import Settings  # noqa: E402
from aigc_cli.store.runs import load_run, resolve_checkpoint  # noqa: E402
from bench import cpu_name  # noqa: E402

ONE_STEP = ["trainer.max_steps=1", "trainer.eval_every=0", "trainer.sample_every=0",
            "trainer.progress=false", "trainer.device=cpu"]  # fmt: skip


def export(root: Path, overrides: list[str]) -> Path:
    name = overrides[0].split("=")[1]
    train([*overrides, *ONE_STEP], run_dir=root / name)
    return run_export({"run": str(root / name), "out": str(root / f"{name}_export")})


def serving(exported: Path, name: str, batching: bool) -> State:
    model, _ = load_run(resolve_checkpoint(exported), "cpu")
    settings = Settings(max_queue=256, window_ms=10.0 if batching else 0.0,
                        max_rows=64 if batching else 1)  # fmt: skip
    state = State(Limits(), settings)
    state.add(name, model.eval())  # type: ignore[arg-type]
    state.ready.set()
    return state


def closed_loop(url: str, route: str, body: dict, clients: int, per_client: int) -> float:
    """Seconds for `clients` threads to send `per_client` requests each, back to back."""

    def client(_: int) -> None:
        with httpx.Client(base_url=url, timeout=300) as http:
            for _ in range(per_client):
                r = http.post(route, json=body)
                r.raise_for_status()

    start = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return time.perf_counter() - start


def first_token_times(url: str, count: int) -> list[float]:
    out = []
    body = {"model": "gpt", "prompt": "The ", "max_tokens": 64, "stream": True}
    with httpx.Client(base_url=url, timeout=60) as http:
        for _ in range(count):
            start = time.perf_counter()
            with http.stream("POST", "/v1/completions", json=body) as r:
                for line in r.iter_lines():
                    if line.startswith("data: ") and '"text"' in line:
                        out.append(time.perf_counter() - start)
                        break
    return out


def measure(exports: dict[str, Path], rounds: int, quick: bool) -> dict[str, Any]:
    text = {"model": "gpt", "prompt": "The ", "max_tokens": 64}
    image = {"model": "diffusion", "n": 1, "steps": 25, "sampler": "ddim"}
    per_text, per_image = (1, 1) if quick else (3, 3)
    runs: dict[str, list[float]] = {k: [] for k in ("text_on", "text_off", "image_on",
                                                    "image_off")}  # fmt: skip
    ttft: list[float] = []
    for _ in range(rounds):  # alternating, so both see the machine in the same state
        for batching in (True, False):
            tag = "on" if batching else "off"
            with background(serving(exports["transformer"], "gpt", batching)) as url:
                closed_loop(url, "/v1/completions", {**text, "max_tokens": 4}, 2, 1)  # warm
                seconds = closed_loop(url, "/v1/completions", text, 16, per_text)
                runs[f"text_{tag}"].append(16 * per_text * 64 / seconds)
                if batching:
                    ttft += first_token_times(url, 5 if quick else 20)
            with background(serving(exports["diffusion"], "diffusion", batching)) as url:
                closed_loop(url, "/v1/images/generations", {**image, "steps": 2}, 2, 1)
                seconds = closed_loop(url, "/v1/images/generations", image, 8, per_image)
                runs[f"image_{tag}"].append(8 * per_image / seconds)
    med = {k: statistics.median(v) for k, v in runs.items()}
    ttft.sort()
    p95 = ttft[min(len(ttft) - 1, int(0.95 * len(ttft)))]
    on_off = {kind: {"batching": med[f"{kind}_on"], "off": med[f"{kind}_off"],
                     "ratio": med[f"{kind}_on"] / med[f"{kind}_off"]}
              for kind in ("text", "image")}  # fmt: skip
    return {
        "text_tokens_per_s": on_off["text"],
        "ttft_ms_concurrency_1": {"p50": 1000 * ttft[len(ttft) // 2], "p95": 1000 * p95},
        "images_per_s": on_off["image"],
        "rounds": runs,
    }


def write(out: Path, results: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"serve_{platform.node() or 'host'}_{results['date']}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    t, i = results["text_tokens_per_s"], results["images_per_s"]
    f = results["ttft_ms_concurrency_1"]
    lines = [
        f"# aigc serve, {results['date']}, {results['cpu']} ({results['cpus']} CPUs), "
        f"torch {results['torch']}",
        "",
        __doc__.split("\n\n", 2)[2].strip(),
        "",
        "| figure | batching on | batching off | ratio |",
        "|---|---|---|---|",
        f"| text tokens/s (max_tokens 64, concurrency 16) | {t['batching']:.0f} | {t['off']:.0f} "
        f"| {t['ratio']:.2f}× |",
        f"| images/s (25 DDIM steps, concurrency 8) | {i['batching']:.2f} | {i['off']:.2f} "
        f"| {i['ratio']:.2f}× |",
        "",
        f"Time to first token at concurrency 1: p50 {f['p50']:.1f} ms, p95 {f['p95']:.1f} ms.",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return stem


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one short round; CI smoke run")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        exports = {"transformer": export(root, ["model=transformer"]),
                   "diffusion": export(root, ["model=diffusion"])}  # fmt: skip
        figures = measure(exports, 1 if args.quick else args.rounds, args.quick)
    results = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(),
               "cpus": os.cpu_count(), "torch": torch.__version__, **figures}  # fmt: skip
    t, i = figures["text_tokens_per_s"], figures["images_per_s"]
    print(
        f"text tokens/s: {t['batching']:.0f} batching, {t['off']:.0f} off ({t['ratio']:.2f}×); "
        f"TTFT p95 {figures['ttft_ms_concurrency_1']['p95']:.1f} ms; images/s: "
        f"{i['batching']:.2f} batching, {i['off']:.2f} off ({i['ratio']:.2f}×)"
    )
    if not args.quick:
        print(f"written to {write(args.out, results)}.md")


if __name__ == "__main__":
    main()
