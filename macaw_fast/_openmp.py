"""How many threads the compiled kernels (`macaw_fast._C`) may use.

The row-block kernels (low-rank Adam, theta generation, the skinny W products) run on an OpenMP
team (csrc/row_blocks.hpp). With torch's pip wheels that team is torch's own worker pool: the
wheel loads its libgomp.so.1 first and the loader hands `_C` the same library. A torch built
against another OpenMP runtime (Intel's libiomp5, LLVM's libomp) leaves two runtimes in the
process, and a second pool would fight torch's spinning workers for the cores; the kernels then
run on the calling thread alone.
"""

from __future__ import annotations

import functools
import importlib
import re
import warnings
from typing import Iterable

import torch

_RUNTIME = re.compile(r"/lib(?:gomp|iomp5|omp)(?:[-.][^/]*)?\.so[^/]*$")


def openmp_libraries(maps_lines: Iterable[str]) -> set[str]:
    """The OpenMP runtime libraries (libgomp, libiomp5, libomp; one path each) mapped in the
    /proc/<pid>/maps lines given. Two copies of libgomp under different sonames count as two."""
    found = set()
    for line in maps_lines:
        path = line.strip().split(" ")[-1]
        if _RUNTIME.search(path):
            found.add(path)
    return found


@functools.lru_cache(maxsize=None)
def _one_runtime() -> bool:
    try:
        importlib.import_module("macaw_fast._C")     # its OpenMP dependency is loaded with it
    except ImportError:
        return True
    try:
        with open("/proc/self/maps") as f:
            found = openmp_libraries(f)
    except OSError:          # not Linux: nothing to check
        return True
    if len(found) > 1:
        warnings.warn(f"macaw_fast: this process has {len(found)} OpenMP runtimes ({', '.join(sorted(found))}): "
                      "macaw_fast._C does not share torch's, so the compiled kernels run on one thread",
                      RuntimeWarning, stacklevel=3)
        return False
    return True


def kernel_threads() -> int:
    """torch's thread count where the compiled kernels share torch's OpenMP runtime, else 1."""
    return torch.get_num_threads() if _one_runtime() else 1
