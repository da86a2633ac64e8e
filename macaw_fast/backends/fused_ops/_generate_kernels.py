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


wlinear_generate_kernel = group_kernel(
    globals(), 'wlinear_generate_kernel', _generate, MAX_LAYERS,
    sections=[['w{l}_ptr', 'b{l}_ptr', 'z{l}_ptr', 'o{l}_ptr'], ['P{l}']],
    shared=['D'], constexprs=['BLOCK_P', 'BLOCK_D'], pids=['pid'],
    call='w{l}_ptr, b{l}_ptr, z{l}_ptr, o{l}_ptr, P{l}, D, pid, BLOCK_P, BLOCK_D',
    doc="""theta_l = W_l z_l + b_l for up to 10 weight-transform layers in one launch.

    Grid: (cdiv(max_l P_l, BLOCK_P), NL); program (i, l) writes rows [i*BLOCK_P, (i+1)*BLOCK_P) of
    layer l's theta (programs past a layer's P do nothing).

    Args:
        w<l>_ptr: W of layer l, contiguous (P_l, D). b<l>_ptr: b, (P_l,). z<l>_ptr: z, (D,).
        o<l>_ptr: output theta_l, contiguous (P_l,). Slots l >= NL are not read.
        P0 .. P9: generated parameters per layer. D: latent size (shared by the layers).
        NL: layers in this launch (1..10). BLOCK_P, BLOCK_D: tile sizes.
    """)
