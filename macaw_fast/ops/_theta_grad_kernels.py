"""Triton kernel of `wlinear_theta_backward` (imported lazily: needs triton).

One launch per layer turns dL/dtheta of theta = W z + b into the gradients of W, b and z and adds
them to their ``.grad`` buffers in place (no separate gradient-accumulation ops).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def theta_grad_kernel(dth_ptr, w_ptr, z_ptr, gw_ptr, gb_ptr, gz_ptr, R, P, D, P_CHUNK,
                      stride_wp, stride_wd,
                      BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, ACCUMULATE: tl.constexpr):
    """gW (+)= dtheta z^T, gb (+)= dtheta, gz += W^T dtheta for one chunk of W's rows.

    Grid: (cdiv(P, P_CHUNK), cdiv(D, BLOCK_D)); program (k, j) covers rows
    [k*P_CHUNK, (k+1)*P_CHUNK) and latent columns [j*BLOCK_D, (j+1)*BLOCK_D). Programs with
    j == 0 also write gb's rows. Each program adds its partial W^T dtheta to gz with one
    atomic add per column (gz must hold its old value or zeros: it is always accumulated).

    Args:
        dth_ptr: dL/dtheta, contiguous (R, P): its R rows are summed (R > 1: the gradient of a
            theta used as R per-task copies).
        w_ptr: W, shape (P, D) (strides given).
        z_ptr: z, contiguous (D,).
        gw_ptr: W's gradient buffer, contiguous (P, D): added to (ACCUMULATE) or overwritten.
        gb_ptr: b's gradient buffer, contiguous (P,): added to (ACCUMULATE) or overwritten.
        gz_ptr: z's gradient buffer, contiguous (D,): always added to.
        R, P, D: rows of dtheta, generated parameters, latent size.
        P_CHUNK: rows per program (a multiple of BLOCK_P).
        stride_wp, stride_wd: strides of W.
        BLOCK_P, BLOCK_D: tile sizes.
        ACCUMULATE: add to gW and gb (True) or overwrite them (False).
    """
    pid_k = tl.program_id(0)
    pid_d = tl.program_id(1)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < D
    z = tl.load(z_ptr + d, mask=dmask, other=0.0)
    acc = tl.zeros((BLOCK_D,), dtype=w_ptr.dtype.element_ty)
    start = pid_k * P_CHUNK
    for p0 in range(0, P_CHUNK, BLOCK_P):
        p = start + p0 + tl.arange(0, BLOCK_P)
        pmask = p < P
        dth = tl.load(dth_ptr + p, mask=pmask, other=0.0)
        for r in range(1, R):
            dth += tl.load(dth_ptr + r * P + p, mask=pmask, other=0.0)
        m2 = pmask[:, None] & dmask[None, :]
        w = tl.load(w_ptr + p[:, None] * stride_wp + d[None, :] * stride_wd, mask=m2, other=0.0)
        acc += tl.sum(w * dth[:, None], axis=0)
        gw = dth[:, None] * z[None, :]
        gw_offs = gw_ptr + p[:, None] * D + d[None, :]
        if ACCUMULATE:
            gw += tl.load(gw_offs, mask=m2, other=0.0)
        tl.store(gw_offs, gw, mask=m2)
        if pid_d == 0:
            gb = dth
            if ACCUMULATE:
                gb += tl.load(gb_ptr + p, mask=pmask, other=0.0)
            tl.store(gb_ptr + p, gb, mask=pmask)
    tl.atomic_add(gz_ptr + d, acc, mask=dmask, sem="relaxed")


#: Layers one launch of `theta_grad_group_kernel` serves (more: several launches).
MAX_LAYERS = 10


@triton.jit
def _theta_grad_rows(pid_k, pid_d, dth_ptr, w_ptr, z_ptr, gw_ptr, gb_ptr, gz_ptr, R, P, D, P_CHUNK, ACC,
                     BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    """`theta_grad_kernel`'s work for program (pid_k, pid_d) of one layer (W contiguous (P, D));
    ACC is a runtime flag (nonzero: add to gW and gb, else overwrite them)."""
    start = pid_k * P_CHUNK
    if start < P:
        d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        dmask = d < D
        z = tl.load(z_ptr + d, mask=dmask, other=0.0)
        acc = tl.zeros((BLOCK_D,), dtype=w_ptr.dtype.element_ty)
        for p0 in range(0, P_CHUNK, BLOCK_P):
            p = start + p0 + tl.arange(0, BLOCK_P)
            pmask = p < P
            dth = tl.load(dth_ptr + p, mask=pmask, other=0.0)
            for r in range(1, R):
                dth += tl.load(dth_ptr + r * P + p, mask=pmask, other=0.0)
            m2 = pmask[:, None] & dmask[None, :]
            w = tl.load(w_ptr + p[:, None] * D + d[None, :], mask=m2, other=0.0)
            acc += tl.sum(w * dth[:, None], axis=0)
            gw = dth[:, None] * z[None, :]
            gw_offs = gw_ptr + p[:, None] * D + d[None, :]
            if ACC != 0:
                gw += tl.load(gw_offs, mask=m2, other=0.0)
            tl.store(gw_offs, gw, mask=m2)
            if pid_d == 0:
                gb = dth
                if ACC != 0:
                    gb += tl.load(gb_ptr + p, mask=pmask, other=0.0)
                tl.store(gb_ptr + p, gb, mask=pmask)
        tl.atomic_add(gz_ptr + d, acc, mask=dmask, sem="relaxed")


@triton.jit
def theta_grad_group_kernel(dth0_ptr, w0_ptr, z0_ptr, gw0_ptr, gb0_ptr, gz0_ptr, dth1_ptr, w1_ptr, z1_ptr,
                            gw1_ptr, gb1_ptr, gz1_ptr, dth2_ptr, w2_ptr, z2_ptr, gw2_ptr, gb2_ptr, gz2_ptr,
                            dth3_ptr, w3_ptr, z3_ptr, gw3_ptr, gb3_ptr, gz3_ptr, dth4_ptr, w4_ptr, z4_ptr,
                            gw4_ptr, gb4_ptr, gz4_ptr, dth5_ptr, w5_ptr, z5_ptr, gw5_ptr, gb5_ptr, gz5_ptr,
                            dth6_ptr, w6_ptr, z6_ptr, gw6_ptr, gb6_ptr, gz6_ptr, dth7_ptr, w7_ptr, z7_ptr,
                            gw7_ptr, gb7_ptr, gz7_ptr, dth8_ptr, w8_ptr, z8_ptr, gw8_ptr, gb8_ptr, gz8_ptr,
                            dth9_ptr, w9_ptr, z9_ptr, gw9_ptr, gb9_ptr, gz9_ptr, R0, P0, PC0, ACC0, R1, P1, PC1,
                            ACC1, R2, P2, PC2, ACC2, R3, P3, PC3, ACC3, R4, P4, PC4, ACC4, R5, P5, PC5, ACC5,
                            R6, P6, PC6, ACC6, R7, P7, PC7, ACC7, R8, P8, PC8, ACC8, R9, P9, PC9, ACC9, D,
                            NL: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    """`theta_grad_kernel` for up to 10 layers sharing the latent size D, in one launch.

    Grid: (max_l cdiv(P_l, PC_l), cdiv(D, BLOCK_D), NL); program (k, j, l) does layer l's row
    chunk k and latent block j (chunks past a layer's P do nothing).

    Args (per slot l; slots >= NL are not read):
        dth<l>_ptr: dL/dtheta, contiguous (R_l, P_l) (rows summed). w<l>_ptr: W, contiguous (P_l, D).
        z<l>_ptr: z, contiguous (D,). gw<l>_ptr, gb<l>_ptr: gradient buffers of W and b, contiguous,
            added to (ACC<l> != 0) or overwritten. gz<l>_ptr: z's gradient buffer, always added to.
        R<l>, P<l>: rows of dtheta and generated parameters. PC<l>: rows per program (a multiple
            of BLOCK_P). ACC<l>: accumulate flag.
        D: latent size. NL: layers in this launch. BLOCK_P, BLOCK_D: tile sizes.
    """
    pid_k = tl.program_id(0)
    pid_d = tl.program_id(1)
    layer = tl.program_id(2)
    if layer == 0:
        _theta_grad_rows(pid_k, pid_d, dth0_ptr, w0_ptr, z0_ptr, gw0_ptr, gb0_ptr, gz0_ptr,
                         R0, P0, D, PC0, ACC0, BLOCK_P, BLOCK_D)
    if NL > 1:
        if layer == 1:
            _theta_grad_rows(pid_k, pid_d, dth1_ptr, w1_ptr, z1_ptr, gw1_ptr, gb1_ptr, gz1_ptr,
                             R1, P1, D, PC1, ACC1, BLOCK_P, BLOCK_D)
    if NL > 2:
        if layer == 2:
            _theta_grad_rows(pid_k, pid_d, dth2_ptr, w2_ptr, z2_ptr, gw2_ptr, gb2_ptr, gz2_ptr,
                             R2, P2, D, PC2, ACC2, BLOCK_P, BLOCK_D)
    if NL > 3:
        if layer == 3:
            _theta_grad_rows(pid_k, pid_d, dth3_ptr, w3_ptr, z3_ptr, gw3_ptr, gb3_ptr, gz3_ptr,
                             R3, P3, D, PC3, ACC3, BLOCK_P, BLOCK_D)
    if NL > 4:
        if layer == 4:
            _theta_grad_rows(pid_k, pid_d, dth4_ptr, w4_ptr, z4_ptr, gw4_ptr, gb4_ptr, gz4_ptr,
                             R4, P4, D, PC4, ACC4, BLOCK_P, BLOCK_D)
    if NL > 5:
        if layer == 5:
            _theta_grad_rows(pid_k, pid_d, dth5_ptr, w5_ptr, z5_ptr, gw5_ptr, gb5_ptr, gz5_ptr,
                             R5, P5, D, PC5, ACC5, BLOCK_P, BLOCK_D)
    if NL > 6:
        if layer == 6:
            _theta_grad_rows(pid_k, pid_d, dth6_ptr, w6_ptr, z6_ptr, gw6_ptr, gb6_ptr, gz6_ptr,
                             R6, P6, D, PC6, ACC6, BLOCK_P, BLOCK_D)
    if NL > 7:
        if layer == 7:
            _theta_grad_rows(pid_k, pid_d, dth7_ptr, w7_ptr, z7_ptr, gw7_ptr, gb7_ptr, gz7_ptr,
                             R7, P7, D, PC7, ACC7, BLOCK_P, BLOCK_D)
    if NL > 8:
        if layer == 8:
            _theta_grad_rows(pid_k, pid_d, dth8_ptr, w8_ptr, z8_ptr, gw8_ptr, gb8_ptr, gz8_ptr,
                             R8, P8, D, PC8, ACC8, BLOCK_P, BLOCK_D)
    if NL > 9:
        if layer == 9:
            _theta_grad_rows(pid_k, pid_d, dth9_ptr, w9_ptr, z9_ptr, gw9_ptr, gb9_ptr, gz9_ptr,
                             R9, P9, D, PC9, ACC9, BLOCK_P, BLOCK_D)
