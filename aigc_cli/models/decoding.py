"""Several token sequences decoded together through one key/value cache: rows of different
lengths, each with its own generator, filtering, token limit and stop, so that a row gets the
tokens it would get decoded alone, whatever else shares its batch.

Rows are left-padded to one length; a mask keeps each row's queries on its own keys and each
row's positions count its own tokens only. A row's context window moves as it would alone:
once it holds a whole block, it restarts from its most recent 3/4 block (positions are
absolute, so the cache cannot slide), and the batch is re-encoded with every other row's
window unchanged, which gives those rows the same keys and values they had."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: a (B, T) logits filter: temperature-scaled logits → logits with the dropped tokens at -inf
Filter = Callable[[Tensor, int, float], Tensor]


@dataclass
class Row:
    """One sequence to extend: `tokens` grows in place by up to `limit` tokens."""

    tokens: list[int]
    limit: int
    generator: torch.Generator  # on the model's device
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    on_token: Callable[[int], None] | None = None  # sees each new token as it is drawn
    stopped: Callable[[], bool] | None = None  # True: stop this row now (a client went away)
    on_finish: Callable[[], None] | None = None  # runs once, when the row has ended
    start: int = 0  # index in `tokens` of the context window's first token
    added: int = 0

    def done(self) -> bool:
        return self.added >= self.limit or (self.stopped is not None and self.stopped())


def row_generators(
    generator: torch.Generator, n: int, device: torch.device
) -> list[torch.Generator]:
    """`n` generators on `device`, seeded in turn from `generator`: a request's rows draw the
    same tokens alone or beside other requests, on every device."""
    seeds = torch.randint(0, 2**62, (n,), generator=generator).tolist()
    return [torch.Generator(device).manual_seed(int(s)) for s in seeds]


def decode(gpt: nn.Module, rows: list[Row], filter_logits: Filter,
           joining: Callable[[int], list[Row]] | None = None) -> None:  # fmt: skip
    """Extend every row until its limit or its stop, one forward pass per token for the
    whole batch; each row's `on_finish` runs as it ends. After each step, `joining(active)`
    may hand over more rows (continuous batching): they are prefilled on their own and join
    the batch's cache, so no row already decoding is computed again."""
    block = int(gpt.block_size)  # type: ignore[arg-type]
    active = _begin(rows, block)
    batch = _prefill(gpt, active) if active else None
    while active:
        assert batch is not None
        cache, valid, logits = batch
        probs = _probs(logits, active, filter_logits)
        nxt = [_draw(probs[i], r) for i, r in enumerate(active)]
        keep = [i for i, r in enumerate(active) if not r.done()]
        if len(keep) < len(active):
            for i in sorted(set(range(len(active))) - set(keep)):
                _finish(active[i])
            active, nxt = [active[i] for i in keep], [nxt[i] for i in keep]
            cache, valid = _keep(cache, valid, keep)
        full = [r for r in active if len(r.tokens) - r.start > block]
        for r in full:  # positions are absolute: restart the window from its last 3/4 block
            r.start = len(r.tokens) - 3 * block // 4
        if full:
            batch = _prefill(gpt, active)
        elif active:
            valid = torch.cat([valid, valid.new_ones(len(active), 1)], dim=1)
            pos = (valid.sum(1, keepdim=True) - 1).clamp(max=block - 1)  # (B, 1)
            ids = torch.tensor(nxt, device=valid.device).view(-1, 1)  # (B, 1)
            batch = cache, valid, gpt(ids, cache, pos, valid[:, None, None, :])[:, -1]
        new = _begin(joining(len(active)), block) if joining is not None else []
        if new:
            joined = _prefill(gpt, new)
            batch = _merge(batch, joined) if active else joined
            active += new


Batch = tuple[list[dict[str, Tensor]], Tensor, Tensor]  # cache, valid (B, W), logits (B, V)


def _begin(rows: list[Row], block: int) -> list[Row]:
    """The rows that still have tokens to draw, their windows set; the others end now."""
    for r in rows:
        r.start = max(0, len(r.tokens) - block)
    for r in rows:
        if r.done():
            _finish(r)
    return [r for r in rows if not r.done()]


def _finish(row: Row) -> None:
    if row.on_finish is not None:
        row.on_finish()


def _keep(cache: list[dict[str, Tensor]], valid: Tensor, keep: list[int]) -> tuple[Any, Tensor]:
    """The rows `keep` of the cache, less the leading columns only padding holds."""
    index = torch.tensor(keep, device=valid.device, dtype=torch.long)
    valid = valid[index]
    first = int(valid.any(0).float().argmax()) if len(keep) else 0
    cache = [{k: v[index][:, :, first:] for k, v in layer.items()} for layer in cache]
    return cache, valid[:, first:]


def _merge(a: Batch, b: Batch) -> Batch:
    """Two batches as one: the narrower left-padded to the wider, rows of `a` first."""
    width = max(a[1].shape[1], b[1].shape[1])

    def pad(batch: Batch) -> Batch:
        cache, valid, logits = batch
        extra = width - valid.shape[1]
        if not extra:
            return batch
        cache = [{k: F.pad(v, (0, 0, extra, 0)) for k, v in layer.items()} for layer in cache]
        gap = valid.new_zeros(valid.shape[0], extra)
        return cache, torch.cat([gap, valid], dim=1), logits

    (ca, va, la), (cb, vb, lb) = pad(a), pad(b)
    cache = [{k: torch.cat([x[k], y[k]]) for k in x} for x, y in zip(ca, cb, strict=True)]
    return cache, torch.cat([va, vb]), torch.cat([la, lb])


def _prefill(gpt: nn.Module, rows: list[Row]) -> Batch:
    """Each row's window, left-padded to the longest: (cache, valid (B, W), last logits)."""
    device = next(gpt.parameters()).device
    width = max(len(r.tokens) - r.start for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    valid = torch.zeros(len(rows), width, dtype=torch.bool, device=device)
    for i, r in enumerate(rows):
        window = r.tokens[r.start :]
        ids[i, width - len(window) :] = torch.tensor(window, device=device)
        valid[i, width - len(window) :] = True
    pos = (valid.long().cumsum(1) - 1).clamp(min=0)  # (B, W): each row counts its own tokens
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    eye = torch.eye(width, dtype=torch.bool, device=device)
    # A padding query sees itself only (an empty row would give NaN); no query sees padding.
    mask = (valid[:, None, None, :] & causal) | eye  # (B, 1, W, W)
    cache: list[dict[str, Tensor]] = [{} for _ in gpt.blocks]  # type: ignore[union-attr]
    return cache, valid, gpt(ids, cache, pos, mask)[:, -1]


def _probs(logits: Tensor, rows: list[Row], filter_logits: Filter) -> Tensor:
    """Each row's next-token distribution (B, vocab) under its own temperature and filter; one
    call for the batch when the rows share their filter (the result is the same per row)."""
    temperature = torch.tensor([r.temperature for r in rows], device=logits.device)
    scaled = logits.float() / temperature.unsqueeze(1)
    filters = {(r.top_k, r.top_p) for r in rows}
    if len(filters) == 1:
        top_k, top_p = filters.pop()
        return filter_logits(scaled, top_k, top_p).softmax(-1)
    return torch.cat([filter_logits(scaled[i : i + 1], r.top_k, r.top_p).softmax(-1)
                      for i, r in enumerate(rows)])  # fmt: skip


def _draw(probs: Tensor, row: Row) -> int:
    """One token for `row` from its own generator, appended to it."""
    token = int(torch.multinomial(probs, 1, generator=row.generator))
    row.tokens.append(token)
    row.added += 1
    if row.on_token is not None:
        row.on_token(token)
    return token
