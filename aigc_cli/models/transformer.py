"""Decoder-only Transformer (GPT-2 style, after nanoGPT): pre-LayerNorm blocks, causal
self-attention through scaled_dot_product_attention, GELU MLP, tied input/output embeddings;
sampling with a key/value cache, temperature, top-k and top-p. On text it models characters or
bytes; on images, quantised pixels in raster order (ImageGPT-style, aigc_cli/models/pixels.py),
so it also yields image grids."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from aigc_cli.config import OptimConfig, check
from aigc_cli.data.base import Batch, DataSpec
from aigc_cli.data.music import PIECE, music_spec
from aigc_cli.data.music import decode as decode_music
from aigc_cli.data.text import TextStream, tokenizer_from_dict
from aigc_cli.errors import DataError
from aigc_cli.models.base import GenerativeModel, More, OnnxGraph, Request, Stage
from aigc_cli.models.decoding import Row, decode, row_generators
from aigc_cli.models.pixels import PixelCodec
from aigc_cli.noise import LOCAL, Noise
from aigc_cli.optim import make_optimizer
from aigc_cli.registry import MODELS
from aigc_cli.results import Images, Music, SampleResult, Texts

KVCache = list[dict[str, Tensor]]  # one {"k", "v"} per layer, each (B, heads, T_past, head_dim)


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.resid_drop = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, cache: dict[str, Tensor] | None = None, mask: Tensor | None = None
    ) -> Tensor:
        """`mask` (B, 1, T, T_past + T), True where a query may attend: rows of different
        lengths decoded together (models/decoding.py); None = plain causal attention."""
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)  # (B, T, C) each
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        # q, k, v: (B, heads, T, head_dim)
        past = 0
        if cache is not None:
            if "k" in cache:
                past = cache["k"].shape[2]
                k = torch.cat([cache["k"], k], dim=2)  # (B, heads, T_past + T, head_dim)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        if past and t > 1 and mask is None:
            raise ValueError("the KV cache takes one token at a time after the prompt")
        # New tokens see all cached ones; within a fresh sequence the mask is causal. (bool():
        # under the ONNX tracer the sizes are tensors; each traced graph fixes this choice.)
        causal = bool(past == 0 and t > 1) and mask is None
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, heads, T, head_dim)  # fmt: skip
        y = y.transpose(1, 2).contiguous().view(b, t, c)  # (B, T, C)
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd),
            nn.GELU(),
            nn.Linear(4 * n_embd, n_embd),
            nn.Dropout(dropout),
        )

    def forward(
        self, x: Tensor, cache: dict[str, Tensor] | None = None, mask: Tensor | None = None
    ) -> Tensor:
        x = x + self.attn(self.ln1(x), cache, mask)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Token ids (B, T) → next-token logits (B, T, vocab)."""

    def __init__(
        self, vocab: int, block_size: int, n_layer: int, n_head: int, n_embd: int, dropout: float
    ) -> None:
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab, bias=False)
        self.head.weight = self.wte.weight  # weight tying (Press & Wolf 2017)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(
        self,
        idx: Tensor,
        cache: KVCache | None = None,
        pos: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """`pos` (B, T) and `mask` (B, 1, T, T_past + T) give each row its own positions and
        keys when rows of different lengths share a batch; None = one sequence's."""
        t = idx.shape[1]
        past = cache[0]["k"].shape[2] if cache and "k" in cache[0] else 0
        if pos is None:
            if past + t > self.block_size:
                raise ValueError(
                    f"sequence of {past + t} tokens exceeds block_size {self.block_size}"
                )
            pos = torch.arange(past, past + t, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, cache[i] if cache is not None else None, mask)
        return self.head(self.ln_f(x))  # (B, T, vocab)


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf. The nucleus is the
    smallest set of most likely tokens whose probability reaches top_p (the token that crosses
    the threshold is kept)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass strictly before each token
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@MODELS.register("transformer")
class Transformer(GenerativeModel):
    """GPT-style decoder-only Transformer for text, music tokens or images as pixel sequences.

    Samples with a KV cache; prompts of different lengths share a batch."""

    data_kinds = ("text", "image")

    @dataclass
    class Config:
        name: str = "transformer"
        n_layer: int = 4  # transformer blocks
        n_head: int = 4  # attention heads per block
        n_embd: int = 128  # embedding width (divisible by n_head)
        block_size: int = 0  # context length; 0 = the dataset's (text windows, or pixels)
        dropout: float = 0.0  # dropout on embeddings, attention output and MLP
        levels: int = 4  # images: values per channel (tokens = levels**channels)
        downscale: int = 1  # images: average-pool by this first (sequence / downscale²)

    def __init__(self, cfg: Config, data: DataSpec) -> None:
        super().__init__(cfg, data)
        check(cfg.n_layer >= 1 and cfg.n_head >= 1, "model.n_layer", "layers and heads >= 1")
        check(
            cfg.n_embd % cfg.n_head == 0,
            "model.n_embd",
            f"{cfg.n_embd} must be divisible by model.n_head={cfg.n_head}",
        )
        check(0 <= cfg.dropout < 1, "model.dropout", "must be in [0, 1)")
        self.pixels: PixelCodec | None = None
        if data.kind == "image":
            self.pixels = PixelCodec(data.shape, cfg.levels, cfg.downscale)
            self.tokenizer = None
            vocab = self.pixels.vocab_size + 1  # the last id starts every image
            needed, what = self.pixels.seq_len, "pixels per image"
        else:
            self.tokenizer = tokenizer_from_dict(data.tokenizer)
            vocab, needed, what = data.vocab_size, data.shape[0], "dataset's windows"
        block = cfg.block_size or needed
        check(block >= needed, "model.block_size", f"{block} is shorter than the {what} ({needed})")
        self.gpt = GPT(vocab, block, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.dropout)

    def adapt_weights(
        self, state: dict[str, Tensor], source: DataSpec
    ) -> tuple[dict[str, Tensor], list[str]]:
        """Fine-tuning on another text: with character vocabularies, each character's embedding
        row (shared with the output head) moves to its new id, and characters the source never
        saw keep fresh rows. Other tokenizers must match, else the embedding starts afresh."""
        mine, theirs = self.spec.tokenizer, source.tokenizer
        key, head = "gpt.wte.weight", "gpt.head.weight"
        if self.pixels is not None or mine == theirs or key not in state:
            return state, []
        source_rows = state[key]
        state = {k: v for k, v in state.items() if k not in (key, head)}
        if mine.get("kind") != "char" or theirs.get("kind") != "char":
            return state, [f"the tokenizer differs from the source's ({theirs.get('kind')}): "
                           "the token embedding starts afresh"]  # fmt: skip
        if source_rows.shape[1] != self.gpt.wte.weight.shape[1]:
            return state, []  # another width: nothing of the embedding fits
        old = {c: i for i, c in enumerate(theirs["chars"])}
        rows = self.gpt.wte.weight.detach().clone()  # fresh rows for unseen characters
        carried = [i for i, c in enumerate(mine["chars"]) if c in old]
        for i in carried:
            rows[i] = source_rows[old[mine["chars"][i]]]
        state[key] = state[head] = rows
        new = len(mine["chars"]) - len(carried)
        return state, [f"character embeddings moved to the new vocabulary: {len(carried)} "
                       f"carried over, {new} new characters start afresh"]  # fmt: skip

    def onnx_graphs(self) -> list[OnnxGraph]:
        """`model` (tokens → logits), and the key/value-cache pair Optimum names `prefill`
        (tokens → logits and each layer's keys and values) and `decode` (one token and the
        past keys and values → logits and the extended keys and values)."""
        return transformer_graphs(self.gpt, self.cfg.n_head)

    def optimizers(self, optim: OptimConfig) -> dict[str, Optimizer]:
        """AdamW with weight decay on matrices only (embeddings included, as in nanoGPT), never
        on biases or LayerNorm gains."""
        decay = [p for p in self.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": optim.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return {"model": make_optimizer(groups, optim)}

    def _inputs_targets(self, batch: Batch) -> tuple[Tensor, Tensor]:
        if self.pixels is None:
            return batch[0], batch[1]  # text windows and the same shifted by one
        tokens = self.pixels.encode(batch[0])  # (B, T)
        start = torch.full_like(tokens[:, :1], self.pixels.vocab_size)
        return torch.cat([start, tokens[:, :-1]], dim=1), tokens

    def training_step(self, batch: Batch, step: int, noise: Noise = LOCAL) -> Iterator[Stage]:
        x, y = self._inputs_targets(batch)
        logits = self.gpt(x)  # (B, T, vocab)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        yield Stage("model", loss, {"loss": loss.detach()})

    @torch.no_grad()
    def evaluate(self, batch: Batch, **options: Any) -> dict[str, Tensor]:
        x, y = self._inputs_targets(batch)
        logits = self.gpt(x).float()
        nll = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")
        return {"loss": nll, "n": torch.tensor(float(y.numel()), device=y.device)}

    def _unit(self) -> str:
        if self.pixels is not None:
            return "pixel"
        return {"char": "char", "byte": "byte"}.get(self.tokenizer.kind, "token")

    def _tokens_per_char(self) -> float | None:
        """Byte and BPE runs also report bits per character, so runs compare across tokenizers."""
        if self.pixels is not None or self._unit() == "char":
            return None
        return self.spec.extra.get("tokens_per_char")

    def finalize_metrics(self, means: dict[str, float]) -> dict[str, float]:
        loss = means["loss"]
        out = {
            "loss": loss,
            f"bits_per_{self._unit()}": loss / math.log(2),
            "perplexity": math.exp(min(loss, 50.0)),
        }
        ratio = self._tokens_per_char()
        if ratio:
            out["bits_per_char"] = loss * ratio / math.log(2)
        extra = self.spec.extra
        if extra.get("tokens_per_frame"):
            out["frame_nll"] = loss * extra["tokens_per_frame"]
        if extra.get("tokens_per_step"):
            out["nll_per_step"] = loss * extra["tokens_per_step"]
            out["bits_per_note"] = loss * extra["tokens_per_note"] / math.log(2)
        return out

    def describe_metrics(self, options: dict[str, Any]) -> dict[str, str]:
        if self.pixels is None:
            loss = (
                "cross-entropy of the next token, nats per token, every position of "
                "non-overlapping windows covering the whole validation split"
            )
        else:
            p = self.pixels
            loss = (
                f"cross-entropy of each pixel given the pixels before it in raster order, nats "
                f"per pixel, over the whole test split, at {p.height}x{p.width} with "
                f"{p.levels} levels per channel (not comparable with bits/dim of 8-bit images)"
            )
        notes = {
            "loss": loss,
            f"bits_per_{self._unit()}": "loss / ln 2",
            "perplexity": "exp(loss)",
        }
        extra = self.spec.extra
        if extra.get("tokens_per_step"):
            notes["nll_per_step"] = (
                f"loss × {extra['tokens_per_step']:.4f} tokens per grid step of the test "
                "pieces: nats per step of the note events (pitch and duration at each onset)"
            )
            notes["bits_per_note"] = (
                f"loss / ln 2 × {extra['tokens_per_note']:.4f} tokens per note of the test pieces"
            )
        per_frame = extra.get("tokens_per_frame")
        if per_frame:
            notes["frame_nll"] = (
                f"loss × {per_frame:.4f} tokens per grid step of the test pieces: nats per time "
                "step; frame_tokens make it the exact likelihood of each frame (its notes in "
                f"pitch order), with at most {self.cfg.block_size or self.spec.shape[0]} tokens "
                "of context"
            )
        ratio = self._tokens_per_char()
        if ratio:
            notes["bits_per_char"] = (
                f"loss / ln 2 × {ratio:.4f} {self._unit()}s per character of the scored "
                "validation text: comparable across tokenizers"
            )
        return notes

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        prompt: str = "",
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        stream: Callable[[str], None] | None = None,
        **kw: Any,
    ) -> Texts | Images | Music:
        """Text: `n` continuations of `prompt` (each starts with it); `stream` receives the first
        one's text as it is generated. Images: `n` images (n, C, H, W) in [0, 1]. Music tokens
        (frame_tokens, events): `n` pieces, each continuing `prompt` (music in the same
        encoding) up to `max_new_tokens` tokens or the end of a piece. Each row draws from its
        own generator, seeded in turn from `generator`."""
        if generator is None:
            generator = torch.Generator().manual_seed(torch.seed() % 2**62)
        options = {"prompt": prompt, "max_new_tokens": max_new_tokens,
                   "temperature": temperature, "top_k": top_k, "top_p": top_p}  # fmt: skip
        show = stream if music_spec(self.spec) is None and self.pixels is None else None
        if show and prompt:
            show(prompt)
        request = Request(n, generator, options, on_text=(lambda row, text: row or show(text))
                          if show else None)  # fmt: skip
        result = self.sample_batch([request])[0]
        assert result is not None
        return result  # type: ignore[return-value]

    def batch_key(self, options: dict[str, Any]) -> Any:
        """Any requests batch together: rows keep their own prompts, filters and limits."""
        return "tokens"

    @torch.no_grad()
    def sample_batch(
        self, requests: list[Request], more: More | None = None
    ) -> list[SampleResult | None]:
        """Every request's rows decoded as one batch (models/decoding.py); requests from
        `more` join between tokens, and each request's result goes out when its rows end."""
        results: dict[int, SampleResult | None] = {}
        first = [self._admit(r, results) for r in requests]

        def joining(active: int) -> list[Row]:
            assert more is not None
            return [row for r in more(active) for row in self._admit(r, results)]

        decode(self.gpt, [row for rows in first for row in rows], filter_logits,
               joining if more is not None else None)  # fmt: skip
        return [results.get(id(r)) for r in requests]

    def _admit(self, request: Request, results: dict[int, SampleResult | None]) -> list[Row]:
        """The request's rows, set to make its result (into `results` and its `on_result`)
        when the last of them ends."""
        streams: list[TextStream] = []
        rows = self._rows(request, streams)
        left = [len(rows)]

        def finished() -> None:
            left[0] -= 1
            if left[0] == 0:
                for stream in streams:  # the end of each text, whole characters or not
                    stream.flush()
                result = None if request.cancelled() else self._result(request, rows)
                results[id(request)] = request.deliver(result)

        for row in rows:
            row.on_finish = finished
        if not rows:
            left[0] = 1
            finished()
        return rows

    def _rows(self, request: Request, streams: list[TextStream]) -> list[Row]:
        """The request's rows: its prompt (or the start token) and its options, checked; the
        text streams of its rows join `streams`."""
        o = request.options
        limit, temperature = int(o.get("max_new_tokens", 256)), float(o.get("temperature", 1.0))
        top_k, top_p = int(o.get("top_k", 0)), float(o.get("top_p", 1.0))
        check(limit >= 0, "max_new_tokens", f"{limit} must be >= 0")
        check(temperature > 0, "temperature", "must be > 0")
        check(top_k >= 0, "top_k", f"{top_k} must be >= 0")
        check(0 < top_p <= 1, "top_p", "must be in (0, 1]")
        if self.pixels is not None:
            start, limit = [self.pixels.vocab_size], self.pixels.seq_len
        else:
            assert self.tokenizer is not None
            prompt = str(o.get("prompt") or "")
            music = music_spec(self.spec) is not None
            start = self.tokenizer.encode(prompt) if prompt else [self._start_id(music)]
        on_text = request.on_text if self.pixels is None else None
        rows = []
        for i, g in enumerate(row_generators(request.generator, request.n, self.device)):
            on_token = None
            if on_text is not None:
                assert self.tokenizer is not None
                streams.append(TextStream(self.tokenizer, partial(on_text, i)))
                on_token = streams[-1].push
            rows.append(Row(list(start), limit, g, temperature, top_k, top_p, on_token,
                            request.cancelled))  # fmt: skip
        return rows

    def _result(self, request: Request, rows: list[Row]) -> SampleResult:
        """The request's rows as its kind of result."""
        if self.pixels is not None:
            ids = torch.tensor([r.tokens[1:] for r in rows], device=self.device)
            return self.as_result(self.pixels.decode(ids))
        assert self.tokenizer is not None
        prompt = str(request.options.get("prompt") or "")
        tok = self.tokenizer
        first = len(tok.encode(prompt)) if prompt else 1  # the start token is not output
        news = [tok.decode(r.tokens[first:]) for r in rows]
        if music_spec(self.spec) is not None:
            return self.music_of(news if not prompt else [tok.decode(r.tokens) for r in rows])
        return Texts(texts=[prompt + t for t in news], continuations=news,
                     prompt_tokens=first if prompt else 0,
                     new_tokens=[r.added for r in rows])  # fmt: skip

    def music_of(self, texts: list[str]) -> Music:
        """Music token texts (each up to its piece's end) as one Music result."""
        encoding = (music_spec(self.spec) or {})["encoding"]
        rolls = [decode_music(t, encoding) for t in texts]
        steps = max(r.shape[1] for r in rolls)
        return self.as_music(torch.stack([F.pad(r, (0, steps - r.shape[1])) for r in rolls]))

    def _start_id(self, music: bool) -> int:
        """What an unprompted sample starts from: a newline, or the start of a piece."""
        try:
            return self.tokenizer.encode(PIECE if music else "\n")[0]
        except DataError:  # a char vocabulary without it
            return 0


class _Logits(nn.Module):
    def __init__(self, gpt: GPT) -> None:
        super().__init__()
        self.gpt = gpt

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.gpt(input_ids).float()


class _Prefill(_Logits):
    def forward(self, input_ids: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        cache: KVCache = [{} for _ in self.gpt.blocks]
        logits = self.gpt(input_ids, cache).float()
        return (logits, *[t for c in cache for t in (c["k"], c["v"])])


class _Decode(_Logits):
    def forward(self, input_ids: Tensor, *past: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        cache: KVCache = [{"k": past[2 * i], "v": past[2 * i + 1]} for i in range(len(past) // 2)]
        logits = self.gpt(input_ids, cache).float()
        return (logits, *[t for c in cache for t in (c["k"], c["v"])])


def transformer_graphs(gpt: GPT, n_head: int) -> list[OnnxGraph]:
    vocab, layers = gpt.wte.num_embeddings, len(gpt.blocks)
    head_dim = gpt.wte.embedding_dim // n_head
    kv = [f"{i}.{part}" for i in range(layers) for part in ("key", "value")]
    past, present = [f"past_key_values.{k}" for k in kv], [f"present.{k}" for k in kv]
    tokens = {"input_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}}

    def ids(n: int, length: int) -> Tensor:
        return torch.randint(0, vocab, (n, length))

    def with_past(n: int) -> dict[str, Tensor]:
        return {"input_ids": ids(n, 1), **{k: torch.randn(n, n_head, n, head_dim) for k in past}}

    cache_axes = {k: {0: "batch", 2: "past_sequence"} for k in past}
    cache_axes |= {k: {0: "batch", 2: "total_sequence"} for k in present}
    about = (
        f"input_ids (batch, sequence) of token ids in [0, {vocab}) → logits (batch, sequence, "
        f"{vocab})"
    )
    kv_about = f"; keys and values are (batch, {n_head} heads, length, {head_dim})"
    return [
        OnnxGraph("model", _Logits(gpt), lambda n: {"input_ids": ids(n, n + 1)}, ["logits"],
                  tokens, about),
        OnnxGraph("prefill", _Prefill(gpt), lambda n: {"input_ids": ids(n, n + 1)},
                  ["logits", *present], {**tokens, **cache_axes}, about + ", present.*" + kv_about),
        OnnxGraph("decode", _Decode(gpt), with_past, ["logits", *present],
                  {**tokens, **cache_axes},
                  "input_ids (batch, 1) and past_key_values.* → logits (batch, 1, vocab) and "
                  "present.* (the past plus this token)" + kv_about),
    ]  # fmt: skip
