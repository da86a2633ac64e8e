"""Triton kernels of `value_mse` (imported lazily: needs triton)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _residual(v_ptr, ret_ptr, disc_ptr, vn_ptr, t, n, mask, s_vt, s_vn, s_rt, s_rn, s_dt, s_dn, s_nt, s_nn,
              HAS_NEXT: tl.constexpr):
    """v - y at rows n of task t, y = ret (+ disc * v_next with HAS_NEXT); 0 where masked."""
    v = tl.load(v_ptr + t * s_vt + n * s_vn, mask=mask, other=0.0)
    y = tl.load(ret_ptr + t * s_rt + n * s_rn, mask=mask, other=0.0)
    if HAS_NEXT:
        y = y + tl.load(disc_ptr + t * s_dt + n * s_dn, mask=mask, other=0.0) * tl.load(
            vn_ptr + t * s_nt + n * s_nn, mask=mask, other=0.0)
    return tl.where(mask, v - y, 0.0)


@triton.jit
def value_mse_kernel(v_ptr, ret_ptr, disc_ptr, vn_ptr, loss_ptr, N,
                     s_vt, s_vn, s_rt, s_rn, s_dt, s_dn, s_nt, s_nn,
                     BLOCK_N: tl.constexpr, HAS_NEXT: tl.constexpr):
    """loss[t] = mean_n (v[t, n] - y[t, n])^2, y = ret (+ disc * v_next). Grid: (T,).

    Args:
        v_ptr: values (T, N). ret_ptr: returns (T, N). disc_ptr, vn_ptr: discounts and next values
            (T, N) (HAS_NEXT only). All strided (s_*t, s_*n: task and row strides).
        loss_ptr: output (T,), contiguous.
        N: rows per task. BLOCK_N: rows per step. HAS_NEXT: bootstrapped target.
    """
    t = tl.program_id(0)
    acc = tl.zeros((BLOCK_N,), dtype=v_ptr.dtype.element_ty)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        d = _residual(v_ptr, ret_ptr, disc_ptr, vn_ptr, t, n, n < N, s_vt, s_vn, s_rt, s_rn, s_dt, s_dn,
                      s_nt, s_nn, HAS_NEXT)
        acc += d * d
    tl.store(loss_ptr + t, tl.sum(acc, axis=0) / N)


@triton.jit
def value_mse_bwd_kernel(g_ptr, v_ptr, ret_ptr, disc_ptr, vn_ptr, gv_ptr, N, s_g,
                         s_vt, s_vn, s_rt, s_rn, s_dt, s_dn, s_nt, s_nn,
                         BLOCK_N: tl.constexpr, HAS_NEXT: tl.constexpr):
    """dv[t, n] = (g[t] / N) * (2 (v - y)[t, n]). Grid: (T, cdiv(N, BLOCK_N)).

    Args: g_ptr: dL/dloss (T,) with stride s_g (may be 0); gv_ptr: output (T, N), contiguous;
        the others as in `value_mse_kernel`.
    """
    t = tl.program_id(0)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = n < N
    d = _residual(v_ptr, ret_ptr, disc_ptr, vn_ptr, t, n, mask, s_vt, s_vn, s_rt, s_rn, s_dt, s_dn,
                  s_nt, s_nn, HAS_NEXT)
    gn = tl.load(g_ptr + t * s_g) / N
    tl.store(gv_ptr + t * N + n, gn * (2.0 * d), mask=mask)


@triton.jit
def value_mse_dbwd_kernel(c_ptr, g_ptr, v_ptr, ret_ptr, disc_ptr, vn_ptr, gg_ptr, gv_ptr, N, s_ct, s_cn, s_g,
                          s_vt, s_vn, s_rt, s_rn, s_dt, s_dn, s_nt, s_nn,
                          BLOCK_N: tl.constexpr, HAS_NEXT: tl.constexpr):
    """VJP of the backward dv = (g / N) * 2 (v - y) with cotangent c (T, N). Grid: (T,).

    gg[t] = sum_n c[t, n] * 2 (v - y)[t, n] / N and gv[t, n] = (g[t] / N) * 2 c[t, n].

    Args: c_ptr: the cotangent (T, N), strides s_ct, s_cn; gg_ptr: output (T,); gv_ptr: output
        (T, N), contiguous; the others as in `value_mse_bwd_kernel`.
    """
    t = tl.program_id(0)
    gn = tl.load(g_ptr + t * s_g) / N
    acc = tl.zeros((BLOCK_N,), dtype=v_ptr.dtype.element_ty)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        mask = n < N
        d = _residual(v_ptr, ret_ptr, disc_ptr, vn_ptr, t, n, mask, s_vt, s_vn, s_rt, s_rn, s_dt, s_dn,
                      s_nt, s_nn, HAS_NEXT)
        c = tl.load(c_ptr + t * s_ct + n * s_cn, mask=mask, other=0.0)
        acc += c * (2.0 * d)
        tl.store(gv_ptr + t * N + n, gn * (2.0 * c), mask=mask)
    tl.store(gg_ptr + t, tl.sum(acc, axis=0) / N)
