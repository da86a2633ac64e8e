"""Triton kernel of `all_finite` (imported lazily: needs triton)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _nonfinite(ptr, n, offs):
    """1 if any of the values at ptr + offs (offs < n) is NaN or +-inf, else 0 (int32)."""
    x = tl.load(ptr + offs, mask=offs < n, other=0.0)
    bad = (x != x) | (tl.abs(x) == float("inf"))
    return tl.max(bad.to(tl.int32), axis=0)


@triton.jit
def nonfinite_kernel(x0_ptr, x1_ptr, x2_ptr, x3_ptr, x4_ptr, x5_ptr, x6_ptr, x7_ptr, flag_ptr,
                     n0, n1, n2, n3, n4, n5, n6, n7, NT: tl.constexpr, BLOCK: tl.constexpr):
    """Set flag to 1 if any of up to eight tensors holds a NaN or an infinity.

    Grid: (cdiv(max n_i, BLOCK),); program k checks elements [k*BLOCK, (k+1)*BLOCK) of every
    tensor and, only when it finds a non-finite value, stores 1 to the flag (every writer stores
    the same value, so no atomics). The flag is never cleared here: the caller keeps it at 0.

    Args:
        x0_ptr .. x7_ptr: the tensors, contiguous, one dtype; only the first NT are read.
        flag_ptr: one value of the tensors' dtype, 0 on entry.
        n0 .. n7: the tensors' element counts (unused ones: 0).
        NT: how many tensors (1..8). BLOCK: elements per program and tensor.
    """
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    bad = _nonfinite(x0_ptr, n0, offs)
    if NT > 1:
        bad = bad | _nonfinite(x1_ptr, n1, offs)
    if NT > 2:
        bad = bad | _nonfinite(x2_ptr, n2, offs)
    if NT > 3:
        bad = bad | _nonfinite(x3_ptr, n3, offs)
    if NT > 4:
        bad = bad | _nonfinite(x4_ptr, n4, offs)
    if NT > 5:
        bad = bad | _nonfinite(x5_ptr, n5, offs)
    if NT > 6:
        bad = bad | _nonfinite(x6_ptr, n6, offs)
    if NT > 7:
        bad = bad | _nonfinite(x7_ptr, n7, offs)
    tl.store(flag_ptr, bad.to(flag_ptr.dtype.element_ty), mask=bad > 0)
