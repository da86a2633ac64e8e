"""Triton kernel of `bootstrap_advantage` (imported lazily: needs triton)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def advantage_kernel(ret_ptr, disc_ptr, vn_ptr, v_ptr, out_ptr, N,
                     s_rt, s_rn, s_dt, s_dn, s_nt, s_nn, s_vt, s_vn, BLOCK_N: tl.constexpr):
    """out[t, n] = ret[t, n] + disc[t, n] * v_next[t, n] - v[t, n]. Grid: (T, cdiv(N, BLOCK_N)).

    Args:
        ret_ptr, disc_ptr, vn_ptr, v_ptr: (T, N) inputs, strided (s_*t, s_*n: task and row strides).
        out_ptr: output (T, N), contiguous.
        N: rows per task. BLOCK_N: rows per program.
    """
    t = tl.program_id(0)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m = n < N
    r = tl.load(ret_ptr + t * s_rt + n * s_rn, mask=m, other=0.0)
    d = tl.load(disc_ptr + t * s_dt + n * s_dn, mask=m, other=0.0)
    vn = tl.load(vn_ptr + t * s_nt + n * s_nn, mask=m, other=0.0)
    v = tl.load(v_ptr + t * s_vt + n * s_vn, mask=m, other=0.0)
    tl.store(out_ptr + t * N + n, (r + d * vn) - v, mask=m)
