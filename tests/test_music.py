"""Music: MIDI files read back by independent readers, piano rolls and token encodings against
hand-made examples, the key finder, the synthesiser's pitch, the frame likelihood's closed form,
the data sources and their one-line errors, and each family training on the representation it
fits, through the command line as a user runs it."""

from __future__ import annotations

import io
import itertools
import json
import math
import wave
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from aigc_cli.data.music import (
    PIECE,
    Piece,
    decode,
    encode,
    piece_from_notes,
    transposition,
)
from aigc_cli.errors import ConfigError, DataError
from aigc_cli.results import Music
from aigc_cli.results.audio import SAMPLE_RATE, render, wav_bytes
from aigc_cli.results.midi import Note, midi_bytes
from aigc_cli.results.music import notes_to_roll, roll_to_notes

from .helpers import run_cli

mido = pytest.importorskip("mido", reason="the music extra (pip install -e '.[music]')")
NOTES = [Note(60, 0.0, 1.0), Note(64, 1.0, 2.5), Note(67, 1.0, 1.0), Note(48, 3.5, 0.5)]


def _mido_notes(data: bytes) -> list[tuple[int, float, float]]:
    """(pitch, start, duration) in quarter notes, from mido's messages alone."""
    f = mido.MidiFile(file=io.BytesIO(data))
    now, on, out = 0, {}, []
    for msg in mido.merge_tracks(f.tracks):
        now += msg.time
        if msg.type == "note_on" and msg.velocity > 0:
            on[msg.note] = now
        elif msg.type in ("note_off", "note_on"):
            start = on.pop(msg.note)
            out.append((msg.note, start / f.ticks_per_beat, (now - start) / f.ticks_per_beat))
    return sorted(out, key=lambda n: (n[1], n[0]))


def test_midi_reads_back_the_same_notes_in_mido_and_symusic(tmp_path):
    symusic = pytest.importorskip("symusic")
    data = midi_bytes(NOTES, tempo=90)
    want = sorted(((n.pitch, n.start, n.duration) for n in NOTES), key=lambda n: (n[1], n[0]))
    assert _mido_notes(data) == want
    path = tmp_path / "x.mid"
    path.write_bytes(data)
    score = symusic.Score(str(path), ttype="quarter")
    got = sorted(((n.pitch, n.time, n.duration) for t in score.tracks for n in t.notes),
                 key=lambda n: (n[1], n[0]))  # fmt: skip
    assert got == want
    assert mido.MidiFile(file=io.BytesIO(data)).tracks[0][0].tempo == mido.bpm2tempo(90)


def test_piano_roll_and_notes_by_hand():
    roll = notes_to_roll(NOTES, low=48, pitches=24, steps=4, step=1.0)
    assert roll.shape == (24, 4)
    assert roll[12].tolist() == [True, False, False, False]  # C4 for one step
    assert roll[16].tolist() == [False, True, True, True]  # E4 from 1 for 2.5 → steps 1, 2, 3
    assert not roll[0].any()  # C3 from 3.5 to 4.0 sounds at no grid point (JSB sampling)
    # passing eighths between beats are not sampled; a note across a beat is, at that beat
    passing = [Note(62, 1.5, 0.5), Note(65, 0.5, 1.0), Note(69, 2.0, 1.0 / 3.0)]
    sampled = notes_to_roll(passing, low=48, pitches=24, steps=4, step=1.0)
    assert not sampled[14].any()
    assert sampled[17].tolist() == [False, True, False, False]
    assert sampled[21].tolist() == [False, False, True, False]  # a triplet on the beat
    back = roll_to_notes(roll, 48, 1.0)
    assert (60, 0.0, 1.0) in [(n.pitch, n.start, n.duration) for n in back]
    assert (64, 1.0, 3.0) in [(n.pitch, n.start, n.duration) for n in back]


@pytest.mark.parametrize("encoding", ["frame_tokens", "events"])
def test_token_encodings_round_trip(encoding):
    roll = torch.zeros(88, 6, dtype=torch.bool)
    roll[39, 0:2] = True  # C4 for two steps
    roll[43, 1] = True
    roll[46, 3:6] = True
    text = encode(roll, encoding)
    assert text.count("\n") == 6
    back = decode(text + PIECE + "garbage", encoding, max_steps=6)
    assert torch.equal(back, roll)


def test_frame_tokens_by_hand():
    roll = torch.zeros(88, 2, dtype=torch.bool)
    roll[[39, 43], 0] = True  # C4 E4, then silence
    assert encode(roll, "frame_tokens") == chr(33 + 39) + chr(33 + 43) + "\n\n"


def test_key_finder_takes_pieces_to_c():
    d_major = [Note(62 + s, i, 1.0) for i, s in enumerate([0, 2, 4, 5, 7, 9, 11, 12, 7, 4, 0])]
    assert transposition(d_major) == -2
    a_minor = [Note(57 + s, i, 1.0) for i, s in enumerate([0, 2, 3, 5, 7, 8, 11, 12, 7, 3, 0])]
    assert transposition(a_minor) == 3  # A minor → C minor
    piece = piece_from_notes("x", d_major, 1.0, transpose=True)
    assert piece is not None and piece.roll[60 - 21, 0]  # D4 became C4


def test_split_is_fixed_by_name_and_about_60_20_20():
    splits = [Piece(f"bach/bwv{i}", torch.zeros(88, 1)).split for i in range(3000)]
    share = {s: splits.count(s) / len(splits) for s in ("train", "valid", "test")}
    assert abs(share["train"] - 0.6) < 0.03 and abs(share["test"] - 0.2) < 0.03
    assert Piece("bach/bwv1", torch.zeros(1)).split == Piece("bach/bwv1", torch.ones(1)).split


def test_synthesiser_sounds_the_note_it_is_given():
    audio = render([Note(69, 0.0, 2.0)], tempo=60)  # A4 for two seconds
    assert 0.85 < audio.abs().max() <= 0.9 + 1e-6
    spectrum = torch.fft.rfft(audio[:SAMPLE_RATE])
    peak = int(spectrum.abs()[1:].argmax()) + 1  # 1 Hz bins over one second
    assert peak == 440
    with wave.open(io.BytesIO(wav_bytes(audio))) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (SAMPLE_RATE, 1, 2)
        assert w.getnframes() == audio.numel()


def _fluidsynth_or_skip() -> str:
    import shutil

    from aigc_cli.results.fluidsynth import find_soundfont

    soundfont = find_soundfont(None)
    if shutil.which("fluidsynth") is None or soundfont is None:
        pytest.skip("FluidSynth and a General MIDI soundfont are not installed (make fluidsynth)")
    return soundfont


def test_fluidsynth_sounds_the_note_it_is_given(tmp_path):
    """FluidSynth's piano plays A4 at 440 Hz (the strongest partial of its first second: a
    piano's A4 fundamental dominates), sounds until the note's end at two seconds, and is
    damped after it."""
    from aigc_cli.results.fluidsynth import render_midi

    soundfont = _fluidsynth_or_skip()
    audio = render_midi(midi_bytes([Note(69, 0.0, 2.0)], 60), soundfont, SAMPLE_RATE, 2.0)
    assert 0.85 < audio.abs().max() <= 0.9 + 1e-6
    assert 2.0 * SAMPLE_RATE <= audio.numel() <= 6.0 * SAMPLE_RATE
    spectrum = torch.fft.rfft(audio[:SAMPLE_RATE])
    assert abs(int(spectrum.abs()[1:].argmax()) + 1 - 440) <= 2

    def level(start: float, end: float) -> float:
        return float(audio[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)].abs().max())

    assert level(1.8, 2.0) > 5 * level(2.2, 2.4)  # the damper falls at the note's end
    rolls = torch.zeros(1, 88, 2, dtype=torch.bool)
    rolls[0, 48] = True  # A4 for two quarters: one second at 120 beats a minute
    folder = Music(rolls=rolls, tempo=120, soundfont=soundfont).write(tmp_path / "s")
    with wave.open(str(folder / "00.wav")) as w:
        assert w.getframerate() == SAMPLE_RATE and w.getnframes() >= SAMPLE_RATE


def test_audio_choice_is_one_line_when_fluidsynth_is_missing(monkeypatch, tmp_path):
    from aigc_cli.results import fluidsynth

    monkeypatch.setattr(fluidsynth.shutil, "which", lambda name: None)
    assert fluidsynth.pick_soundfont("auto", None) is None  # auto falls back to the synthesiser
    assert fluidsynth.pick_soundfont("synth", None) is None
    with pytest.raises(ConfigError, match="needs the fluidsynth program"):
        fluidsynth.pick_soundfont("fluidsynth", None)
    with pytest.raises(ConfigError, match="choose from: auto, synth, fluidsynth"):
        fluidsynth.pick_soundfont("timidity", None)
    with pytest.raises(ConfigError, match="is not a file"):
        fluidsynth.pick_soundfont("auto", str(tmp_path / "none.sf2"))


def test_music_result_writes_midi_wav_and_rolls(tmp_path):
    rolls = torch.zeros(2, 88, 8, dtype=torch.bool)
    rolls[0, 39, :4] = True
    rolls[1, [39, 43, 46], 2:8] = True
    folder = Music(rolls=rolls, tempo=120).write(tmp_path / "s")
    assert sorted(p.name for p in folder.iterdir()) == [
        "00.mid", "00.wav", "01.mid", "01.wav", "rolls.png",
    ]  # fmt: skip
    assert _mido_notes((folder / "01.mid").read_bytes()) == [
        (60, 2.0, 6.0), (64, 2.0, 6.0), (67, 2.0, 6.0),
    ]  # fmt: skip


def test_frame_and_token_music_get_a_frechet_distance_on_roll_windows():
    """Music in frames is compared as the roll representation's images: a stand-in that plays
    back the test pieces themselves (padded to one length, as a batch of samples is) scores 0
    (closed form: the same windows), and one that plays silence scores far worse; each window
    the metric cuts is the roll dataset's own image of that stretch."""
    import types

    from aigc_cli.build import build_data
    from aigc_cli.data.music import PIANO_LOW, roll_windows
    from aigc_cli.metrics.quality import MetricsConfig, SampleQuality

    frames = build_data({"name": "tunes", "representation": "frames", "window": 16,
                         "pieces": 40})  # fmt: skip
    rolls = build_data({"name": "tunes", "representation": "roll", "pieces": 40})
    for i, piece in enumerate(frames.pieces["test"]):  # one to five windows long, ending on a note
        long = piece.roll.repeat(1, 1 + 240 // piece.roll.shape[1])
        sounding = long.any(0).nonzero().flatten()
        piece.roll = long[:, : int(sounding[sounding < 40 + 47 * (i % 5)].max()) + 1]
    test = [p.roll for p in frames.pieces["test"]]
    assert len({r.shape[1] // 48 for r in test}) > 1
    windows = torch.cat([roll_windows(r, PIANO_LOW) for r in test])
    whole = torch.cat([roll_windows(p.roll, PIANO_LOW) for p in rolls.pieces["test"]])
    assert torch.equal(whole, rolls.test[0])  # the roll dataset's own images
    torch.manual_seed(0)
    embed = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48 * 48, 6))
    cfg = MetricsConfig(num_samples=len(windows), batch_size=64)
    q = SampleQuality(cfg, ["fid", "kid"], frames, torch.device("cpu"),
                      (types.SimpleNamespace(features=embed), "a random linear map"))  # fmt: skip
    steps = max(r.shape[1] for r in test)

    class PlayBack:
        def __init__(self, silent: bool) -> None:
            self.silent, self.next = silent, 0

        def sample(self, n: int, generator=None) -> Music:
            out = torch.zeros(n, 88, steps, dtype=torch.bool)
            for i in range(n):
                r = test[(self.next + i) % len(test)]
                out[i, :, : r.shape[1]] = r
                if self.silent:
                    out[i, :, 1:] = False
            self.next += n
            return Music(rolls=out)

    same = q(PlayBack(False))
    assert same["fid"] == pytest.approx(0, abs=1e-6)
    assert q(PlayBack(True))["fid"] > 100 * (same["fid"] + 1e-3)
    assert "piano-roll windows" in q.describe()["fid"]


def test_uniform_frame_model_scores_88_ln_2():
    """Closed form: logits 0 give each of 88 notes probability 1/2, so every frame costs
    88 ln 2 = 61.00 nats whatever it holds."""
    from aigc_cli.build import build_model
    from aigc_cli.data.base import DataSpec

    model = build_model({"name": "frames", "n_layer": 1, "n_embd": 16, "n_head": 2},
                        DataSpec("frames", [8, 88]))  # fmt: skip
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    frames = (torch.rand(3, 8, 88) < 0.1).float()
    out = model.evaluate((frames, torch.tensor([8, 5, 1])))
    assert out["n"].item() == 14
    assert out["frame_nll"].item() / 14 == pytest.approx(88 * math.log(2), rel=1e-6)
    assert 88 * math.log(2) == pytest.approx(61.00, abs=0.005)


def _midi_folder(root: Path, n: int = 30) -> Path:
    """n short four-voice MIDI files, plus one broken file and one without notes."""
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        base = 48 + int(torch.randint(0, 12, (1,), generator=g))
        notes = [Note(base + iv + 12 * v, float(t), 1.0) for t in range(16)
                 for v, iv in enumerate((0, 4, 7, 12))]  # fmt: skip
        (root / f"sub{i % 3}").mkdir(parents=True, exist_ok=True)
        (root / f"sub{i % 3}" / f"p{i:02d}.mid").write_bytes(midi_bytes(notes, 100))
    (root / "broken.mid").write_bytes(b"MThd not a midi file")
    (root / "silent.mid").write_bytes(midi_bytes([], 100))
    return root


def test_midi_folder_skips_bad_files_with_one_warning(tmp_path, capsys):
    from aigc_cli.build import build_data

    folder = _midi_folder(tmp_path / "midi")
    data = build_data({"name": "midi_folder", "path": str(folder), "representation": "frames",
                       "window": 16})  # fmt: skip
    assert data.spec.kind == "frames" and data.spec.shape == [16, 88]
    out = capsys.readouterr().out
    assert out.count("warning") == 1 and "skipped 2 of 32 MIDI files" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"no usable MIDI file in .*empty \(0 "):
        build_data({"name": "midi_folder", "path": str(empty)})


def test_missing_music_extra_is_one_line(monkeypatch):
    import sys

    from aigc_cli.build import build_data

    monkeypatch.setitem(sys.modules, "music21", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"music.*extra.*pip install 'aigc\[music\]'"):
        build_data({"name": "chorales"})


def test_a_model_that_cannot_take_a_representation_is_one_line(make_cfg):
    from aigc_cli.build import build_data, build_model

    data = build_data({"name": "tunes", "representation": "frames", "window": 16})
    with pytest.raises(ConfigError, match="cannot train on frames data"):
        build_model({"name": "vae"}, data.spec)
    with pytest.raises(ConfigError, match="roll images are square"):
        build_data({"name": "tunes", "representation": "roll", "window": 32})


def test_a_window_shorter_than_a_bar_is_one_line():
    """A 4/4 bar is 4 quarter steps or 16 sixteenth steps; frames, rolls and tokens each say
    which setting is too short and how long it must be."""
    from aigc_cli.build import build_data

    with pytest.raises(ConfigError, match=r"dataset.window.*12 steps.*sixteenth.*window=16"):
        build_data({"name": "tunes", "grid": "sixteenth", "representation": "frames",
                    "window": 12})  # fmt: skip
    assert build_data({"name": "tunes", "grid": "sixteenth", "representation": "frames",
                       "window": 16}).spec.shape == [16, 88]  # fmt: skip
    with pytest.raises(ConfigError, match=r"dataset.block_size.*one 4/4 bar.*sixteenth"):
        build_data({"name": "tunes", "grid": "sixteenth", "representation": "events",
                    "block_size": 16})  # fmt: skip
    build_data({"name": "tunes", "representation": "events", "block_size": 32})  # 4 steps fit


MUSIC_RUNS = {
    "frames": ["dataset.representation=frames", "dataset.window=16", "model.n_layer=1",
               "model.n_embd=32"],
    "transformer": ["dataset.representation=frame_tokens", "dataset.block_size=32",
                    "model.n_layer=1", "model.n_embd=32", "model.n_head=2"],
    "diffusion": ["dataset.representation=roll", "model.base_channels=8", "model.steps=2",
                  "model.timesteps=20"],
    "vae": ["dataset.representation=roll", "model.latent_dim=4", "model.base_channels=8"],
    "frames@voices": ["dataset.representation=voices", "dataset.window=16", "model.n_layer=1",
                      "model.n_embd=32", "model.notes=ordered", "model.backbone=lstm"],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("model", MUSIC_RUNS)
def test_each_family_trains_on_music_and_writes_midi_wav_and_rolls(model, tmp_path):
    """Through the command line: train on the built-in tunes, then `aigc sample`; every MIDI
    file written reads back in mido with notes, and TensorBoard holds the audio."""
    from .helpers import event_tags

    family = model.split("@")[0]
    args = [f"model={family}", "dataset=tunes", "dataset.pieces=40", *MUSIC_RUNS[model],
            "trainer.max_steps=4", "trainer.batch_size=8", "trainer.sample_every=4",
            "trainer.eval_every=0", "trainer.progress=false", "trainer.device=cpu",
            "hydra.run.dir=run"]  # fmt: skip
    out = run_cli("train", *args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    step = tmp_path / "run" / "samples" / "step_000004"
    assert (step / "rolls.png").is_file()
    assert "samples/audio_0" in event_tags(tmp_path / "run")["audio"]
    out = run_cli("sample", "run=run", "n=2", "out=listen", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    mids = sorted((tmp_path / "listen").glob("*.mid"))
    assert len(mids) == 2 and (tmp_path / "listen" / "00.wav").is_file()
    for mid in mids:
        mido.MidiFile(str(mid))  # a standard MIDI file
    if model == "frames@voices":  # samples keep their voices: channels, and crossings scored
        channels = {m.channel for mid in mids for m in mido.MidiFile(str(mid)).tracks[0]
                    if m.type == "note_on"}  # fmt: skip
        assert channels <= {0, 1, 2, 3} and len(channels) > 1
        record = json.loads((tmp_path / "run" / "metrics.json").read_text())
        assert {"test/samples_voice_crossings", "test/real_voice_crossings"} <= set(record)
    # an export carries the representation: loaded alone, it gives the same notes
    out = run_cli("export", "run=run", "out=exported", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    import aigc_cli as aigc

    a = aigc.load(tmp_path / "exported").sample(2, seed=5)
    b = aigc.load(tmp_path / "run").sample(2, seed=5)
    assert isinstance(a, Music) and torch.equal(a.rolls, b.rolls)
    assert [a.notes(i) for i in range(2)] == [b.notes(i) for i in range(2)]
    assert "listen to the `.wav`" in (tmp_path / "exported" / "README.md").read_text()


@pytest.mark.slow
def test_a_token_model_continues_a_midi_prompt(tmp_path):
    folder = _midi_folder(tmp_path / "midi", n=20)
    args = ["model=transformer", "dataset=midi_folder", f"dataset.path={folder}",
            *MUSIC_RUNS["transformer"], "trainer.max_steps=2", "trainer.batch_size=4",
            "trainer.progress=false", "trainer.device=cpu", "hydra.run.dir=run"]  # fmt: skip
    assert run_cli("train", *args, cwd=tmp_path).returncode == 0
    prompt = folder / "sub0" / "p00.mid"
    out = run_cli("sample", "run=run", "n=1", f"prompt_midi={prompt}", "prompt_steps=4",
                  "max_new_tokens=8", "out=cont", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    got = _mido_notes((tmp_path / "cont" / "00.mid").read_bytes())
    first = sorted(n[0] for n in got if n[1] == 0.0)
    assert len(first) == 4  # the prompt's opening chord (transposed to C) comes back first
    bad = run_cli("sample", "run=run", f"prompt_midi={folder / 'broken.mid'}", cwd=tmp_path)
    assert bad.returncode == 2 and "prompt_midi" in bad.stderr and "Traceback" not in bad.stderr
    # a run on a folder does not send aigc back to read its recorded path
    bad = run_cli("sample", "run=run", "prompt_piece=0", cwd=tmp_path)
    assert bad.returncode == 2 and "prompt_midi=<file.mid>" in bad.stderr, bad.stderr


@pytest.mark.slow
def test_a_token_model_continues_a_test_piece(tmp_path):
    """prompt_piece=N: the written piece opens with the first prompt_steps steps of the run's
    N-th test piece, rebuilt from the recorded dataset config."""
    from aigc_cli.build import build_data

    args = ["model=transformer", "dataset=tunes", *MUSIC_RUNS["transformer"],
            "trainer.max_steps=2", "trainer.batch_size=4", "trainer.progress=false",
            "trainer.device=cpu", "hydra.run.dir=run"]  # fmt: skip
    assert run_cli("train", *args, cwd=tmp_path).returncode == 0
    out = run_cli("sample", "run=run", "n=1", "prompt_piece=2", "prompt_steps=4",
                  "max_new_tokens=4", "out=cont", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    piece = build_data({"name": "tunes", "representation": "frame_tokens"}).pieces["test"][2]
    notes = [Note(*n) for n in _mido_notes((tmp_path / "cont" / "00.mid").read_bytes())]
    got = notes_to_roll(notes, 21, 88, 4, 1.0)  # A0 is MIDI 21; the tunes' grid is a quarter
    assert piece.roll[:, :4].any() and torch.equal(got, piece.roll[:, :4])
    bad = run_cli("sample", "run=run", "prompt_piece=999", cwd=tmp_path)
    assert bad.returncode == 2 and "prompt_piece" in bad.stderr and "Traceback" not in bad.stderr


def test_music_statistics_by_hand():
    from aigc_cli.data.music import music_stats

    roll = torch.zeros(88, 4, dtype=torch.bool)  # row 0 = A0 (pitch class 9)
    roll[39, 0:2] = True  # C4 for two steps
    roll[40, 2] = True  # C#4: out of C major and C minor
    # frames: 1, 1, 1, 0 notes → 0.75 per frame, a quarter empty; 2 of 3 note-steps in key
    stats = music_stats([roll], low=21)
    assert stats["notes_per_frame"] == pytest.approx(0.75)
    assert stats["empty_frames"] == pytest.approx(0.25)
    assert stats["in_key"] == pytest.approx(2 / 3)
    # pitch classes C (2 steps) and C# (1 step): entropy of (2/3, 1/3) in bits
    h = -(2 / 3) * math.log2(2 / 3) - (1 / 3) * math.log2(1 / 3)
    assert stats["pitch_class_entropy"] == pytest.approx(h)
    assert stats["voice_range_violations"] == 0.0  # no frame of four notes


def test_voice_ranges_by_hand():
    """Four-note frames read low to high as bass, tenor, alto, soprano (E2-C4, C3-G4, G3-C5,
    C4-G5): a C major chord in close position is fine, a soprano on A5 or a bass on D2 is not;
    frames of other sizes are not counted."""
    from aigc_cli.data.music import music_stats, voice_range_violations

    roll = torch.zeros(88, 5, dtype=torch.bool)
    for t, chord in enumerate([(48, 55, 64, 72), (48, 55, 64, 81), (38, 55, 64, 72),
                               (48, 55, 64), (40, 48, 55, 79)]):  # fmt: skip
        for pitch in chord:
            roll[pitch - 21, t] = True
    assert voice_range_violations(roll, 21) == (2, 4)
    assert music_stats([roll], 21)["voice_range_violations"] == pytest.approx(0.5)


def test_voice_crossings_by_hand():
    """Steps where each of the four voices sings one note count; a voice above the one over it
    is a crossing, a unison is not."""
    from aigc_cli.data.music import music_stats, voice_crossings

    voices = torch.zeros(4, 88, 6, dtype=torch.bool)  # bass, tenor, alto, soprano
    steps = [(40, 50, 60, 70),  # in order
             (40, 62, 60, 70),  # the tenor above the alto: crossed
             (40, 50, 65, 65),  # alto and soprano in unison: not crossed
             (40, None, 60, 70),  # the tenor rests: not counted
             ((40, 43), 50, 60, 70),  # two notes in the bass: not counted
             (55, 50, 60, 58)]  # bass over tenor, alto over soprano: one step  # fmt: skip
    for t, step in enumerate(steps):
        for v, pitches in enumerate(step):
            for pitch in () if pitches is None else (pitches if isinstance(pitches, tuple)
                                                     else (pitches,)):  # fmt: skip
                voices[v, pitch - 21, t] = True
    assert voice_crossings(voices) == (2, 4)
    stats = music_stats([voices.any(0)], 21, [voices])
    assert stats["voice_crossings"] == pytest.approx(0.5)
    assert "voice_crossings" not in music_stats([voices.any(0)], 21)  # no voices, no figure


def test_voices_representation_keeps_each_voice_on_its_own_keyboard(tmp_path):
    """representation=voices: each frame is four 88-key blocks, bass first, that together are
    the piece's frame; the tunes' bass is always the lowest note; voices shift on their own."""
    from aigc_cli.build import build_data
    from aigc_cli.data.music import KEYS, shift_pitch

    data = build_data({"name": "tunes", "representation": "voices", "window": 16})
    plain = build_data({"name": "tunes", "representation": "frames", "window": 16})
    assert data.spec.shape == [16, 4 * KEYS] and data.spec.extra["music"]["voices"] == 4
    x = data.test[0].unflatten(2, (4, KEYS))  # (N, 16, 4, 88)
    assert torch.equal(x.amax(2), plain.test[0])  # the voices together are the frames
    assert torch.equal(x.sum(3), torch.ones_like(x.sum(3)) * (x.sum((2, 3)) > 0)[..., None])
    low_note = plain.test[0].float().argmax(-1)  # each frame's lowest key
    assert torch.equal(x[:, :, 0].float().argmax(-1), low_note)
    assert data.reference["voice_crossings"] == 0.0  # the tunes' voices never cross
    y = torch.zeros(1, 2 * 5)
    y[0, 4] = y[0, 5] = 1  # the top key of voice 0, the bottom key of voice 1
    assert shift_pitch(y, 1, 1, groups=2).nonzero().tolist() == [[0, 6]]  # no spill into voice 1
    folder = _midi_folder(tmp_path / "midi", n=12)
    with pytest.raises(ConfigError, match="representation=voices needs four-part pieces"):
        build_data({"name": "midi_folder", "path": str(folder), "representation": "voices",
                    "window": 16})  # fmt: skip


def test_four_part_samples_write_each_voice_on_its_own_channel():
    """A voiced sample's MIDI file: each voice's notes on its channel (bass on 0), and a unison
    of alto and soprano stays two notes, as mido reads them back."""
    voices = torch.zeros(1, 4, 88, 3, dtype=torch.bool)
    for v, pitch in enumerate((48, 55, 64, 64)):  # alto and soprano on E4
        voices[0, v, pitch - 21, :2] = True
    voices[0, 3, 67 - 21, 2] = True  # then the soprano moves to G4 alone
    music = Music(rolls=voices.any(1), voices=voices)
    data = midi_bytes(music.notes(0), tempo=90)
    f = mido.MidiFile(file=io.BytesIO(data))
    ons = sorted((m.channel, m.note) for m in f.tracks[0] if m.type == "note_on" and m.velocity)
    assert ons == [(0, 48), (1, 55), (2, 64), (3, 64), (3, 67)]
    symusic = pytest.importorskip("symusic")  # it reads the same notes, the unison twice
    score = symusic.Score.from_midi(data, ttype="quarter")
    got = sorted((n.pitch, n.time, n.duration) for t in score.tracks for n in t.notes)
    assert got == [(48, 0, 2), (55, 0, 2), (64, 0, 2), (64, 0, 2), (67, 2, 1)]
    plain = Music(rolls=voices.any(1))  # no voices: the unison is one note on channel 0
    f = mido.MidiFile(file=io.BytesIO(midi_bytes(plain.notes(0), tempo=90)))
    assert {m.channel for m in f.tracks[0] if m.type == "note_on"} == {0}
    assert len([m for m in f.tracks[0] if m.type == "note_on" and m.velocity]) == 4


def test_chorale_parts_become_voices_bass_first():
    """music21 lists a chorale's parts soprano first; aigc counts voices from the bass."""
    stream = pytest.importorskip("music21.stream")
    note = pytest.importorskip("music21.note")
    from aigc_cli.data.chorales import chorale_notes

    score = stream.Score()
    for pitch in ("C5", "E4", "G3", "C3"):  # soprano, alto, tenor, bass
        part = stream.Part()
        part.append(note.Note(pitch, quarterLength=2.0))
        score.insert(0, part)
    notes = sorted(chorale_notes(score), key=lambda n: n.voice)
    assert [(n.pitch, n.voice) for n in notes] == [(48, 0), (55, 1), (64, 2), (72, 3)]
    piece = piece_from_notes("x", notes, 1.0, transpose=False)
    assert piece.voices[0, 48 - 21].all() and piece.voices[3, 72 - 21].all()
    assert piece.voices.sum().item() == 8  # four voices, two steps each


def test_transposed_training_windows_resume_exactly_and_keep_the_test_split():
    from aigc_cli.build import build_data
    from aigc_cli.data.music import shift_pitch

    x = torch.zeros(2, 5)
    x[1, 0], x[0, 4] = 1, 1
    assert shift_pitch(x, 2, 1).nonzero().tolist() == [[1, 2]]  # C up 2; the top note drops
    data = build_data({"name": "tunes", "representation": "frames", "window": 16, "augment": 3})
    plain = build_data({"name": "tunes", "representation": "frames", "window": 16})
    a = data.train_iter(8, seed=1)
    next(a)
    state = a.state_dict()
    want = next(a)[0]
    b = data.train_iter(8, seed=1)
    b.load_state_dict(state)
    assert torch.equal(next(b)[0], want)
    # the same windows as without augmentation, shifted: the note counts per window differ only
    # by notes moved off the keyboard, and some window moved
    c = plain.train_iter(8, seed=1)
    next(c)
    base = next(c)[0]
    assert not torch.equal(base, want) and want.sum() <= base.sum()
    assert torch.equal(next(iter(data.eval_iter(8)))[0], next(iter(plain.eval_iter(8)))[0])


@pytest.mark.parametrize("backbone", ["transformer", "lstm"])
def test_ordered_frame_model_is_a_distribution_over_every_set_of_notes(backbone):
    """Exact likelihood, checked by enumeration on a four-key keyboard: the probabilities of
    all 16 frames after a fixed past sum to 1, and the sampler draws each frame as often as that
    probability says (20000 draws; 4 standard errors)."""
    from aigc_cli.build import build_model
    from aigc_cli.data.base import DataSpec

    torch.manual_seed(0)
    model = build_model({"name": "frames", "backbone": backbone, "notes": "ordered",
                         "n_layer": 1, "n_embd": 16, "n_head": 2},
                        DataSpec("frames", [1, 4])).eval()  # fmt: skip
    frames = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)))  # (16, 4)
    p = (-model(frames[:, None, :])[:, 0]).exp()  # each as the first frame of a piece
    assert p.sum().item() == pytest.approx(1.0, abs=1e-5)
    n = 20000
    drawn = model.sample(n, generator=torch.Generator().manual_seed(1)).rolls[:, :, 0]
    counts = (drawn[:, None, :] == frames[None].bool()).all(-1).float().sum(0)
    assert torch.all((counts / n - p).abs() <= 4 * (p * (1 - p) / n).sqrt() + 1e-3)


def test_pitch_window_reads_only_the_past_is_shift_equivariant_and_is_what_the_sampler_draws():
    """model.pitch_window: logits at step t move with frames before t only; the term it adds
    moves with the keys when the past is transposed; and the sampler's note frequencies at step 2
    equal the mean of the model's own probabilities given each drawn past (20000 draws)."""
    from aigc_cli.build import build_model
    from aigc_cli.data.base import DataSpec

    torch.manual_seed(0)
    cfg = {"name": "frames", "backbone": "lstm", "n_layer": 1, "n_embd": 16, "pitch_window": 2}
    model = build_model(cfg, DataSpec("frames", [6, 24])).eval()
    for p in model.local.parameters():
        torch.nn.init.normal_(p, 0.0, 2.0)  # make the term large enough to matter
    x = (torch.rand(2, 6, 24) < 0.3).float()
    base = model(x)
    for t in range(6):
        y = x.clone()
        y[:, t] = 1 - y[:, t]
        changed = (model(y) - base).abs().amax(dim=(0, 2)) > 1e-6
        assert not changed[: t + 1].any() and changed[t + 1 :].all()
    past = torch.zeros(1, 5, 24)
    past[0, :, 8] = past[0, 1:, 11] = 1.0
    local = model.independent_logits(torch.zeros(1, 5, 16), past)  # the local term alone
    shifted = model.independent_logits(torch.zeros(1, 5, 16), past.roll(3, dims=2))
    bias = model.head.bias
    assert torch.allclose((shifted - bias)[..., 6:18], (local - bias)[..., 3:15], atol=1e-5)

    n = 20000
    drawn = model.sample(n, steps=3, generator=torch.Generator().manual_seed(1)).rolls
    drawn = drawn.transpose(1, 2).float()  # (n, steps, keys)
    p = model(drawn).sigmoid()[:, 2]  # each note's probability given the drawn past
    freq, want = drawn[:, 2].mean(0), p.mean(0)
    assert torch.all((freq - want).abs() <= 4 * (want * (1 - want) / n).sqrt() + 2e-3)


def test_pitch_frames_reach_exactly_that_far_back_and_move_with_the_keys():
    """model.pitch_frames=16: the term at step t reads frames t-16 .. t-1 and no others, and a
    past shifted by k keys shifts the term by k keys (away from the keyboard's edges)."""
    from aigc_cli.build import build_model
    from aigc_cli.data.base import DataSpec

    torch.manual_seed(0)
    cfg = {"name": "frames", "backbone": "lstm", "n_embd": 16, "pitch_window": 2,
           "pitch_frames": 16}  # fmt: skip
    term = build_model(cfg, DataSpec("frames", [40, 30])).eval().local
    assert [c.dilation[0] for c in term.blocks] == [4, 8]  # 4 + 4 + 8 = 16 frames
    for p in term.parameters():
        torch.nn.init.normal_(p, 0.0, 0.5)
    prev = (torch.rand(1, 40, 30) < 0.3).float()  # row t: the frame before step t
    base = term(prev)
    for s in (5, 20):  # flip frame s, which is row s + 1 of `prev`
        y = prev.clone()
        y[:, s + 1] = 1 - y[:, s + 1]
        changed = (term(y) - base).abs().amax(dim=(0, 2)) > 1e-6
        assert changed.nonzero()[:, 0].tolist() == list(range(s + 1, min(40, s + 17)))
    shifted = term(prev.roll(3, dims=2))
    assert torch.allclose(shifted[..., 12:20], base[..., 9:17], atol=1e-5)


def test_weight_drop_masks_the_recurrent_weights_once_per_batch():
    """model.weight_drop: a training pass equals nn.LSTM run with its recurrent weights times
    the dropout mask (drawn from the same seed), the same mask at every step; eval passes are
    the plain LSTM."""
    from aigc_cli.build import build_model
    from aigc_cli.data.base import DataSpec

    cfg = {"name": "frames", "backbone": "lstm", "n_layer": 1, "n_embd": 8, "dropout": 0.0,
           "weight_drop": 0.5}  # fmt: skip
    model = build_model(cfg, DataSpec("frames", [7, 12]))
    x = torch.relu(torch.randn(3, 7, 8))
    torch.manual_seed(5)
    dropped = model.train().lstm_weight_dropped(x)
    torch.manual_seed(5)
    mask = torch.nn.functional.dropout(torch.ones_like(model.lstm.weight_hh_l0), 0.5)
    assert 0.3 < (mask == 0).float().mean() < 0.7
    plain = torch.nn.LSTM(8, 8, batch_first=True)
    plain.load_state_dict(model.lstm.state_dict())
    with torch.no_grad():
        plain.weight_hh_l0.mul_(mask)
    assert torch.allclose(dropped, plain(x)[0], atol=1e-6)
    assert not torch.allclose(dropped, model.lstm(x)[0], atol=1e-3)
    frames = (torch.rand(2, 7, 12) < 0.3).float()
    model.eval()
    assert torch.equal(model(frames), model(frames))
    undropped = build_model({**cfg, "weight_drop": 0.0}, DataSpec("frames", [7, 12])).eval()
    undropped.load_state_dict(model.state_dict())
    assert torch.equal(model(frames), undropped(frames))


def test_an_ensemble_averages_its_members_probabilities_and_trains_each_on_its_own_loss():
    """model.members: the ensemble's note probabilities are the mean of its members' (by hand),
    its loss the mean of theirs with each member's gradient that of its own loss alone, and the
    sampler draws what the ensemble scores (20000 draws)."""
    from aigc_cli.build import build_model
    from aigc_cli.data.base import DataSpec

    torch.manual_seed(0)
    cfg = {"name": "frames", "backbone": "lstm", "n_embd": 16, "dropout": 0.0,
           "members": [{"pitch_window": 2}, {"n_embd": 8, "pitch_window": 2,
                                             "pitch_frames": 8}]}  # fmt: skip
    model = build_model(cfg, DataSpec("frames", [6, 24])).eval()
    first, second = model.members
    assert (first.cfg.n_embd, second.cfg.n_embd, second.cfg.pitch_frames) == (16, 8, 8)
    for m in model.members:
        torch.nn.init.normal_(m.head.bias, 0.0, 2.0)  # members that disagree
    x = (torch.rand(2, 6, 24) < 0.3).float()
    p1, p2 = torch.sigmoid(first(x)), torch.sigmoid(second(x))
    assert torch.allclose(torch.sigmoid(model(x)), (p1 + p2) / 2, atol=1e-6)

    batch = (x, torch.tensor([6, 4]))
    (stage,) = model.training_step(batch, 0)
    own = [sum(m.loss_terms(batch).values()) for m in model.members]
    assert stage.loss.item() == pytest.approx((own[0].item() + own[1].item()) / 2, rel=1e-6)
    stage.loss.backward()
    together = first.head.weight.grad.clone()
    first.zero_grad()
    own[0].backward()
    assert torch.allclose(together, first.head.weight.grad / 2, atol=1e-7)

    n = 20000
    drawn = model.sample(n, steps=3, generator=torch.Generator().manual_seed(1)).rolls
    drawn = drawn.transpose(1, 2).float()
    want = model(drawn).sigmoid()[:, 2].mean(0)
    freq = drawn[:, 2].mean(0)
    assert torch.all((freq - want).abs() <= 4 * (want * (1 - want) / n).sqrt() + 2e-3)


def test_voice_notes_sound_when_some_voice_sings_them():
    """notes=voices: by hand, voices singing keys 0 or 1 (½ each) and 0 or rest (½ each) sound
    key 0 with probability 1 - ½·½ and key 1 with ½, key 2 never; and for any logits, drawing
    each voice's key on its own sounds each key as often as its probability says (20000
    draws)."""
    from aigc_cli.models.frames import notes_from_voices

    half, never = math.log(0.5), -1e4
    logits = torch.tensor([[half, half, never, never], [half, never, never, half]])
    p = notes_from_voices(logits).sigmoid()
    assert torch.allclose(p, torch.tensor([0.75, 0.5, 0.0]), atol=1e-6)

    torch.manual_seed(0)
    logits = torch.randn(4, 7) * 2  # four voices over six keys and a rest
    n = 20000
    keys = torch.distributions.Categorical(logits=logits).sample((n,))  # (n, 4)
    sounding = F.one_hot(keys, 7)[..., :6].amax(1).float()  # a rest sounds nothing
    want = notes_from_voices(logits).sigmoid()
    freq = sounding.mean(0)
    assert torch.all((freq - want).abs() <= 4 * (want * (1 - want) / n).sqrt())

    # confident voices: a key a voice is all but sure to sing, or that none will, keeps its
    # logit (float32 against float64 with each "not k" as the log-sum of the other classes)
    logits = torch.randn(32, 4, 89, generator=torch.Generator().manual_seed(2)) * 20
    x = logits.double()
    log_all = x.logsumexp(-1, keepdim=True)
    others = x.unsqueeze(-2).expand(*x.shape, 89).masked_fill(torch.eye(89, dtype=torch.bool),
                                                              -math.inf)  # fmt: skip
    silent = (others.logsumexp(-1) - log_all)[..., :-1]
    first = (x - log_all)[..., :-1] + silent.cumsum(-2) - silent  # voice v is the first
    want = first.logsumexp(-2) - silent.sum(-2)
    got = notes_from_voices(logits).double()
    assert want.abs().max() > 50  # logits far from zero on both sides
    assert torch.all((got - want).abs() <= 1e-5 * (1 + want.abs()))


def test_frames_of_four_part_pieces_carry_each_voices_key():
    """Frames of four-part pieces come with each voice's key per step (88 for a rest, the lower
    key for a voice singing two), by hand and on the tunes, where the keys sound exactly the
    frame; a transposed window moves them with its notes, and keys shifted off the keyboard
    rest."""
    from aigc_cli.build import build_data
    from aigc_cli.data.music import KEYS, shift_keys, voice_keys

    voices = torch.zeros(4, 88, 3, dtype=torch.bool)
    voices[0, 40, 0] = voices[1, 50, :2] = voices[3, 70, 1] = voices[3, 67, 1] = True
    assert voice_keys(voices).tolist() == [[40, 50, KEYS, KEYS], [KEYS, 50, KEYS, 67],
                                           [KEYS] * 4]  # fmt: skip
    keys = torch.tensor([[[0, 87, KEYS, 40]], [[3, 1, KEYS, 86]]], dtype=torch.uint8)
    moved = shift_keys(keys, torch.tensor([-1, 2]))
    assert moved.tolist() == [[[KEYS, 86, KEYS, 39]], [[5, 3, KEYS, KEYS]]]

    data = build_data({"name": "tunes", "representation": "frames", "window": 16, "augment": 3})
    assert data.spec.extra["music"]["voice_labels"] == 4
    for frames, _, keys in [data.take("test", torch.arange(8)), next(data.train_iter(8, 1))]:
        sung = F.one_hot(keys.long(), KEYS + 1)[..., :KEYS].amax(2).float()
        assert torch.equal(sung, frames)  # also for transposed windows: keys moved with notes
    plain = build_data({"name": "tunes", "representation": "voices", "window": 16})
    assert "voice_labels" not in plain.spec.extra["music"] and len(plain.test) == 2


def test_voice_notes_loss_by_hand():
    """With its head at zero, a voices model gives each voice's 88 keys and rest 1/89 each, so a
    four-note frame costs, by hand, 4 ln 89 for the voices' keys plus the notes' own
    negative log-likelihood with p = 1 - (88/89)^4 for every key; and it scores (evaluates)
    the notes alone."""
    from aigc_cli.build import build_model
    from aigc_cli.data.base import DataSpec

    music = {"music": {"voice_labels": 4}}
    model = build_model({"name": "frames", "backbone": "lstm", "n_embd": 16, "notes": "voices"},
                        DataSpec("frames", [5, 88], extra=music))  # fmt: skip
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    keys = torch.tensor([40, 52, 55, 60])
    frames = torch.zeros(1, 5, 88)
    frames[0, :, keys] = 1
    labels = keys.expand(1, 5, 4).to(torch.uint8)
    p = 1 - (88 / 89) ** 4
    notes = -4 * math.log(p) - 84 * math.log(1 - p)
    batch = (frames, torch.tensor([3]), labels)
    assert sum(model.loss_terms(batch).values()).item() == pytest.approx(
        notes + 4 * math.log(89), rel=1e-5
    )
    (stage,) = model.training_step(batch, 0)  # both terms logged, the loss their sum
    assert stage.scalars["frame_nll"].item() == pytest.approx(notes, rel=1e-5)
    assert stage.scalars["voice_keys"].item() == pytest.approx(4 * math.log(89), rel=1e-5)
    out = model.evaluate(batch)
    assert out["frame_nll"].item() / out["n"].item() == pytest.approx(notes, rel=1e-5)


def test_an_ensemble_of_confident_members_exports_to_onnx_exactly(tmp_path):
    """Members sure of their notes (logits near ±12) export with the ensemble's logits within
    the export's tolerance; onnxruntime's sigmoid is exact only to about 1e-7, which a log of a
    probability near 1e-5 would magnify past it."""
    pytest.importorskip("onnxruntime")
    from aigc_cli.build import build_model
    from aigc_cli.data.base import DataSpec
    from aigc_cli.store.onnx import TOLERANCE, export_onnx

    music = {"music": {"voice_labels": 4}}
    cfg = {"name": "frames", "backbone": "lstm", "n_embd": 16, "dropout": 0.0,
           "members": [{"notes": "voices", "pitch_window": 2}, {"pitch_window": 2}]}  # fmt: skip
    model = build_model(cfg, DataSpec("frames", [6, 88], extra=music))
    torch.manual_seed(0)
    voices, plain = model.members
    with torch.no_grad():
        voices.head.bias.copy_(torch.randn_like(voices.head.bias) * 6)
        plain.head.bias.copy_(torch.randn_like(plain.head.bias) * 12)
    (graph,) = export_onnx(model, tmp_path, torch.device("cpu"))
    assert graph["max_diff"] <= TOLERANCE


def test_bad_ensembles_and_weight_drop_are_one_line_each():
    from aigc_cli.build import build_model
    from aigc_cli.data.base import DataSpec

    spec = DataSpec("frames", [6, 24])
    bad = [
        ({"members": [{"n_embed": 8}]}, r"unknown config key 'model.members.n_embed'.*n_embd"),
        ({"members": [{"notes": "ordered"}]}, "members have independent notes"),
        ({"notes": "ordered", "members": [{}]}, "averages independent notes"),
        ({"members": [{"members": [{}]}]}, "cannot hold members"),
        ({"members": [3]}, "each entry is a mapping"),
        ({"weight_drop": 0.5}, "set model.backbone=lstm"),
        ({"backbone": "lstm", "weight_drop": 1.0}, r"must be in \[0, 1\)"),
        ({"pitch_frames": 2}, "must be >= 4"),
        ({"notes": "voices"}, "four-part pieces that keep their voices"),
    ]
    for settings, message in bad:
        with pytest.raises(ConfigError, match=message):
            build_model({"name": "frames", **settings}, spec)


@pytest.mark.slow
@pytest.mark.parametrize("head", [["model.notes=ordered"], ["model.pitch_window=3"],
                                  ["model.notes=voices", "model.pitch_window=2"]],
                         ids=["ordered", "pitch_window", "voices"])  # fmt: skip
def test_lstm_frames_train_sample_and_export_to_onnx(tmp_path, head):
    """The LSTM frame models through the command line, as a user runs them: trains on the
    tunes, writes pieces, and the ONNX graph scores frames as PyTorch does (the same nats, or
    the same logits), on more frames than it was traced on."""
    ort = pytest.importorskip("onnxruntime")
    import aigc_cli as aigc

    args = ["model=frames", "dataset=tunes", *MUSIC_RUNS["frames"], "model.backbone=lstm",
            *head, "trainer.max_steps=3", "trainer.batch_size=4",
            "trainer.progress=false", "trainer.device=cpu", "hydra.run.dir=run"]  # fmt: skip
    out = run_cli("train", *args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    nll = json.loads((tmp_path / "run" / "metrics.json").read_text())["test/frame_nll"]
    # in 3 steps the ordered model beats 88 fair coins; independent notes start above them
    assert 0 < nll < (61 if head == ["model.notes=ordered"] else math.inf)
    out = run_cli("sample", "run=run", "n=2", "out=pieces", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert all(_mido_notes(m.read_bytes()) for m in (tmp_path / "pieces").glob("*.mid"))
    out = run_cli("export", "run=run", "out=onnx", "format=onnx", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    model = aigc.load(tmp_path / "onnx").module
    x = (torch.rand(3, 5, 88) < 0.3).float()  # fuller frames than any the graph was traced on
    session = ort.InferenceSession(str(tmp_path / "onnx" / "frames.onnx"))
    (scores,) = session.run(None, {"frames": x.numpy()})
    assert torch.allclose(torch.from_numpy(scores), model(x), atol=1e-4)


def test_overlapping_area_against_the_closed_form_of_two_normals():
    """Two unit normals d apart overlap by 2 Φ(-d/2); kernel estimates from 4000 draws each
    come within 0.03 of it."""
    from aigc_cli.data.music_features import overlapping_area

    g = torch.Generator().manual_seed(0)
    for d in (0.0, 1.0, 3.0):
        a, b = torch.randn(4000, generator=g), torch.randn(4000, generator=g) + d
        exact = 2 * 0.5 * math.erfc(d / 2 / math.sqrt(2))
        assert overlapping_area(a, b) == pytest.approx(exact, abs=0.03), d


def test_yang_lerch_features_by_hand():
    """A roll (row 0 = C4) with C4 held 2 steps, E4 and G4 together at step 2 for one step,
    and C5 for 5 steps from step 3."""
    from aigc_cli.data.music_features import piece_features

    roll = torch.zeros(13, 8, dtype=torch.bool)
    roll[0, 0:2] = True
    roll[4, 2] = roll[7, 2] = True
    roll[12, 3:8] = True
    f = piece_features(roll, low=60)
    assert f["pitch_count"].item() == 4 and f["pitch_range"].item() == 12
    assert f["pitch_class_histogram"].tolist() == pytest.approx(
        [2 / 4, 0, 0, 0, 1 / 4, 0, 0, 1 / 4, 0, 0, 0, 0]
    )  # C twice (C4, C5), E, G
    # onsets at 0, 2, 3 with mean pitches 0, 5.5, 12: intervals 5.5 and 6.5; gaps 2 and 1
    assert f["pitch_interval"].item() == pytest.approx(6.0)
    assert f["inter_onset_interval"].item() == pytest.approx(1.5)
    assert f["note_rate"].item() == pytest.approx(4 / 8)
    # lengths 2, 1, 1, 5 in bins ≤1, ≤2, ≤3, ≤4, ≤8, longer
    assert f["note_length_histogram"].tolist() == pytest.approx([0.5, 0.25, 0, 0, 0.25, 0])


def test_samples_like_the_test_pieces_overlap_more_than_noise():
    """The overlapping area of the test pieces against themselves-like pieces (the validation
    split) is high, against random rolls low; both land in the sample metrics."""
    from aigc_cli.build import build_data

    data = build_data({"name": "tunes", "representation": "frames", "window": 16})
    real = data.pieces["valid"][:16]
    like = Music(rolls=torch.stack([p.roll[:, :16] for p in real]), low=21, step=1.0, tempo=90.0)
    noise = Music(rolls=torch.rand(16, 88, 16) < 0.05, low=21, step=1.0, tempo=90.0)
    good, bad = data.sample_metrics(like), data.sample_metrics(noise)
    assert good["samples_overlap_area"] > 0.6 > 0.3 > bad["samples_overlap_area"]
    assert 0 < good["real_overlap_area"] <= 1


def test_mode_labels_by_hand():
    """Krumhansl-Schmuckler on sounding steps: a C major scale is major, C harmonic minor is
    minor; roll windows carry their piece's mode as the class a music classifier learns."""
    from aigc_cli.build import build_data
    from aigc_cli.data.music import mode_of

    def scale(pitches):
        roll = torch.zeros(88, len(pitches) + 2, dtype=torch.bool)
        for t, p in enumerate([*pitches, 60, 60]):  # the tonic again, held
            roll[p - 21, t] = True
        return roll

    assert mode_of(scale([60, 62, 64, 65, 67, 69, 71, 72]), 21) == 0
    assert mode_of(scale([60, 62, 63, 65, 67, 68, 71, 72]), 21) == 1
    data = build_data({"name": "tunes", "representation": "roll"})
    assert data.spec.num_classes == 2 and data.spec.class_names == ["major", "minor"]
    # a tune (32 steps) is one window: its label is its own estimated mode
    assert data.train[1].tolist() == [mode_of(p.roll, 21) for p in data.pieces["train"]]


@pytest.mark.slow
def test_frechet_distance_on_piano_rolls_uses_a_music_classifier(run_main, tmp_path):
    """A classifier trained on the rolls' modes is found by dataset, and a family trained on
    the same rolls reports a Fréchet distance on its features, naming that classifier."""
    rolls = ["dataset=tunes", "dataset.representation=roll", "trainer.max_steps=3",
             "trainer.batch_size=8", "trainer.progress=false", "trainer.device=cpu"]  # fmt: skip
    code, _, err = run_main("train", "model=classifier", *rolls, "hydra.run.dir=outputs/clf")
    assert code == 0, err
    code, _, err = run_main("train", "model=vae", *rolls, *MUSIC_RUNS["vae"][1:],
                            "metrics.names=[fid]", "metrics.num_samples=24",
                            "metrics.batch_size=8", "hydra.run.dir=outputs/vae")  # fmt: skip
    assert code == 0, err
    record = json.loads((tmp_path / "outputs" / "vae" / "metrics.json").read_text())
    assert record["test/fid"] > 0 and math.isfinite(record["test/fid"])
    assert "outputs/clf" in record["methods"]["test/fid"]
