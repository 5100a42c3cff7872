"""The command line: argv, the Hydra apps, one-line error reports.

`aigc --help` imports no torch."""

from aigc_cli.cli.app import main

__all__ = ["main"]
