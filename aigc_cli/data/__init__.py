"""Datasets; importing this package registers every module in it."""

from aigc_cli.data.base import Batch, BatchIterator, DataModule, DataSpec, TensorData

__all__ = ["Batch", "BatchIterator", "DataModule", "DataSpec", "TensorData"]


def _discover() -> None:
    """Import every module of this package, so each registers itself: adding a dataset is one
    .py file here plus its YAML, with no list to edit."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


_discover()
