"""Triton kernel of `wlinear_theta_backward` (imported lazily: needs triton).

One launch per layer turns dL/dtheta of theta = W z + b into the gradients of W, b and z and adds
them to their ``.grad`` buffers in place (no separate gradient-accumulation ops).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ...ops._group import group_kernel


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


theta_grad_group_kernel = group_kernel(
    globals(), "theta_grad_group_kernel", _theta_grad_rows, MAX_LAYERS,
    sections=[("dth{l}_ptr", "w{l}_ptr", "z{l}_ptr", "gw{l}_ptr", "gb{l}_ptr", "gz{l}_ptr"),
              ("R{l}", "P{l}", "PC{l}", "ACC{l}")],
    shared=["D"], constexprs=["BLOCK_P", "BLOCK_D"], pids=["pid_k", "pid_d"],
    call="pid_k, pid_d, dth{l}_ptr, w{l}_ptr, z{l}_ptr, gw{l}_ptr, gb{l}_ptr, gz{l}_ptr, R{l}, P{l}, D, PC{l}, "
         "ACC{l}, BLOCK_P, BLOCK_D",
    doc="""`theta_grad_kernel` for up to 10 layers sharing the latent size D, in one launch.

    Grid: (max_l cdiv(P_l, PC_l), cdiv(D, BLOCK_D), NL); program (k, j, l) does layer l's row
    chunk k and latent block j (chunks past a layer's P do nothing).

    Args (per slot l; slots >= NL are not read):
        dth<l>_ptr: dL/dtheta, contiguous (R_l, P_l) (rows summed). w<l>_ptr: W, contiguous (P_l, D).
        z<l>_ptr: z, contiguous (D,). gw<l>_ptr, gb<l>_ptr: gradient buffers of W and b, contiguous,
            added to (ACC<l> != 0) or overwritten. gz<l>_ptr: z's gradient buffer, always added to.
        R<l>, P<l>: rows of dtheta and generated parameters. PC<l>: rows per program (a multiple
            of BLOCK_P). ACC<l>: accumulate flag.
        D: latent size. NL: layers in this launch. BLOCK_P, BLOCK_D: tile sizes.
    """)
