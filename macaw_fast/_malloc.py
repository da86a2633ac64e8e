"""Keep glibc from handing large freed blocks back to the OS between meta-steps.

A meta-step allocates and frees the same multi-megabyte tensors (W gradients, activations) every
step. With glibc's defaults, blocks above a dynamic threshold are mmap'd and freed memory at the
top of the heap is trimmed, so each step page-faults the same memory in again: ~20% of a
paper-config CPU meta-step here. Raising the mmap and trim thresholds keeps that memory in the
process (it is reused by the next step, so peak memory does not grow). Process-wide, so it is
done by the command line and the benchmarks, never on ``import macaw_fast``. Opt out with
``MACAW_FAST_MALLOC_TUNING=0``. No-op where the C library has no ``mallopt`` (not glibc).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_done: bool | None = None


def tune_malloc() -> bool:
    """Raise glibc's mmap/trim thresholds once per process. Returns whether it applied."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("MACAW_FAST_MALLOC_TUNING", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = (mallopt(_M_MMAP_THRESHOLD, 32 << 20) == 1 and mallopt(_M_TRIM_THRESHOLD, 512 << 20) == 1
          and mallopt(_M_TOP_PAD, 64 << 20) == 1)
    _done = ok
    return ok
