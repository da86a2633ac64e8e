"""Triton kernel of `step_metrics` (imported lazily: needs triton)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _vsum(ptr, n, BLOCK: tl.constexpr):
    """Sum of the n contiguous values at ptr (in their dtype)."""
    acc = tl.zeros((BLOCK,), dtype=ptr.dtype.element_ty)
    for s in range(0, n, BLOCK):
        o = s + tl.arange(0, BLOCK)
        acc += tl.load(ptr + o, mask=o < n, other=0.0)
    return tl.sum(acc, axis=0)


@triton.jit
def _softplus(x):
    """torch.nn.functional.softplus (beta 1, threshold 20); log1p by a series below 1e-4."""
    e = tl.exp(tl.minimum(x, 20.0))
    small = e - 0.5 * e * e + e * e * e / 3.0
    return tl.where(x > 20.0, x, tl.where(e < 1e-4, small, tl.log(1.0 + e)))


@triton.jit
def _softplus_mean(ptr, n, BLOCK: tl.constexpr):
    """mean(softplus(x)) of the n contiguous values at ptr."""
    acc = tl.zeros((BLOCK,), dtype=ptr.dtype.element_ty)
    for s in range(0, n, BLOCK):
        o = s + tl.arange(0, BLOCK)
        x = tl.load(ptr + o, mask=o < n, other=0.0)
        acc += tl.where(o < n, _softplus(x), 0.0)
    return tl.sum(acc, axis=0) / n


@triton.jit
def step_metrics_kernel(lvi_ptr, lvo_ptr, lpi_ptr, lpo_ptr, adv_ptr, w_ptr, vrho_ptr, prho_ptr, kappa_ptr,
                        loss_ptr, out_ptr, T, NB, NV, NP, NL,
                        BLOCK: tl.constexpr, HAS_LOSS: tl.constexpr):
    """MACAW's step metrics in one program (grid (1,)).

    Writes out[0..10] = mean(lvi), mean(lvo), mean(lpi), mean(lpo), mean(adv), std(adv)
    (unbiased), mean(w), max(w), mean(softplus(vrho)), mean(softplus(prho)), softplus(kappa),
    and with HAS_LOSS out[11] = sum(loss).

    Args:
        lvi_ptr, lvo_ptr, lpi_ptr, lpo_ptr: per-task losses, contiguous (T,).
        adv_ptr, w_ptr: outer advantages and weights, contiguous (NB,) (= T * B).
        vrho_ptr, prho_ptr: raw inner rates of the value net and policy, contiguous (NV,), (NP,).
        kappa_ptr: raw head coefficient, (1,).
        loss_ptr: per-chunk meta-losses, contiguous (NL,) (HAS_LOSS only).
        out_ptr: output, contiguous (11,) or (12,) with HAS_LOSS.
        T, NB, NV, NP, NL: lengths.
        BLOCK: values per step of every loop.
    """
    tl.store(out_ptr + 0, _vsum(lvi_ptr, T, BLOCK) / T)
    tl.store(out_ptr + 1, _vsum(lvo_ptr, T, BLOCK) / T)
    tl.store(out_ptr + 2, _vsum(lpi_ptr, T, BLOCK) / T)
    tl.store(out_ptr + 3, _vsum(lpo_ptr, T, BLOCK) / T)
    mean = _vsum(adv_ptr, NB, BLOCK) / NB
    s2 = tl.zeros((BLOCK,), dtype=adv_ptr.dtype.element_ty)
    for s in range(0, NB, BLOCK):
        o = s + tl.arange(0, BLOCK)
        d = tl.where(o < NB, tl.load(adv_ptr + o, mask=o < NB, other=0.0) - mean, 0.0)
        s2 += d * d
    tl.store(out_ptr + 4, mean)
    tl.store(out_ptr + 5, tl.sqrt(tl.sum(s2, axis=0) / (NB - 1)))
    tl.store(out_ptr + 6, _vsum(w_ptr, NB, BLOCK) / NB)
    mx = tl.full((BLOCK,), float("-inf"), dtype=w_ptr.dtype.element_ty)
    for s in range(0, NB, BLOCK):
        o = s + tl.arange(0, BLOCK)
        mx = tl.maximum(mx, tl.load(w_ptr + o, mask=o < NB, other=float("-inf")))
    tl.store(out_ptr + 7, tl.max(mx, axis=0))
    tl.store(out_ptr + 8, _softplus_mean(vrho_ptr, NV, BLOCK))
    tl.store(out_ptr + 9, _softplus_mean(prho_ptr, NP, BLOCK))
    tl.store(out_ptr + 10, _softplus(tl.load(kappa_ptr)))
    if HAS_LOSS:
        tl.store(out_ptr + 11, _vsum(loss_ptr, NL, BLOCK))
