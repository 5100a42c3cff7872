"""Texts: a list of strings, written as one .txt file, samples separated by a rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aigc_cli.atomic import write_text
from aigc_cli.results.base import Board, SampleResult

SEPARATOR = "\n\n---\n\n"


@dataclass(kw_only=True)
class Texts(SampleResult):
    texts: list[str] = field(default_factory=list)  # each with its prompt
    continuations: list[str] = field(default_factory=list)  # each without it
    prompt_tokens: int = 0  # tokens of the prompt
    new_tokens: list[int] = field(default_factory=list)  # tokens generated for each text

    suffix = ".txt"

    def __len__(self) -> int:
        return len(self.texts)

    def joined(self) -> str:
        return SEPARATOR.join(self.texts)

    def write(self, stem: Path) -> Path:
        path = Path(f"{stem}{self.suffix}")
        write_text(path, self.joined() + "\n")
        return path

    def log(self, board: Board, tag: str, step: int) -> None:
        super().log(board, tag, step)
        board.text(tag, self.joined(), step)
