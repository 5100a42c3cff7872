"""Music data shared by the music sources (chorales, MIDI folders): pieces as piano rolls on a
grid, the split, transposition to C, and the representations the families train on.

    roll          (1, pitches, window) images, pitch × time, 0/1: VAE, GAN, diffusion, flow
    frames        (window, 88) frame sequences with their lengths (and, for four-part
                  pieces, each voice's key at each step): the frame models
    voices        (window, 4 × 88) the same with each voice on its own keys, bass first
                  (four-part data): samples keep their voices
    frame_tokens  text: each frame its sounding pitches low to high, then a newline, so a
                  transformer over these tokens is an exact likelihood model of each frame
    events        text: each note as its pitch and duration where it starts, a newline per grid
                  step (MIDI-like events on the grid); BPE works on top as on any text

The protocol follows the JSB Chorales benchmark (Boulanger-Lewandowski et al., ICML 2012) as far
as a corpus allows: a quarter-note grid (sixteenths as an option), pieces transposed to C major
or C minor, pitches on the 88 piano keys, a fixed split (by a hash of each piece's name, about
60/20/20). The canonical JSB split is not rebuilt: figures are on "our split"."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from aigc_cli.config import check
from aigc_cli.data.base import (
    Batch,
    BatchIterator,
    DataModule,
    DataSpec,
    TensorData,
    _EpochIterator,
)
from aigc_cli.data.music_features import feature_sets, mean_overlap
from aigc_cli.data.text import TextData, make_tokenizer
from aigc_cli.errors import ConfigError, DataError
from aigc_cli.results import Music, SampleResult
from aigc_cli.results.midi import Note
from aigc_cli.results.music import notes_to_roll, roll_to_notes

PIANO_LOW, KEYS = 21, 88  # A0 .. C8
GRIDS = {"quarter": 1.0, "sixteenth": 0.25}  # quarter notes per grid step
REPRESENTATIONS = ("roll", "frames", "voices", "frame_tokens", "events")
VOICES = 4  # four-part data: bass, tenor, alto, soprano
SPLITS = ("train", "valid", "test")
MODES = ("major", "minor")  # the labels of piano-roll windows
ROLL_LOW, ROLL_PITCHES = 36, 48  # roll images: C2 .. B5, the range of four-part chorales
PITCH_CHAR = 33  # frame_tokens/events: pitch p is chr(33 + p - 21), "!" .. "x"
DURATION_CHAR = 0xC0  # events: a duration of d grid steps is chr(0xC0 + d), "À"...
MAX_DURATION = 32  # events: longer notes are cut to this many grid steps
STEP = "\n"  # ends a frame (frame_tokens) or a grid step (events)
PIECE = "|"  # ends a piece
# Krumhansl-Kessler key profiles, C major and C minor (Krumhansl 1990)
MAJOR = [6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88]
MINOR = [6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17]


C_MAJOR = {0, 2, 4, 5, 7, 9, 11}
C_MINOR = {0, 2, 3, 5, 7, 8, 10, 11}  # natural minor with the raised seventh of harmonic minor


# Four-part writing's usual ranges, bass to soprano (MIDI pitches, inclusive): E2-C4, C3-G4,
# G3-C5, C4-G5, as harmony textbooks give them.
VOICE_RANGES = ((40, 60), (48, 67), (55, 72), (60, 79))


def voice_range_violations(roll: Tensor, low: int) -> tuple[int, int]:
    """Of the frames of a (pitches, steps) roll that hold exactly four notes, read low to high
    as bass, tenor, alto and soprano: how many put a voice outside its range, and how many
    there are. (A roll keeps no voices, so crossings cannot be told from it.)"""
    frames = roll.t()[roll.sum(0) == len(VOICE_RANGES)]  # (n, pitches), four notes each
    if not len(frames):
        return 0, 0
    rows = torch.arange(roll.shape[0]).expand_as(frames)
    pitches = rows[frames.bool()].view(-1, len(VOICE_RANGES)) + low  # low to high
    lo, hi = torch.tensor(VOICE_RANGES).t()
    bad = ((pitches < lo) | (pitches > hi)).any(1)
    return int(bad.sum()), len(frames)


def voice_crossings(voices: Tensor) -> tuple[int, int]:
    """Of the steps of a (VOICES, pitches, steps) roll of voices, bass first, at which every
    voice sings exactly one note: how many have a voice above the one over it (the tenor above
    the alto, say; a unison is no crossing), and how many there are."""
    one_each = (voices.sum(1) == 1).all(0)  # (steps,)
    if not one_each.any():
        return 0, 0
    pitch = voices[:, :, one_each].float().argmax(1)  # (VOICES, n): each voice's row
    crossed = (pitch[:-1] > pitch[1:]).any(0)
    return int(crossed.sum()), int(one_each.sum())


def music_stats(
    rolls: list[Tensor], low: int, voices: list[Tensor] | None = None
) -> dict[str, float]:
    """Statistics of pieces, each a (pitches, steps) roll, averaged over the pieces: notes per
    frame, the share of empty frames, the share of sounding note-steps in C major or C minor
    (whichever fits the piece better: the data are transposed to C); the entropy in bits of the
    pitch-class histogram of all pieces together; and of all four-note frames together, the
    share with a voice out of its range (VOICE_RANGES). With each piece's voices, also the
    share of the steps where each voice sings one note that cross two voices."""
    per_piece, pooled, ranges = [], torch.zeros(12), [0, 0]
    for roll in rolls:
        roll = roll.bool().cpu()
        frames = roll.sum(0).float()  # (steps,) notes sounding per frame
        classes = (torch.arange(roll.shape[0]) + low) % 12
        hist = torch.zeros(12).index_add_(0, classes, roll.sum(1).float())
        pooled += hist
        total = max(hist.sum().item(), 1.0)
        key = max(hist[sorted(C_MAJOR)].sum().item(), hist[sorted(C_MINOR)].sum().item())
        per_piece.append([frames.mean().item(), (frames == 0).float().mean().item(), key / total])
        bad, four = voice_range_violations(roll, low)
        ranges[0] += bad
        ranges[1] += four
    means = torch.tensor(per_piece).mean(0).tolist()
    p = pooled / pooled.sum().clamp(min=1)
    entropy = -(p[p > 0] * p[p > 0].log2()).sum().item()
    out = {"notes_per_frame": means[0], "empty_frames": means[1], "in_key": means[2],
           "pitch_class_entropy": entropy,
           "voice_range_violations": ranges[0] / max(ranges[1], 1)}  # fmt: skip
    if voices is not None:
        counts = [voice_crossings(v) for v in voices]
        out["voice_crossings"] = sum(c for c, _ in counts) / max(sum(n for _, n in counts), 1)
    return out


class MusicStats:
    """Sample statistics of music data beside the same statistics of its test pieces."""

    metric_samples = 16
    reference: dict[str, float]
    features: dict[str, Tensor]  # Yang & Lerch's features of the test pieces
    pieces: dict[str, list[Piece]]  # each split's pieces, the source of prompts

    def set_reference(
        self, test: list[Tensor], valid: list[Tensor], low: int, voices: list[Tensor] | None = None
    ) -> None:
        """The test pieces' statistics (with their voices, if given) and features, and as the
        ceiling of the overlapping area, the same figure for the validation pieces (when there
        are two or more)."""
        self.reference = music_stats(test, low, voices)
        self.features = feature_sets(test, low)
        if len(valid) > 1:
            ceiling = mean_overlap(self.features, feature_sets(valid, low))
            self.reference["overlap_area"] = ceiling["mean"]

    def sample_metrics(self, samples: SampleResult) -> dict[str, float]:
        assert isinstance(samples, Music), "music data gets music samples"
        # pieces of different lengths come padded with silence: trailing silence is not theirs
        rolls = [trim_silence(r) for r in samples.rolls]
        voices = None if samples.voices is None else list(samples.voices)
        stats = music_stats(rolls, samples.low, voices)
        overlap = mean_overlap(self.features, feature_sets(rolls, samples.low))
        stats["overlap_area"] = overlap["mean"]
        return {**{f"samples_{k}": v for k, v in stats.items()},
                **{f"real_{k}": v for k, v in self.reference.items()}}  # fmt: skip


@dataclass
class MusicConfig:
    representation: str = "roll"  # roll | frames | voices | frame_tokens | events
    grid: str = "quarter"  # quarter | sixteenth: the length of one time step
    transpose: bool = True  # each piece to C major or C minor (estimated key)
    window: int = 48  # roll: steps per image (square with 48 pitches); frames: frames per window
    block_size: int = 256  # frame_tokens / events: tokens per training window
    tokenizer: str = "char"  # frame_tokens / events: char (one token per symbol) | bpe
    vocab_size: int = 0  # bpe: tokens in the vocabulary (more than 256); others: 0
    tempo: float = 90.0  # quarter notes per minute of the MIDI files and audio written
    augment: int = 0  # frames/roll: shift training windows by up to ± this many semitones


@dataclass
class Piece:
    name: str
    roll: Tensor  # (88, steps) bool, row 0 = A0
    voices: Tensor | None = None  # (VOICES, 88, steps) bool, bass first: four-part data only

    @property
    def split(self) -> str:
        """train, valid or test, fixed by the name alone (about 60/20/20)."""
        bucket = int(hashlib.sha1(self.name.encode()).hexdigest(), 16) % 10
        return SPLITS[0] if bucket < 6 else SPLITS[1] if bucket < 8 else SPLITS[2]


def piece_from_notes(name: str, notes: list[Note], step: float, transpose: bool) -> Piece | None:
    """A piece on the grid (None when no note lands on the piano's keys)."""
    if transpose and notes:
        shift = transposition(notes)
        notes = [n._replace(pitch=n.pitch + shift) for n in notes]
    steps = max((round((n.start + n.duration) / step) for n in notes), default=0)
    if steps == 0:
        return None
    roll = notes_to_roll(notes, PIANO_LOW, KEYS, steps, step)
    voices = None
    if notes and {n.voice for n in notes} <= set(range(VOICES)):
        voices = torch.stack([notes_to_roll([n for n in notes if n.voice == v], PIANO_LOW, KEYS,
                                            steps, step) for v in range(VOICES)])  # fmt: skip
    return Piece(name, roll, voices) if roll.any() else None


def transposition(notes: list[Note]) -> int:
    """Semitones that take the piece's key (Krumhansl-Schmuckler on its duration-weighted
    pitch classes) to C major or C minor, within a tritone either way."""
    hist = torch.zeros(12)
    for n in notes:
        hist[n.pitch % 12] += n.duration
    _, tonic = estimate_key(hist)
    return (-tonic + 6) % 12 - 6


def estimate_key(hist: Tensor) -> tuple[int, int]:
    """(mode, tonic) of a 12-bin pitch-class histogram (C = 0) by Krumhansl-Schmuckler: the
    major (mode 0) or minor (mode 1) profile, on the tonic, that correlates best with it."""
    best, key = -2.0, (0, 0)
    for mode, profile in enumerate((MAJOR, MINOR)):
        p = torch.tensor(profile)
        for k in range(12):
            r = torch.corrcoef(torch.stack([hist.float(), p.roll(k)]))[0, 1].item()
            if r > best:
                best, key = r, (mode, k)
    return key


def mode_of(roll: Tensor, low: int) -> int:
    """0 for a piece in a major key, 1 for minor, from its (pitches, steps) roll's sounding
    steps; the label a music classifier learns, whose features the Fréchet distance uses."""
    classes = (torch.arange(roll.shape[0]) + low) % 12
    hist = torch.zeros(12).index_add_(0, classes, roll.float().sum(1).cpu())
    return estimate_key(hist)[0]


def bar_steps(grid: str) -> int:
    """Grid steps in one 4/4 bar."""
    return round(4 / GRIDS[grid])


def music_data(pieces: list[Piece], cfg: MusicConfig, source: str) -> DataModule:
    """The representation `cfg` asks for, from the pieces of every split."""
    check(cfg.representation in REPRESENTATIONS, "dataset.representation",
          f"'{cfg.representation}'; choose from: {', '.join(REPRESENTATIONS)}")  # fmt: skip
    check(cfg.grid in GRIDS, "dataset.grid", f"'{cfg.grid}'; choose from: {', '.join(GRIDS)}")
    bar = bar_steps(cfg.grid)
    if cfg.representation in ("roll", "frames", "voices"):
        check(cfg.window >= bar, "dataset.window",
              f"{cfg.window} steps is shorter than one 4/4 bar on the {cfg.grid} grid "
              f"({bar} steps); use dataset.window={bar} or more")  # fmt: skip
    check(cfg.tempo > 0, "dataset.tempo", "must be > 0")
    check(0 <= cfg.augment <= 12, "dataset.augment", f"{cfg.augment} must be in [0, 12]")
    parts = {s: [p for p in pieces if p.split == s] for s in SPLITS}
    for split in ("train", "test"):
        if not parts[split]:
            raise DataError(
                f"{source} has no piece in its {split} split ({len(pieces)} pieces in all)",
                hint="use more pieces: the split takes about 60/20/20 of them by name",
            )
    music = {
        "representation": cfg.representation, "step": GRIDS[cfg.grid], "tempo": cfg.tempo,
        "low": PIANO_LOW, "pitches": KEYS, "pieces": {s: len(parts[s]) for s in SPLITS},
        "transpose": cfg.transpose,
    }  # fmt: skip
    make = {"roll": roll_data, "frames": frame_data, "voices": frame_data}.get(cfg.representation)
    data = make(parts, cfg, music) if make else token_data(parts, cfg, music, source)
    data.pieces = parts
    return data


def roll_image_spec() -> DataSpec:
    """The shape of the roll representation's images, which a music classifier reads."""
    return DataSpec(kind="image", shape=[1, ROLL_PITCHES, ROLL_PITCHES],
                    extra={"music": {"representation": "roll"}})  # fmt: skip


def roll_windows(roll: Tensor, low: int, window: int = ROLL_PITCHES) -> Tensor:
    """A piece's (pitches, steps) roll whose row 0 is MIDI pitch `low`, as the roll
    representation's images: (N, 1, ROLL_PITCHES, window) uint8 0/255, the rows of C2..B5, one
    image per `window` steps (the last padded with silence)."""
    lo = ROLL_LOW - low
    r = roll[max(lo, 0) : lo + ROLL_PITCHES].bool()
    if lo < 0:  # a roll that starts above C2: its missing low rows are silent
        r = torch.cat([torch.zeros(-lo, r.shape[1], dtype=torch.bool), r])
    r = torch.nn.functional.pad(r, (0, 0, 0, ROLL_PITCHES - r.shape[0]))
    n = -(-r.shape[1] // window)
    padded = torch.zeros(ROLL_PITCHES, n * window, dtype=torch.uint8)
    padded[:, : r.shape[1]] = r.to(torch.uint8) * 255
    return padded.view(ROLL_PITCHES, n, window).permute(1, 0, 2).unsqueeze(1).contiguous()


def roll_data(parts: dict[str, list[Piece]], cfg: MusicConfig, music: dict) -> TensorData:
    """Square images: ROLL_PITCHES pitches × `window` steps, one per window of each piece (the
    last padded with silence)."""
    square = f"{cfg.window}: roll images are square, {ROLL_PITCHES} pitches × {ROLL_PITCHES} steps"
    check(cfg.window == ROLL_PITCHES, "dataset.window", square)

    def images(pieces: list[Piece]) -> tuple[Tensor, Tensor]:
        """(N, 1, pitches, steps) uint8 0/255 windows, and each one's piece's mode."""
        out = [roll_windows(p.roll, PIANO_LOW, cfg.window) for p in pieces]
        modes = [torch.full((len(w),), mode_of(p.roll, PIANO_LOW)) for w, p in zip(out, pieces,
                 strict=True)]  # fmt: skip
        if not out:
            empty = torch.zeros(0, 1, ROLL_PITCHES, cfg.window, dtype=torch.uint8)
            return empty, torch.zeros(0, dtype=torch.long)
        return torch.cat(out), torch.cat(modes).long()

    train, test = images(parts["train"]), images(parts["test"])
    music = {**music, "low": ROLL_LOW, "pitches": ROLL_PITCHES}
    # labelled by mode: a classifier trained on them gives the features of a Fréchet distance
    spec = DataSpec(kind="image", shape=[1, ROLL_PITCHES, cfg.window], num_classes=len(MODES),
                    class_names=list(MODES), binary=True, extra={"music": music})  # fmt: skip
    data = RollData(spec, train, test)
    data.augment = cfg.augment
    valid = images(parts["valid"])[0]
    data.set_reference([r[0] > 0 for r in test[0]], [r[0] > 0 for r in valid], ROLL_LOW)
    return data


def frame_data(parts: dict[str, list[Piece]], cfg: MusicConfig, music: dict) -> TensorData:
    """(window, 88) frame sequences, a piece cut into windows, with each window's length; for
    `voices`, (window, 4 × 88): each voice's 88 keys side by side, bass first."""
    voiced = cfg.representation == "voices"
    if voiced and any(p.voices is None for ps in parts.values() for p in ps):
        raise ConfigError(
            "dataset.representation=voices needs four-part pieces that keep their voices",
            hint="use dataset=chorales or dataset=tunes, or dataset.representation=frames",
        )
    width = VOICES * KEYS if voiced else KEYS
    # Frames of four-part pieces carry each voice's key as a label (model.notes=voices).
    labelled = not voiced and all(p.voices is not None for ps in parts.values() for p in ps)

    def cut(rows: Tensor, start: int, fill: int) -> Tensor:
        """(steps, n) rows → the window from `start`, padded with `fill` past the piece's end."""
        chunk = rows[start : start + cfg.window]
        w = torch.full((cfg.window, rows.shape[1]), fill, dtype=torch.uint8)
        w[: chunk.shape[0]] = chunk.to(torch.uint8)
        return w

    def windows(pieces: list[Piece]) -> tuple[Tensor, ...]:
        xs, lengths, labels = [], [], []
        for p in pieces:
            frames = (p.voices.flatten(0, 1) if voiced else p.roll).t()  # (steps, width)
            keys = voice_keys(p.voices) if labelled else None
            for start in range(0, frames.shape[0], cfg.window):
                xs.append(cut(frames, start, 0))
                lengths.append(min(cfg.window, frames.shape[0] - start))
                if keys is not None:  # a rest past the piece's end
                    labels.append(cut(keys, start, KEYS))
        out = (torch.stack(xs), torch.tensor(lengths))
        return (*out, torch.stack(labels)) if labelled else out

    train, test = windows(parts["train"]), windows(parts["test"])
    music = {**music, "voices": VOICES} if voiced else music
    music = {**music, "voice_labels": VOICES} if labelled else music
    spec = DataSpec(kind="frames", shape=[cfg.window, width], binary=True, extra={"music": music})
    data = FrameData(spec, train, test)
    data.augment, data.groups = cfg.augment, VOICES if voiced else 1
    data.set_reference(
        [p.roll for p in parts["test"]],
        [p.roll for p in parts["valid"]],
        PIANO_LOW,
        [p.voices for p in parts["test"]] if voiced else None,
    )
    return data


def voice_keys(voices: Tensor) -> Tensor:
    """(VOICES, 88, steps) voices → (steps, VOICES) uint8: the key each voice sings at each
    step, KEYS where it rests (a voice that sings two keys at once is labelled with the lower)."""
    sings = voices.any(1)  # (VOICES, steps)
    key = voices.to(torch.uint8).argmax(1)  # the first (lowest) key that sounds
    return torch.where(sings, key, KEYS).t().to(torch.uint8)


class Transposed(_EpochIterator):
    """Training batches, each window shifted in pitch by its own random number of semitones
    (at most ± `augment`; notes shifted off the keyboard drop). The shifts are drawn from the
    iterator's position, so a resumed run sees the same ones."""

    def __init__(
        self, data: TensorData, batch_size: int, seed: int, augment: int, axis: int, groups: int
    ) -> None:
        super().__init__(data, batch_size, seed)
        self.augment, self.axis, self.groups = augment, axis, groups

    def __next__(self) -> Batch:
        x, y, *labels = super().__next__()
        g = torch.Generator().manual_seed((self.seed * 100_003 + self.epoch) * 100_003 + self.pos)
        shifts = torch.randint(-self.augment, self.augment + 1, (x.shape[0],), generator=g)
        x = torch.stack(
            [shift_pitch(w, int(k), self.axis, self.groups) for w, k in zip(x, shifts, strict=True)]
        )
        return (x, y, *(shift_keys(k, shifts) for k in labels))


def shift_keys(keys: Tensor, shifts: Tensor) -> Tensor:
    """(B, steps, VOICES) voice keys (KEYS for a rest), each window's moved by its shift; a key
    shifted off the keyboard rests, as its note drops from the frames."""
    k = keys.long()
    moved = k + shifts.to(k.device).view(-1, *([1] * (k.dim() - 1)))
    rest = (k == KEYS) | (moved < 0) | (moved >= KEYS)
    return torch.where(rest, KEYS, moved).to(keys.dtype)


def shift_pitch(x: Tensor, k: int, axis: int, groups: int = 1) -> Tensor:
    """`x` moved k steps along `axis` (pitch), zeros shifted in; with `groups`, the axis holds
    that many keyboards side by side (voices), each shifted on its own."""
    if k == 0:
        return x
    if groups > 1:
        return shift_pitch(x.unflatten(axis, (groups, -1)), k, axis + 1).flatten(axis, axis + 1)
    out = torch.zeros_like(x)
    n = x.shape[axis]
    src = x.narrow(axis, max(0, -k), n - abs(k))
    out.narrow(axis, max(0, k), n - abs(k)).copy_(src)
    return out


class MusicTensors(MusicStats, TensorData):
    """Rolls or frames held as tensors, with the music statistics of samples and optional
    transposition of the training windows."""

    augment = 0
    pitch_axis = 0  # the pitch axis of one sample
    groups = 1  # keyboards side by side on the pitch axis (voices)

    def train_iter(self, batch_size: int, seed: int) -> BatchIterator:
        if not self.augment:
            return super().train_iter(batch_size, seed)
        return Transposed(self, batch_size, seed, self.augment, self.pitch_axis, self.groups)


class RollData(MusicTensors):
    """Piano-roll images (1, pitches, steps)."""

    pitch_axis = 1


class FrameData(MusicTensors):
    """Frame windows (steps, 88), 0/1 already: handed out as float without scaling."""

    pitch_axis = 1

    def take(self, split: str, idx: Tensor) -> Batch:
        """(frames, lengths) and, for four-part pieces, each voice's keys."""
        x, *rest = self.train if split == "train" else self.test
        return (x[idx].float(), *(t[idx] for t in rest))


def token_data(
    parts: dict[str, list[Piece]], cfg: MusicConfig, music: dict, source: str
) -> TextData:
    """frame_tokens or events as text: the training pieces, then the test pieces."""
    train = "".join(encode(p.roll, cfg.representation) + PIECE for p in parts["train"])
    test = "".join(encode(p.roll, cfg.representation) + PIECE for p in parts["test"])
    tokenizer = make_tokenizer(cfg.tokenizer, train + test, cfg.vocab_size, len(train))
    data = MusicText(train + test, tokenizer, cfg.block_size, source, split_at=len(train))
    data.set_reference([p.roll for p in parts["test"]], [p.roll for p in parts["valid"]],
                       PIANO_LOW)  # fmt: skip
    per_char = data.spec.extra["tokens_per_char"] * len(test)  # tokens of the test text
    notes = sum(1 for ch in test if 0 <= ord(ch) - PITCH_CHAR < KEYS)
    if cfg.representation == "frame_tokens":
        data.spec.extra["tokens_per_frame"] = per_char / test.count(STEP)
    else:
        data.spec.extra["tokens_per_step"] = per_char / test.count(STEP)
        data.spec.extra["tokens_per_note"] = per_char / max(notes, 1)
    data.spec.extra["music"] = {**music, "encoding": cfg.representation}
    per_step = data.spec.extra.get("tokens_per_frame") or data.spec.extra["tokens_per_step"]
    bar = bar_steps(cfg.grid)
    check(cfg.block_size >= bar * per_step, "dataset.block_size",
          f"{cfg.block_size} tokens hold less than one 4/4 bar on the {cfg.grid} grid "
          f"(about {bar * per_step:.0f} tokens in the test pieces); use dataset.block_size="
          f"{math.ceil(bar * per_step)} or more")  # fmt: skip
    return data


class MusicText(MusicStats, TextData):
    """Music tokens as text, with the music statistics of samples."""


def encode_frames(roll: Tensor) -> str:
    """Each frame's sounding pitches, low to high, then STEP."""
    chars = [chr(PITCH_CHAR + k) for k in range(KEYS)]
    return "".join("".join(chars[k] for k in col.nonzero().flatten().tolist()) + STEP
                   for col in roll.t())  # fmt: skip


def encode_events(roll: Tensor) -> str:
    """At each grid step, each note starting there as pitch and duration, then STEP."""
    notes = roll_to_notes(roll, 0, 1.0)  # pitch = row, start and duration in steps
    steps = roll.shape[1]
    at: list[list[str]] = [[] for _ in range(steps)]
    for n in notes:
        d = min(round(n.duration), MAX_DURATION)
        at[round(n.start)].append(chr(PITCH_CHAR + n.pitch) + chr(DURATION_CHAR + d))
    return "".join("".join(a) + STEP for a in at)


def encode(roll: Tensor, encoding: str) -> str:
    """A (88, steps) roll as frame_tokens or events text."""
    return encode_frames(roll) if encoding == "frame_tokens" else encode_events(roll)


def decode(text: str, encoding: str, max_steps: int = 0) -> Tensor:
    """frame_tokens or events text → (88, steps) bool; anything unreadable is skipped, so a
    model's early, half-trained output still decodes. The first piece only."""
    text = text.lstrip(PIECE).split(PIECE)[0]
    frames = text.split(STEP)
    if frames and frames[-1] == "":
        frames = frames[:-1]
    steps = max_steps or len(frames) + (MAX_DURATION if encoding == "events" else 0)
    roll = torch.zeros(KEYS, max(steps, 1), dtype=torch.bool)
    for t, frame in enumerate(frames[: roll.shape[1]]):
        if encoding == "frame_tokens":
            for ch in frame:
                k = ord(ch) - PITCH_CHAR
                if 0 <= k < KEYS:
                    roll[k, t] = True
            continue
        for a, b in zip(frame[::2], frame[1::2], strict=False):
            k, d = ord(a) - PITCH_CHAR, ord(b) - DURATION_CHAR
            if 0 <= k < KEYS and 1 <= d <= MAX_DURATION:
                roll[k, t : t + d] = True
    return roll if max_steps or encoding != "events" else trim_silence(roll)


def trim_silence(roll: Tensor) -> Tensor:
    """Drop the silent steps after the last sounding one."""
    sounding = roll.any(0).nonzero()
    return roll[:, : int(sounding[-1]) + 1] if sounding.numel() else roll[:, :1]


def music_spec(spec: DataSpec) -> dict[str, Any] | None:
    """The music facts of a dataset spec (None for other data)."""
    return spec.extra.get("music")
