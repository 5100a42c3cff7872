"""Standard MIDI files through mido (the `music` extra): notes in, bytes out, and back."""

from __future__ import annotations

import io
from typing import NamedTuple

from aigc_cli.errors import missing_music

TICKS_PER_QUARTER = 480


class Note(NamedTuple):
    pitch: int  # MIDI pitch, 60 = middle C
    start: float  # in quarter notes from the start
    duration: float  # in quarter notes
    velocity: int = 80
    voice: int = -1  # four-part data: 0 bass, 1 tenor, 2 alto, 3 soprano; -1 unknown


def require_mido():
    # Imported on use: mido belongs to the optional `music` extra.
    try:
        import mido
    except ImportError as e:
        raise missing_music("music") from e
    return mido


def midi_bytes(notes: list[Note], tempo: float) -> bytes:
    """A type-0 MIDI file of `notes` (piano) at `tempo` quarter notes a minute: each voice of
    four-part notes on its own channel (bass on 0), so a unison stays two notes and an editor
    shows the voices apart; notes with no voice on channel 0."""
    mido = require_mido()
    events = []  # (tick, order, message): note-offs before note-ons at the same tick
    for n in notes:
        on = round(n.start * TICKS_PER_QUARTER)
        off = max(on + 1, round((n.start + n.duration) * TICKS_PER_QUARTER))
        ch = max(n.voice, 0)
        events.append((on, 1, mido.Message("note_on", note=n.pitch, velocity=n.velocity,
                                           channel=ch)))  # fmt: skip
        events.append((off, 0, mido.Message("note_off", note=n.pitch, velocity=0, channel=ch)))
    events.sort(key=lambda e: (e[0], e[1], e[2].note, e[2].channel))
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(tempo), time=0))
    for ch in sorted({max(n.voice, 0) for n in notes} | {0}):
        track.append(mido.Message("program_change", program=0, channel=ch, time=0))
    now = 0
    for tick, _, message in events:
        track.append(message.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=0))
    file = mido.MidiFile(type=0, ticks_per_beat=TICKS_PER_QUARTER)
    file.tracks.append(track)
    buf = io.BytesIO()
    file.save(file=buf)
    return buf.getvalue()
