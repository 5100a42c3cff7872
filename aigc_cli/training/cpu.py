"""CPU-side settings for training on the host: threads, and how freed memory is kept."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's ceiling for the mmap threshold on 64-bit builds (DEFAULT_MMAP_THRESHOLD_MAX).
_MMAP_MAX = 32 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks of up to 32 MB for reuse instead of unmapping them.

    By default glibc serves large blocks (an activation of a conv layer is megabytes) with
    mmap and gives them back on free, so every training step faults the same pages in again;
    on virtual machines a page fault is expensive and that can dominate a CPU step
    (docs/performance.md; what the PyTorch CPU tuning guide fixes with jemalloc/tcmalloc).
    Returns whether the setting took effect (False off glibc, e.g. macOS or musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_MAX) == 1
    # Keep up to 1 GB of free heap instead of trimming it back to the OS after each step.
    return ok and mallopt(_M_TRIM_THRESHOLD, 1024**3) == 1


def configure_cpu(threads: int, keep_memory: bool) -> None:
    """`threads` > 0 sets torch's intra-op threads (0 keeps torch's default: one per core)."""
    if threads:
        torch.set_num_threads(threads)
    if keep_memory:
        keep_freed_memory()
