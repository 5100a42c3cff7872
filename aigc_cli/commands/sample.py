"""`aigc sample`: rebuild a trained model from its checkpoint and write samples to its run dir."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from aigc_cli.build import build_data, resolve_device
from aigc_cli.config import check, command_options, validate
from aigc_cli.console import console
from aigc_cli.data.midi_folder import read_notes
from aigc_cli.data.music import PIECE, Piece, encode, music_spec, piece_from_notes
from aigc_cli.errors import ConfigError
from aigc_cli.models.base import GenerativeModel, HasSamplers, Interpolates, SamplerOptions
from aigc_cli.results import Images, SampleResult
from aigc_cli.results.fluidsynth import pick_soundfont
from aigc_cli.results.music import PIECES, Music
from aigc_cli.store.rundir import RunDir
from aigc_cli.store.runs import load_run, resolve_checkpoint

SAMPLER_OPTIONS = tuple(SamplerOptions.__dataclass_fields__)


@dataclass
class SampleConfig(SamplerOptions):
    run: str | None = None  # run dir or checkpoint file; null = the newest run under outputs/
    checkpoint: str = "last"  # which checkpoint of the run: last | best
    n: int = 0  # images, texts or pieces to generate; 0 = 64 images, 1 text or 4 pieces
    seed: int = 0  # sampling seed; the same seed gives the same samples
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    ema: bool = True  # use the EMA weights when the run kept them
    nrow: int = 0  # images per grid row; 0 = the model's choice (square, or one row per class)
    out: str | None = None  # output file; null = <run>/samples/<time>.png (or .txt)
    mode: str = "sample"  # sample | interpolate (latent interpolation grid)
    prompt: str = ""  # text models: the text to continue; text-to-image: what to draw
    prompts: list[str] = field(default_factory=list)  # text-to-image: one grid row per prompt
    prompts_file: str | None = None  # text-to-image: a file of prompts, one a line
    prompt_midi: str | None = None  # music token models: a MIDI file whose opening they continue
    prompt_piece: int | None = None  # music token models: continue the run's N-th test piece
    prompt_steps: int = 16  # prompt_midi / prompt_piece: grid steps of its opening to continue
    max_new_tokens: int = 500  # text models: tokens to generate after the prompt
    temperature: float = 1.0  # text models: softmax temperature (lower = more conservative)
    top_k: int = 0  # text models: keep the k most likely tokens; 0 = all
    top_p: float = 1.0  # text models: keep the smallest set with this total probability
    # music: WAV previews by auto (FluidSynth where it and a soundfont are installed, else
    # aigc's synthesiser) | synth | fluidsynth
    audio: str = "auto"
    soundfont: str | None = None  # a General MIDI .sf2; null = $AIGC_SOUNDFONT or the system's


def sample(node: Any) -> Path:
    """Write samples of a trained run; returns the file written."""
    cfg = validate("sample", SampleConfig, command_options(node))
    check(cfg.n >= 0, "n", f"{cfg.n} must be >= 1 (or 0 for the default)")
    check(cfg.temperature > 0, "temperature", "must be > 0")
    check(0 < cfg.top_p <= 1, "top_p", "must be in (0, 1]")
    check(cfg.max_new_tokens >= 1, "max_new_tokens", f"{cfg.max_new_tokens} must be >= 1")
    check(cfg.mode in ("sample", "interpolate"), "mode", "choose from: sample, interpolate")
    ckpt_path = resolve_checkpoint(cfg.run, cfg.checkpoint)
    model, record = load_run(ckpt_path, resolve_device(cfg.device), use_ema=cfg.ema)
    run = RunDir.of_checkpoint(ckpt_path)
    if not isinstance(model, GenerativeModel):
        raise ConfigError(
            f"{run} is a run of model '{model.cfg.name}', which generates no samples",
            hint="pass run=<dir> of a generative run (vae, gan, transformer)",
        )
    if cfg.mode == "interpolate" and not isinstance(model, Interpolates):
        raise ConfigError(
            f"bad value for 'mode': model '{model.cfg.name}' has no latent space to interpolate",
            hint="use mode=sample",
        )
    soundfont = pick_soundfont(cfg.audio, cfg.soundfont)  # before drawing: a bad one is quick
    result = draw(cfg, model, record)
    if isinstance(result, Music):
        result.soundfont = soundfont
    if cfg.nrow and isinstance(result, Images):
        result.nrow = cfg.nrow
    if cfg.out:
        out = _write_to(result, Path(cfg.out))
    else:
        out = result.write(run.sample_file(time.strftime("%Y%m%d-%H%M%S")))
    if result.describe():
        console.print(result.describe())
    console.print(f"[green]samples written to[/] {out}", soft_wrap=True)
    return out


def draw(cfg: SampleConfig, model: GenerativeModel, record: dict[str, Any]) -> SampleResult:
    """The samples the options ask for; text streams to the console as it is generated."""
    g = torch.Generator().manual_seed(cfg.seed)
    music = music_spec(model.spec) is not None
    text = model.spec.kind == "text"
    n = cfg.n or (PIECES if music else 1 if text else 64)
    if cfg.mode == "interpolate":
        assert isinstance(model, Interpolates)
        return model.interpolate(n, generator=g)
    if not text:
        return model.sample(n, generator=g, **sampler_options(cfg, model),
                            **image_prompts(cfg, model))  # fmt: skip
    if music:
        return model.sample(
            n, generator=g, prompt=music_prompt(cfg, model, record),
            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
            top_p=cfg.top_p,
        )  # fmt: skip

    def stream(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    result = model.sample(
        n, generator=g, prompt=cfg.prompt, max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, stream=stream,
    )  # fmt: skip
    sys.stdout.write("\n")
    return result


def music_prompt(cfg: SampleConfig, model: GenerativeModel, record: dict[str, Any]) -> str:
    """The opening `prompt_steps` grid steps of `prompt_midi` or of the run's test piece number
    `prompt_piece`, in the model's own encoding (and transposed as its data was), as the text
    its tokens continue; "" without a prompt."""
    if cfg.prompt:
        raise ConfigError("prompt= is text; a music model continues a MIDI file or a test piece",
                          hint="pass prompt_midi=<file.mid> or prompt_piece=<n> "
                          "[prompt_steps=16]")  # fmt: skip
    if cfg.prompt_midi and cfg.prompt_piece is not None:
        raise ConfigError("prompt_midi= and prompt_piece= both name a prompt",
                          hint="pass one of them")  # fmt: skip
    if not cfg.prompt_midi and cfg.prompt_piece is None:
        return ""
    check(cfg.prompt_steps >= 1, "prompt_steps", f"{cfg.prompt_steps} must be >= 1")
    music = music_spec(model.spec) or {}
    if not cfg.prompt_midi:
        piece = recorded_test_piece(cfg.prompt_piece, record)
    else:
        path = Path(cfg.prompt_midi).expanduser()
        notes = read_notes(path) if path.is_file() else []
        found = piece_from_notes(path.name, notes, music["step"], music.get("transpose", True))
        if found is None:
            raise ConfigError(
                f"bad value for 'prompt_midi': {path} is missing, unreadable or has no notes",
                hint="pass a standard MIDI file with notes on the piano's keys",
            )
        piece = found
    return PIECE + encode(piece.roll[:, : cfg.prompt_steps], music["encoding"])


def image_prompts(cfg: SampleConfig, model: GenerativeModel) -> dict[str, Any]:
    """prompt=, prompts= or prompts_file= for a text-to-image model (one grid row each;
    none: the dataset's example prompts); refused in one line for any other image model."""
    prompts = [cfg.prompt] if cfg.prompt else list(cfg.prompts)
    if cfg.prompts_file:
        path = Path(cfg.prompts_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"bad value for 'prompts_file': {path} is not a file",
                              hint="pass a text file with one prompt a line")  # fmt: skip
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        return {}
    if not model.takes_prompts:
        raise ConfigError(
            f"bad value for 'prompt': model '{model.cfg.name}' takes no text",
            hint="train a text-to-image model (model.text=true on dataset=captioned_shapes)",
        )
    return {"prompts": prompts}


def recorded_test_piece(index: int | None, record: dict[str, Any]) -> Piece:
    """The run's test piece number `index`, rebuilt from the dataset config it recorded. Only
    data without a path (the chorales, the tunes): a checkpoint never chooses what aigc reads."""
    dataset = (record.get("dataset") or {}).get("config") or {}
    if not dataset or "path" in dataset:
        raise ConfigError(
            f"prompt_piece= needs a run on built-in music data; this one read "
            f"{dataset.get('name', 'unknown data')} from a path",
            hint="pass the file itself: prompt_midi=<file.mid>",
        )
    pieces = build_data(dataset).pieces["test"]  # type: ignore[attr-defined]
    check(index is not None and 0 <= index < len(pieces), "prompt_piece",
          f"{index} must be in [0, {len(pieces) - 1}] (the run's test pieces)")  # fmt: skip
    return pieces[index]


def _write_to(result: SampleResult, out: Path) -> Path:
    """`out=` names the file itself, whatever its suffix."""
    written = result.write(out.with_suffix(""))
    if written != out:
        written.replace(out)
    return out


def sampler_options(cfg: Any, model: Any) -> dict[str, Any]:
    """sampler=, steps=, guidance=, eta= for the families that have samplers; elsewhere
    they are refused in one line rather than ignored."""
    given = {k: getattr(cfg, k) for k in SAMPLER_OPTIONS}
    given = {k: v for k, v in given.items() if v is not None}
    if given and not isinstance(model, HasSamplers):
        raise ConfigError(
            f"{', '.join(given)}: model '{model.cfg.name}' has no sampler options",
            hint="they apply to diffusion and flow runs",
        )
    if given:
        other = [k for k in given if k not in model.sampler_options]
        if other:
            raise ConfigError(
                f"{', '.join(other)} does not apply to model '{model.cfg.name}'",
                hint=f"its sampler options are: {', '.join(model.sampler_options)}",
            )
    return given
