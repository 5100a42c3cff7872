"""Datasets: one module each, registered when the registry is first asked (registry.py)."""

from aigc_cli.data.base import Batch, BatchIterator, DataModule, DataSpec, TensorData

__all__ = ["Batch", "BatchIterator", "DataModule", "DataSpec", "TensorData"]
