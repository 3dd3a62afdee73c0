"""Process-wide memory-allocator settings for long CPU jobs (training, batch segmentation).

PyTorch on the CPU allocates and frees large tensors every step. glibc's ``malloc`` serves
blocks above its mmap threshold from fresh pages and returns freed memory to the system, so every
step pays for page faults again; on a virtual machine that dominated the set loss
(docs/performance.md, "Training speed"). :func:`keep_freed_memory` asks ``malloc`` to keep
freed memory for reuse. The process's resident memory then stays near its peak, which suits a
command-line job and would not suit an interactive napari session, so only the ``segment``,
``train`` and ``evaluate`` commands and the two training benchmarks (``bench_training.py``,
``bench_synthetic_goal.py``) call it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory"]

# mallopt parameters (glibc <malloc.h>)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed value on 64-bit systems
_TRIM_THRESHOLD = 2**31 - 1  # the largest int: keep up to 2 GiB free at the heap's top
_TOP_PAD = 256 * 1024 * 1024  # grow the heap in steps of 256 MiB (address space, not memory)
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_freed_memory() -> bool:
    """Tune glibc ``malloc`` to keep freed memory for reuse; ``True`` if it was applied.

    Does nothing (returns ``False``) off Linux/glibc, when ``NAPARI_IAUNET_MALLOC=0``, or when
    the user already set one of glibc's ``MALLOC_*_`` variables (theirs win).
    """
    if not sys.platform.startswith("linux") or os.environ.get("NAPARI_IAUNET_MALLOC") == "0":
        return False
    if any(name in os.environ for name in _ENV):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD),
        (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
        (_M_TOP_PAD, _TOP_PAD)))
    return ok
