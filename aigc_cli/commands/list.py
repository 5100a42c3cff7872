"""`aigc list`: the registered models and datasets, each with its one-line description."""

from __future__ import annotations

from rich.table import Table

from aigc_cli.console import console
from aigc_cli.registry import catalogue


def list_command() -> None:
    for kind, entries in catalogue().items():
        table = Table(title=f"{kind}s", title_justify="left", show_header=False)
        table.add_column(kind, style="bold cyan")
        table.add_column("description")
        for name, description in entries:
            table.add_row(name, description)
        console.print(table)
