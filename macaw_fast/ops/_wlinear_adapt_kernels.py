"""Triton kernels of `wlinear_adapt` (imported lazily: needs triton).

The forward of one weight-transform layer's inner step takes three launches and reads W twice,
which is the minimum: z' needs all of G W before any of Z' W^T can start.

1. `adapt_reduce_kernel`: split-K partial sums of U = G W over row blocks of W.
2. `adapt_mix_kernel`: one program sums the partials and forms z', the target mix z^tgt, and the
   per-row rank-1 coefficients c (tiny: T x D work).
3. `adapt_expand_kernel`: theta' = Z' W^T + b - c G, and the target rows from the same W tiles.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def adapt_reduce_kernel(g_ptr, w_ptr, part_ptr, T, P, D, P_CHUNK,
                        stride_gt, stride_gp, stride_wp, stride_wd,
                        BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    """Partial products part[k] = G[:, rows_k] @ W[rows_k, :] for one chunk of W's rows.

    Grid: (cdiv(P, P_CHUNK), cdiv(D, BLOCK_D)); program (k, j) covers rows
    [k*P_CHUNK, (k+1)*P_CHUNK) of W and columns [j*BLOCK_D, (j+1)*BLOCK_D).

    Args:
        g_ptr: G, per-task gradients w.r.t. the generated parameters, shape (T, P).
        w_ptr: W, the layer's weight, shape (P, D).
        part_ptr: output partial sums, contiguous (cdiv(P, P_CHUNK), T, D).
        T, P, D: number of tasks, generated parameters, latent size.
        P_CHUNK: rows of W per program (a multiple of BLOCK_P).
        stride_gt, stride_gp: strides of G along tasks and parameters.
        stride_wp, stride_wd: strides of W along parameters and latent dims.
        BLOCK_T: rows of the task tile (>= T, >= 16 for tl.dot).
        BLOCK_P: rows of W per inner iteration.
        BLOCK_D: latent columns per program.
    """
    pid_k = tl.program_id(0)
    pid_d = tl.program_id(1)
    t = tl.arange(0, BLOCK_T)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=g_ptr.dtype.element_ty)
    start = pid_k * P_CHUNK
    for p0 in range(0, P_CHUNK, BLOCK_P):
        p = start + p0 + tl.arange(0, BLOCK_P)
        g = tl.load(g_ptr + t[:, None] * stride_gt + p[None, :] * stride_gp,
                    mask=(t[:, None] < T) & (p[None, :] < P), other=0.0)
        w = tl.load(w_ptr + p[:, None] * stride_wp + d[None, :] * stride_wd,
                    mask=(p[:, None] < P) & (d[None, :] < D), other=0.0)
        acc += tl.dot(g, w, input_precision="ieee")
    out = part_ptr + pid_k * T * D + t[:, None] * D + d[None, :]
    tl.store(out, acc, mask=(t[:, None] < T) & (d[None, :] < D))


@triton.jit
def adapt_mix_kernel(part_ptr, z_ptr, rates_ptr, alpha_ptr, zc_ptr, coef_ptr, u_ptr, T, D, NPART,
                     BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, WITH_TARGET: tl.constexpr):
    """Sum the partials into U = G W and form the latent rows and coefficients (one program).

    Args:
        part_ptr: partial sums from `adapt_reduce_kernel`, contiguous (NPART, T, D).
        z_ptr: z, the layer's latent, contiguous (D,).
        rates_ptr: (eta_z, eta_W, eta_b), contiguous (3,).
        zc_ptr: output latent rows, contiguous (R, D): rows [0, T) are z'_t = z - eta_z U_t, rows
            [T, 2T) (WITH_TARGET only) are z^tgt_t = alpha z + (1 - alpha) z'_t.
        coef_ptr: output rank-1 coefficients, contiguous (R,): c_t = eta_W (z . z'_t) + eta_b and
            c^tgt_t = (1 - alpha)(eta_W (z . z^tgt_t) + eta_b).
        u_ptr: output U = G W, contiguous (T, D) (kept for the backward pass).
        T, D, NPART: tasks, latent size, number of partial blocks.
        alpha_ptr: the target mix weight alpha, (1,) in the kernel dtype (read only WITH_TARGET).
        BLOCK_T: >= T. BLOCK_D: >= D (the whole latent in one tile).
        WITH_TARGET: also produce the target rows.
    """
    t = tl.arange(0, BLOCK_T)
    d = tl.arange(0, BLOCK_D)
    m = (t[:, None] < T) & (d[None, :] < D)
    u = tl.load(part_ptr + t[:, None] * D + d[None, :], mask=m, other=0.0)
    for k in range(1, NPART):
        u += tl.load(part_ptr + k * T * D + t[:, None] * D + d[None, :], mask=m, other=0.0)
    z = tl.load(z_ptr + d, mask=d < D, other=0.0)
    eta_z = tl.load(rates_ptr)
    eta_w = tl.load(rates_ptr + 1)
    eta_b = tl.load(rates_ptr + 2)
    zn = z[None, :] - eta_z * u
    c = eta_w * tl.sum(zn * z[None, :], axis=1) + eta_b
    tl.store(u_ptr + t[:, None] * D + d[None, :], u, mask=m)
    tl.store(zc_ptr + t[:, None] * D + d[None, :], zn, mask=m)
    tl.store(coef_ptr + t, c, mask=t < T)
    if WITH_TARGET:
        alpha = tl.load(alpha_ptr)
        zt = alpha * z[None, :] + (1.0 - alpha) * zn
        ct = (1.0 - alpha) * (eta_w * tl.sum(zt * z[None, :], axis=1) + eta_b)
        tl.store(zc_ptr + (T + t[:, None]) * D + d[None, :], zt, mask=m)
        tl.store(coef_ptr + T + t, ct, mask=t < T)


@triton.jit
def adapt_expand_kernel(zc_ptr, coef_ptr, w_ptr, b_ptr, g_ptr, out_ptr, tgt_ptr, T, R, P, D,
                        stride_wp, stride_wd, stride_gt, stride_gp,
                        BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    """theta rows = Zc W^T + b - coef G for one block of generated parameters.

    Grid: (cdiv(P, BLOCK_P),). Row r < T of the result goes to out[r], row T <= r < R to tgt[r - T];
    row r uses G[r mod T].

    Args:
        zc_ptr: latent rows from `adapt_mix_kernel`, contiguous (R, D).
        coef_ptr: per-row coefficients, contiguous (R,).
        w_ptr: W, shape (P, D); b_ptr: b, contiguous (P,).
        g_ptr: G, shape (T, P).
        out_ptr: theta', contiguous (T, P). tgt_ptr: theta^tgt, contiguous (T, P) (unused if R == T).
        T, R, P, D: tasks, rows (T or 2T), generated parameters, latent size.
        stride_wp, stride_wd: strides of W along parameters and latent dims.
        stride_gt, stride_gp: strides of G along tasks and parameters.
        BLOCK_R: >= R and >= 16. BLOCK_P: parameters per program. BLOCK_D: latent dims per step.
    """
    pid = tl.program_id(0)
    r = tl.arange(0, BLOCK_R)
    p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    acc = tl.zeros((BLOCK_R, BLOCK_P), dtype=w_ptr.dtype.element_ty)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        zc = tl.load(zc_ptr + r[:, None] * D + d[None, :], mask=(r[:, None] < R) & (d[None, :] < D), other=0.0)
        wt = tl.load(w_ptr + p[None, :] * stride_wp + d[:, None] * stride_wd,
                     mask=(p[None, :] < P) & (d[:, None] < D), other=0.0)
        acc += tl.dot(zc, wt, input_precision="ieee")
    bias = tl.load(b_ptr + p, mask=p < P, other=0.0)
    coef = tl.load(coef_ptr + r, mask=r < R, other=0.0)
    trow = tl.where(r < T, r, r - T)
    trow = tl.where(r < R, trow, 0)
    g = tl.load(g_ptr + trow[:, None] * stride_gt + p[None, :] * stride_gp,
                mask=(r[:, None] < R) & (p[None, :] < P), other=0.0)
    res = acc + bias[None, :] - coef[:, None] * g
    pm = p[None, :] < P
    tl.store(out_ptr + trow[:, None] * P + p[None, :], res, mask=(r[:, None] < T) & pm)
    tl.store(tgt_ptr + trow[:, None] * P + p[None, :], res, mask=(r[:, None] >= T) & (r[:, None] < R) & pm)
