"""Text datasets: tokenizers (character-level, byte-level and a byte-level BPE trained on the
training split), any UTF-8 file, and a built-in corpus (the Python documentation topics that
ship with every CPython, so no file or network)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from pydoc_data.topics import topics
from typing import Any

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from aigc_cli.config import check
from aigc_cli.data.base import Batch, BatchIterator, DataModule, DataSpec
from aigc_cli.errors import DataError
from aigc_cli.registry import DATASETS


class CharTokenizer:
    """One id per distinct character of the training text; the vocabulary travels in the
    checkpoint (DataSpec.tokenizer), so sampling needs no data."""

    kind = "char"

    def __init__(self, chars: str) -> None:
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def fit(cls, text: str) -> CharTokenizer:
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        missing = sorted({c for c in text if c not in self.stoi})
        if missing:
            shown = ", ".join(repr(c) for c in missing[:10])
            raise DataError(
                f"text has characters outside the model's {self.vocab_size}-character "
                f"vocabulary: {shown}",
                hint="remove them, or train with dataset.tokenizer=byte (any text)",
            )
        return [self.stoi[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "char", "chars": self.chars}


class ByteTokenizer:
    """UTF-8 bytes: 256 ids, any text, including characters never seen in training."""

    kind = "byte"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "byte"}


class BPETokenizer:
    """Byte-level BPE (as GPT-2's) learnt from the training split with the `tokenizers` library,
    offline. It travels in the checkpoint as the library's JSON (data, not code)."""

    kind = "bpe"

    def __init__(self, serialized: str) -> None:
        self.serialized = serialized
        self.tok = HFTokenizer.from_str(serialized)

    @classmethod
    def fit(cls, text: str, vocab_size: int) -> BPETokenizer:
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        need = f"{vocab_size}: a byte-level BPE needs more than its {len(alphabet)} byte tokens"
        check(vocab_size > len(alphabet), "dataset.vocab_size", need)
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet,
                                      show_progress=False)  # fmt: skip
        lines = text.splitlines(keepends=True)
        tok.train_from_iterator((lines[i : i + 1000] for i in range(0, len(lines), 1000)), trainer)
        got = tok.get_vocab_size()
        if got < vocab_size:
            raise DataError(
                f"dataset.vocab_size={vocab_size} is more than this text allows: BPE ran out of "
                f"pairs to merge at {got} tokens",
                hint=f"use dataset.vocab_size={got} or less, or a longer text",
            )
        return cls(tok.to_str())

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "bpe", "json": self.serialized}


Tokenizer = CharTokenizer | ByteTokenizer | BPETokenizer


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    if d["kind"] == "bpe":
        return BPETokenizer(d["json"])
    return CharTokenizer(d["chars"]) if d["kind"] == "char" else ByteTokenizer()


class TextStream:
    """Tokens in, text out as soon as it is whole characters: a byte-level token may end in
    the middle of a UTF-8 character, which waits for the tokens that complete it (at most 4
    bytes, after which whatever is undecodable goes out as U+FFFD)."""

    def __init__(self, tokenizer: Tokenizer, emit: Callable[[str], None]) -> None:
        self.tokenizer, self.emit = tokenizer, emit
        self.pending: list[int] = []

    def push(self, token: int) -> None:
        self.pending.append(token)
        text = self.tokenizer.decode(self.pending)
        if "\ufffd" not in text or len(self.pending) > 4:
            self.emit(text)
            self.pending.clear()

    def flush(self) -> None:
        if self.pending:
            self.emit(self.tokenizer.decode(self.pending))
            self.pending.clear()


class _WindowIterator(BatchIterator):
    """Random windows of block_size + 1 tokens; batch k is drawn from seed and k alone, so the
    position is one counter."""

    def __init__(self, data: TextData, batch_size: int, seed: int) -> None:
        self.data, self.batch_size, self.seed, self.count = data, batch_size, seed, 0
        self.offsets = torch.arange(data.block_size + 1, device=data.device)

    def __next__(self) -> Batch:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.count)
        self.count += 1
        high = self.data.train_ids.numel() - self.data.block_size - 1
        starts = torch.randint(0, high + 1, (self.batch_size,), generator=g).to(self.data.device)
        chunk = self.data.train_ids[starts[:, None] + self.offsets]  # (B, T + 1)
        return chunk[:, :-1], chunk[:, 1:]

    def state_dict(self) -> dict[str, int]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.count = int(state["count"])


class TextData(DataModule):
    def __init__(
        self, text: str, tokenizer: Tokenizer, block_size: int, source: str,
        split_at: int | None = None,
    ) -> None:  # fmt: skip
        """`split_at`: the characters of the training part (by default the first 90%)."""
        check(block_size >= 1, "dataset.block_size", "must be >= 1")
        if isinstance(tokenizer, BPETokenizer) or split_at is not None:
            # BPE learnt the training part; each part is encoded on its own, so no validation
            # text shaped the vocabulary or shares a token with training text.
            cut = train_chars(text) if split_at is None else split_at
            train, val = tokenizer.encode(text[:cut]), tokenizer.encode(text[cut:])
            ids, split = torch.tensor(train + val, dtype=torch.long), len(train)
        else:
            ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
            split = int(0.9 * ids.numel())  # first 90% train, last 10% validation
        self.train_ids, self.val_ids = ids[:split], ids[split:]
        for part, name in ((self.train_ids, "training"), (self.val_ids, "validation")):
            if part.numel() < block_size + 2:
                raise DataError(
                    f"{source} is too short: its {name} part has {part.numel()} tokens, "
                    f"a window needs {block_size + 2}",
                    hint="use a longer text or a smaller dataset.block_size",
                )
        self.block_size = block_size
        self.tokenizer = tokenizer
        self.device = torch.device("cpu")
        # Bits per character stay comparable across tokenizers: the per-token loss is scaled by
        # the tokens per character of the validation text the windows cover.
        t = block_size
        scored = self.val_ids[1 : ((self.val_ids.numel() - 1) // t) * t + 1]
        chars = len(tokenizer.decode(scored.tolist()))
        self.spec = DataSpec(
            kind="text",
            shape=[block_size],
            vocab_size=tokenizer.vocab_size,
            tokenizer=tokenizer.to_dict(),
            extra={"tokens_per_char": scored.numel() / max(chars, 1)},
        )

    def to(self, device: torch.device) -> TextData:
        self.train_ids, self.val_ids = self.train_ids.to(device), self.val_ids.to(device)
        self.device = device
        return self

    def train_iter(self, batch_size: int, seed: int) -> BatchIterator:
        return _WindowIterator(self, batch_size, seed)

    def eval_iter(self, batch_size: int, max_batches: int = 0) -> Iterator[Batch]:
        """The whole validation split as consecutive, non-overlapping windows."""
        t = self.block_size
        n = (self.val_ids.numel() - 1) // t
        x = self.val_ids[: n * t].view(n, t)  # (windows, T)
        y = self.val_ids[1 : n * t + 1].view(n, t)
        for i, start in enumerate(range(0, n, batch_size)):
            if max_batches and i >= max_batches:
                return
            yield x[start : start + batch_size], y[start : start + batch_size]


def train_chars(text: str) -> int:
    """Where a text's training part ends (characters) when it is split before tokenizing."""
    return int(0.9 * len(text))


def make_tokenizer(
    kind: str, text: str, vocab_size: int = 0, split_at: int | None = None
) -> Tokenizer:
    """A tokenizer for `text`; BPE learns from its training part only (the first `split_at`
    characters, by default the first 90%)."""
    check(kind in ("char", "byte", "bpe"), "dataset.tokenizer",
          f"'{kind}'; choose from: char, byte, bpe")  # fmt: skip
    if kind == "bpe":
        check(vocab_size > 0, "dataset.vocab_size", "set it for dataset.tokenizer=bpe, e.g. 1024")
        cut = train_chars(text) if split_at is None else split_at
        return BPETokenizer.fit(text[:cut], vocab_size)
    fixed = f"applies to dataset.tokenizer=bpe; the {kind} tokenizer's vocabulary is fixed"
    check(vocab_size == 0, "dataset.vocab_size", fixed)
    return CharTokenizer.fit(text) if kind == "char" else ByteTokenizer()


@dataclass
class TextConfig:
    name: str = "text"
    path: str | None = None  # UTF-8 text file; the first 90% trains, the last 10% validates
    tokenizer: str = "char"  # char (vocabulary from the text) | byte (256 ids) | bpe (learnt)
    vocab_size: int = 0  # bpe: tokens in the vocabulary (more than 256); others: 0
    block_size: int = 64  # tokens per training window (the model's context length)


@DATASETS.register("text", config=TextConfig)
def text_file(cfg: TextConfig) -> TextData:
    """Any UTF-8 text file (dataset.path=...), character- or byte-level."""
    if not cfg.path:
        raise DataError("dataset=text needs a file", hint="pass dataset.path=<your file.txt>")
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise DataError(f"text file not found: {path}", hint="check dataset.path")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    if not text:
        raise DataError(f"{path} is empty", hint="point dataset.path at a text with content")
    tokenizer = make_tokenizer(cfg.tokenizer, text, cfg.vocab_size)
    return TextData(text, tokenizer, cfg.block_size, str(path))


@dataclass
class PydocConfig:
    name: str = "pydoc"
    tokenizer: str = "char"  # char | byte | bpe
    vocab_size: int = 0  # bpe: tokens in the vocabulary (more than 256); others: 0
    block_size: int = 64  # tokens per training window (the model's context length)


def pydoc_text() -> str:
    return "".join(topics[k] for k in sorted(topics))


@DATASETS.register("pydoc", config=PydocConfig)
def pydoc(cfg: PydocConfig) -> TextData:
    """Python's own documentation topics, shipped with CPython: offline text (built in)."""
    text = pydoc_text()
    tokenizer = make_tokenizer(cfg.tokenizer, text, cfg.vocab_size)
    return TextData(text, tokenizer, cfg.block_size, "pydoc corpus")
