"""The command line: `aigc train|sample|eval|export|list ...`. This is the only file that knows the
subcommands; each is a Hydra app whose body is one call, so every Hydra flag (--cfg, --help, -m,
hydra.run.dir=...) works after the subcommand. Errors a user can fix print one line, no traceback
(HYDRA_FULL_ERROR=1 shows it)."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import (
    ConfigCompositionException,
    HydraException,
    MissingConfigException,
    OverrideParseException,
)
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.markup import escape

from aigc_cli import startup
from aigc_cli.commands.sweep import resolve_sweep_dir
from aigc_cli.config import OptimConfig, TrainerConfig
from aigc_cli.errors import AigcError, UserExit
from aigc_cli.registry import DATASETS, MODELS
from aigc_cli.store import paths
from aigc_cli.store.rundir import RunDir

CONFIGS = "pkg://aigc_cli.configs"
COMMANDS = {
    "train": "train a model: aigc train model=gan dataset=shapes trainer.max_steps=2000",
    "sample": "write samples of a run: aigc sample [run=<run dir>] n=64 seed=1",
    "eval": "evaluate a run: aigc eval [run=<run dir>] [metrics=[nll,fid,kid,pr,coverage]]",
    "export": "export a run: aigc export [run=<run dir>] [out=<dir>] [format=onnx] [dtype=bf16]",
    "serve": "serve models over HTTP: aigc serve models=[<export>,...] [port=8000] [api_key=]",
    "list": "list the registered models and datasets",
}
USAGE = (
    "usage: aigc <command> [overrides...] [hydra flags]\n\ncommands:\n"
    + "\n".join(f"  {name:<7} {text}" for name, text in COMMANDS.items())
    + (
        "\n\nRun `aigc <command> --help` for the command's config groups and options; "
        "`aigc train --cfg job` prints the composed config."
    )
)


@hydra.main(config_path=CONFIGS, config_name="train", version_base="1.3")
def train_app(cfg: DictConfig) -> float | None:
    # Deferred: this command's modules (and torch) load only when it runs.
    from aigc_cli.commands.train import run_train

    with user_errors():
        return run_train(cfg)


@hydra.main(config_path=CONFIGS, config_name="sample", version_base="1.3")
def sample_app(cfg: DictConfig) -> None:
    # Deferred: this command's modules (and torch) load only when it runs.
    from aigc_cli.commands.sample import sample

    with user_errors():
        sample(cfg)


@hydra.main(config_path=CONFIGS, config_name="eval", version_base="1.3")
def eval_app(cfg: DictConfig) -> None:
    # Deferred: this command's modules (and torch) load only when it runs.
    from aigc_cli.commands.eval import run_eval

    with user_errors():
        run_eval(cfg)


@hydra.main(config_path=CONFIGS, config_name="export", version_base="1.3")
def export_app(cfg: DictConfig) -> None:
    # Deferred: this command's modules (and torch) load only when it runs.
    from aigc_cli.commands.export import run_export

    with user_errors():
        run_export(cfg)


@hydra.main(config_path=CONFIGS, config_name="serve", version_base="1.3")
def serve_app(cfg: DictConfig) -> None:
    # Deferred: this command's modules (and torch) load only when it runs.
    from aigc_cli.commands.serve import serve

    with user_errors():
        serve(cfg)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """An AigcError leaves a single run as a UserExit, a BaseException that passes Hydra's job
    runner untouched, so no 'Error executing job' banner comes before our one line. In a
    multirun, errors stay ordinary exceptions: Hydra marks that job failed and the sweep goes
    on."""
    try:
        yield
    except AigcError as e:
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        raise UserExit(e) from e


APPS = {"train": train_app, "sample": sample_app, "eval": eval_app, "export": export_app,
        "serve": serve_app}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    if argv[0] in ("-V", "--version"):
        try:
            print(f"aigc {version('aigc')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            print("aigc (not installed)")
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        _fail(f"unknown command '{command}'; choose from: {', '.join(COMMANDS)}", 2)
    if command == "list":
        # Deferred: this command's modules (and torch) load only when it runs.
        from aigc_cli.commands.list import list_command

        list_command()
        return
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    with startup.paused(), paths.command_line_root(rest), _hydra_raises():
        _run(command, rest, full_error)


def _run(command: str, rest: list[str], full_error: bool) -> None:
    """One command under Hydra, its errors said in one line."""
    try:
        if command == "train":
            if not any(a.startswith(("hydra.run.dir=", "hydra.sweep.dir=")) for a in rest):
                paths.ensure_root()
            rest = _torchrun_overrides(_sweep_overrides(_resume_overrides(rest)))
        if command == "sample":
            rest = [_quoted_prompt(a) for a in rest]
        if command == "eval":
            rest = [_eval_dataset(a) for a in rest]
        sys.argv = [f"aigc-{command}", *rest]
        APPS[command]()
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except BaseException as e:
        if isinstance(e, UserExit):  # an AigcError from inside a run
            if full_error:
                raise e.error from None
            e = e.error
        elif not isinstance(e, Exception):
            raise  # SystemExit and friends
        if full_error:
            raise
        message, code = describe_error(e, rest)
        if message is None:
            raise  # a bug in aigc: keep the traceback
        _fail(message, code)


@contextlib.contextmanager
def _hydra_raises() -> Iterator[None]:
    """Hydra raises instead of printing its own report while a command runs (we print one
    line); the variable is put back as it was afterwards."""
    before = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = before


def _resume_overrides(args: list[str]) -> list[str]:
    """`resume=<run|ckpt|latest>` continues in the run's own dir: point hydra.run.dir there.
    `resume=auto` (for requeued batch jobs) resumes when the fixed run dir already holds a
    checkpoint and starts fresh otherwise, so the same command line can be re-run."""
    resume = next((a.split("=", 1)[1] for a in args if a.startswith("resume=")), None)
    if resume == "auto":
        return _auto_resume(args)
    if not resume or resume == "null" or any(a.startswith("hydra.run.dir=") for a in args):
        return args
    # Deferred: this command's modules (and torch) load only when it runs.
    from aigc_cli.store.runs import resolve_checkpoint

    run_dir = RunDir.of_checkpoint(resolve_checkpoint(resume)).path
    return [*args, f"hydra.run.dir={run_dir}"]


def _auto_resume(args: list[str]) -> list[str]:

    run_dir = next((a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")), None)
    if run_dir is None:
        _fail(
            "resume=auto needs a fixed run dir, so a re-run finds the checkpoint: add "
            "hydra.run.dir=<dir>",
            2,
        )
    value = f"resume={run_dir}" if RunDir(run_dir).has_checkpoint() else "resume=null"
    return [value if a == "resume=auto" else a for a in args]


def _quoted_prompt(arg: str) -> str:
    """`prompt=The ` keeps its spaces: Hydra strips unquoted values, so the value is passed on
    as a quoted string (with its own quotes and backslashes escaped)."""
    if not arg.startswith("prompt="):
        return arg
    value = arg.split("=", 1)[1]
    if value[:1] in ("'", '"') and value[-1:] == value[:1] and len(value) > 1:
        return arg  # quoted by the user already
    return "prompt='" + _escape_quoted(value) + "'"


def _escape_quoted(value: str) -> str:
    """Hydra's quoted-string rule: a backslash escapes only a quote or the backslashes before
    one, so quotes get one and the backslashes before a quote (or the end) are doubled."""
    out, run = [], 0
    for ch in value:
        if ch == "\\":
            run += 1
            continue
        if ch == "'":
            out.append("\\" * (2 * run) + "\\'")
        else:
            out.append("\\" * run + ch)
        run = 0
    return "".join(out) + "\\" * (2 * run)


def _eval_dataset(arg: str) -> str:
    """`aigc eval dataset.root=/data` (or `dataset=mnist`): settings added to eval's open
    `dataset` section, where Hydra would otherwise refuse a key it does not know yet."""
    if arg.startswith("dataset="):
        return "+dataset.name=" + arg.split("=", 1)[1]
    if arg.startswith("dataset."):
        return "+" + arg
    return arg


def _sweep_overrides(args: list[str]) -> list[str]:
    """`resume_sweep=<sweep dir>|latest` reruns a sweep in its own dir: point hydra.sweep.dir
    there (the jobs then skip what an earlier pass finished)."""
    value = next((a.split("=", 1)[1] for a in args if a.startswith("resume_sweep=")), None)
    if not value or value == "null" or any(a.startswith("hydra.sweep.dir=") for a in args):
        return args
    return [*args, f"hydra.sweep.dir={resolve_sweep_dir(value)}"]


def _torchrun_overrides(args: list[str]) -> list[str]:
    """Under torchrun every rank runs this command. Rank 0 alone writes a run dir (the others
    learn its path from rank 0); a sweep cannot be split that way, so it is refused."""
    if _torchrun_var("WORLD_SIZE", 1) <= 1:
        return args
    if any(a in ("-m", "--multirun") or a == "hydra.mode=MULTIRUN" for a in args):
        _fail(
            "a sweep (-m) cannot run inside torchrun: every rank would launch every job. "
            "Run one torchrun per configuration instead, e.g. "
            "`for lr in 1e-3 3e-4; do torchrun --nproc_per_node=N -m aigc_cli train "
            "optim.lr=$lr; done`, or sweep single-process jobs with a launcher "
            "(aigc train -m hydra/launcher=joblib ...)",
            2,
        )
    if _torchrun_var("RANK", 0) == 0:
        return args
    scratch = os.path.join(tempfile.gettempdir(), f"aigc-rank{os.environ['RANK']}")
    return [
        *(a for a in args if not a.startswith(("hydra.run.dir=", "hydra.output_subdir="))),
        f"hydra.run.dir={scratch}",
        "hydra.output_subdir=null",
        "hydra/job_logging=disabled",
        "hydra/hydra_logging=disabled",
    ]


def _torchrun_var(name: str, default: int) -> int:
    """RANK / WORLD_SIZE as torchrun exports them, read without importing torch."""
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else default


def _fail(message: str, code: int) -> None:
    world = _torchrun_var("WORLD_SIZE", 1)
    where = f" (rank {_torchrun_var('RANK', 0)} of {world})" if world > 1 else ""
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"[bold red]aigc: error{where}:[/] {escape(message)}"
    )
    sys.exit(code)


def describe_error(e: BaseException, args: list[str]) -> tuple[str | None, int]:
    """One line for errors a user can fix, or (None, 0) for a bug."""
    if isinstance(e, AigcError):
        return str(e), e.exit_code
    text = str(e).strip()
    if isinstance(e, MissingConfigException) and re.search(r"hydra/(launcher|sweeper)", text):
        m = re.search(r"Could not find '(hydra/[^']+)'", text)
        what = m.group(1) if m else "a Hydra launcher or sweeper"
        return (
            f"{what} is not installed: launchers and sweepers are an optional extra; "
            "install them with: pip install 'aigc[sweep]' (from a checkout: "
            "pip install -e '.[sweep]')"
        ), 2
    if isinstance(e, MissingConfigException):
        m = re.search(r"Could not find '([^/']+)/([^']+)'", text)
        options = re.findall(r"^\t(\S+)$", text, flags=re.M)
        if m:
            group, name = m.groups()
            choices = ", ".join(options) if options else "see `aigc list`"
            return f"unknown {group} '{name}'; choose from: {choices}", 2
        return text.splitlines()[0], 2
    if isinstance(e, ConfigCompositionException):
        m = re.search(r"Could not override '([^']+)'", text)
        cause = str(e.__cause__ or "")
        if m and "not in struct" in cause:
            return _unknown_key(m.group(1), args), 2
        first = text.splitlines()[0]
        detail = cause.splitlines()[0] if cause else ""
        return f"{first} {detail}".strip(), 2
    if isinstance(e, OverrideParseException):
        return (
            f"{text.splitlines()[0]} (overrides are key=value, e.g. optim.lr=3e-4; "
            "lists as key=[a,b])"
        ), 2
    if isinstance(e, (HydraException, OmegaConfBaseException)):
        return f"bad config: {text.splitlines()[0]}", 2
    if isinstance(e, OSError) and e.filename:
        return (
            f"cannot write {e.filename}: {e.strerror or e} (pick a writable place, e.g. "
            "hydra.run.dir=<dir>)"
        ), 1
    if type(e).__name__ == "OutOfMemoryError":
        return "out of memory (use a smaller trainer.batch_size or a smaller model)", 1
    return None, 0


def _unknown_key(key: str, args: list[str]) -> str:
    section, _, name = key.partition(".")
    fields: list[str] = []
    if section in ("trainer", "optim"):
        schema: Any = TrainerConfig if section == "trainer" else OptimConfig
        fields = [f.name for f in dataclasses.fields(schema)]
    elif section in ("model", "dataset"):
        registry = MODELS if section == "model" else DATASETS
        # the last choice of the group wins, as in Hydra
        picks = [a.split("=", 1)[1] for a in args if a.startswith(f"{section}=")]
        chosen = picks[-1] if picks else None
        chosen = chosen or ("vae" if section == "model" else "shapes")
        if chosen in registry:
            fields = [f.name for f in dataclasses.fields(registry.get(chosen).config)]
    allowed = f"; allowed keys in {section}: {', '.join(fields)}" if fields else ""
    close = difflib.get_close_matches(name, fields, n=1)
    guess = f" (did you mean '{section}.{close[0]}'?)" if close and close[0] != name else ""
    return f"unknown config key '{key}'{guess}{allowed}"


if __name__ == "__main__":
    main()
