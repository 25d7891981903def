"""Let XLA:CPU reuse freed host memory instead of mapping fresh pages at every step.

XLA:CPU allocates each execution's temporaries with malloc; UR-DMU's train step (B = 8, T = 200,
D = 1024) needs one 224 MiB block. glibc serves blocks over 32 MiB with a fresh mmap and returns
them with munmap when freed, so every step touched 57 K new pages: ~58 K page faults and ~110 ms
of kernel time per step on a 2-core EPYC (the train step went from 445-465 to 400-420 ms with the
settings below). Such a block can only come from the main arena's heap (other arenas' heaps are at
most 64 MiB), so: one arena, no mmap, and the heap's free top kept until it exceeds 1 GiB.

The settings only reach threads that have not allocated yet, i.e. they must be made before JAX
starts its backend: the training entry points (pavad-train, pavad-sweep, pavad-occ, pavad-bench)
call `reuse_freed_memory()` first thing. The evaluation commands do not: a heap that never unmaps
is fragmented by their many buffer sizes, and pavad-eval on UCF-Crime's test shapes peaked at
6.3 GiB instead of 2.7 GiB with these settings, no faster (121.3 against 119.2 s back to back).
pavad-train's periodic evaluations run under them too; at UCF-Crime's test size expect a few GiB
more host memory than pavad-eval's.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
TRIM_THRESHOLD_BYTES = 1 << 30


def reuse_freed_memory() -> bool:
    """Apply the settings above where the C library is glibc; True if it took them."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    return all(libc.mallopt(parameter, value) == 1 for parameter, value in settings)
