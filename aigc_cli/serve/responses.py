"""Sample results as JSON for HTTP: each image a PNG, each piece a MIDI file and a WAV preview,
base64-encoded as OpenAI's `b64_json`; made by the same writers as `aigc sample`'s files."""

from __future__ import annotations

import base64
from typing import Any

from aigc_cli.results import Images, Music, Points, SampleResult
from aigc_cli.results.audio import wav_bytes
from aigc_cli.results.images import png_bytes
from aigc_cli.results.midi import midi_bytes


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def image_items(result: SampleResult) -> list[dict[str, Any]]:
    """One item per image (a PNG each), or for points one scatter PNG and the points."""
    if isinstance(result, Images):
        return [{"b64_json": b64(png_bytes(image))} for image in result.images]
    if isinstance(result, Points):
        return [{"b64_json": b64(png_bytes(result.plot())), "points": result.points.tolist()}]
    raise TypeError(f"no image response for {type(result).__name__}")


def music_items(result: SampleResult) -> list[dict[str, Any]]:
    """One item per piece: its MIDI file, its WAV preview and its note count."""
    if not isinstance(result, Music):
        raise TypeError(f"no music response for {type(result).__name__}")
    items = []
    for i in range(len(result)):
        notes = result.notes(i)
        items.append({"b64_midi": b64(midi_bytes(notes, result.tempo)),
                      "b64_wav": b64(wav_bytes(result.audio(i))), "notes": len(notes),
                      "b64_png": b64(png_bytes(result.picture_of(i)))})  # fmt: skip
    return items
