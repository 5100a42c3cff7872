"""Standard image datasets through torchvision: MNIST, Fashion-MNIST and CIFAR-10.

Each is small enough to decode once into one uint8 tensor (MNIST: 47 MB), so training batches
are index lookups with no per-sample PIL transform (see TensorData). Resizing or changing the
channel count is done once, on the whole tensor, when the dataset is built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.datasets as tvd
from torch import Tensor

from aigc_cli.config import check
from aigc_cli.data.base import DataSpec, TensorData
from aigc_cli.errors import DataError
from aigc_cli.registry import DATASETS


@dataclass
class TorchvisionConfig:
    name: str = "mnist"
    root: str = "data"  # folder holding <Dataset>/raw (torchvision's layout); env AIGC_DATA
    download: bool = True  # fetch missing files (needs the network); false = fail clearly
    image_size: int = 0  # resize (bilinear, antialiased) to this; 0 = native size
    channels: int = 0  # 1 or 3 to convert; 0 = native channels
    train_size: int = 0  # use the first N training images; 0 = all
    test_size: int = 0  # use the first N test images; 0 = all


@dataclass(frozen=True)
class _Source:
    folder: str  # sub-folder torchvision reads under root
    files: tuple[str, ...]  # what must be there for an offline run
    classes: tuple[str, ...]
    binary: bool = False


_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
SOURCES = {
    "mnist": _Source("MNIST/raw", _MNIST_FILES, tuple(str(i) for i in range(10)), binary=True),
    "fashion_mnist": _Source(
        "FashionMNIST/raw",
        _MNIST_FILES,
        (
            "t-shirt",
            "trouser",
            "pullover",
            "dress",
            "coat",
            "sandal",
            "shirt",
            "sneaker",
            "bag",
            "boot",
        ),
    ),
    "cifar10": _Source(
        "cifar-10-batches-py",
        ("data_batch_1", "data_batch_5", "test_batch", "batches.meta"),
        (
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ),
    ),
}


def _missing(root: Path, src: _Source) -> list[str]:
    folder = root / src.folder
    return [f for f in src.files if not (folder / f).is_file()]


def _load_split(name: str, root: Path, train: bool, download: bool) -> tuple[Tensor, Tensor]:
    """(N, C, H, W) uint8 images and (N,) int64 labels, straight from torchvision's arrays."""
    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
    ds = cls(str(root), train=train, download=download)
    data = torch.as_tensor(ds.data)
    images = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)  # CIFAR is NHWC
    return images.contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)


def _convert(images: Tensor, size: int, channels: int) -> Tensor:
    """Resize / change channels once for the whole split, in chunks (bounded memory)."""
    c, h = images.shape[1], images.shape[2]
    if (not size or size == h) and (not channels or channels == c):
        return images
    out = []
    for chunk in images.split(4096):
        x = chunk.float()
        if channels == 1 and c == 3:
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        elif channels == 3 and c == 1:
            x = x.expand(-1, 3, -1, -1)
        if size and size != h:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def torchvision_dataset(cfg: TorchvisionConfig) -> TensorData:
    src = SOURCES[cfg.name]
    check(cfg.image_size == 0 or 8 <= cfg.image_size <= 256, "dataset.image_size", "0 or 8..256")
    check(cfg.channels in (0, 1, 3), "dataset.channels", f"{cfg.channels} must be 0, 1 or 3")
    check(cfg.train_size >= 0 and cfg.test_size >= 0, "dataset.train_size", "must be >= 0")
    root = Path(os.path.expanduser(cfg.root))
    missing = _missing(root, src)
    if missing and not cfg.download:
        raise DataError(
            f"dataset {cfg.name} not found: {root / src.folder} lacks {', '.join(missing)}",
            hint="put the files there, point dataset.root=<folder> at a copy, "
            "or set dataset.download=true when online",
        )
    try:
        train = _load_split(cfg.name, root, True, bool(missing))
        test = _load_split(cfg.name, root, False, False)
    except (OSError, RuntimeError) as e:  # no network, a half-downloaded or corrupt file
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise DataError(
            f"could not read dataset {cfg.name} from {root / src.folder}: {reason}",
            hint="offline, copy the files "
            f"({', '.join(src.files)}) there or point dataset.root=<folder> at a copy",
        ) from e
    splits = []
    for (x, y), n in ((train, cfg.train_size), (test, cfg.test_size)):
        if n:
            x, y = x[:n], y[:n]
        splits.append((_convert(x, cfg.image_size, cfg.channels), y))
    channels, size = splits[0][0].shape[1], splits[0][0].shape[2]
    spec = DataSpec(
        kind="image",
        shape=[channels, size, size],
        num_classes=len(src.classes),
        class_names=list(src.classes),
        binary=src.binary,
    )
    return TensorData(spec, splits[0], splits[1])


@DATASETS.register("mnist", config=TorchvisionConfig)
def mnist(cfg: TorchvisionConfig) -> TensorData:
    """MNIST handwritten digits, 28x28 grey, 60k/10k (torchvision; in memory)"""
    return torchvision_dataset(cfg)


@DATASETS.register("fashion_mnist", config=TorchvisionConfig)
def fashion_mnist(cfg: TorchvisionConfig) -> TensorData:
    """Fashion-MNIST clothing, 28x28 grey, 60k/10k (torchvision; in memory)"""
    return torchvision_dataset(cfg)


@DATASETS.register("cifar10", config=TorchvisionConfig)
def cifar10(cfg: TorchvisionConfig) -> TensorData:
    """CIFAR-10 objects, 32x32 colour, 50k/10k (torchvision; in memory)"""
    return torchvision_dataset(cfg)
