"""A small additive synthesiser for listening to samples with no system dependency: each note a
few decaying harmonics with a short attack and release, mixed and normalised, written as
16-bit mono WAV."""

from __future__ import annotations

import io
import math
import wave

import torch
from torch import Tensor

from aigc_cli.results.midi import Note

SAMPLE_RATE = 16000
HARMONICS = (1.0, 0.5, 0.25, 0.12)  # amplitudes of the 1st..4th harmonic: a soft organ-piano
ATTACK, RELEASE = 0.01, 0.08  # seconds


def render(notes: list[Note], tempo: float, rate: int = SAMPLE_RATE) -> Tensor:
    """Mono audio in [-1, 1] (peak 0.9), as long as the last note plus its release."""
    seconds = 60.0 / tempo
    end = max((n.start + n.duration for n in notes), default=0.0) * seconds + RELEASE
    out = torch.zeros(max(1, math.ceil(end * rate)))
    for n in notes:
        first = round(n.start * seconds * rate)
        length = max(1, round(n.duration * seconds * rate)) + round(RELEASE * rate)
        t = torch.arange(length) / rate
        freq = 440.0 * 2 ** ((n.pitch - 69) / 12)
        tone = sum(a * torch.sin(2 * math.pi * freq * (k + 1) * t) for k, a in enumerate(HARMONICS))
        held = length - round(RELEASE * rate)
        env = torch.clamp(t / ATTACK, max=1.0) * torch.exp(-1.5 * t)
        env[held:] *= torch.linspace(1.0, 0.0, length - held)
        out[first : first + length] += (tone * env * n.velocity / 127)[: out.numel() - first]
    peak = out.abs().max()
    return out * (0.9 / peak) if peak > 0 else out


def wav_bytes(audio: Tensor, rate: int = SAMPLE_RATE) -> bytes:
    """16-bit PCM mono WAV of audio in [-1, 1]."""
    pcm = (audio.clamp(-1, 1) * 32767).round().to(torch.int16).numpy().tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buf.getvalue()
