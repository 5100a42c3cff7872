"""The caption grammar of `captioned_shapes`: scenes of one or two shapes, each with a size, a
colour and a shape, and for two a relation. `describe` writes a caption in one of a few
phrasings; `parse` reads any caption of the grammar back into the scene it asks for, which is
what the judge checks an image against. Captions are tokenized by characters (the caption
tokenizer travels in the data spec), id 0 padding and id 1 the start every caption has."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from aigc_cli.data.text import CharTokenizer, tokenizer_from_dict
from aigc_cli.errors import ConfigError

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan")
SIZES = ("small", "large")
RELATIONS = ("above", "below", "to the left of", "to the right of")
ALPHABET = " ,abcdefghijklmnopqrstuvwxyz"
PAD, START = 0, 1

#: the attribute columns of a scene, in this order (slot 1 is the top or left object)
COLUMNS = ("count", "layout", "shape1", "colour1", "size1", "shape2", "colour2", "size2")
CHOICES = {"count": 2, "layout": 2, "shape1": 3, "colour1": 6, "size1": 2, "shape2": 3,
           "colour2": 6, "size2": 2}  # fmt: skip
VERTICAL, HORIZONTAL = 0, 1


@dataclass(frozen=True)
class Thing:
    size: int
    colour: int
    shape: int

    def words(self) -> str:
        return f"{SIZES[self.size]} {COLOURS[self.colour]} {SHAPES[self.shape]}"


@dataclass(frozen=True)
class Scene:
    """One or two things; with two, `first` is the top (layout 0) or left (layout 1) one."""

    first: Thing
    second: Thing | None = None
    layout: int = VERTICAL

    def row(self) -> list[int]:
        """The scene as the COLUMNS (a missing second thing and layout are 0)."""
        b = self.second or Thing(0, 0, 0)
        f = self.first
        return [int(self.second is not None), self.layout if self.second else 0,
                f.shape, f.colour, f.size, b.shape, b.colour, b.size]  # fmt: skip

    @classmethod
    def from_row(cls, row: list[int]) -> Scene:
        first = Thing(row[4], row[3], row[2])
        if not row[0]:
            return cls(first)
        return cls(first, Thing(row[7], row[6], row[5]), row[1])


def describe(scene: Scene, phrasing: int) -> str:
    """A caption of the scene; `phrasing` picks one of a few wordings (and, for two things,
    which of them the caption names first)."""
    if scene.second is None:
        t = scene.first
        forms = (f"a {t.words()}", f"{t.words()}",
                 f"a {COLOURS[t.colour]} {SHAPES[t.shape]}, {SIZES[t.size]}")  # fmt: skip
        return forms[phrasing % len(forms)]
    a, b = scene.first, scene.second
    forward = RELATIONS[0] if scene.layout == VERTICAL else RELATIONS[2]
    backward = RELATIONS[1] if scene.layout == VERTICAL else RELATIONS[3]
    if phrasing % 2 == 0:
        return f"a {a.words()} {forward} a {b.words()}"
    return f"a {b.words()} {backward} a {a.words()}"


_THING = rf"(?:an? |one )?({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})"
_SPLIT = rf"(?:an? |one )?({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}), ({'|'.join(SIZES)})"


def parse(caption: str) -> Scene:
    """The scene a caption of the grammar asks for; anything else is one ConfigError line."""
    text = " ".join(caption.lower().replace(".", " ").split())
    thing = re.fullmatch(_THING, text)
    if thing:
        return Scene(_thing(*thing.groups()))
    split = re.fullmatch(_SPLIT, text)
    if split:
        colour, shape, size = split.groups()
        return Scene(_thing(size, colour, shape))
    pair = re.fullmatch(rf"{_THING} ({'|'.join(RELATIONS)}) {_THING}", text)
    if pair:
        g = pair.groups()
        a, relation, b = _thing(*g[:3]), g[3], _thing(*g[4:])
        if relation in ("below", "to the right of"):
            a, b = b, a
        layout = VERTICAL if relation in ("above", "below") else HORIZONTAL
        return Scene(a, b, layout)
    raise ConfigError(
        f"bad value for 'prompt': {caption!r} is not a caption this model was trained on",
        hint="name one or two things as '[a] <size> <colour> <shape>' joined by above, below, "
        f"to the left of or to the right of; sizes: {', '.join(SIZES)}; colours: "
        f"{', '.join(COLOURS)}; shapes: {', '.join(SHAPES)}",
    )


def _thing(size: str, colour: str, shape: str) -> Thing:
    return Thing(SIZES.index(size), COLOURS.index(colour), SHAPES.index(shape))


def caption_tokenizer() -> CharTokenizer:
    return CharTokenizer(ALPHABET)


def follows_grammar(captions: dict[str, Any]) -> bool:
    """Whether a caption spec is this grammar's (its captions parse into scenes that the
    reader judges) rather than a folder's free text. Specs written before the "grammar" key
    are all the grammar's: they carry its columns."""
    return bool(captions.get("grammar")) or "columns" in captions


def caption_ids(caption: str, captions: dict[str, Any] | None = None) -> list[int]:
    """START, then the caption's tokens shifted past PAD and START. The grammar's captions are
    read lower-case, one id a character; a caption folder's (`captions`, its spec) as UTF-8
    bytes, so any prompt encodes."""
    if captions is None or follows_grammar(captions):
        return [START] + [t + 2 for t in caption_tokenizer().encode(caption.lower())]
    tok = tokenizer_from_dict(captions["tokenizer"])
    return [START] + [t + 2 for t in tok.encode(caption)]


def decode_captions(ids: Tensor, captions: dict[str, Any]) -> list[str]:
    """The text of (N, L) caption ids, as `caption_ids` wrote them (the grammar's lower-case)."""
    tok = caption_tokenizer() if follows_grammar(captions) else tokenizer_from_dict(
        captions["tokenizer"])  # fmt: skip
    rows = ids.tolist()
    return [tok.decode([t - 2 for t in row[1:] if t > START]) for row in rows]


def encode_captions(captions: list[str], length: int,
                    spec: dict[str, Any] | None = None) -> Tensor:  # fmt: skip
    """(N, length) ids: each caption's `caption_ids`, then PAD; longer than the encoder's
    window is one line (a prompt; a caption folder cuts its captions before)."""
    out = torch.full((len(captions), length), PAD, dtype=torch.long)
    for i, caption in enumerate(captions):
        ids = caption_ids(caption, spec)
        if len(ids) > length:
            raise ConfigError(
                f"bad value for 'prompt': {len(ids) - 1} tokens; the text encoder reads "
                f"at most {length - 1}",
                hint="shorten the prompt",
            )
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def caption_spec(length: int) -> dict[str, Any]:
    """What a model needs to read captions, kept in the data spec (and so in checkpoints)."""
    return {"grammar": "shapes", "tokenizer": caption_tokenizer().to_dict(), "length": length,
            "vocab": len(ALPHABET) + 2, "columns": list(COLUMNS),
            "choices": dict(CHOICES)}  # fmt: skip


#: the parts of a verdict and the columns each reads (slot 2 only for two things)
PARTS = {"count": ("count",), "relation": ("layout",), "shape": ("shape1", "shape2"),
         "colour": ("colour1", "colour2"), "size": ("size1", "size2")}  # fmt: skip


def verdicts(read: Tensor, wanted: Tensor) -> dict[str, Tensor]:
    """Per image (B,) bools: each part of the wanted scene (B, 8) read right in `read`
    (B, 8), "all": every part, and "swapped": a two-thing scene's two colours drawn on the
    wrong things. A one-thing scene has no relation and no second thing."""
    columns = ("count", "layout", "shape1", "colour1", "size1", "shape2", "colour2", "size2")
    two = wanted[:, 0] == 1
    same = read == wanted  # (B, 8)
    out: dict[str, Tensor] = {}
    for part, cols in PARTS.items():
        ok = torch.ones_like(two)
        for c in cols:
            right = same[:, columns.index(c)]
            needed = two if c in ("layout", "shape2", "colour2", "size2") else torch.ones_like(two)
            ok = ok & (right | ~needed)
        out[part] = ok
    out["all"] = torch.stack(list(out.values())).all(0)
    # Attribute binding: two different colours both drawn, each on the other's thing.
    c1, c2 = columns.index("colour1"), columns.index("colour2")
    out["swapped"] = (two & (wanted[:, c1] != wanted[:, c2]) & (read[:, c1] == wanted[:, c2])
                      & (read[:, c2] == wanted[:, c1]))  # fmt: skip
    return out
