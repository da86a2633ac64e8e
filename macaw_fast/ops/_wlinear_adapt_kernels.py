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

from ._group import group_kernel


@triton.jit
def _adapt_reduce_body(pid_k, pid_d, g_ptr, w_ptr, part_ptr, T, P, D, P_CHUNK,
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
def adapt_reduce_kernel(g_ptr, w_ptr, part_ptr, T, P, D, P_CHUNK,
                        stride_gt, stride_gp, stride_wp, stride_wd,
                        BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    """See `_adapt_reduce_body` (this kernel is one layer; the group kernels run many)."""
    _adapt_reduce_body(tl.program_id(0), tl.program_id(1), g_ptr, w_ptr, part_ptr, T, P, D, P_CHUNK, stride_gt,
                       stride_gp, stride_wp, stride_wd, BLOCK_T, BLOCK_P, BLOCK_D)



@triton.jit
def _adapt_mix_body(part_ptr, z_ptr, rates_ptr, alpha_ptr, zc_ptr, coef_ptr, u_ptr, T, D, NPART,
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
def adapt_mix_kernel(part_ptr, z_ptr, rates_ptr, alpha_ptr, zc_ptr, coef_ptr, u_ptr, T, D, NPART,
                     BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, WITH_TARGET: tl.constexpr):
    """See `_adapt_mix_body` (this kernel is one layer; the group kernels run many)."""
    _adapt_mix_body(part_ptr, z_ptr, rates_ptr, alpha_ptr, zc_ptr, coef_ptr, u_ptr, T, D, NPART, BLOCK_T,
                    BLOCK_D, WITH_TARGET)



@triton.jit
def _adapt_expand_body(pid, zc_ptr, coef_ptr, w_ptr, b_ptr, g_ptr, out_ptr, tgt_ptr, T, R, P, D,
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

@triton.jit
def adapt_expand_kernel(zc_ptr, coef_ptr, w_ptr, b_ptr, g_ptr, out_ptr, tgt_ptr, T, R, P, D,
                        stride_wp, stride_wd, stride_gt, stride_gp,
                        BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    """See `_adapt_expand_body` (this kernel is one layer; the group kernels run many)."""
    _adapt_expand_body(tl.program_id(0), zc_ptr, coef_ptr, w_ptr, b_ptr, g_ptr, out_ptr, tgt_ptr, T, R, P, D,
                       stride_wp, stride_wd, stride_gt, stride_gp, BLOCK_R, BLOCK_P, BLOCK_D)



# ---------------------------------------------------------------------------- backward pass
# Three launches again: reduce over P (A W, At W and the rank-1 sums s), one small program for the
# latent-space gradients, then one pass over W's rows writing gW, gG and gb.


@triton.jit
def _adapt_bwd_reduce_body(pid_k, pid_d, a_ptr, at_ptr, g_ptr, w_ptr, part_ptr, spart_ptr, T, R, P, D, P_CHUNK,
                            stride_at_, stride_ap, stride_tt, stride_tp, stride_gt, stride_gp,
                            stride_wp, stride_wd,
                            BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    """Partial sums over one chunk of W's rows of [A; At] W and s_r = -sum_p [A; At]_rp G_(r mod T)p.

    Grid: (cdiv(P, P_CHUNK), cdiv(D, BLOCK_D)). Row r < T reads A[r], T <= r < R reads At[r - T].

    Args:
        a_ptr: A = dL/dtheta', shape (T, P). at_ptr: At = dL/dtheta^tgt, shape (T, P) (if R == 2T).
        g_ptr: G, shape (T, P). w_ptr: W, shape (P, D).
        part_ptr: output partial [A; At] W, contiguous (NPART, R, D).
        spart_ptr: output partial s, contiguous (NPART, R) (written by the programs with column block 0).
        T, R, P, D: tasks, rows (T or 2T), generated parameters, latent size. P_CHUNK: rows of W per program.
        stride_at_, stride_ap: strides of A (tasks, parameters); stride_tt, stride_tp: of At;
        stride_gt, stride_gp: of G; stride_wp, stride_wd: of W (parameters, latent dims).
        BLOCK_R: >= R and >= 16. BLOCK_P: rows of W per step. BLOCK_D: latent columns per program.
    """
    r = tl.arange(0, BLOCK_R)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    trow = tl.where(r < T, r, r - T)
    trow = tl.where(r < R, trow, 0)
    acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=w_ptr.dtype.element_ty)
    sacc = tl.zeros((BLOCK_R,), dtype=w_ptr.dtype.element_ty)
    start = pid_k * P_CHUNK
    for p0 in range(0, P_CHUNK, BLOCK_P):
        p = start + p0 + tl.arange(0, BLOCK_P)
        pm = p[None, :] < P
        am = tl.load(a_ptr + trow[:, None] * stride_at_ + p[None, :] * stride_ap,
                     mask=(r[:, None] < T) & pm, other=0.0)
        am += tl.load(at_ptr + trow[:, None] * stride_tt + p[None, :] * stride_tp,
                      mask=(r[:, None] >= T) & (r[:, None] < R) & pm, other=0.0)
        g = tl.load(g_ptr + trow[:, None] * stride_gt + p[None, :] * stride_gp,
                    mask=(r[:, None] < R) & pm, other=0.0)
        sacc -= tl.sum(am * g, axis=1)
        w = tl.load(w_ptr + p[:, None] * stride_wp + d[None, :] * stride_wd,
                    mask=(p[:, None] < P) & (d[None, :] < D), other=0.0)
        acc += tl.dot(am, w, input_precision="ieee")
    tl.store(part_ptr + pid_k * R * D + r[:, None] * D + d[None, :], acc, mask=(r[:, None] < R) & (d[None, :] < D))
    r_lim = tl.where(pid_d == 0, R, 0)                 # only column block 0 writes s
    tl.store(spart_ptr + pid_k * R + r, sacc, mask=r < r_lim)

@triton.jit
def adapt_bwd_reduce_kernel(a_ptr, at_ptr, g_ptr, w_ptr, part_ptr, spart_ptr, T, R, P, D, P_CHUNK,
                            stride_at_, stride_ap, stride_tt, stride_tp, stride_gt, stride_gp,
                            stride_wp, stride_wd,
                            BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    """See `_adapt_bwd_reduce_body` (this kernel is one layer; the group kernels run many)."""
    _adapt_bwd_reduce_body(tl.program_id(0), tl.program_id(1), a_ptr, at_ptr, g_ptr, w_ptr, part_ptr, spart_ptr,
                           T, R, P, D, P_CHUNK, stride_at_, stride_ap, stride_tt, stride_tp, stride_gt,
                           stride_gp, stride_wp, stride_wd, BLOCK_R, BLOCK_P, BLOCK_D)



@triton.jit
def _adapt_bwd_mix_body(part_ptr, spart_ptr, z_ptr, rates_ptr, alpha_ptr, u_ptr, gu_ptr,
                         v_ptr, coef_ptr, gz_ptr, grates_ptr, T, D, NPART,
                         BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                         WITH_TARGET: tl.constexpr, HAS_GU: tl.constexpr):
    """Latent-space gradients of the inner step (one program).

    With z' = z - eta_z u, z^tgt = alpha z + (1 - alpha) z', s = -rowsum(A * G), st = -rowsum(At * G):
    g_z' = A W + eta_W s z [+ (1 - alpha) g_zt], g_zt = At W + (1 - alpha) eta_W st z,
    g_u = -eta_z g_z' [+ gu], and the gradients of z and of the three rates.

    Args:
        part_ptr, spart_ptr: partials from `adapt_bwd_reduce_kernel`, (NPART, R, D) and (NPART, R).
        z_ptr: z (D,). rates_ptr: (eta_z, eta_W, eta_b) (3,). alpha_ptr: alpha (1,).
        u_ptr: u = G W saved by the forward, contiguous (T, D). gu_ptr: incoming dL/du (T, D) (HAS_GU).
        v_ptr: output rows for the gW product, contiguous (2T or 3T, D): [z'; (z^tgt;) g_u].
        coef_ptr: output coefficients, contiguous (R,): c_t, then c^tgt_t (WITH_TARGET).
        gz_ptr: output dL/dz, (D,). grates_ptr: output dL/drates, (3,).
        T, D, NPART: tasks, latent size, partial blocks.
        BLOCK_T: >= T. BLOCK_D: >= D. WITH_TARGET: At was given. HAS_GU: gu was given.
    """
    t = tl.arange(0, BLOCK_T)
    d = tl.arange(0, BLOCK_D)
    tm = t < T
    m = tm[:, None] & (d[None, :] < D)
    R = 2 * T if WITH_TARGET else T
    aw = tl.load(part_ptr + t[:, None] * D + d[None, :], mask=m, other=0.0)
    s = tl.load(spart_ptr + t, mask=tm, other=0.0)
    for k in range(1, NPART):
        aw += tl.load(part_ptr + k * R * D + t[:, None] * D + d[None, :], mask=m, other=0.0)
        s += tl.load(spart_ptr + k * R + t, mask=tm, other=0.0)
    z = tl.load(z_ptr + d, mask=d < D, other=0.0)
    eta_z = tl.load(rates_ptr)
    eta_w = tl.load(rates_ptr + 1)
    eta_b = tl.load(rates_ptr + 2)
    u = tl.load(u_ptr + t[:, None] * D + d[None, :], mask=m, other=0.0)
    zn = z[None, :] - eta_z * u
    zz = tl.sum(zn * z[None, :], axis=1)
    g_zn = aw + eta_w * s[:, None] * z[None, :]
    gz = tl.sum(tl.where(m, g_zn + eta_w * s[:, None] * zn, 0.0), axis=0)
    g_ew = tl.sum(tl.where(tm, s * zz, 0.0), axis=0)
    g_eb = tl.sum(tl.where(tm, s, 0.0), axis=0)
    tl.store(coef_ptr + t, eta_w * zz + eta_b, mask=tm)
    tl.store(v_ptr + t[:, None] * D + d[None, :], zn, mask=m)
    nrow = T
    if WITH_TARGET:
        alpha = tl.load(alpha_ptr)
        a1 = 1.0 - alpha
        awt = tl.load(part_ptr + (T + t[:, None]) * D + d[None, :], mask=m, other=0.0)
        st = tl.load(spart_ptr + T + t, mask=tm, other=0.0)
        for k in range(1, NPART):
            awt += tl.load(part_ptr + k * R * D + (T + t[:, None]) * D + d[None, :], mask=m, other=0.0)
            st += tl.load(spart_ptr + k * R + T + t, mask=tm, other=0.0)
        zt = alpha * z[None, :] + a1 * zn
        zzt = tl.sum(zt * z[None, :], axis=1)
        g_zt = awt + (a1 * eta_w) * st[:, None] * z[None, :]
        g_zn += a1 * g_zt
        gz += tl.sum(tl.where(m, alpha * g_zt + (a1 * eta_w) * st[:, None] * zt + a1 * g_zt, 0.0), axis=0)
        g_ew += a1 * tl.sum(tl.where(tm, st * zzt, 0.0), axis=0)
        g_eb += a1 * tl.sum(tl.where(tm, st, 0.0), axis=0)
        tl.store(coef_ptr + T + t, a1 * (eta_w * zzt + eta_b), mask=tm)
        tl.store(v_ptr + (T + t[:, None]) * D + d[None, :], zt, mask=m)
        nrow = 2 * T
    g_u = -eta_z * g_zn
    if HAS_GU:
        g_u += tl.load(gu_ptr + t[:, None] * D + d[None, :], mask=m, other=0.0)
    g_ez = -tl.sum(tl.sum(tl.where(m, g_zn * u, 0.0), axis=1), axis=0)
    tl.store(v_ptr + (nrow + t[:, None]) * D + d[None, :], g_u, mask=m)
    tl.store(gz_ptr + d, gz, mask=d < D)
    tl.store(grates_ptr, g_ez)
    tl.store(grates_ptr + 1, g_ew)
    tl.store(grates_ptr + 2, g_eb)

@triton.jit
def adapt_bwd_mix_kernel(part_ptr, spart_ptr, z_ptr, rates_ptr, alpha_ptr, u_ptr, gu_ptr,
                         v_ptr, coef_ptr, gz_ptr, grates_ptr, T, D, NPART,
                         BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                         WITH_TARGET: tl.constexpr, HAS_GU: tl.constexpr):
    """See `_adapt_bwd_mix_body` (this kernel is one layer; the group kernels run many)."""
    _adapt_bwd_mix_body(part_ptr, spart_ptr, z_ptr, rates_ptr, alpha_ptr, u_ptr, gu_ptr, v_ptr, coef_ptr,
                        gz_ptr, grates_ptr, T, D, NPART, BLOCK_T, BLOCK_D, WITH_TARGET, HAS_GU)



@triton.jit
def _adapt_bwd_expand_body(pid, a_ptr, at_ptr, g_ptr, w_ptr, v_ptr, coef_ptr, gw_ptr, gg_ptr, gb_ptr,
                            T, R, P, D, stride_at_, stride_ap, stride_tt, stride_tp, stride_gt, stride_gp,
                            stride_wp, stride_wd,
                            BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr,
                            BLOCK_D: tl.constexpr, WITH_TARGET: tl.constexpr):
    """gW = [A; At; G]^T V, gG = g_u W^T - c A - c^tgt At and gb = sum_t (A + At) for one P block.

    Grid: (cdiv(P, BLOCK_P),). V = [z'; (z^tgt;) g_u] has M = R + T rows.

    Args:
        a_ptr, at_ptr, g_ptr: A, At (if R == 2T) and G, each shape (T, P).
        w_ptr: W, shape (P, D). v_ptr: V from `adapt_bwd_mix_kernel`, contiguous (R + T, D).
        coef_ptr: (c; c^tgt), contiguous (R,).
        gw_ptr: output dL/dW, contiguous (P, D). gg_ptr: output dL/dG, contiguous (T, P).
        gb_ptr: output dL/db, contiguous (P,).
        T, R, P, D: tasks, rows of [A; At], generated parameters, latent size.
        stride_*: strides of A, At, G (tasks, parameters) and W (parameters, latent dims).
        BLOCK_M: >= R + T, >= 16. BLOCK_T: >= T, >= 16. BLOCK_P: parameters per program.
        BLOCK_D: latent dims per step. WITH_TARGET: R == 2T (At given).
    """
    p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    pm = p < P
    M = R + T
    # M^T tile (BLOCK_P, BLOCK_M): column m is A[m], At[m - T] or G[m - R]
    mm = tl.arange(0, BLOCK_M)
    ra = tl.where(mm < T, mm, 0)
    rt = tl.where((mm >= T) & (mm < R), mm - T, 0)
    rg = tl.where((mm >= R) & (mm < M), mm - R, 0)
    mt = tl.load(a_ptr + ra[None, :] * stride_at_ + p[:, None] * stride_ap,
                 mask=pm[:, None] & (mm[None, :] < T), other=0.0)
    mt += tl.load(at_ptr + rt[None, :] * stride_tt + p[:, None] * stride_tp,
                  mask=pm[:, None] & (mm[None, :] >= T) & (mm[None, :] < R), other=0.0)
    mt += tl.load(g_ptr + rg[None, :] * stride_gt + p[:, None] * stride_gp,
                  mask=pm[:, None] & (mm[None, :] >= R) & (mm[None, :] < M), other=0.0)
    t = tl.arange(0, BLOCK_T)
    acc = tl.zeros((BLOCK_T, BLOCK_P), dtype=w_ptr.dtype.element_ty)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        dm = d < D
        v = tl.load(v_ptr + mm[:, None] * D + d[None, :], mask=(mm[:, None] < M) & dm[None, :], other=0.0)
        tl.store(gw_ptr + p[:, None] * D + d[None, :], tl.dot(mt, v, input_precision="ieee"),
                 mask=pm[:, None] & dm[None, :])
        gu = tl.load(v_ptr + (R + t[:, None]) * D + d[None, :], mask=(t[:, None] < T) & dm[None, :], other=0.0)
        wt = tl.load(w_ptr + p[None, :] * stride_wp + d[:, None] * stride_wd, mask=pm[None, :] & dm[:, None], other=0.0)
        acc += tl.dot(gu, wt, input_precision="ieee")
    tm = (t[:, None] < T) & pm[None, :]
    tt = tl.where(t < T, t, 0)
    a = tl.load(a_ptr + tt[:, None] * stride_at_ + p[None, :] * stride_ap, mask=tm, other=0.0)
    c = tl.load(coef_ptr + t, mask=t < T, other=0.0)
    acc -= c[:, None] * a
    gb = tl.sum(a, axis=0)
    if WITH_TARGET:
        at = tl.load(at_ptr + tt[:, None] * stride_tt + p[None, :] * stride_tp, mask=tm, other=0.0)
        ct = tl.load(coef_ptr + T + t, mask=t < T, other=0.0)
        acc -= ct[:, None] * at
        gb += tl.sum(at, axis=0)
    tl.store(gg_ptr + t[:, None] * P + p[None, :], acc, mask=tm)
    tl.store(gb_ptr + p, gb, mask=pm)


@triton.jit
def adapt_bwd_expand_kernel(a_ptr, at_ptr, g_ptr, w_ptr, v_ptr, coef_ptr, gw_ptr, gg_ptr, gb_ptr,
                            T, R, P, D, stride_at_, stride_ap, stride_tt, stride_tp, stride_gt, stride_gp,
                            stride_wp, stride_wd,
                            BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr,
                            BLOCK_D: tl.constexpr, WITH_TARGET: tl.constexpr):
    """See `_adapt_bwd_expand_body` (this kernel is one layer; the group kernels run many)."""
    _adapt_bwd_expand_body(tl.program_id(0), a_ptr, at_ptr, g_ptr, w_ptr, v_ptr, coef_ptr, gw_ptr, gg_ptr,
                           gb_ptr, T, R, P, D, stride_at_, stride_ap, stride_tt, stride_tp, stride_gt,
                           stride_gp, stride_wp, stride_wd, BLOCK_M, BLOCK_T, BLOCK_P, BLOCK_D, WITH_TARGET)


# ---------------------------------------------------------------------------- many layers per launch
# The group kernels run one of the kernels above for up to 6 layers of one net (same T and D) in one
# launch: the last grid axis picks the layer, whose pointers, sizes and strides come from its slot.

#: Layers one launch of a group kernel serves (more: several launches).
MAX_GROUP_LAYERS = 6


adapt_reduce_group_kernel = group_kernel(
    globals(), 'adapt_reduce_group_kernel', _adapt_reduce_body, 6,
    sections=[
        ['g{l}_ptr', 'w{l}_ptr', 'part{l}_ptr', 'P{l}', 'P_CHUNK{l}', 'stride_gt{l}', 'stride_gp{l}',
         'stride_wp{l}', 'stride_wd{l}', 'NPART{l}'],
    ],
    shared=['T', 'D'], constexprs=['BLOCK_T', 'BLOCK_P', 'BLOCK_D'], pids=['pid_k', 'pid_d'],
    call='pid_k, pid_d, g{l}_ptr, w{l}_ptr, part{l}_ptr, T, P{l}, D, P_CHUNK{l}, stride_gt{l}, '
         'stride_gp{l}, stride_wp{l}, stride_wd{l}, BLOCK_T, BLOCK_P, BLOCK_D',
    guard='pid_k < NPART{l}',
    doc="""`adapt_reduce_kernel` for up to 6 layers in one launch. Grid: (max NPART_l, cdiv(D, BLOCK_D), NL).

    Slot l's arguments are `adapt_reduce_kernel`'s per-layer ones with suffix l (NPART<l>: its row chunks);
    slots >= NL are not read. The shared arguments and constexprs are as in `adapt_reduce_kernel`.
    """)


adapt_mix_group_kernel = group_kernel(
    globals(), 'adapt_mix_group_kernel', _adapt_mix_body, 6,
    sections=[['part{l}_ptr', 'z{l}_ptr', 'rates{l}_ptr', 'zc{l}_ptr', 'coef{l}_ptr', 'u{l}_ptr', 'NPART{l}']],
    shared=['alpha_ptr', 'T', 'D'], constexprs=['BLOCK_T', 'BLOCK_D', 'WITH_TARGET'], pids=[],
    call='part{l}_ptr, z{l}_ptr, rates{l}_ptr, alpha_ptr, zc{l}_ptr, coef{l}_ptr, u{l}_ptr, T, D, '
         'NPART{l}, BLOCK_T, BLOCK_D, WITH_TARGET',
    doc="""`adapt_mix_kernel` for up to 6 layers in one launch. Grid: (NL,).

    Slot l's arguments are `adapt_mix_kernel`'s per-layer ones with suffix l;
    slots >= NL are not read. The shared arguments and constexprs are as in `adapt_mix_kernel`.
    """)


adapt_expand_group_kernel = group_kernel(
    globals(), 'adapt_expand_group_kernel', _adapt_expand_body, 6,
    sections=[
        ['zc{l}_ptr', 'coef{l}_ptr', 'w{l}_ptr', 'b{l}_ptr', 'g{l}_ptr', 'out{l}_ptr', 'tgt{l}_ptr', 'P{l}',
         'stride_wp{l}', 'stride_wd{l}', 'stride_gt{l}', 'stride_gp{l}'],
    ],
    shared=['T', 'R', 'D'], constexprs=['BLOCK_R', 'BLOCK_P', 'BLOCK_D'], pids=['pid'],
    call='pid, zc{l}_ptr, coef{l}_ptr, w{l}_ptr, b{l}_ptr, g{l}_ptr, out{l}_ptr, tgt{l}_ptr, T, R, '
         'P{l}, D, stride_wp{l}, stride_wd{l}, stride_gt{l}, stride_gp{l}, BLOCK_R, BLOCK_P, BLOCK_D',
    guard='pid * BLOCK_P < P{l}',
    doc="""`adapt_expand_kernel` for up to 6 layers in one launch. Grid: (max cdiv(P_l, BLOCK_P), NL).

    Slot l's arguments are `adapt_expand_kernel`'s per-layer ones with suffix l;
    slots >= NL are not read. The shared arguments and constexprs are as in `adapt_expand_kernel`.
    """)


adapt_bwd_reduce_group_kernel = group_kernel(
    globals(), 'adapt_bwd_reduce_group_kernel', _adapt_bwd_reduce_body, 6,
    sections=[
        ['a{l}_ptr', 'at{l}_ptr', 'g{l}_ptr', 'w{l}_ptr', 'part{l}_ptr', 'spart{l}_ptr', 'P{l}', 'P_CHUNK{l}',
         'stride_at_{l}', 'stride_ap{l}', 'stride_tt{l}', 'stride_tp{l}', 'stride_gt{l}', 'stride_gp{l}',
         'stride_wp{l}', 'stride_wd{l}', 'NPART{l}'],
    ],
    shared=['T', 'R', 'D'], constexprs=['BLOCK_R', 'BLOCK_P', 'BLOCK_D'], pids=['pid_k', 'pid_d'],
    call='pid_k, pid_d, a{l}_ptr, at{l}_ptr, g{l}_ptr, w{l}_ptr, part{l}_ptr, spart{l}_ptr, T, R, '
         'P{l}, D, P_CHUNK{l}, stride_at_{l}, stride_ap{l}, stride_tt{l}, stride_tp{l}, stride_gt{l}, '
         'stride_gp{l}, stride_wp{l}, stride_wd{l}, BLOCK_R, BLOCK_P, BLOCK_D',
    guard='pid_k < NPART{l}',
    doc="""`adapt_bwd_reduce_kernel` for up to 6 layers in one launch. Grid: (max NPART_l, cdiv(D, BLOCK_D), NL).

    Slot l's arguments are `adapt_bwd_reduce_kernel`'s per-layer ones with suffix l (NPART<l>: its row chunks);
    slots >= NL are not read. The shared arguments and constexprs are as in `adapt_bwd_reduce_kernel`.
    """)


adapt_bwd_mix_group_kernel = group_kernel(
    globals(), 'adapt_bwd_mix_group_kernel', _adapt_bwd_mix_body, 6,
    sections=[
        ['part{l}_ptr', 'spart{l}_ptr', 'z{l}_ptr', 'rates{l}_ptr', 'u{l}_ptr', 'gu{l}_ptr', 'v{l}_ptr',
         'coef{l}_ptr', 'gz{l}_ptr', 'grates{l}_ptr', 'NPART{l}'],
    ],
    shared=['alpha_ptr', 'T', 'D'], constexprs=['BLOCK_T', 'BLOCK_D', 'WITH_TARGET', 'HAS_GU'], pids=[],
    call='part{l}_ptr, spart{l}_ptr, z{l}_ptr, rates{l}_ptr, alpha_ptr, u{l}_ptr, gu{l}_ptr, v{l}_ptr,'
         ' coef{l}_ptr, gz{l}_ptr, grates{l}_ptr, T, D, NPART{l}, BLOCK_T, BLOCK_D, WITH_TARGET, '
         'HAS_GU',
    doc="""`adapt_bwd_mix_kernel` for up to 6 layers in one launch. Grid: (NL,).

    Slot l's arguments are `adapt_bwd_mix_kernel`'s per-layer ones with suffix l;
    slots >= NL are not read. The shared arguments and constexprs are as in `adapt_bwd_mix_kernel`.
    """)


adapt_bwd_expand_group_kernel = group_kernel(
    globals(), 'adapt_bwd_expand_group_kernel', _adapt_bwd_expand_body, 6,
    sections=[
        ['a{l}_ptr', 'at{l}_ptr', 'g{l}_ptr', 'w{l}_ptr', 'v{l}_ptr', 'coef{l}_ptr', 'gw{l}_ptr', 'gg{l}_ptr',
         'gb{l}_ptr', 'P{l}', 'stride_at_{l}', 'stride_ap{l}', 'stride_tt{l}', 'stride_tp{l}', 'stride_gt{l}',
         'stride_gp{l}', 'stride_wp{l}', 'stride_wd{l}'],
    ],
    shared=['T', 'R', 'D'], constexprs=['BLOCK_M', 'BLOCK_T', 'BLOCK_P', 'BLOCK_D', 'WITH_TARGET'], pids=['pid'],
    call='pid, a{l}_ptr, at{l}_ptr, g{l}_ptr, w{l}_ptr, v{l}_ptr, coef{l}_ptr, gw{l}_ptr, gg{l}_ptr, '
         'gb{l}_ptr, T, R, P{l}, D, stride_at_{l}, stride_ap{l}, stride_tt{l}, stride_tp{l}, '
         'stride_gt{l}, stride_gp{l}, stride_wp{l}, stride_wd{l}, BLOCK_M, BLOCK_T, BLOCK_P, BLOCK_D, '
         'WITH_TARGET',
    guard='pid * BLOCK_P < P{l}',
    doc="""`adapt_bwd_expand_kernel` for up to 6 layers in one launch. Grid: (max cdiv(P_l, BLOCK_P), NL).

    Slot l's arguments are `adapt_bwd_expand_kernel`'s per-layer ones with suffix l;
    slots >= NL are not read. The shared arguments and constexprs are as in `adapt_bwd_expand_kernel`.
    """)