"""Music: piano rolls (pitch × time on a grid), written as a folder per draw: one standard MIDI
file and one WAV preview per sample, and a PNG of the piano rolls. Held notes are the runs of
consecutive sounding steps of a pitch (the frame representation cannot tell a held note from a
repeated one, and merging them is the usual reading)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from aigc_cli.atomic import write_bytes
from aigc_cli.results.audio import SAMPLE_RATE, render, wav_bytes
from aigc_cli.results.base import Board, SampleResult
from aigc_cli.results.fluidsynth import render_midi
from aigc_cli.results.images import save_grid, to_grid
from aigc_cli.results.midi import Note, midi_bytes

ROLL_SCALE = 4  # pixels per step and per semitone in the piano-roll PNG
GRID_TOLERANCE = 1e-6  # of a grid step
PIECES = 4  # pieces drawn when no count is given (each a MIDI file, a WAV and a piano roll)


@dataclass(kw_only=True)
class Music(SampleResult):
    rolls: Tensor  # (N, pitches, steps) bool: row 0 is MIDI pitch `low`
    low: int = 21  # MIDI pitch of row 0 (21 = A0, the piano's lowest key)
    step: float = 1.0  # quarter notes per grid step (1 = quarter grid, 0.25 = sixteenths)
    tempo: float = 90.0  # quarter notes per minute, for the MIDI files and the audio
    soundfont: str | None = None  # FluidSynth renders the audio with it; None = built-in synth
    voices: Tensor | None = None  # (N, 4, pitches, steps) bool, bass first: four-part samples

    suffix = ""  # a folder: <stem>/00.mid, 00.wav, ..., rolls.png

    def __len__(self) -> int:
        return int(self.rolls.shape[0])

    @property
    def images(self) -> Tensor:
        """The rolls as (N, 1, pitches, steps) images in [0, 1], row 0 the lowest pitch, as
        piano-roll data hand them to the image families (and sample-quality metrics take)."""
        return self.rolls.float().unsqueeze(1)

    def notes(self, i: int) -> list[Note]:
        """Sample i's notes; four-part samples' notes carry their voice."""
        if self.voices is None:
            return roll_to_notes(self.rolls[i], self.low, self.step)
        notes = [n._replace(voice=v) for v, roll in enumerate(self.voices[i])
                 for n in roll_to_notes(roll, self.low, self.step)]  # fmt: skip
        return sorted(notes, key=lambda n: (n.start, n.pitch, n.voice))

    def audio(self, i: int) -> Tensor:
        """Sample i rendered to mono audio in [-1, 1] at SAMPLE_RATE."""
        return self._render(self.notes(i))

    def _render(self, notes: list[Note]) -> Tensor:
        if self.soundfont is None:
            return render(notes, self.tempo)
        seconds = max((n.start + n.duration for n in notes), default=0.0) * 60 / self.tempo
        return render_midi(midi_bytes(notes, self.tempo), self.soundfont, SAMPLE_RATE, seconds)

    def picture(self) -> Tensor:
        """The piano rolls as one image grid, high pitches at the top (C, H, W) in [0, 1]."""
        return to_grid(roll_images(self.rolls), nrow=1)

    def picture_of(self, i: int) -> Tensor:
        """Sample i's piano roll as an image, as in `picture`."""
        return to_grid(roll_images(self.rolls[i : i + 1]), nrow=1)

    def write(self, stem: Path) -> Path:
        folder = Path(f"{stem}{self.suffix}")
        for i in range(len(self)):
            notes = self.notes(i)
            write_bytes(folder / f"{i:02d}.mid", midi_bytes(notes, self.tempo))
            write_bytes(folder / f"{i:02d}.wav", wav_bytes(self._render(notes)))
        save_grid(roll_images(self.rolls), folder / "rolls.png", nrow=1)
        return folder

    def log(self, board: Board, tag: str, step: int) -> None:
        super().log(board, tag, step)
        board.image(f"{tag}/rolls", self.picture(), step)
        for i in range(min(len(self), 2)):
            board.audio(f"{tag}/audio_{i}", self.audio(i), step, SAMPLE_RATE)

    def describe(self) -> str:
        notes = sum(len(self.notes(i)) for i in range(len(self)))
        by = "aigc's synthesiser"
        if self.soundfont:
            by = f"FluidSynth with {Path(self.soundfont).name}"
        return (f"{len(self)} pieces, {notes} notes: MIDI files and WAV previews (rendered by "
                f"{by}); listen to the .wav")  # fmt: skip


def note_spans(roll: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The notes of a (pitches, steps) roll, each run of sounding steps of one pitch one note:
    their rows, first steps and lengths in steps, ordered by row, then by step."""
    padded = torch.nn.functional.pad(roll.bool().cpu().to(torch.int8), (1, 1))  # (P, T + 2)
    change = padded[:, 1:] - padded[:, :-1]  # +1 at an onset, -1 one past the end
    starts = (change == 1).nonzero()  # (notes, 2): row, step
    ends = (change == -1).nonzero()  # the same order, so the i-th end closes the i-th start
    return starts[:, 0], starts[:, 1], ends[:, 1] - starts[:, 1]


def roll_to_notes(roll: Tensor, low: int, step: float) -> list[Note]:
    """(pitches, steps) bool → notes, each run of sounding steps of one pitch one note."""
    spans = zip(*(t.tolist() for t in note_spans(roll)), strict=True)
    notes = [Note(low + row, first * step, length * step) for row, first, length in spans]
    return sorted(notes, key=lambda n: (n.start, n.pitch))


def notes_to_roll(notes: list[Note], low: int, pitches: int, steps: int, step: float) -> Tensor:
    """Notes → (pitches, steps) bool: step k holds the notes sounding at time k·step, as the JSB
    Chorales were sampled (a note shorter than a step that spans no grid point is left out, so
    a passing eighth does not add a fifth note to a four-part frame); pitches outside
    [low, low + pitches) are dropped."""
    roll = torch.zeros(pitches, steps, dtype=torch.bool)
    for n in notes:
        row = n.pitch - low
        if not 0 <= row < pitches:
            continue
        # the first and one past the last grid point in [start, end), with a tolerance for
        # durations such as 1/3 that floats cannot hold exactly
        first = math.ceil(n.start / step - GRID_TOLERANCE)
        last = math.ceil((n.start + n.duration) / step - GRID_TOLERANCE)
        roll[row, max(first, 0) : min(last, steps)] = True
    return roll


def roll_images(rolls: Tensor) -> Tensor:
    """(N, P, T) rolls → (N, 1, P·s, T·s) images, high pitches at the top, enlarged."""
    img = rolls.float().flip(1).unsqueeze(1)  # (N, 1, P, T)
    return img.repeat_interleave(ROLL_SCALE, 2).repeat_interleave(ROLL_SCALE, 3)
