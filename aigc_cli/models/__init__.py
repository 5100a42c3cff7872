"""Model families; importing this package registers every module in it."""

from aigc_cli.models.base import GenerativeModel, Stage

__all__ = ["GenerativeModel", "Stage"]


def _discover() -> None:
    """Import every module of this package, so each registers itself: adding a model family is one
    .py file here plus its YAML, with no list to edit."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


_discover()
