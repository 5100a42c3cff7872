"""WAV previews rendered by FluidSynth with a General MIDI soundfont, where both are installed
(`apt install fluidsynth fluid-soundfont-gm`, or `make fluidsynth`): a piano that sounds like
one, in place of the built-in synthesiser (results/audio.py). aigc runs the `fluidsynth`
program on a MIDI file it wrote itself, in a temporary folder, and reads back the WAV."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import torch
from torch import Tensor

from aigc_cli.errors import ConfigError

#: where Debian, Ubuntu, Fedora and Arch put a General MIDI soundfont, searched in this order
SOUNDFONTS = (
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
)
RENDERERS = ("auto", "synth", "fluidsynth")
GAIN = 0.6  # FluidSynth's master gain: four voices at GM velocity stay below clipping
SECONDS_PER_MINUTE_OF_AUDIO = 60  # render time allowed per minute of music, at the least


def find_soundfont(soundfont: str | None) -> str | None:
    """The soundfont to use: the one named (which must exist), $AIGC_SOUNDFONT, or the first of
    SOUNDFONTS installed."""
    named = soundfont or os.environ.get("AIGC_SOUNDFONT")
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise ConfigError(f"bad value for 'soundfont': {path} is not a file",
                              hint="name a .sf2 General MIDI soundfont")  # fmt: skip
        return str(path)
    return next((p for p in SOUNDFONTS if Path(p).is_file()), None)


def pick_soundfont(renderer: str, soundfont: str | None) -> str | None:
    """The soundfont FluidSynth renders with, or None for the built-in synthesiser: `auto`
    takes FluidSynth where the program and a soundfont are both installed; `fluidsynth`
    requires them (one line saying what to install)."""
    if renderer not in RENDERERS:
        raise ConfigError(f"bad value for 'audio': '{renderer}'; choose from: "
                          f"{', '.join(RENDERERS)}")  # fmt: skip
    if renderer == "synth":
        return None
    found = find_soundfont(soundfont)
    program = shutil.which("fluidsynth")
    if renderer == "fluidsynth" and (program is None or found is None):
        missing = "the fluidsynth program" if program is None else "a General MIDI soundfont"
        raise ConfigError(
            f"audio=fluidsynth needs {missing}",
            hint="apt install fluidsynth fluid-soundfont-gm (or make fluidsynth), pass "
            "soundfont=<file.sf2>, or use audio=synth",
        )
    return found if program is not None else None


def render_midi(midi: bytes, soundfont: str, rate: int, seconds: float) -> Tensor:
    """Mono audio in [-1, 1] (peak 0.9) of a standard MIDI file, rendered by FluidSynth."""
    program = shutil.which("fluidsynth")
    if program is None:
        raise ConfigError("the fluidsynth program is not installed", hint="use audio=synth")
    with tempfile.TemporaryDirectory(prefix="aigc-fluidsynth-") as tmp:
        mid, wav = Path(tmp) / "in.mid", Path(tmp) / "out.wav"
        mid.write_bytes(midi)
        cmd = [program, "-n", "-i", "-q", "-g", str(GAIN), "-r", str(rate), "-T", "wav",
               "-F", str(wav), soundfont, str(mid)]  # fmt: skip
        limit = 30 + SECONDS_PER_MINUTE_OF_AUDIO * seconds / 60
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            raise ConfigError(f"fluidsynth took over {limit:.0f} s to render a preview",
                              hint="use audio=synth") from None  # fmt: skip
        if done.returncode != 0 or not wav.is_file():
            why = (done.stderr or done.stdout).strip().splitlines()
            raise ConfigError(f"fluidsynth failed: {why[-1] if why else done.returncode}",
                              hint="check soundfont=, or use audio=synth")  # fmt: skip
        with wave.open(str(wav), "rb") as w:
            channels, width = w.getnchannels(), w.getsampwidth()
            frames = w.readframes(w.getnframes())
    if width != 2:
        raise ConfigError(f"fluidsynth wrote {8 * width}-bit audio; aigc reads 16-bit",
                          hint="use audio=synth")  # fmt: skip
    pcm = torch.frombuffer(bytearray(frames), dtype=torch.int16).float() / 32768
    audio = pcm.view(-1, channels).mean(1)
    peak = audio.abs().max() if audio.numel() else torch.tensor(0.0)
    return audio * (0.9 / peak) if peak > 0 else audio
