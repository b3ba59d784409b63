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

`check_fits` is the other side of memory: a command refuses, before it starts, work whose memory
estimate exceeds what the process may hold (`memory_limit`), with the estimate and the limit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import resource

from mbrl.core.errors import UserError

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


def memory_limit() -> int:
    """Bytes this process may hold: the machine's physical memory, or the address-space limit (`ulimit -v`,
    RLIMIT_AS) if that is lower."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return physical if soft == resource.RLIM_INFINITY else min(physical, soft)


def check_fits(what: str, nbytes: int) -> None:
    """Refuse, before it starts, work whose memory estimate `nbytes` exceeds `memory_limit()`.

    Raises:
        UserError: naming `what` (e.g. "--steps 1000000000: the replay buffer"), the estimate and the limit.
    """
    limit = memory_limit()
    if nbytes > limit:
        raise UserError(f"{what} would need {_size(nbytes)} of memory; this machine allows {_size(limit)}")


def _size(nbytes: float) -> str:
    """`nbytes` for people: 512 bytes, 4.3 MB, 1200.0 TB."""
    if nbytes < 1000:
        return f"{nbytes:.0f} bytes"
    for unit in ("KB", "MB", "GB"):
        nbytes /= 1000
        if nbytes < 1000:
            return f"{nbytes:.1f} {unit}"
    return f"{nbytes / 1000:.1f} TB"
