"""Triton kernel of `wlinear_generate` (imported lazily: needs triton)."""

from __future__ import annotations

import triton
import triton.language as tl

from ...ops._group import group_kernel

#: Layers one launch of `wlinear_generate_kernel` serves (more: several launches).
MAX_LAYERS = 10


@triton.jit
def _generate(w_ptr, b_ptr, z_ptr, o_ptr, P, D, pid, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    """o[p] = sum_d W[p, d] z[d] + b[p] for the rows p of block pid (W contiguous (P, D))."""
    if pid * BLOCK_P < P:
        p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
        pm = p < P
        acc = tl.zeros((BLOCK_P,), dtype=w_ptr.dtype.element_ty)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            dm = d < D
            w = tl.load(w_ptr + p[:, None] * D + d[None, :], mask=pm[:, None] & dm[None, :], other=0.0)
            z = tl.load(z_ptr + d, mask=dm, other=0.0)
            acc += tl.sum(w * z[None, :], axis=1)
        tl.store(o_ptr + p, acc + tl.load(b_ptr + p, mask=pm, other=0.0), mask=pm)


@triton.jit
def wlinear_generate_kernel(w0_ptr, b0_ptr, z0_ptr, o0_ptr, w1_ptr, b1_ptr, z1_ptr, o1_ptr, w2_ptr, b2_ptr,
                            z2_ptr, o2_ptr, w3_ptr, b3_ptr, z3_ptr, o3_ptr, w4_ptr, b4_ptr, z4_ptr, o4_ptr,
                            w5_ptr, b5_ptr, z5_ptr, o5_ptr, w6_ptr, b6_ptr, z6_ptr, o6_ptr, w7_ptr, b7_ptr,
                            z7_ptr, o7_ptr, w8_ptr, b8_ptr, z8_ptr, o8_ptr, w9_ptr, b9_ptr, z9_ptr, o9_ptr, P0,
                            P1, P2, P3, P4, P5, P6, P7, P8, P9, D, NL: tl.constexpr, BLOCK_P: tl.constexpr,
                            BLOCK_D: tl.constexpr):
    """theta_l = W_l z_l + b_l for up to 10 weight-transform layers in one launch.

    Grid: (cdiv(max_l P_l, BLOCK_P), NL); program (i, l) writes rows [i*BLOCK_P, (i+1)*BLOCK_P) of
    layer l's theta (programs past a layer's P do nothing).

    Args:
        w<l>_ptr: W of layer l, contiguous (P_l, D). b<l>_ptr: b, (P_l,). z<l>_ptr: z, (D,).
        o<l>_ptr: output theta_l, contiguous (P_l,). Slots l >= NL are not read.
        P0 .. P9: generated parameters per layer. D: latent size (shared by the layers).
        NL: layers in this launch (1..10). BLOCK_P, BLOCK_D: tile sizes.
    """
    pid = tl.program_id(0)
    layer = tl.program_id(1)
    if layer == 0:
        _generate(w0_ptr, b0_ptr, z0_ptr, o0_ptr, P0, D, pid, BLOCK_P, BLOCK_D)
    if NL > 1:
        if layer == 1:
            _generate(w1_ptr, b1_ptr, z1_ptr, o1_ptr, P1, D, pid, BLOCK_P, BLOCK_D)
    if NL > 2:
        if layer == 2:
            _generate(w2_ptr, b2_ptr, z2_ptr, o2_ptr, P2, D, pid, BLOCK_P, BLOCK_D)
    if NL > 3:
        if layer == 3:
            _generate(w3_ptr, b3_ptr, z3_ptr, o3_ptr, P3, D, pid, BLOCK_P, BLOCK_D)
    if NL > 4:
        if layer == 4:
            _generate(w4_ptr, b4_ptr, z4_ptr, o4_ptr, P4, D, pid, BLOCK_P, BLOCK_D)
    if NL > 5:
        if layer == 5:
            _generate(w5_ptr, b5_ptr, z5_ptr, o5_ptr, P5, D, pid, BLOCK_P, BLOCK_D)
    if NL > 6:
        if layer == 6:
            _generate(w6_ptr, b6_ptr, z6_ptr, o6_ptr, P6, D, pid, BLOCK_P, BLOCK_D)
    if NL > 7:
        if layer == 7:
            _generate(w7_ptr, b7_ptr, z7_ptr, o7_ptr, P7, D, pid, BLOCK_P, BLOCK_D)
    if NL > 8:
        if layer == 8:
            _generate(w8_ptr, b8_ptr, z8_ptr, o8_ptr, P8, D, pid, BLOCK_P, BLOCK_D)
    if NL > 9:
        if layer == 9:
            _generate(w9_ptr, b9_ptr, z9_ptr, o9_ptr, P9, D, pid, BLOCK_P, BLOCK_D)
