"""Triton kernel of `batched_linear` (imported lazily: needs triton)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def batched_linear_kernel(x_ptr, a_ptr, th_ptr, y_ptr, N, K, K1, OUT,
                          stride_xt, stride_xn, stride_xk, stride_at, stride_an, stride_ak,
                          stride_tht, stride_thp, stride_yt, stride_yn,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr,
                          IN_RELU: tl.constexpr, OUT_RELU: tl.constexpr, CONCAT: tl.constexpr):
    """y[t] = act_out(act_in(X[t]) @ weight_t + bias_t) for one (rows, outputs) tile of task t.

    Grid: (cdiv(N, BLOCK_N), cdiv(OUT, BLOCK_O), T). The layer's weight and bias are read from the
    task's generated parameters: weight_t[k, o] = theta[t, k*OUT + o], bias_t[o] = theta[t, K*OUT + o].

    Args:
        x_ptr: input X, shape (T, N, K1) (or (T, N, K) without CONCAT).
        a_ptr: second input part for CONCAT, shape (T, N, K - K1): X = concat(x, a) along features.
        th_ptr: generated parameters, shape (T, P) with P = K*OUT + OUT (stride_tht = 0 when shared).
        y_ptr: output, shape (T, N, OUT), last dim contiguous.
        N, K, K1, OUT: rows per task, input features (total), features in x_ptr, outputs.
        stride_xt, stride_xn, stride_xk: strides of x along tasks, rows, features.
        stride_at, stride_an, stride_ak: strides of a along tasks, rows, features (CONCAT only).
        stride_tht, stride_thp: strides of theta along tasks (0: one theta for all) and parameters.
        stride_yt, stride_yn: strides of y along tasks and rows.
        BLOCK_N, BLOCK_K, BLOCK_O: tile sizes (each >= 16 for tl.dot).
        IN_RELU: apply ReLU to X on load. OUT_RELU: apply ReLU to the result.
        CONCAT: X is the concatenation of x and a.
    """
    pid_n = tl.program_id(0)
    pid_o = tl.program_id(1)
    t = tl.program_id(2)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    acc = tl.zeros((BLOCK_N, BLOCK_O), dtype=th_ptr.dtype.element_ty)
    th_base = th_ptr + t * stride_tht
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        if CONCAT:
            kx = tl.where(k < K1, k, 0)
            xb = tl.load(x_ptr + t * stride_xt + n[:, None] * stride_xn + kx[None, :] * stride_xk,
                         mask=(n[:, None] < N) & (k[None, :] < K1), other=0.0)
            ka = tl.where(k >= K1, k - K1, 0)
            ab = tl.load(a_ptr + t * stride_at + n[:, None] * stride_an + ka[None, :] * stride_ak,
                         mask=(n[:, None] < N) & (k[None, :] >= K1) & (k[None, :] < K), other=0.0)
            xb = xb + ab
        else:
            xb = tl.load(x_ptr + t * stride_xt + n[:, None] * stride_xn + k[None, :] * stride_xk,
                         mask=(n[:, None] < N) & (k[None, :] < K), other=0.0)
        if IN_RELU:
            xb = tl.maximum(xb, 0.0)
        wb = tl.load(th_base + (k[:, None] * OUT + o[None, :]) * stride_thp,
                     mask=(k[:, None] < K) & (o[None, :] < OUT), other=0.0)
        acc += tl.dot(xb, wb, input_precision="ieee")
    bias = tl.load(th_base + (K * OUT + o) * stride_thp, mask=o < OUT, other=0.0)
    acc += bias[None, :]
    if OUT_RELU:
        acc = tl.maximum(acc, 0.0)
    tl.store(y_ptr + t * stride_yt + n[:, None] * stride_yn + o[None, :], acc,
             mask=(n[:, None] < N) & (o[None, :] < OUT))
