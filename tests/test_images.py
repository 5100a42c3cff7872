"""torchvision datasets: read offline from torchvision's layout, decoded once into memory."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch

from aigc_cli.build import build_data
from aigc_cli.errors import DataError

from .helpers import SHARED_DATA


def write_fake_mnist(root: Path, n_train: int = 64, n_test: int = 16) -> torch.Tensor:
    """MNIST's idx files (uncompressed, as torchvision reads them) holding random digits."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    first = None
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 10, (n,), dtype=torch.uint8, generator=g)
        header = struct.pack(">IIII", 2051, n, 28, 28)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.numpy().tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, n) + labels.numpy().tobytes()
        )
        first = images if first is None else first
    return first


def _cfg(root: Path, **kw) -> dict:
    return {"name": "mnist", "root": str(root), "download": False, **kw}


def test_mnist_decoded_once_into_a_uint8_tensor(tmp_path):
    images = write_fake_mnist(tmp_path)
    data = build_data(_cfg(tmp_path))
    assert data.spec.kind == "image" and data.spec.shape == [1, 28, 28]
    assert data.spec.num_classes == 10
    x, y = data.train
    assert x.dtype == torch.uint8 and x.shape == (64, 1, 28, 28)
    assert torch.equal(x[:, 0], images) and y.dtype == torch.long
    assert data.test[0].shape == (16, 1, 28, 28)
    batch, labels = next(data.train_iter(8, seed=0))
    assert batch.shape == (8, 1, 28, 28) and batch.dtype == torch.float32
    assert batch.min() >= 0.0 and batch.max() <= 1.0 and labels.shape == (8,)


def test_resize_and_channels_are_applied_once(tmp_path):
    write_fake_mnist(tmp_path)
    data = build_data(_cfg(tmp_path, image_size=32, channels=3, train_size=10))
    assert data.spec.shape == [3, 32, 32]
    assert data.train[0].shape == (10, 3, 32, 32) and data.train[0].dtype == torch.uint8
    assert torch.equal(data.train[0][:, 0], data.train[0][:, 2])  # grey copied to RGB


def test_missing_files_offline_name_the_folder_and_files(tmp_path):
    with pytest.raises(DataError) as e:
        build_data(_cfg(tmp_path / "nowhere"))
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in msg
    assert "train-images-idx3-ubyte" in msg and "dataset.root=" in msg


@pytest.mark.skipif(
    not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason=f"real MNIST not in {SHARED_DATA}"
)
def test_real_mnist_from_shared_data():
    data = build_data({"name": "mnist", "root": str(SHARED_DATA), "download": False})
    assert data.train[0].shape == (60000, 1, 28, 28) and data.test[0].shape == (10000, 1, 28, 28)
    assert sorted(data.train[1].unique().tolist()) == list(range(10))
    # real digits: mostly black background, ink near white
    x = data.train[0][:1000].float() / 255
    assert 0.1 < x.mean() < 0.2 and (x > 0.99).float().mean() > 0.05
