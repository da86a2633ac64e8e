"""Triton kernel of `meta_objective` (imported lazily: needs triton)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def objective_kernel(a_ptr, b_ptr, out_ptr, T, n, BLOCK: tl.constexpr):
    """out = (sum(a) + sum(b)) / n. Grid: (1,).

    Args:
        a_ptr, b_ptr: per-task losses, contiguous (T,) each.
        out_ptr: output, one value.
        T: tasks. n: the divisor (N_train). BLOCK: tasks per step.
    """
    sa = tl.zeros((BLOCK,), dtype=a_ptr.dtype.element_ty)
    sb = tl.zeros((BLOCK,), dtype=a_ptr.dtype.element_ty)
    for s in range(0, T, BLOCK):
        o = s + tl.arange(0, BLOCK)
        sa += tl.load(a_ptr + o, mask=o < T, other=0.0)
        sb += tl.load(b_ptr + o, mask=o < T, other=0.0)
    tl.store(out_ptr, (tl.sum(sa, axis=0) + tl.sum(sb, axis=0)) / n)
