"""The one rich console everything prints through; torch-free, so `aigc list` stays fast."""

from rich.console import Console

console = Console(stderr=False)
