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

import torch
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


def decode(gpt: nn.Module, rows: list[Row], filter_logits: Filter) -> None:
    """Extend every row until its limit or its stop, one forward pass per token for the
    whole batch."""
    block = int(gpt.block_size)  # type: ignore[arg-type]
    for r in rows:
        r.start = max(0, len(r.tokens) - block)
    active = [r for r in rows if not r.done()]
    while active:
        cache, valid, logits = _prefill(gpt, active)
        while active:
            nxt = [_draw(logits[i], r, filter_logits) for i, r in enumerate(active)]
            keep = [i for i, r in enumerate(active) if not r.done()]
            if len(keep) < len(active):
                active = [active[i] for i in keep]
                index = torch.tensor(keep, device=valid.device, dtype=torch.long)
                cache = [{k: v[index] for k, v in layer.items()} for layer in cache]
                valid, nxt = valid[index], [nxt[i] for i in keep]
                first = int(valid.any(0).float().argmax())  # drop columns only padding holds
                cache = [{k: v[:, :, first:] for k, v in layer.items()} for layer in cache]
                valid = valid[:, first:]
            full = [r for r in active if len(r.tokens) - r.start > block]
            if not active or full:
                for r in full:
                    r.start = len(r.tokens) - 3 * block // 4
                break  # re-encode: a row's window holds a whole block
            valid = torch.cat([valid, valid.new_ones(len(active), 1)], dim=1)
            pos = (valid.sum(1, keepdim=True) - 1).clamp(max=block - 1)  # (B, 1)
            ids = torch.tensor(nxt, device=valid.device).view(-1, 1)  # (B, 1)
            logits = gpt(ids, cache, pos, valid[:, None, None, :])[:, -1]


def _prefill(gpt: nn.Module, rows: list[Row]) -> tuple[list[dict[str, Tensor]], Tensor, Tensor]:
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


def _draw(logits: Tensor, row: Row, filter_logits: Filter) -> int:
    """One token for `row` from its own generator, appended to it."""
    scaled = logits.float().unsqueeze(0) / row.temperature
    probs = filter_logits(scaled, row.top_k, row.top_p).softmax(-1)  # (1, vocab)
    token = int(torch.multinomial(probs, 1, generator=row.generator))
    row.tokens.append(token)
    row.added += 1
    if row.on_token is not None:
        row.on_token(token)
    return token
