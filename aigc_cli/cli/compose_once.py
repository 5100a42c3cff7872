"""One config composition for a single run. `@hydra.main` composes the config twice for a plain
`aigc train ...`: once to read `hydra.mode` (a config may make a run a sweep) and once more for
the run itself. Each composition reads and merges every YAML file in the defaults list, so the
second one doubled Hydra's share of start-up.

`install()` makes the first composition the one the run would make (RUN mode, overrides checked
as for a run) and keeps it; the run then takes it, with the `hydra.mode=RUN` that Hydra adds
applied to it, instead of composing again. Anything else falls back to Hydra's own path, so
errors and sweeps are exactly Hydra's: a first composition that fails (a sweep override without
-m, a missing default), a config that sets `hydra.mode: MULTIRUN`, other overrides, another
config. A test holds the files Hydra writes (.hydra/config.yaml, hydra.yaml, overrides.yaml) equal
to those of the two-composition path.

This leans on Hydra 1.3's `Hydra.get_mode`/`Hydra.compose_config`; where they are missing,
`install()` does nothing and Hydra composes twice as before."""

from __future__ import annotations

import logging
import sys
from typing import Any

from hydra.types import RunMode

RUN_MODE = "hydra.mode=RUN"


def install() -> bool:
    """Patch Hydra (once per process) to reuse the mode-reading composition for the run.
    Returns whether the patch is in place."""
    try:
        # Deferred: Hydra's internals are read only when patching them.
        from hydra._internal import hydra as hydra_module
    except ImportError:
        return False
    cls = hydra_module.Hydra
    if "_aigc_compose_once" in cls.__dict__:
        return True
    if not all(callable(getattr(cls, n, None)) for n in ("get_mode", "compose_config")):
        return False
    original_get_mode, original_compose = cls.get_mode, cls.compose_config

    def get_mode(self: Any, config_name: str | None, overrides: list[str]) -> Any:
        self._aigc_composed = None
        if {"-m", "--multirun"} & set(sys.argv[1:]):  # a sweep composes for itself
            return original_get_mode(self, config_name, overrides)
        try:
            cfg = original_compose(
                self, config_name=config_name, overrides=list(overrides), run_mode=RunMode.RUN
            )
        except Exception:
            return original_get_mode(self, config_name, overrides)
        if cfg.hydra.mode in (None, RunMode.RUN):
            self._aigc_composed = (config_name, list(overrides), cfg)
        return cfg.hydra.mode

    def compose_config(
        self: Any,
        config_name: str | None,
        overrides: list[str],
        run_mode: RunMode,
        with_log_configuration: bool = False,
        from_shell: bool = True,
        validate_sweep_overrides: bool = True,
    ) -> Any:
        kept = self.__dict__.pop("_aigc_composed", None)
        if kept is not None and run_mode == RunMode.RUN and from_shell and validate_sweep_overrides:
            cfg = _reuse(kept, config_name, list(overrides))
            if cfg is not None:
                if with_log_configuration:
                    _configure_logging(self, hydra_module, cfg, config_name, overrides)
                return cfg
        return original_compose(
            self,
            config_name,
            overrides,
            run_mode,
            with_log_configuration,
            from_shell,
            validate_sweep_overrides,
        )

    cls.get_mode, cls.compose_config = get_mode, compose_config
    cls._aigc_compose_once = (original_get_mode, original_compose)
    return True


def uninstall() -> None:
    """Hydra's own two compositions again (what `install` replaced)."""
    # Deferred: Hydra's internals are read only when patching them.
    from hydra._internal.hydra import Hydra

    originals = Hydra.__dict__.get("_aigc_compose_once")
    if originals:
        Hydra.get_mode, Hydra.compose_config = originals
        del Hydra._aigc_compose_once


def _reuse(kept: tuple, config_name: str | None, overrides: list[str]) -> Any:
    """The kept composition, if the run asks for the same config and overrides (plus the
    `hydra.mode=RUN` that Hydra appends when no config chose a mode); else None."""
    name, before, cfg = kept
    if name != config_name:
        return None
    if overrides == before:
        return cfg
    if overrides == [*before, RUN_MODE] and cfg.hydra.mode is None:
        cfg.hydra.mode = RunMode.RUN
        cfg.hydra.overrides.hydra.append(RUN_MODE)
        return cfg
    return None


def _configure_logging(hydra: Any, module: Any, cfg: Any, name: str | None, overrides: Any) -> None:
    """What Hydra's compose_config does with `with_log_configuration=True`."""
    # Deferred: Hydra's internals are read only when patching them.
    from hydra.core.utils import configure_log

    configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)
    module.log = logging.getLogger(module.__name__)
    hydra._print_debug_info(name, overrides, RunMode.RUN)
