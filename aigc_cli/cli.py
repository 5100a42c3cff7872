"""The command line: `aigc train|sample|eval|list ...`. This is the only file that knows the
subcommands; each is a Hydra app whose body is one call, so every Hydra flag (--cfg, --help, -m,
hydra.run.dir=...) works after the subcommand. Errors a user can fix print one line, no traceback
(HYDRA_FULL_ERROR=1 shows it)."""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import hydra
from omegaconf import DictConfig

CONFIGS = "pkg://aigc_cli.configs"
COMMANDS = {
    "train": "train a model: aigc train model=gan dataset=shapes trainer.max_steps=2000",
    "sample": "write samples of a run: aigc sample [run=<run dir>] n=64 seed=1",
    "eval": "evaluate a run on its test split: aigc eval [run=<run dir>]",
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
    from aigc_cli.runs import run_train

    return run_train(cfg)


@hydra.main(config_path=CONFIGS, config_name="sample", version_base="1.3")
def sample_app(cfg: DictConfig) -> None:
    from aigc_cli.runs import run_sample

    run_sample(cfg)


@hydra.main(config_path=CONFIGS, config_name="eval", version_base="1.3")
def eval_app(cfg: DictConfig) -> None:
    from aigc_cli.runs import run_eval

    run_eval(cfg)


def list_command() -> None:
    from rich.table import Table

    from aigc_cli.logger import console
    from aigc_cli.registry import DATASETS, MODELS

    for registry in (MODELS, DATASETS):
        table = Table(title=f"{registry.kind}s", title_justify="left", show_header=False)
        table.add_column(registry.kind, style="bold cyan")
        table.add_column("description")
        for entry in registry.entries():
            table.add_row(entry.name, entry.description)
        console.print(table)


APPS = {"train": train_app, "sample": sample_app, "eval": eval_app}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    if argv[0] in ("-V", "--version"):
        from aigc_cli import __version__

        print(f"aigc {__version__}")
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        _fail(f"unknown command '{command}'; choose from: {', '.join(COMMANDS)}", 2)
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    # Hydra then raises instead of printing its own report; we print one line below.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        if command == "list":
            list_command()
            return
        if command == "train":
            rest = _resume_overrides(rest)
        sys.argv = [f"aigc-{command}", *rest]
        APPS[command]()
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except BaseException as e:
        if type(e).__name__ == "UserExit":  # an AigcError from inside a run
            if full_error:
                raise e.error from None  # type: ignore[attr-defined]
            e = e.error  # type: ignore[attr-defined]
        elif not isinstance(e, Exception):
            raise  # SystemExit and friends
        if full_error:
            raise
        message, code = describe_error(e, rest)
        if message is None:
            raise  # a bug in aigc: keep the traceback
        _fail(message, code)
    finally:
        if not full_error:
            os.environ.pop("HYDRA_FULL_ERROR", None)


def _resume_overrides(args: list[str]) -> list[str]:
    """`resume=<run|ckpt|latest>` continues in the run's own dir: point hydra.run.dir there."""
    resume = next((a.split("=", 1)[1] for a in args if a.startswith("resume=")), None)
    if not resume or resume == "null" or any(a.startswith("hydra.run.dir=") for a in args):
        return args
    from aigc_cli.build import resolve_checkpoint, run_dir_of

    run_dir = run_dir_of(resolve_checkpoint(resume))
    return [*args, f"hydra.run.dir={run_dir}"]


def _fail(message: str, code: int) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"[bold red]aigc: error:[/] {escape(message)}"
    )
    sys.exit(code)


def describe_error(e: BaseException, args: list[str]) -> tuple[str | None, int]:
    """One line for errors a user can fix, or (None, 0) for a bug."""
    from hydra.errors import (
        ConfigCompositionException,
        HydraException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import OmegaConfBaseException

    from aigc_cli.errors import AigcError

    if isinstance(e, AigcError):
        return str(e), e.exit_code
    text = str(e).strip()
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
    if type(e).__name__ == "OutOfMemoryError":
        return "out of memory (use a smaller trainer.batch_size or a smaller model)", 1
    return None, 0


def _unknown_key(key: str, args: list[str]) -> str:
    import dataclasses

    from aigc_cli.config import OptimConfig, TrainerConfig

    section, _, name = key.partition(".")
    fields: list[str] = []
    if section in ("trainer", "optim"):
        schema: Any = TrainerConfig if section == "trainer" else OptimConfig
        fields = [f.name for f in dataclasses.fields(schema)]
    elif section in ("model", "dataset"):
        from aigc_cli.registry import DATASETS, MODELS

        registry = MODELS if section == "model" else DATASETS
        chosen = next((a.split("=", 1)[1] for a in args if a.startswith(f"{section}=")), None)
        chosen = chosen or ("vae" if section == "model" else "shapes")
        if chosen in registry:
            fields = [f.name for f in dataclasses.fields(registry.get(chosen).config)]
    import difflib

    allowed = f"; allowed keys in {section}: {', '.join(fields)}" if fields else ""
    close = difflib.get_close_matches(name, fields, n=1)
    guess = f" (did you mean '{section}.{close[0]}'?)" if close else ""
    return f"unknown config key '{key}'{guess}{allowed}"


if __name__ == "__main__":
    main()
