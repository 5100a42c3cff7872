"""Request bodies, checked before anything is queued: each bad parameter is an `ApiError`
(a 4xx with an OpenAI-style error object that names the parameter), in the words
`aigc sample` uses for the same option."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from aigc_cli.errors import AigcError

#: parameters OpenAI clients may send that change nothing here
IGNORED = ("user", "stream_options", "quality", "style", "logprobs", "echo", "suffix")


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": None}}  # fmt: skip


def from_aigc(e: AigcError) -> ApiError:
    """A model's own check ("bad value for 'steps': ...") as a 400 naming the parameter."""
    message = str(e)
    found = re.search(r"'([a-z_]+)'", message)
    return ApiError(400, message, found.group(1) if found else None)


@dataclass
class Limits:
    """What one request may ask for; each is a setting of `aigc serve`."""

    max_tokens: int = 1024
    max_texts: int = 8
    max_images: int = 64
    max_pieces: int = 16
    max_steps: int = 1000
    max_body: int = 1_000_000


def json_body(raw: bytes, content_type: str | None, limits: Limits) -> dict[str, Any]:
    """The body as a JSON object. Only a JSON content type is read: a form that a page on
    another site posts (text/plain, no preflight) never reaches a model."""
    if len(raw) > limits.max_body:
        raise ApiError(413, f"the body is {len(raw)} bytes; the limit is {limits.max_body}")
    if (content_type or "").split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, "send the body as JSON with Content-Type: application/json")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


@dataclass
class Body:
    """A body's parameters, each taken once; whatever is left over is refused by name."""

    values: dict[str, Any]
    taken: set[str] = field(default_factory=set)

    def get(self, name: str, default: Any = None) -> Any:
        self.taken.add(name)
        value = self.values.get(name)
        return default if value is None else value

    def integer(self, name: str, default: int | None, low: int, high: int | None = None) -> Any:
        value = self.get(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ApiError(400, f"bad value for '{name}': {value!r} is not an integer", name)
        if value < low or (high is not None and value > high):
            bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise ApiError(400, f"bad value for '{name}': {value} must be {bound}", name)
        return value

    def number(self, name: str, default: float | None, low: float, high: float,
               low_open: bool = False) -> Any:  # fmt: skip
        value = self.get(name, default)
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise ApiError(400, f"bad value for '{name}': {value!r} is not a number", name)
        if value < low or value > high or (low_open and value == low):
            side = "(" if low_open else "["
            raise ApiError(400, f"bad value for '{name}': {value} must be in {side}{low}, {high}]",
                           name)  # fmt: skip
        return float(value)

    def boolean(self, name: str) -> bool:
        value = self.get(name, False)
        if not isinstance(value, bool):
            raise ApiError(400, f"bad value for '{name}': {value!r} is not true or false", name)
        return value

    def string(self, name: str, default: str | None = None) -> Any:
        value = self.get(name, default)
        if value is not None and not isinstance(value, str):
            raise ApiError(400, f"bad value for '{name}': {value!r} is not a string", name)
        return value

    def choice(self, name: str, choices: tuple[str, ...]) -> Any:
        value = self.string(name)
        if value is not None and value not in choices:
            raise ApiError(400, f"bad value for '{name}': '{value}'; choose from: "
                           f"{', '.join(choices)}", name)  # fmt: skip
        return value

    def integers(self, name: str) -> list[int] | None:
        value = self.get(name)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                   for v in value):  # fmt: skip
            raise ApiError(
                400, f"bad value for '{name}': {value!r} is not a list of integers", name
            )
        return value

    def finish(self) -> None:
        """Refuse what no route reads, by name (a misspelled option is not quietly ignored)."""
        unknown = sorted(k for k in self.values if k not in self.taken and k not in IGNORED)
        if unknown:
            raise ApiError(400, f"unknown parameter '{unknown[0]}'", unknown[0])
