"""Process memory settings for streaming work.

glibc raises its mmap threshold each time a large block is freed, after which tensors of up to
32 MiB come from the heap and freed ones may stay resident: streaming a 3 GB checkpoint then
showed 46 MiB of peak growth in some runs and 700 MiB in others (bench/bench_convert.py).
Fixing the threshold at 1 MiB makes every tensor-sized block an mmap that goes back to the OS
when freed, so peak memory follows what the stream holds.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3
THRESHOLD_BYTES = 1 << 20


def release_large_allocations() -> bool:
    """Pin glibc's mmap threshold; returns False where there is no glibc (nothing to do)."""
    # The symbols already loaded into this process (libc among them where Python runs on it):
    # ctypes.util.find_library("c") would run `ldconfig -p` at every command's start.
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES))
    except (OSError, AttributeError, TypeError):
        return False
