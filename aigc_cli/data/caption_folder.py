"""`dataset=caption_folder`: a folder of images with a caption each, in either layout people
use: a `.txt` beside each image (same stem), or `metadata.jsonl` files with `file_name` and
`text` (Hugging Face's imagefolder layout; each names images relative to its own folder). A
batch is (images, zeros, caption ids (N, L)); captions are read as UTF-8 bytes, so any prompt
encodes. Images without a caption train as the empty prompt, counted in one warning."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from aigc_cli.config import check
from aigc_cli.data.base import DataModule
from aigc_cli.data.captions import PAD, caption_ids
from aigc_cli.data.files import (
    FileSplits,
    build_file_data,
    check_enough_images,
    native_shape,
    scan_folder,
    split_indices,
    warn,
)
from aigc_cli.data.text import ByteTokenizer
from aigc_cli.errors import DataError
from aigc_cli.registry import DATASETS

EXAMPLES = 8  # test captions kept as the sample grids' prompts


@dataclass
class CaptionFolderConfig:
    name: str = "caption_folder"
    path: str | None = None  # folder of images with captions (.txt beside, or metadata.jsonl)
    caption_column: str = "text"  # the metadata.jsonl key that holds each caption
    caption_length: int = 128  # ids the text encoder reads (start + UTF-8 bytes); longer is cut
    image_size: str = "auto"  # shorter side resized to this, then the centre square cropped
    channels: str = "auto"  # auto: 1 when every image is grey, else 3 | 3 = RGB | 1 = grey
    test_fraction: float = 0.05  # share of the images held out as the test split
    split_seed: int = 0  # seed of the train/test split
    in_memory: str = "auto"  # auto | true | false: decode everything once into memory
    memory_limit_mb: int = 2048  # auto: in memory when the decoded uint8 images fit in this
    workers: int = -1  # DataLoader worker processes; -1 = min(8, CPU count)


def _key(path: str | Path) -> str:
    return os.path.normcase(os.path.normpath(os.path.abspath(path)))


def read_captions(root: Path, paths: list[str], column: str) -> list[str]:
    """Each image's caption ("" when it has none): from a metadata.jsonl that names it, else
    from the .txt beside it. A metadata line only ever names a caption for an image the scan
    found; it never makes aigc read another path."""
    wanted = {_key(p): i for i, p in enumerate(paths)}
    out = [""] * len(paths)
    named = [False] * len(paths)
    for meta in sorted(root.rglob("metadata.jsonl")):
        lines = meta.read_text(encoding="utf-8", errors="replace").splitlines()
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{meta}, line {n}: not JSON ({e.msg})",
                                hint='one object a line: {"file_name": "a.png", '
                                '"text": "a caption"}') from None  # fmt: skip
            if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
                raise DataError(f"{meta}, line {n}: no file_name",
                                hint='one object a line: {"file_name": "a.png", '
                                '"text": "a caption"}')  # fmt: skip
            i = wanted.get(_key(meta.parent / row["file_name"]))
            if i is not None:
                text = row.get(column)
                out[i], named[i] = (text.strip() if isinstance(text, str) else ""), True
    for i, p in enumerate(paths):
        txt = Path(p).with_suffix(".txt")
        if not named[i] and txt.is_file():
            out[i] = txt.read_text(encoding="utf-8", errors="replace").strip()
    return out


def encode_folder_captions(captions: list[str], length: int) -> tuple[Tensor, int]:
    """(N, length) ids, each caption cut to the window; and how many were cut."""
    out = torch.full((len(captions), length), PAD, dtype=torch.long)
    cut = 0
    for i, caption in enumerate(captions):
        ids = caption_ids(caption, {"tokenizer": ByteTokenizer().to_dict()})
        cut += len(ids) > length
        out[i, : min(length, len(ids))] = torch.tensor(ids[:length])
    return out, cut


@DATASETS.register("caption_folder", config=CaptionFolderConfig)
def caption_folder(cfg: CaptionFolderConfig) -> DataModule:
    """Your captioned images: a .txt beside each, or metadata.jsonl (text-to-image)."""
    if not cfg.path:
        raise DataError("dataset=caption_folder needs a folder",
                        hint="set dataset.path=<folder of images with captions>")  # fmt: skip
    check(8 <= cfg.caption_length <= 1024, "dataset.caption_length",
          f"{cfg.caption_length} must be in 8..1024")  # fmt: skip
    check(0 < cfg.test_fraction < 1, "dataset.test_fraction", "must be in (0, 1)")
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise DataError(f"caption folder not found: {root}", hint="set dataset.path=<folder>")
    paths = scan_folder(root, "none")[0]
    check_enough_images(root, paths)
    texts = read_captions(root, paths, cfg.caption_column)
    missing = [p for p, t in zip(paths, texts, strict=True) if not t]
    if len(missing) == len(paths):
        raise DataError(
            f"no captions in {root}: no image has a .txt beside it or a metadata.jsonl line "
            f"with a non-empty '{cfg.caption_column}'",
            hint="write <image stem>.txt beside each image, or metadata.jsonl lines "
            '{"file_name": ..., "text": ...}; for images alone use dataset=image_folder',
        )
    if missing:
        warn(f"caption_folder: {len(missing)} of {len(paths)} images have no caption or an "
             f"empty one (first: {missing[0]}); they train as the empty prompt")  # fmt: skip
    ids, cut = encode_folder_captions(texts, cfg.caption_length)
    if cut:
        warn(f"caption_folder: {cut} caption(s) longer than {cfg.caption_length - 1} bytes "
             "were cut (dataset.caption_length)")  # fmt: skip
    size, channels = native_shape(paths, cfg.image_size, cfg.channels, "caption_folder")
    train_idx, test_idx = split_indices(len(paths), cfg.test_fraction, cfg.split_seed)
    data = build_file_data(
        FileSplits(
            name="caption_folder",
            train=([paths[i] for i in train_idx], [0] * len(train_idx)),
            test=([paths[i] for i in test_idx], [0] * len(test_idx)),
            class_names=[],
            size=size,
            channels=channels,
            in_memory=cfg.in_memory,
            memory_limit_mb=cfg.memory_limit_mb,
            workers=cfg.workers,
            extra=(ids[train_idx], ids[test_idx]),
        )
    )
    fits = [t for t in dict.fromkeys(texts[i] for i in test_idx + train_idx)
            if t and len(t.encode("utf-8")) < cfg.caption_length]  # fmt: skip
    data.spec.extra["captions"] = {
        "tokenizer": ByteTokenizer().to_dict(),
        "length": cfg.caption_length,
        "vocab": ByteTokenizer.vocab_size + 2,
        "examples": fits[:EXAMPLES],
    }
    if "auto" in (str(cfg.image_size), str(cfg.channels)):
        data.spec.extra["resolved"] = {"image_size": size, "channels": channels}
    return data
