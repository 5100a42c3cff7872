"""What every dataset hands to the loop: a DataSpec describing the data, and resumable batch
iterators over tensors held in memory (on the training device when they fit)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from aigc_cli.errors import ConfigError
from aigc_cli.results import SampleResult

Batch = tuple[Tensor, ...]


@dataclass
class DataSpec:
    """Everything a model needs to size itself; stored in checkpoints so sampling needs no data."""

    kind: str  # "image" | "points" | "text"
    shape: list[int]  # (C, H, W) for images, (D,) for points, (block_size,) for text
    num_classes: int = 0  # labels available for conditioning / coverage metrics; 0 = unlabelled
    class_names: list[str] = field(default_factory=list)
    binary: bool = False  # pixel values are (almost) only 0 and 1
    vocab_size: int = 0  # text: number of token ids
    tokenizer: dict[str, Any] = field(default_factory=dict)  # text: {"kind": ..., "chars": ...}
    extra: dict[str, Any] = field(default_factory=dict)  # dataset-specific facts (mode centres)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class BatchIterator:
    """An endless iterator whose position is a small dict, so a resumed run sees the same order."""

    def __next__(self) -> Batch:
        raise NotImplementedError

    def __iter__(self) -> BatchIterator:
        return self

    def state_dict(self) -> dict[str, int]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, int]) -> None:
        raise NotImplementedError


class DataModule:
    """Base for in-memory datasets; subclasses fill `spec` and implement the iterators."""

    spec: DataSpec
    #: samples drawn for `sample_metrics` at most (0 = as many as asked): music is drawn
    #: autoregressively, a piece at a time per step, so it asks for fewer than images do
    metric_samples: int = 0

    def to(self, device: torch.device) -> DataModule:
        return self

    def train_iter(self, batch_size: int, seed: int) -> BatchIterator:
        raise NotImplementedError

    def eval_iter(self, batch_size: int, max_batches: int = 0) -> Iterator[Batch]:
        raise NotImplementedError

    def sample_metrics(self, samples: SampleResult) -> dict[str, float]:
        """Metrics computed from generated samples alone (e.g. mode coverage); none by default."""
        return {}


# Dataset settings that name places on disk or the network. `aigc eval` takes them from the
# user's command and the package's dataset YAML, never from a checkpoint being loaded.
PATH_KEYS = ("root", "path", "download")


def has_sample_metrics(data: DataModule) -> bool:
    """Whether the dataset defines metrics of generated samples (the loop then samples)."""
    return type(data).sample_metrics is not DataModule.sample_metrics


def check_batch_size(batch_size: int, n: int) -> None:
    """A batch must fit in the training split; said as a config error, before any step."""
    if batch_size > n:
        raise ConfigError(
            f"bad value for 'trainer.batch_size': {batch_size} is larger than the "
            f"{n} training samples"
        )


class _EpochIterator(BatchIterator):
    """Shuffled epochs without replacement; drops the ragged last batch."""

    def __init__(self, data: TensorData, batch_size: int, seed: int) -> None:
        n = data.train[0].shape[0]
        check_batch_size(batch_size, n)
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.epoch, self.pos = 0, 0
        self.per_epoch = n // batch_size
        self._perm = self._permutation()

    def _permutation(self) -> Tensor:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.data.train[0].shape[0], generator=g)
        return perm.to(self.data.device)

    def __next__(self) -> Batch:
        if self.pos >= self.per_epoch:
            self.epoch, self.pos = self.epoch + 1, 0
            self._perm = self._permutation()
        idx = self._perm[self.pos * self.batch_size : (self.pos + 1) * self.batch_size]
        self.pos += 1
        return self.data.take("train", idx)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._perm = self._permutation()


class TensorData(DataModule):
    """Samples (and labels) held as tensors; uint8 images are scaled to [0, 1] per batch, which
    keeps the resident copy 4x smaller than float and needs no per-sample transform."""

    # Keep the whole dataset on the accelerator when it is at most this big.
    DEVICE_LIMIT_BYTES = 2 * 1024**3

    def __init__(self, spec: DataSpec, train: tuple[Tensor, ...], test: tuple[Tensor, ...]):
        self.spec = spec
        self.train, self.test = train, test
        self.device = torch.device("cpu")

    def to(self, device: torch.device) -> TensorData:
        size = sum(t.numel() * t.element_size() for t in (*self.train, *self.test))
        if device.type != "cpu" and size <= self.DEVICE_LIMIT_BYTES:
            self.train = tuple(t.to(device) for t in self.train)  # type: ignore[assignment]
            self.test = tuple(t.to(device) for t in self.test)  # type: ignore[assignment]
            self.device = device
        return self

    def take(self, split: str, idx: Tensor) -> Batch:
        """Rows `idx` of every tensor of the split: (x, labels, and whatever else it holds)."""
        x, *rest = self.train if split == "train" else self.test
        xb = x[idx]
        if xb.dtype == torch.uint8:
            xb = xb.float().div_(255.0)
        return (xb, *(t[idx] for t in rest))

    def train_iter(self, batch_size: int, seed: int) -> BatchIterator:
        return _EpochIterator(self, batch_size, seed)

    def eval_iter(self, batch_size: int, max_batches: int = 0) -> Iterator[Batch]:
        n = self.test[0].shape[0]
        for i, start in enumerate(range(0, n, batch_size)):
            if max_batches and i >= max_batches:
                return
            idx = torch.arange(start, min(start + batch_size, n), device=self.device)
            yield self.take("test", idx)
