"""Procedural four-voice tunes (built in, offline, no extra needed): diatonic triads in C major,
one chord every one to four steps, voiced bass-tenor-alto-soprano with a soprano line that moves
by step. A quick, deterministic stand-in for the chorales, for tests and first runs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aigc_cli.config import check
from aigc_cli.data.base import DataModule
from aigc_cli.data.music import GRIDS, MusicConfig, Piece, music_data, piece_from_notes
from aigc_cli.registry import DATASETS
from aigc_cli.results.midi import Note

SCALE = [0, 2, 4, 5, 7, 9, 11]  # C major
PROGRESSION = {0: [3, 4, 5], 1: [4], 3: [4, 0], 4: [0, 5], 5: [1, 3]}  # degree → next degrees


@dataclass
class TunesConfig(MusicConfig):
    name: str = "tunes"
    pieces: int = 200  # pieces generated (split about 60/20/20 by name)
    length: int = 32  # quarter notes per piece
    seed: int = 7  # the tunes are a pure function of this seed and the sizes


@DATASETS.register("tunes", config=TunesConfig)
def tunes(cfg: TunesConfig) -> DataModule:
    """Procedural four-voice chord progressions in C major (built in): a quick stand-in."""
    check(cfg.pieces >= 10, "dataset.pieces", f"{cfg.pieces} must be >= 10")
    check(cfg.length >= 4, "dataset.length", f"{cfg.length} must be >= 4")
    g = torch.Generator().manual_seed(cfg.seed)
    pieces = [tune(f"tune{i:05d}", cfg, g) for i in range(cfg.pieces)]
    return music_data([p for p in pieces if p is not None], cfg, "the tunes")


def tune(name: str, cfg: TunesConfig, g: torch.Generator) -> Piece | None:
    notes: list[Note] = []
    degree, t, top = 0, 0, 72
    while t < cfg.length:
        hold = min(int(torch.randint(1, 5, (1,), generator=g)), cfg.length - t)
        triad = [SCALE[(degree + k) % 7] + 12 * ((degree + k) // 7) for k in (0, 2, 4)]
        bass = 36 + triad[0]
        # the soprano: the chord tone nearest the previous one
        top = min((60 + c + 12 * o for c in triad for o in (0, 1)), key=lambda p: abs(p - top))
        for voice, pitch in enumerate((bass, 48 + triad[1] % 12, 60 + triad[2] % 12, top)):
            notes.append(Note(pitch, float(t), float(hold), voice=voice))
        nexts = PROGRESSION.get(degree, [0])
        degree = nexts[int(torch.randint(len(nexts), (1,), generator=g))]
        t += hold
    return piece_from_notes(name, notes, GRIDS[cfg.grid], transpose=False)
