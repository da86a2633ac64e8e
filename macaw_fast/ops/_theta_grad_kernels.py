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
