"""Name → component registries. Configs name a registered key, never a Python path, so a config
or a checkpoint can only select components shipped with aigc."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aigc_cli.errors import ConfigError


@dataclass(frozen=True)
class Entry:
    name: str
    obj: Any  # the registered class or builder function
    config: type  # dataclass describing every option, used to validate the YAML
    description: str


class Registry:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, config: type | None = None) -> Callable[[Any], Any]:
        """Decorator: `@MODELS.register("vae")`. The config dataclass defaults to `obj.Config`."""

        def decorator(obj: Any) -> Any:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            cfg_cls = config if config is not None else getattr(obj, "Config", None)
            if cfg_cls is None:
                raise ValueError(f"{self.kind} '{name}' needs a Config dataclass")
            doc = (obj.__doc__ or "").strip().splitlines()
            self._entries[name] = Entry(name, obj, cfg_cls, doc[0] if doc else "")
            return obj

        return decorator

    def get(self, name: str) -> Entry:
        _load_builtins()
        if name not in self._entries:
            raise ConfigError(
                f"unknown {self.kind} '{name}'; choose from: {', '.join(self.names())}"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        _load_builtins()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        _load_builtins()
        return name in self._entries


MODELS = Registry("model")
DATASETS = Registry("dataset")


def _load_builtins() -> None:
    # Importing the packages runs their @register decorators; done lazily so that
    # `aigc --help` never pays for importing torch.
    import aigc_cli.data
    import aigc_cli.models  # noqa: F401
