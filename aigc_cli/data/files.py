"""Datasets of image files (`image_folder`, `celeba`). They are decoded once into one uint8
tensor when that fits in `dataset.memory_limit_mb` (the fast path: batches are index lookups);
larger ones stream through a DataLoader with worker processes and pinned memory. Files that
cannot be read are skipped, and counted in one warning."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision.datasets as tvd
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from aigc_cli.config import check
from aigc_cli.console import console
from aigc_cli.data.base import (
    Batch,
    BatchIterator,
    DataModule,
    DataSpec,
    TensorData,
    check_batch_size,
)
from aigc_cli.errors import ConfigError, DataError
from aigc_cli.registry import DATASETS

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


def warn(message: str) -> None:

    console.print(f"[yellow]warning:[/] {message}", soft_wrap=True)


def load_image(path: str | Path, size: int, channels: int) -> Tensor:
    """(channels, size, size) uint8: the shorter side resized to `size` (antialiased), then
    the centre cropped square."""
    with Image.open(path) as im:
        if im.format == "JPEG":
            im.draft("RGB" if channels == 3 else "L", (size, size))  # decode at a reduced scale
        im = im.convert("RGB" if channels == 3 else "L")
        w, h = im.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        im = im.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
        left, top = (nw - size) // 2, (nh - size) // 2
        im = im.crop((left, top, left + size, top + size))
        t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    return t.view(size, size, channels).permute(2, 0, 1).contiguous()


class ImageFiles(Dataset):
    """Files → (image, label, index, ok). An unreadable file gives a blank image and ok=False,
    so one bad file never stops an epoch; the batch iterators drop such rows. `extra`, one row
    per file (a caption's ids), joins each batch as its third part."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], size: int, channels: int,
                 extra: Tensor | None = None) -> None:  # fmt: skip
        self.paths, self.labels = list(paths), list(labels)
        self.size, self.channels, self.extra = size, channels, extra

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int, bool]:
        try:
            return load_image(self.paths[i], self.size, self.channels), self.labels[i], i, True
        except Exception:  # PIL raises many types for broken files (OSError, SyntaxError, ...)
            blank = torch.zeros(self.channels, self.size, self.size, dtype=torch.uint8)
            return blank, self.labels[i], i, False


def default_workers(workers: int) -> int:
    return min(8, os.cpu_count() or 1) if workers < 0 else workers


@dataclass
class FileSplits:
    """What a file-based dataset hands to `build_file_data`."""

    name: str
    train: tuple[list[str], list[int]]
    test: tuple[list[str], list[int]]
    class_names: list[str]
    size: int
    channels: int
    in_memory: str  # auto | true | false
    memory_limit_mb: int
    workers: int
    extra: tuple[Tensor, Tensor] | None = None  # a row per train and per test file, batched


def _decode_all(ds: ImageFiles, workers: int) -> tuple[Tensor, Tensor, list[int]]:
    """Decode every file once (in parallel workers): images, labels and the bad indices."""
    loader = DataLoader(ds, batch_size=64, num_workers=workers)
    xs, ys, bad = [], [], []
    for x, y, idx, ok in loader:
        xs.append(x[ok])
        ys.append(y[ok])
        bad += idx[~ok].tolist()
    return torch.cat(xs), torch.cat(ys).long(), bad


def _scan_readable(ds: ImageFiles, workers: int) -> list[int]:
    """Indices of files PIL cannot open or verify: a pass over headers and compressed data,
    much cheaper than decoding."""
    loader = DataLoader(_Verifier(ds.paths), batch_size=256, num_workers=workers)
    return [int(i) for idx, ok in loader for i in idx[~ok]]


class _Verifier(Dataset):
    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, bool]:
        try:
            with Image.open(self.paths[i]) as im:
                im.verify()
            return i, True
        except Exception:
            return i, False


def build_file_data(s: FileSplits) -> DataModule:
    check(8 <= s.size <= 1024, "dataset.image_size", f"{s.size} must be in 8..1024")
    check(s.channels in (1, 3), "dataset.channels", f"{s.channels} must be 1 or 3")
    mode = str(s.in_memory).lower()  # YAML reads true/false as booleans: "True", "False"
    check(mode in ("auto", "true", "false"), "dataset.in_memory", "auto, true or false")
    workers = default_workers(s.workers)
    n = len(s.train[0]) + len(s.test[0])
    need_mb = n * s.channels * s.size**2 / 2**20
    in_memory = mode == "true" or (mode == "auto" and need_mb <= s.memory_limit_mb)
    spec = DataSpec(
        kind="image",
        shape=[s.channels, s.size, s.size],
        num_classes=len(s.class_names),
        class_names=list(s.class_names),
    )
    splits: list = []
    bad_paths: list[str] = []
    for k, (paths, labels) in enumerate((s.train, s.test)):
        extra = s.extra[k] if s.extra else None
        ds = ImageFiles(paths, labels, s.size, s.channels)
        if in_memory:
            x, y, bad = _decode_all(ds, workers)
        else:
            bad = _scan_readable(ds, workers)
        keep = sorted(set(range(len(paths))) - set(bad))
        kept = None if extra is None else extra[keep]
        bad_paths += [paths[i] for i in bad]
        if in_memory:
            splits.append((x, y) if kept is None else (x, y, kept))
        else:
            splits.append(ImageFiles([paths[i] for i in keep], [labels[i] for i in keep],
                                     s.size, s.channels, kept))  # fmt: skip
    if bad_paths:
        warn(
            f"{s.name}: skipped {len(bad_paths)} unreadable image file(s) of {n} "
            f"(first: {bad_paths[0]})"
        )
    sizes = [len(sp[0]) if in_memory else len(sp) for sp in splits]
    if min(sizes) == 0:
        raise DataError(
            f"{s.name}: no readable images left in the {'train' if not sizes[0] else 'test'} split",
            hint="check the files, or lower dataset.test_fraction",
        )
    if in_memory:
        return TensorData(spec, splits[0], splits[1])
    return StreamingImages(spec, splits[0], splits[1], workers)


# ---- streaming ------------------------------------------------------------------------------


class _EndlessBatches(Sampler[list[int]]):
    """Shuffled epochs of index batches, starting at (epoch, pos), without end: one DataLoader
    iterator then serves the whole run and its workers live as long as it does."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, pos: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.pos = epoch, pos

    def __iter__(self) -> Iterator[list[int]]:
        epoch, pos = self.epoch, self.pos
        per_epoch = self.n // self.batch_size
        while True:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            perm = torch.randperm(self.n, generator=g)
            for b in range(pos, per_epoch):
                yield perm[b * self.batch_size : (b + 1) * self.batch_size].tolist()
            epoch, pos = epoch + 1, 0


class _StreamIterator(BatchIterator):
    def __init__(self, data: StreamingImages, batch_size: int, seed: int) -> None:
        n = len(data.train)
        check_batch_size(batch_size, n)
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.per_epoch = n // batch_size
        self.epoch, self.pos = 0, 0
        self._it: Iterator | None = None

    def __next__(self) -> Batch:
        if self._it is None:
            sampler = _EndlessBatches(
                len(self.data.train), self.batch_size, self.seed, self.epoch, self.pos
            )
            self._it = iter(self.data.loader(self.data.train, sampler))
        x, y, idx, ok = next(self._it)
        self.pos += 1
        if self.pos >= self.per_epoch:
            self.epoch, self.pos = self.epoch + 1, 0
        return self.data.finish(x, y, idx, ok, self.data.train)

    def state_dict(self) -> dict[str, int]:
        # Batches the workers prefetched but the loop has not taken are not counted: a resumed
        # run starts exactly after the last batch trained on.
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._it = None


class StreamingImages(DataModule):
    """Image files decoded by DataLoader workers as batches are needed."""

    def __init__(self, spec: DataSpec, train: ImageFiles, test: ImageFiles, workers: int):
        self.spec, self.train, self.test, self.workers = spec, train, test, workers
        self.device = torch.device("cpu")
        self._warned: set[str] = set()

    def to(self, device: torch.device) -> StreamingImages:
        self.device = device  # batches stay on the host; pinned when the device is a GPU
        return self

    def loader(self, ds: ImageFiles, batch_sampler: Sampler) -> DataLoader:
        return DataLoader(
            ds,
            batch_sampler=batch_sampler,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if self.workers else None,
        )

    def finish(self, x: Tensor, y: Tensor, idx: Tensor, ok: Tensor, ds: ImageFiles) -> Batch:
        """Drop rows of files that failed to decode (after passing the scan) and say so once."""
        if not bool(ok.all()):
            for i in idx[~ok].tolist():
                if ds.paths[i] not in self._warned:
                    self._warned.add(ds.paths[i])
                    warn(f"skipped unreadable image file {ds.paths[i]}")
            x, y, idx = x[ok], y[ok], idx[ok]
        if ds.extra is not None:
            return x.float().div_(255.0), y.long(), ds.extra[idx]
        return x.float().div_(255.0), y.long()

    def train_iter(self, batch_size: int, seed: int) -> BatchIterator:
        return _StreamIterator(self, batch_size, seed)

    def eval_iter(self, batch_size: int, max_batches: int = 0) -> Iterator[Batch]:
        n = len(self.test)
        batches = [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
        if max_batches:
            batches = batches[:max_batches]
        for x, y, idx, ok in self.loader(self.test, batches):
            yield self.finish(x, y, idx, ok, self.test)


# ---- image_folder ---------------------------------------------------------------------------


@dataclass
class ImageFolderConfig:
    name: str = "image_folder"
    path: str | None = None  # folder of images, searched recursively
    # auto: the folder's most common shorter side (at most AUTO_MAX_SIZE); else pixels
    image_size: str = "auto"  # shorter side resized to this, then the centre square cropped
    channels: str = "auto"  # auto: 1 when every image is grey, else 3 | 3 = RGB | 1 = grey
    labels: str = "auto"  # auto: top-level sub-folders are classes when all images lie in them
    test_fraction: float = 0.05  # share of the images held out as the test split
    split_seed: int = 0  # seed of the train/test split
    in_memory: str = "auto"  # auto | true | false: decode everything once into memory
    memory_limit_mb: int = 2048  # auto: in memory when the decoded uint8 images fit in this
    workers: int = -1  # DataLoader worker processes; -1 = min(8, CPU count)


def scan_folder(root: Path, labels: str) -> tuple[list[str], list[int], list[str]]:
    """Image paths under `root` (sorted), their labels and the class names. Classes are the
    top-level sub-folders, when every image lies in one and there are at least two."""
    files = sorted(
        p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )
    rel = [p.relative_to(root).parts for p in files]
    classes: list[str] = []
    if labels == "auto" and rel and all(len(r) > 1 for r in rel):
        classes = sorted({r[0] for r in rel})
        if len(classes) < 2:
            classes = []
    index = {c: i for i, c in enumerate(classes)}
    ys = [index[r[0]] for r in rel] if classes else [0] * len(files)
    return [str(p) for p in files], ys, classes


AUTO_MAX_SIZE = 128  # image_size=auto never picks more (larger photos are downscaled to it)
AUTO_SCAN = 5000  # image_size/channels=auto read the headers of at most this many files
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def native_shape(paths: list[str], size: str, channels: str,
                 name: str = "image_folder") -> tuple[int, int]:  # fmt: skip
    """`dataset.image_size` and `dataset.channels`, with `auto` read from the files' headers
    (no decoding): the most common shorter side, capped at AUTO_MAX_SIZE, and grey when every
    file is a grey-mode image. Folders of more than AUTO_SCAN files are sampled evenly."""

    def number(value: str, key: str) -> int:
        try:
            return int(value)
        except ValueError:
            raise ConfigError(
                f"bad value for 'dataset.{key}': {value!r}; auto or a number"
            ) from None

    want_size, want_channels = str(size) == "auto", str(channels) == "auto"
    if not (want_size or want_channels):
        return number(size, "image_size"), number(channels, "channels")
    step = max(1, len(paths) // AUTO_SCAN)
    sides: Counter[int] = Counter()
    grey = True
    for p in paths[::step]:
        try:
            with Image.open(p) as im:
                sides[min(im.size)] += 1
                grey = grey and im.mode in GREY_MODES
        except Exception:  # unreadable files are counted and skipped when decoding
            continue
    if not sides:
        raise DataError(
            "no readable image among the files scanned for dataset.image_size=auto",
            hint="check the folder, or set dataset.image_size and dataset.channels",
        )
    common = sides.most_common(1)[0][0]
    out_size = min(common, AUTO_MAX_SIZE) if want_size else number(size, "image_size")
    out_channels = (1 if grey else 3) if want_channels else number(channels, "channels")
    scanned = sum(sides.values())
    notes = []
    if want_size:
        capped = f", capped at {AUTO_MAX_SIZE}" if common > AUTO_MAX_SIZE else ""
        notes.append(f"image_size={out_size} (the most common shorter side of {scanned} "
                     f"images{capped})")  # fmt: skip
    if want_channels:
        why = "every image is grey" if grey else "not every image is grey"
        notes.append(f"channels={out_channels} ({why})")

    console.print(f"{name}: {', '.join(notes)}", soft_wrap=True)
    return out_size, out_channels


def check_enough_images(root: Path, paths: list[str]) -> None:
    if len(paths) < 2:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise DataError(f"{root} holds {len(paths)} image file(s); at least 2 are needed",
                        hint=f"image files are found by extension ({exts})")  # fmt: skip


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, test) indices of a folder's files: a seeded share held out, each sorted."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_test = max(1, round(n * test_fraction))
    return sorted(perm[n_test:]), sorted(perm[:n_test])


@DATASETS.register("image_folder", config=ImageFolderConfig)
def image_folder(cfg: ImageFolderConfig) -> DataModule:
    """Any folder of images (recursive); classes from sub-folders; in memory or streamed."""
    if not cfg.path:
        raise DataError(
            "dataset=image_folder needs a folder", hint="set dataset.path=<folder of images>"
        )
    check(cfg.labels in ("auto", "none"), "dataset.labels", f"'{cfg.labels}'; auto or none")
    check(0 < cfg.test_fraction < 1, "dataset.test_fraction", "must be in (0, 1)")
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}", hint="set dataset.path=<folder>")
    paths, ys, classes = scan_folder(root, cfg.labels)
    check_enough_images(root, paths)
    size, channels = native_shape(paths, cfg.image_size, cfg.channels)
    train_idx, test_idx = split_indices(len(paths), cfg.test_fraction, cfg.split_seed)
    data = build_file_data(
        FileSplits(
            name="image_folder",
            train=([paths[i] for i in train_idx], [ys[i] for i in train_idx]),
            test=([paths[i] for i in test_idx], [ys[i] for i in test_idx]),
            class_names=classes,
            size=size,
            channels=channels,
            in_memory=cfg.in_memory,
            memory_limit_mb=cfg.memory_limit_mb,
            workers=cfg.workers,
        )
    )
    if "auto" in (str(cfg.image_size), str(cfg.channels)):
        # what auto chose, for the run's config (training writes it there)
        data.spec.extra["resolved"] = {"image_size": size, "channels": channels}
    return data


# ---- celeba ---------------------------------------------------------------------------------


@dataclass
class CelebAConfig:
    name: str = "celeba"
    root: str = "data"  # holds celeba/img_align_celeba/ and celeba/list_eval_partition.txt
    download: bool = True  # fetch missing files through torchvision (needs the network)
    image_size: int = 64  # centre square of the 178x218 faces, resized to this
    channels: int = 3  # 3 = RGB, 1 = grey
    train_size: int = 0  # first N training images; 0 = all 162,770
    test_size: int = 0  # first N test images; 0 = all 19,962
    in_memory: str = "auto"  # auto | true | false: decode everything once into memory
    memory_limit_mb: int = 2048  # auto: in memory when the decoded uint8 images fit in this
    workers: int = -1  # DataLoader worker processes; -1 = min(8, CPU count)


@DATASETS.register("celeba", config=CelebAConfig)
def celeba(cfg: CelebAConfig) -> DataModule:
    """CelebA aligned faces, 64x64 colour, 163k/20k (torchvision layout; streamed if large)."""
    folder = Path(cfg.root).expanduser() / "celeba"
    partition = folder / "list_eval_partition.txt"
    images = folder / "img_align_celeba"
    if not (partition.is_file() and images.is_dir()):
        if not cfg.download:
            raise DataError(
                f"dataset celeba not found: {folder} lacks img_align_celeba/ and "
                "list_eval_partition.txt",
                hint="put the files there, point dataset.root=<folder> at a copy, "
                "or set dataset.download=true when online",
            )
        try:
            tvd.CelebA(str(Path(cfg.root).expanduser()), split="all", download=True)
        except Exception as e:  # no network, Google Drive quota, a corrupt archive
            raise DataError(
                f"could not download celeba into {folder}: {str(e).splitlines()[0][:160]}",
                hint="download img_align_celeba.zip and list_eval_partition.txt by hand "
                f"into {folder} and unzip the images there",
            ) from e
    splits: dict[str, list[str]] = {"0": [], "2": []}
    for line in partition.read_text().split("\n"):
        parts = line.split()
        if len(parts) == 2 and parts[1] in splits:
            splits[parts[1]].append(str(images / parts[0]))
    train, test = splits["0"], splits["2"]
    train = train[: cfg.train_size] if cfg.train_size else train
    test = test[: cfg.test_size] if cfg.test_size else test
    return build_file_data(
        FileSplits(
            name="celeba",
            train=(train, [0] * len(train)),
            test=(test, [0] * len(test)),
            class_names=[],
            size=cfg.image_size,
            channels=cfg.channels,
            in_memory=cfg.in_memory,
            memory_limit_mb=cfg.memory_limit_mb,
            workers=cfg.workers,
        )
    )
