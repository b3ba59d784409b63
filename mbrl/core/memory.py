"""Keep freed memory in the process for reuse instead of handing it back to the OS after every free.

Imagination allocates and frees megabytes per step (a planning step at 512 rollouts builds ~7 MB of
new state: the key/value rings, the carried reads, the attention's products). glibc serves blocks
that large with fresh `mmap`s, or trims the heap's top back to the OS as soon as 128 KB of it is
free, so steps touch new pages and pay a page fault per 4 KB: up to ~16,000 minor faults per planned
action at N=512, H=12, I=4 (how many depends on the heap's history). With the thresholds below the
freed blocks are reused: ~600 per action. Measured on 2 cores (alternated runs): the dream env at
256 rollouts 59.7k / 47.2k -> 62.4k / 51.5k steps/s in latent mode and 895 / 1,253 -> 1,417 / 1,592
in pixel mode; planning times moved within their run-to-run spread (benchmarks/RESULTS.md).

The process then keeps up to `trim_threshold` of freed memory at its heap's top (and blocks up to
`mmap_threshold` in its heap), which the next allocations reuse.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers (malloc.h)


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Set glibc's malloc to serve blocks below `mmap_threshold` bytes from its heap and to return the heap's
    free top to the OS only beyond `trim_threshold` bytes. Returns whether it applied (False where the C
    library is not glibc, e.g. macOS or musl: nothing changes there)."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                                        trim_threshold))
