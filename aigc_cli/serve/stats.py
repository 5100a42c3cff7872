"""The server's counters, in Prometheus's text format at /metrics: requests by route and
status, queue depth, batch sizes, time to first token, tokens and images generated."""

from __future__ import annotations

import threading
from collections import defaultdict

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum, self.count = 0.0, 0

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        for i, edge in enumerate(self.buckets):
            if value <= edge:
                self.counts[i] += 1

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{edge:g}"}} {c}'
               for edge, c in zip(self.buckets, self.counts, strict=True)]  # fmt: skip
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        out.append(f"{name}_sum{{{labels}}} {self.sum:.6f}")
        out.append(f"{name}_count{{{labels}}} {self.count}")
        return out


class Stats:
    """Thread-safe: handlers and workers both write."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.generated: dict[tuple[str, str], int] = defaultdict(int)  # (model, unit) → count
        self.batches: dict[str, Histogram] = {}
        self.ttft = Histogram(TTFT_BUCKETS)
        self.depth: dict[str, int] = {}

    def request(self, route: str, status: int) -> None:
        with self.lock:
            self.requests[(route, status)] += 1

    def batch(self, model: str, rows: int) -> None:
        with self.lock:
            self.batches.setdefault(model, Histogram(BATCH_BUCKETS)).observe(rows)

    def made(self, model: str, unit: str, count: int) -> None:
        with self.lock:
            self.generated[(model, unit)] += count

    def first_token(self, seconds: float) -> None:
        with self.lock:
            self.ttft.observe(seconds)

    def text(self) -> str:
        with self.lock:
            lines = ["# TYPE aigc_requests_total counter"]
            lines += [f'aigc_requests_total{{route="{r}",status="{s}"}} {n}'
                      for (r, s), n in sorted(self.requests.items())]  # fmt: skip
            lines.append("# TYPE aigc_queue_depth gauge")
            lines += [f'aigc_queue_depth{{model="{m}"}} {d}' for m, d in sorted(self.depth.items())]
            lines.append("# TYPE aigc_batch_rows histogram")
            for m, h in sorted(self.batches.items()):
                lines += h.lines("aigc_batch_rows", f'model="{m}"')
            lines.append("# TYPE aigc_time_to_first_token_seconds histogram")
            lines += self.ttft.lines("aigc_time_to_first_token_seconds", "")
            for unit in ("tokens", "images", "pieces"):
                lines.append(f"# TYPE aigc_{unit}_generated_total counter")
                lines += [f'aigc_{unit}_generated_total{{model="{m}"}} {n}'
                          for (m, u), n in sorted(self.generated.items()) if u == unit]  # fmt: skip
            return "\n".join(lines) + "\n"
