"""Keep freed memory in the process instead of handing it back to the kernel (glibc only).

PyTorch's CPU allocator is plain `malloc`. glibc serves every block over 32 MB (and, until
its adaptive threshold has grown, smaller ones) with a fresh `mmap` and returns it with
`munmap` on free. The Inception network's activations at batch 32 are 28-180 MB each, so
every forward maps ~1 GB of new pages and the kernel zero-fills each one on first touch:
0.18-0.68 s of system time per batch of 32 on the 2-core machine this was measured on
(`scripts/bench_eval.py --keep-freed-memory on|off`). PyTorch's own CPU launcher
(`torch.backends.xeon.run_cpu`) preloads tcmalloc or jemalloc for the same reason; this does
the glibc equivalent from inside the process: no `mmap` for large blocks, and the top of the
heap is only trimmed past 1 GiB of free space. The resident set then stays at the high-water
mark of one forward pass instead of rising and falling with it.

The setting is process-wide, so only entry points that own their process call it (the eval
CLI, the eval benchmark), never a library function.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 1 << 30  # bytes of free heap top kept before trimming


def keep_freed_memory() -> bool:
    """Make glibc reuse freed blocks (see the module docstring). Returns False, changing
    nothing, where the C library is not glibc (macOS, musl, Windows)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    # mallopt returns 1 on success, 0 on a rejected value.
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
