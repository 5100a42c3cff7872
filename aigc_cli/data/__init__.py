"""Datasets; importing this package registers every built-in one."""

from aigc_cli.data import files, images, synthetic, text  # noqa: F401
from aigc_cli.data.base import Batch, BatchIterator, DataModule, DataSpec, TensorData

__all__ = ["Batch", "BatchIterator", "DataModule", "DataSpec", "TensorData"]
