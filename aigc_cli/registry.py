"""Name → component registries. Configs name a registered key, never a Python path, so a config
or a checkpoint can only select components shipped with aigc."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
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


FAMILIES = ("aigc_cli.data", "aigc_cli.models")  # packages whose every module registers itself


def _load_builtins() -> None:
    """Import every module of the built-in packages, so each runs its @register decorator:
    adding a model or a dataset is one .py file plus its YAML, with no list to edit. Done on
    first use, so that `aigc --help` never pays for importing torch."""
    for package in FAMILIES:
        if package in _loaded:
            continue
        _loaded.add(package)
        module = importlib.import_module(package)
        for info in pkgutil.iter_modules(module.__path__):
            importlib.import_module(f"{package}.{info.name}")


_loaded: set[str] = set()


def catalogue() -> dict[str, list[tuple[str, str]]]:
    """(name, description) of every built-in model and dataset, read from the registration
    decorators in the source instead of by importing the modules (and torch with them), so
    `aigc list` answers at once. tests/test_registry.py holds it equal to the live registries."""
    pkg = Path(__file__).parent
    found: dict[str, list[tuple[str, str]]] = {}
    for registry, folder in ((MODELS, "models"), (DATASETS, "data")):
        var = "MODELS" if registry is MODELS else "DATASETS"
        entries = found.setdefault(registry.kind, [])
        for path in sorted((pkg / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                    continue
                for dec in node.decorator_list:
                    if (
                        isinstance(dec, ast.Call)
                        and isinstance(dec.func, ast.Attribute)
                        and dec.func.attr == "register"
                        and isinstance(dec.func.value, ast.Name)
                        and dec.func.value.id == var
                        and dec.args
                        and isinstance(dec.args[0], ast.Constant)
                    ):
                        doc = (ast.get_docstring(node) or "").strip().splitlines()
                        entries.append((str(dec.args[0].value), doc[0] if doc else ""))
        entries.sort()
    return found
