"""Any folder of MIDI files (searched recursively), read with symusic (the `music` extra): every
non-drum note on the grid, each file one piece."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aigc_cli.console import console
from aigc_cli.data.base import DataModule
from aigc_cli.data.chorales import check_grid
from aigc_cli.data.music import GRIDS, MusicConfig, music_data, piece_from_notes
from aigc_cli.errors import DataError, missing_music
from aigc_cli.registry import DATASETS
from aigc_cli.results.midi import Note

SUFFIXES = (".mid", ".midi")


@dataclass
class MidiFolderConfig(MusicConfig):
    name: str = "midi_folder"
    path: str | None = None  # folder of .mid/.midi files, searched recursively


@DATASETS.register("midi_folder", config=MidiFolderConfig)
def midi_folder(cfg: MidiFolderConfig) -> DataModule:
    """Your MIDI files (dataset.path=<folder>): piano rolls, frames or tokens."""
    check_grid(cfg)
    if not cfg.path:
        raise DataError("dataset=midi_folder needs a folder", hint="pass dataset.path=<folder>")
    folder = Path(cfg.path).expanduser()
    if not folder.is_dir():
        raise DataError(f"MIDI folder not found: {folder}", hint="check dataset.path")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
    pieces, skipped = [], 0
    for f in files:
        notes = read_notes(f)
        piece = piece_from_notes(str(f.relative_to(folder)), notes, GRIDS[cfg.grid],
                                 cfg.transpose) if notes else None  # fmt: skip
        if piece is None:
            skipped += 1
        else:
            pieces.append(piece)
    if skipped:
        console.print(f"[yellow]warning:[/] skipped {skipped} of {len(files)} MIDI files in "
                      f"{folder}: unreadable, or no note on the piano's keys")  # fmt: skip
    if not pieces:
        raise DataError(
            f"no usable MIDI file in {folder} ({len(files)} .mid/.midi files found)",
            hint="point dataset.path at a folder of MIDI files with notes",
        )
    return music_data(pieces, cfg, str(folder))


def read_notes(path: Path) -> list[Note]:
    """The non-drum notes of a MIDI file in quarter notes; [] when it cannot be read."""
    # Imported on use: symusic belongs to the optional `music` extra.
    try:
        from symusic import Score
    except ImportError as e:
        raise missing_music("dataset=midi_folder") from e
    try:
        score = Score(str(path), ttype="quarter")
    except Exception:  # symusic raises its own error types for malformed files
        return []
    return [Note(int(n.pitch), float(n.time), float(n.duration), int(n.velocity) or 80)
            for t in score.tracks if not t.is_drum for n in t.notes if n.duration > 0]  # fmt: skip
