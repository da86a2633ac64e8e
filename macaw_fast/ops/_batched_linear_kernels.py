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


@triton.jit
def _linear_bwd_input(pid0, pid1, pid2, gy_ptr, y_ptr, x_ptr, a_ptr, th_ptr, gx_ptr, ga_ptr, N, K, K1, OUT,
                      stride_gyt, stride_gyn, stride_yt, stride_yn,
                      stride_xt, stride_xn, stride_xk, stride_at, stride_an, stride_ak,
                      stride_tht, stride_thp,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr,
                      IN_RELU: tl.constexpr, OUT_RELU: tl.constexpr, CONCAT: tl.constexpr):
    """dL/dX[t] = mask_in * ((gy[t] * mask_out) @ weight_t^T) for one (rows, features) tile.

    Tile (pid0, pid1, pid2) of (cdiv(N, BLOCK_N), cdiv(K, BLOCK_K), T). mask_out = (y > 0) with OUT_RELU; mask_in =
    (X > 0) with IN_RELU (X = concat(x, a) with CONCAT: features < K1 go to gx, the rest to ga).

    Args:
        gy_ptr: incoming gradient, shape (T, N, OUT), last dim contiguous.
        y_ptr: the forward output, shape (T, N, OUT), last dim contiguous (OUT_RELU only).
        x_ptr, a_ptr: the forward inputs, (T, N, K1) and (T, N, K - K1) (a only with CONCAT).
        th_ptr: generated parameters (T, P) (stride_tht = 0 when shared).
        gx_ptr: output dL/dx, contiguous (T, N, K1). ga_ptr: output dL/da, contiguous (T, N, K - K1).
        N, K, K1, OUT: rows, input features (total), features of x, outputs.
        stride_*: strides of gy and y (tasks, rows), x and a (tasks, rows, features), theta (tasks, params).
        BLOCK_N, BLOCK_K, BLOCK_O: tile sizes (>= 16). IN_RELU, OUT_RELU, CONCAT: as in the forward.
    """
    pid_n = pid0
    pid_k = pid1
    t = pid2
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=th_ptr.dtype.element_ty)
    th_base = th_ptr + t * stride_tht
    for o0 in range(0, OUT, BLOCK_O):
        o = o0 + tl.arange(0, BLOCK_O)
        m = (n[:, None] < N) & (o[None, :] < OUT)
        gy = tl.load(gy_ptr + t * stride_gyt + n[:, None] * stride_gyn + o[None, :], mask=m, other=0.0)
        if OUT_RELU:
            y = tl.load(y_ptr + t * stride_yt + n[:, None] * stride_yn + o[None, :], mask=m, other=0.0)
            gy = tl.where(y > 0, gy, 0.0)
        wt = tl.load(th_base + (k[None, :] * OUT + o[:, None]) * stride_thp,
                     mask=(k[None, :] < K) & (o[:, None] < OUT), other=0.0)     # weight^T tile (O, K)
        acc += tl.dot(gy, wt, input_precision="ieee")
    nm = n[:, None] < N
    if CONCAT:
        kx = tl.where(k < K1, k, 0)
        ka = tl.where(k >= K1, k - K1, 0)
        mx = nm & (k[None, :] < K1)
        ma = nm & (k[None, :] >= K1) & (k[None, :] < K)
        if IN_RELU:
            xv = tl.load(x_ptr + t * stride_xt + n[:, None] * stride_xn + kx[None, :] * stride_xk, mask=mx, other=0.0)
            xv += tl.load(a_ptr + t * stride_at + n[:, None] * stride_an + ka[None, :] * stride_ak, mask=ma, other=0.0)
            acc = tl.where(xv > 0, acc, 0.0)
        tl.store(gx_ptr + (t * N + n[:, None]) * K1 + kx[None, :], acc, mask=mx)
        tl.store(ga_ptr + (t * N + n[:, None]) * (K - K1) + ka[None, :], acc, mask=ma)
    else:
        mx = nm & (k[None, :] < K)
        if IN_RELU:
            xv = tl.load(x_ptr + t * stride_xt + n[:, None] * stride_xn + k[None, :] * stride_xk, mask=mx, other=0.0)
            acc = tl.where(xv > 0, acc, 0.0)
        tl.store(gx_ptr + (t * N + n[:, None]) * K + k[None, :], acc, mask=mx)


@triton.jit
def _linear_bwd_theta(pid0, pid1, pid2, gy_ptr, y_ptr, x_ptr, a_ptr, gth_ptr, T, N, K, K1, OUT,
                      stride_gyt, stride_gyn, stride_yt, stride_yn,
                      stride_xt, stride_xn, stride_xk, stride_at, stride_an, stride_ak,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr,
                      IN_RELU: tl.constexpr, OUT_RELU: tl.constexpr, CONCAT: tl.constexpr,
                      SHARED: tl.constexpr):
    """dL/dtheta: weight part act_in(X[t])^T (gy[t] * mask_out), bias part sum_n gy[t] * mask_out.

    Tile (pid0, pid1, pid2) of (cdiv(K, BLOCK_K), cdiv(OUT, BLOCK_O), T), or (.., .., 1) with SHARED (one theta for all
    tasks: the program sums over t). Programs with feature block 0 also write the bias part.

    Args:
        gy_ptr, y_ptr: incoming gradient and forward output, (T, N, OUT), last dim contiguous.
        x_ptr, a_ptr: forward inputs (T, N, K1), (T, N, K - K1) (a only with CONCAT).
        gth_ptr: output, contiguous (T, P) (or (P,) with SHARED), P = K*OUT + OUT.
        T, N, K, K1, OUT: tasks, rows, input features (total), features of x, outputs.
        stride_*: strides of gy and y (tasks, rows), x and a (tasks, rows, features).
        BLOCK_N, BLOCK_K, BLOCK_O: tile sizes (>= 16). IN_RELU, OUT_RELU, CONCAT: as in the forward.
        SHARED: theta is shared by all tasks.
    """
    pid_k = pid0
    pid_o = pid1
    k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    acc = tl.zeros((BLOCK_K, BLOCK_O), dtype=gy_ptr.dtype.element_ty)
    bacc = tl.zeros((BLOCK_O,), dtype=gy_ptr.dtype.element_ty)
    if SHARED:
        t_lo = 0
        t_hi = T
    else:
        t_lo = pid2
        t_hi = t_lo + 1
    for t in range(t_lo, t_hi):
        for n0 in range(0, N, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            nm = n[:, None] < N
            m = nm & (o[None, :] < OUT)
            gy = tl.load(gy_ptr + t * stride_gyt + n[:, None] * stride_gyn + o[None, :], mask=m, other=0.0)
            if OUT_RELU:
                y = tl.load(y_ptr + t * stride_yt + n[:, None] * stride_yn + o[None, :], mask=m, other=0.0)
                gy = tl.where(y > 0, gy, 0.0)
            if CONCAT:
                kx = tl.where(k < K1, k, 0)
                ka = tl.where(k >= K1, k - K1, 0)
                xv = tl.load(x_ptr + t * stride_xt + n[:, None] * stride_xn + kx[None, :] * stride_xk,
                             mask=nm & (k[None, :] < K1), other=0.0)
                xv += tl.load(a_ptr + t * stride_at + n[:, None] * stride_an + ka[None, :] * stride_ak,
                              mask=nm & (k[None, :] >= K1) & (k[None, :] < K), other=0.0)
            else:
                xv = tl.load(x_ptr + t * stride_xt + n[:, None] * stride_xn + k[None, :] * stride_xk,
                             mask=nm & (k[None, :] < K), other=0.0)
            if IN_RELU:
                xv = tl.maximum(xv, 0.0)
            acc += tl.dot(tl.trans(xv), gy, input_precision="ieee")
            bacc += tl.sum(gy, axis=0)
    P = K * OUT + OUT
    out = gth_ptr + t_lo * P
    tl.store(out + k[:, None] * OUT + o[None, :], acc, mask=(k[:, None] < K) & (o[None, :] < OUT))
    o_lim = tl.where(pid_k == 0, OUT, 0)                 # only feature block 0 writes the bias part
    tl.store(out + K * OUT + o, bacc, mask=o < o_lim)


@triton.jit
def _linear_dbwd_gy(pid0, pid1, pid2, ggx_ptr, gga_ptr, ggth_ptr, x_ptr, a_ptr, th_ptr, y_ptr, out_ptr, N, K, K1, OUT,
                    stride_xt, stride_xn, stride_xk, stride_at, stride_an, stride_ak,
                    stride_tht, stride_thp, stride_ggtht, stride_yt, stride_yn,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr,
                    IN_RELU: tl.constexpr, OUT_RELU: tl.constexpr, CONCAT: tl.constexpr,
                    HAS_GGX: tl.constexpr, HAS_GGTH: tl.constexpr):
    """Double backward of the layer, gradient w.r.t. gy, for one (rows, outputs) tile of task t.

    out[t] = mask_out * ((mask_in * ggX[t]) @ weight_t + act_in(X[t]) @ ggweight_t + ggbias_t),
    where ggX = concat(ggx, gga) is the cotangent of dL/dX and ggtheta = [ggweight, ggbias] the
    cotangent of dL/dtheta. Grid: (cdiv(N, BLOCK_N), cdiv(OUT, BLOCK_O), T).

    Args:
        ggx_ptr, gga_ptr: cotangents of dL/dx and dL/da, contiguous (T, N, K1), (T, N, K - K1).
        ggth_ptr: cotangent of dL/dtheta, contiguous (T, P) (or (P,) with stride_ggtht = 0).
        x_ptr, a_ptr: forward inputs (T, N, K1), (T, N, K - K1) (a only with CONCAT).
        th_ptr: generated parameters (T, P) (stride_tht = 0 when shared).
        y_ptr: forward output (T, N, OUT), last dim contiguous (OUT_RELU only).
        out_ptr: result, contiguous (T, N, OUT).
        N, K, K1, OUT: rows, input features (total), features of x, outputs.
        stride_*: strides of x and a (tasks, rows, features), theta (tasks, params), ggtheta
            (tasks), y (tasks, rows).
        BLOCK_N, BLOCK_K, BLOCK_O: tile sizes (>= 16). IN_RELU, OUT_RELU, CONCAT: as in the forward.
        HAS_GGX: the dL/dX cotangent is present. HAS_GGTH: the dL/dtheta cotangent is present.
    """
    pid_n = pid0
    pid_o = pid1
    t = pid2
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    nm = n[:, None] < N
    acc = tl.zeros((BLOCK_N, BLOCK_O), dtype=th_ptr.dtype.element_ty)
    th_base = th_ptr + t * stride_tht
    gg_base = ggth_ptr + t * stride_ggtht
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        wm = (k[:, None] < K) & (o[None, :] < OUT)
        if CONCAT:
            kx = tl.where(k < K1, k, 0)
            ka = tl.where(k >= K1, k - K1, 0)
            mx = nm & (k[None, :] < K1)
            ma = nm & (k[None, :] >= K1) & (k[None, :] < K)
            xv = tl.load(x_ptr + t * stride_xt + n[:, None] * stride_xn + kx[None, :] * stride_xk, mask=mx, other=0.0)
            xv += tl.load(a_ptr + t * stride_at + n[:, None] * stride_an + ka[None, :] * stride_ak, mask=ma, other=0.0)
        else:
            kx = k
            mx = nm & (k[None, :] < K)
            xv = tl.load(x_ptr + t * stride_xt + n[:, None] * stride_xn + k[None, :] * stride_xk, mask=mx, other=0.0)
        if HAS_GGX:
            gg = tl.load(ggx_ptr + (t * N + n[:, None]) * K1 + kx[None, :], mask=mx, other=0.0)
            if CONCAT:
                gg += tl.load(gga_ptr + (t * N + n[:, None]) * (K - K1) + ka[None, :], mask=ma, other=0.0)
            if IN_RELU:
                gg = tl.where(xv > 0, gg, 0.0)
            wb = tl.load(th_base + (k[:, None] * OUT + o[None, :]) * stride_thp, mask=wm, other=0.0)
            acc += tl.dot(gg, wb, input_precision="ieee")
        if HAS_GGTH:
            if IN_RELU:
                xv = tl.maximum(xv, 0.0)
            gw = tl.load(gg_base + k[:, None] * OUT + o[None, :], mask=wm, other=0.0)
            acc += tl.dot(xv, gw, input_precision="ieee")
    if HAS_GGTH:
        gb = tl.load(gg_base + K * OUT + o, mask=o < OUT, other=0.0)
        acc += gb[None, :]
    m = nm & (o[None, :] < OUT)
    if OUT_RELU:
        y = tl.load(y_ptr + t * stride_yt + n[:, None] * stride_yn + o[None, :], mask=m, other=0.0)
        acc = tl.where(y > 0, acc, 0.0)
    tl.store(out_ptr + (t * N + n[:, None]) * OUT + o[None, :], acc, mask=m)


@triton.jit
def _linear_dbwd_theta(pid0, pid1, pid2, gy_ptr, y_ptr, x_ptr, a_ptr, ggx_ptr, gga_ptr, out_ptr, T, N, K, K1, OUT,
                       stride_gyt, stride_gyn, stride_yt, stride_yn,
                       stride_xt, stride_xn, stride_xk, stride_at, stride_an, stride_ak,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr,
                       IN_RELU: tl.constexpr, OUT_RELU: tl.constexpr, CONCAT: tl.constexpr,
                       SHARED: tl.constexpr):
    """Double backward of the layer, gradient w.r.t. theta: weight part (mask_in * ggX[t])^T gy'[t].

    gy' = gy * mask_out; the bias part is zero (the first-order backward does not read the bias).
    Tile (pid0, pid1, pid2) of (cdiv(K, BLOCK_K), cdiv(OUT, BLOCK_O), T), or (.., .., 1) with SHARED (sums over tasks).

    Args:
        gy_ptr, y_ptr: the first backward's incoming gradient and the forward output, (T, N, OUT),
            last dim contiguous (y only with OUT_RELU).
        x_ptr, a_ptr: forward inputs (T, N, K1), (T, N, K - K1) (a only with CONCAT).
        ggx_ptr, gga_ptr: cotangents of dL/dx and dL/da, contiguous (T, N, K1), (T, N, K - K1).
        out_ptr: result, contiguous (T, P) (or (P,) with SHARED), P = K*OUT + OUT.
        T, N, K, K1, OUT: tasks, rows, input features (total), features of x, outputs.
        stride_*: strides of gy and y (tasks, rows), x and a (tasks, rows, features).
        BLOCK_N, BLOCK_K, BLOCK_O: tile sizes (>= 16). IN_RELU, OUT_RELU, CONCAT, SHARED: as in
            `linear_bwd_theta_kernel`.
    """
    pid_k = pid0
    pid_o = pid1
    k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    acc = tl.zeros((BLOCK_K, BLOCK_O), dtype=gy_ptr.dtype.element_ty)
    if SHARED:
        t_lo = 0
        t_hi = T
    else:
        t_lo = pid2
        t_hi = t_lo + 1
    for t in range(t_lo, t_hi):
        for n0 in range(0, N, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            nm = n[:, None] < N
            m = nm & (o[None, :] < OUT)
            gy = tl.load(gy_ptr + t * stride_gyt + n[:, None] * stride_gyn + o[None, :], mask=m, other=0.0)
            if OUT_RELU:
                y = tl.load(y_ptr + t * stride_yt + n[:, None] * stride_yn + o[None, :], mask=m, other=0.0)
                gy = tl.where(y > 0, gy, 0.0)
            if CONCAT:
                kx = tl.where(k < K1, k, 0)
                ka = tl.where(k >= K1, k - K1, 0)
                mx = nm & (k[None, :] < K1)
                ma = nm & (k[None, :] >= K1) & (k[None, :] < K)
                gg = tl.load(ggx_ptr + (t * N + n[:, None]) * K1 + kx[None, :], mask=mx, other=0.0)
                gg += tl.load(gga_ptr + (t * N + n[:, None]) * (K - K1) + ka[None, :], mask=ma, other=0.0)
                if IN_RELU:
                    xv = tl.load(x_ptr + t * stride_xt + n[:, None] * stride_xn + kx[None, :] * stride_xk,
                                 mask=mx, other=0.0)
                    xv += tl.load(a_ptr + t * stride_at + n[:, None] * stride_an + ka[None, :] * stride_ak,
                                  mask=ma, other=0.0)
                    gg = tl.where(xv > 0, gg, 0.0)
            else:
                mx = nm & (k[None, :] < K)
                gg = tl.load(ggx_ptr + (t * N + n[:, None]) * K + k[None, :], mask=mx, other=0.0)
                if IN_RELU:
                    xv = tl.load(x_ptr + t * stride_xt + n[:, None] * stride_xn + k[None, :] * stride_xk,
                                 mask=mx, other=0.0)
                    gg = tl.where(xv > 0, gg, 0.0)
            acc += tl.dot(tl.trans(gg), gy, input_precision="ieee")
    P = K * OUT + OUT
    out = out_ptr + t_lo * P
    tl.store(out + k[:, None] * OUT + o[None, :], acc, mask=(k[:, None] < K) & (o[None, :] < OUT))
    o_lim = tl.where(pid_k == 0, OUT, 0)                 # feature block 0 writes the (zero) bias part
    tl.store(out + K * OUT + o, tl.zeros((BLOCK_O,), dtype=gy_ptr.dtype.element_ty), mask=o < o_lim)


# ---------------------------------------------------------------------------- merged launches
# Each backward runs its independent parts in ONE launch: a 1-D grid whose first programs do one
# part's tiles and the rest the other's (the per-part tile grids are flattened, pid0 fastest).


@triton.jit
def linear_bwd_kernel(gy_ptr, y_ptr, x_ptr, a_ptr, th_ptr, gx_ptr, ga_ptr, gth_ptr, T, N, K, K1, OUT,
                      stride_gyt, stride_gyn, stride_yt, stride_yn,
                      stride_xt, stride_xn, stride_xk, stride_at, stride_an, stride_ak,
                      stride_tht, stride_thp, NIN0, NIN1, NTH0, NTH1,
                      BLOCK_N: tl.constexpr, BLOCK_K_IN: tl.constexpr, BLOCK_O_IN: tl.constexpr,
                      BLOCK_K_TH: tl.constexpr, BLOCK_O_TH: tl.constexpr,
                      IN_RELU: tl.constexpr, OUT_RELU: tl.constexpr, CONCAT: tl.constexpr,
                      SHARED: tl.constexpr, DO_INPUT: tl.constexpr):
    """First-order backward of `batched_linear` in one launch: dL/dX (`_linear_bwd_input`) and dL/dtheta
    (`_linear_bwd_theta`).

    Grid: (NIN0 * NIN1 * T [DO_INPUT only] + NTH0 * NTH1 * (1 if SHARED else T),): the first programs
    are the input part's tiles (grid (NIN0, NIN1, T) = (cdiv(N, BLOCK_N), cdiv(K, BLOCK_K_IN), T)),
    the rest the theta part's (grid (NTH0, NTH1, T or 1) = (cdiv(K, BLOCK_K_TH), cdiv(OUT, BLOCK_O_TH), ..)).

    Args:
        gy_ptr, y_ptr, x_ptr, a_ptr, th_ptr, gx_ptr, ga_ptr: as in `_linear_bwd_input`.
        gth_ptr: output dL/dtheta, as `_linear_bwd_theta`'s gth_ptr.
        T, N, K, K1, OUT, stride_*: as in those two.
        NIN0, NIN1, NTH0, NTH1: the parts' tile counts (above).
        BLOCK_N: rows per step of both parts. BLOCK_K_IN, BLOCK_O_IN: the input part's tiles;
        BLOCK_K_TH, BLOCK_O_TH: the theta part's. IN_RELU, OUT_RELU, CONCAT, SHARED: as in the parts.
        DO_INPUT: compute dL/dX (False when no input needs a gradient, e.g. the first layer).
    """
    pid = tl.program_id(0)
    if DO_INPUT:
        n_in = NIN0 * NIN1 * T
    else:
        n_in = 0
    if pid < n_in:
        _linear_bwd_input(pid % NIN0, (pid // NIN0) % NIN1, pid // (NIN0 * NIN1),
                          gy_ptr, y_ptr, x_ptr, a_ptr, th_ptr, gx_ptr, ga_ptr, N, K, K1, OUT,
                          stride_gyt, stride_gyn, stride_yt, stride_yn,
                          stride_xt, stride_xn, stride_xk, stride_at, stride_an, stride_ak,
                          stride_tht, stride_thp, BLOCK_N, BLOCK_K_IN, BLOCK_O_IN, IN_RELU, OUT_RELU, CONCAT)
    else:
        q = pid - n_in
        _linear_bwd_theta(q % NTH0, (q // NTH0) % NTH1, q // (NTH0 * NTH1),
                          gy_ptr, y_ptr, x_ptr, a_ptr, gth_ptr, T, N, K, K1, OUT,
                          stride_gyt, stride_gyn, stride_yt, stride_yn,
                          stride_xt, stride_xn, stride_xk, stride_at, stride_an, stride_ak,
                          BLOCK_N, BLOCK_K_TH, BLOCK_O_TH, IN_RELU, OUT_RELU, CONCAT, SHARED)


@triton.jit
def linear_dbwd_kernel(ggx_ptr, gga_ptr, ggth_ptr, gy_ptr, x_ptr, a_ptr, th_ptr, y_ptr,
                       ggy_out_ptr, gth_out_ptr, gx_out_ptr, ga_out_ptr, T, N, K, K1, OUT,
                       stride_gyt, stride_gyn, stride_yt, stride_yn,
                       stride_xt, stride_xn, stride_xk, stride_at, stride_an, stride_ak,
                       stride_tht, stride_thp, stride_ggtht, NGY0, NGY1, NTH0, NTH1, NIN0, NIN1,
                       BLOCK_N_GY: tl.constexpr, BLOCK_K_GY: tl.constexpr, BLOCK_O_GY: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K_TH: tl.constexpr, BLOCK_O_TH: tl.constexpr,
                       BLOCK_K_IN: tl.constexpr, BLOCK_O_IN: tl.constexpr,
                       IN_RELU: tl.constexpr, OUT_RELU: tl.constexpr, CONCAT: tl.constexpr,
                       SHARED: tl.constexpr, HAS_GGX: tl.constexpr, HAS_GGTH: tl.constexpr,
                       DO_INPUT: tl.constexpr):
    """Second-order backward of `batched_linear` in one launch, up to three independent parts:
    d/dgy (`_linear_dbwd_gy`), d/dtheta (`_linear_dbwd_theta`, HAS_GGX only) and d/dX
    (`_linear_bwd_input` run with the theta cotangent in place of theta, DO_INPUT only).

    Grid: (NGY0 * NGY1 * T + [HAS_GGX] NTH0 * NTH1 * (1 if SHARED else T) + [DO_INPUT] NIN0 * NIN1 * T,),
    the parts' flattened tile grids in that order (their own grids: (cdiv(N, BLOCK_N_GY),
    cdiv(OUT, BLOCK_O_GY), T), (cdiv(K, BLOCK_K_TH), cdiv(OUT, BLOCK_O_TH), T or 1) and
    (cdiv(N, BLOCK_N), cdiv(K, BLOCK_K_IN), T)).

    Args:
        ggx_ptr, gga_ptr, ggth_ptr: cotangents of dL/dx, dL/da, dL/dtheta, contiguous (the theta
            cotangent (T, P), or (P,) with stride_ggtht = 0).
        gy_ptr: the first backward's incoming gradient (T, N, OUT), last dim contiguous.
        x_ptr, a_ptr, th_ptr, y_ptr: the forward's inputs, parameters and output (as in the forward).
        ggy_out_ptr: output d/dgy, contiguous (T, N, OUT). gth_out_ptr: output d/dtheta, contiguous
            like theta (HAS_GGX). gx_out_ptr, ga_out_ptr: outputs d/dx, d/da, contiguous (DO_INPUT).
        T, N, K, K1, OUT: tasks, rows, input features (total), features of x, outputs.
        stride_*: strides of gy and y (tasks, rows), x and a (tasks, rows, features), theta (tasks,
            params), the theta cotangent (tasks).
        NGY0, NGY1, NTH0, NTH1, NIN0, NIN1: the parts' tile counts (above).
        BLOCK_*_GY, BLOCK_*_TH, BLOCK_*_IN: the parts' tile sizes (BLOCK_N: theta and input parts).
        IN_RELU, OUT_RELU, CONCAT, SHARED: as in the forward. HAS_GGX, HAS_GGTH: which cotangents
        are present. DO_INPUT: compute d/dX (needs HAS_GGTH).
    """
    pid = tl.program_id(0)
    n_gy = NGY0 * NGY1 * T
    if HAS_GGX:
        if SHARED:
            n_th = NTH0 * NTH1
        else:
            n_th = NTH0 * NTH1 * T
    else:
        n_th = 0
    if pid < n_gy:
        _linear_dbwd_gy(pid % NGY0, (pid // NGY0) % NGY1, pid // (NGY0 * NGY1),
                        ggx_ptr, gga_ptr, ggth_ptr, x_ptr, a_ptr, th_ptr, y_ptr, ggy_out_ptr, N, K, K1, OUT,
                        stride_xt, stride_xn, stride_xk, stride_at, stride_an, stride_ak,
                        stride_tht, stride_thp, stride_ggtht, stride_yt, stride_yn,
                        BLOCK_N_GY, BLOCK_K_GY, BLOCK_O_GY, IN_RELU, OUT_RELU, CONCAT, HAS_GGX, HAS_GGTH)
    elif pid < n_gy + n_th:
        q = pid - n_gy
        _linear_dbwd_theta(q % NTH0, (q // NTH0) % NTH1, q // (NTH0 * NTH1),
                           gy_ptr, y_ptr, x_ptr, a_ptr, ggx_ptr, gga_ptr, gth_out_ptr, T, N, K, K1, OUT,
                           stride_gyt, stride_gyn, stride_yt, stride_yn,
                           stride_xt, stride_xn, stride_xk, stride_at, stride_an, stride_ak,
                           BLOCK_N, BLOCK_K_TH, BLOCK_O_TH, IN_RELU, OUT_RELU, CONCAT, SHARED)
    else:
        if DO_INPUT:
            q = pid - n_gy - n_th
            _linear_bwd_input(q % NIN0, (q // NIN0) % NIN1, q // (NIN0 * NIN1),
                              gy_ptr, y_ptr, x_ptr, a_ptr, ggth_ptr, gx_out_ptr, ga_out_ptr, N, K, K1, OUT,
                              stride_gyt, stride_gyn, stride_yt, stride_yn,
                              stride_xt, stride_xn, stride_xk, stride_at, stride_an, stride_ak,
                              stride_ggtht, 1, BLOCK_N, BLOCK_K_IN, BLOCK_O_IN, IN_RELU, OUT_RELU, CONCAT)
