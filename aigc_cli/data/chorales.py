"""Bach's chorales from the corpus that music21 ships (the `music` extra), built at run time from
the installed copy and cached: the four voices on the grid, as in the JSB Chorales benchmark."""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from torch import Tensor

from aigc_cli.console import console
from aigc_cli.data.base import DataModule
from aigc_cli.data.cache import cached
from aigc_cli.data.music import GRIDS, VOICES, MusicConfig, Piece, music_data, piece_from_notes
from aigc_cli.errors import ConfigError, DataError, missing_music
from aigc_cli.registry import DATASETS
from aigc_cli.results.midi import Note

CHORALES_VERSION = 3  # bump when the parsing below changes what it draws from the corpus


@dataclass
class ChoralesConfig(MusicConfig):
    name: str = "chorales"


@DATASETS.register("chorales", config=ChoralesConfig)
def chorales(cfg: ChoralesConfig) -> DataModule:
    """Bach's four-part chorales (music21's corpus, offline): piano rolls, frames or tokens."""
    check_grid(cfg)
    music21 = require_music21()
    key = {"grid": cfg.grid, "transpose": cfg.transpose, "music21": music21.__version__}
    tensors = cached("chorales", key, CHORALES_VERSION, lambda: parse_corpus(cfg))
    names = json.loads(bytes(tensors["names"].tolist()).decode())
    lengths = tensors["lengths"].tolist()
    voices = tensors["voices"].bool().unflatten(0, (VOICES, -1)).split(lengths, dim=2)
    pieces = [Piece(n, v.any(0), v) for n, v in zip(names, voices, strict=True)]
    return music_data(pieces, cfg, "the chorales")


def check_grid(cfg: MusicConfig) -> None:
    if cfg.grid not in GRIDS:
        raise ConfigError(f"bad value for 'dataset.grid': '{cfg.grid}'; choose from: "
                          f"{', '.join(GRIDS)}")  # fmt: skip


def require_music21():
    # Imported on use: music21 belongs to the optional `music` extra.
    try:
        import music21
    except ImportError as e:
        raise missing_music("dataset=chorales") from e
    return music21


def parse_corpus(cfg: MusicConfig) -> dict[str, Tensor]:
    """Every four-part chorale of the installed corpus as one (4 × 88, total steps) roll of its
    voices, bass first (the piece's roll is their union), with each piece's length and name
    (names as UTF-8 JSON bytes: the cache holds tensors only)."""
    # Deferred: music21 belongs to the optional `music` extra.
    from music21 import corpus

    files = sorted(corpus.chorales.Iterator(returnType="filename"))
    pieces: list[Piece] = []
    with console.status(f"reading {len(files)} chorales from music21's corpus (once; cached)"):
        for name in files:
            notes = chorale_notes(corpus.parse(name))
            piece = piece_from_notes(name, notes, GRIDS[cfg.grid], cfg.transpose) if notes else None
            if piece is not None:
                pieces.append(piece)
    if not pieces:
        raise DataError("music21's corpus holds no four-part chorale", hint="reinstall music21")
    return {
        "voices": torch.cat([p.voices.flatten(0, 1) for p in pieces], dim=1).to(torch.uint8),
        "lengths": torch.tensor([p.roll.shape[1] for p in pieces]),
        "names": torch.tensor(list(json.dumps([p.name for p in pieces]).encode())),
    }


def chorale_notes(score) -> list[Note]:
    """The notes of a chorale's four voices (empty for a chorale in another number of parts),
    in quarter notes from its first beat, each with its voice (music21 lists the parts soprano
    first; voices count from the bass); ties are merged into one note by music21."""
    if len(score.parts) != VOICES:
        return []
    notes = []
    for i, part in enumerate(score.parts):
        for n in part.stripTies().flatten().notes:
            for p in n.pitches:  # a chord in one voice: each of its pitches
                duration = float(n.quarterLength)
                if duration > 0:
                    notes.append(Note(int(p.midi), float(n.offset), duration,
                                      voice=VOICES - 1 - i))  # fmt: skip
    return notes
