"""ops.wlinear_adapt_many (a net's inner steps in three launches) vs ops.wlinear_adapt per layer."""

from __future__ import annotations

import pytest
import torch

import macaw_fast.ops as ops

F64 = torch.float64


def make(Ps, T=3, D=5, Lr=None, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64).to(dtype).requires_grad_()  # noqa: E731
    Ws = [r(P, D) for P in Ps]
    bs = [r(P) for P in Ps]
    zs = [r(D) for _ in Ps]
    Gs = [r(T, P) for P in Ps]
    rates = (torch.rand(Lr or len(Ps), 3, generator=g, dtype=F64).to(dtype) * 0.2).requires_grad_()
    return Ws, bs, zs, Gs, rates


def _loss(outs, use_tgt):
    total = 0.0
    for i, o in enumerate(outs):
        if isinstance(o, tuple):
            total = total + (o[0].pow(2) * (i + 1)).sum() + ((o[1] * 0.5).sin().sum() if use_tgt else 0.0)
        else:
            total = total + (o.pow(2) * (i + 1)).sum()
    return total


def _per_layer(Ws, bs, zs, Gs, rates, alpha):
    return [ops.wlinear_adapt(Ws[i], bs[i], zs[i], Gs[i], rates[i], alpha, backend="torch") for i in range(len(Ws))]


# L = 1, 4, and 7 (two launches of each kernel); extra rate rows (Lr > L) get zero gradient; without
# the target mix, with it (the meta-step: no gradient into the target), with a target gradient too
FOUR = [7, 70, 2, 130]
CASES = [([7], 1, 0.9, True), (FOUR, 6, None, False), (FOUR, 6, 0.9, False), (FOUR, 6, 0.9, True),
         ([3, 9, 1, 65, 4, 2, 11], 7, 0.9, True)]


@pytest.mark.parametrize("Ps,Lr,alpha,use_tgt", CASES)
def test_first_and_second_order_match_per_layer(backend, Ps, Lr, alpha, use_tgt):
    Ws, bs, zs, Gs, rates = make(Ps, Lr=Lr, seed=len(Ps))
    inputs = Ws + bs + zs + Gs + [rates]
    got = ops.wlinear_adapt_many(Ws, bs, zs, Gs, rates, alpha, backend=backend)
    want = _per_layer(Ws, bs, zs, Gs, rates, alpha)
    for a, b in zip(got, want):
        for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            torch.testing.assert_close(x, y, rtol=1e-13, atol=1e-13)
    ga = torch.autograd.grad(_loss(got, use_tgt), inputs, create_graph=True)
    gb = torch.autograd.grad(_loss(want, use_tgt), inputs, create_graph=True)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
    if Lr > len(Ps):
        assert torch.all(ga[-1][len(Ps):] == 0)
    # second order: the meta-gradient differentiates the inner step's backward
    n = len(Ps)
    ha = torch.autograd.grad(sum((x * x).sum() for x in ga[3 * n:]), Ws + zs + [rates])
    hb = torch.autograd.grad(sum((x * x).sum() for x in gb[3 * n:]), Ws + zs + [rates])
    for x, y in zip(ha, hb):
        torch.testing.assert_close(x, y, rtol=1e-11, atol=1e-11)


def test_some_layers_without_gradient(backend):
    """A layer whose outputs get no gradient: the per-layer fallback of the backward."""
    Ws, bs, zs, Gs, rates = make([6, 9, 4], seed=3)
    got = ops.wlinear_adapt_many(Ws, bs, zs, Gs, rates, backend=backend)
    want = _per_layer(Ws, bs, zs, Gs, rates, None)
    ga = torch.autograd.grad(got[0].sum() + got[2].pow(2).sum(), Ws + [rates], allow_unused=True)
    gb = torch.autograd.grad(want[0].sum() + want[2].pow(2).sum(), Ws + [rates], allow_unused=True)
    for x, y in zip(ga, gb):
        if y is None:
            assert x is None or torch.all(x == 0)
        else:
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("alpha", [None, 0.7])
def test_gradcheck_and_gradgradcheck(backend, alpha):
    Ws, bs, zs, Gs, rates = make([3, 2], T=2, D=2, seed=5)     # tiny: the checks are O(inputs x outputs)

    def f(W1, z0, G1, r):
        outs = ops.wlinear_adapt_many([Ws[0], W1], bs, [z0, zs[1]], [Gs[0], G1], r, alpha, backend=backend)
        return tuple(x for o in outs for x in (o if isinstance(o, tuple) else (o,)))

    args = (Ws[1], zs[0], Gs[1], rates)
    # fast mode (random projections of the Jacobians): the interpreted group kernels are slow to
    # run once per perturbed element; the per-layer op's full checks are in test_ops_adapt.py
    assert torch.autograd.gradcheck(f, args, fast_mode=True)
    assert torch.autograd.gradgradcheck(f, args, fast_mode=True)


def test_float32_non_contiguous_and_func_grad(backend):
    Ws, bs, zs, Gs, rates = make([8, 5], seed=6, dtype=torch.float32)
    Ws[0] = Ws[0].detach().t().contiguous().t().requires_grad_()
    Gs[1] = Gs[1].detach().t().contiguous().t()
    got = ops.wlinear_adapt_many(Ws, bs, zs, Gs, rates, 0.9, backend=backend)
    want = _per_layer([w.double() for w in Ws], [b.double() for b in bs], [z.double() for z in zs],
                      [g.double() for g in Gs], rates.double(), 0.9)
    for a, b in zip(got, want):
        for x, y in zip(a, b):
            assert x.dtype == torch.float32
            torch.testing.assert_close(x.double(), y, rtol=1e-5, atol=1e-5)
    W = Ws[1].detach()
    f = lambda w: ops.wlinear_adapt_many([Ws[0].detach(), w], bs, zs, Gs, rates.detach(), backend=backend)[1].sum()  # noqa: E731
    r = lambda w: ops.wlinear_adapt(w, bs[1], zs[1], Gs[1], rates[1].detach(), backend="torch").sum()  # noqa: E731
    torch.testing.assert_close(torch.func.grad(f)(W), torch.func.grad(r)(W), rtol=1e-4, atol=1e-4)


def test_bad_input(backend):
    Ws, bs, zs, Gs, rates = make([4, 3], seed=7)
    with pytest.raises(ValueError, match="one entry per layer"):
        ops.wlinear_adapt_many(Ws, bs[:1], zs, Gs, rates, backend=backend)
    with pytest.raises(ValueError, match="rates must have a row per layer"):
        ops.wlinear_adapt_many(Ws, bs, zs, Gs, rates[:1], backend=backend)
    with pytest.raises(ValueError, match="Gs\\[1\\] must have shape"):
        ops.wlinear_adapt_many(Ws, bs, zs, [Gs[0], Gs[0]], rates, backend=backend)
    with pytest.raises(ValueError, match="Ws\\[1\\] must have shape"):
        ops.wlinear_adapt_many([Ws[0], torch.zeros(3, 4, dtype=F64)], bs, zs, Gs, rates, backend=backend)
    with pytest.raises(ValueError, match="alpha"):
        ops.wlinear_adapt_many(Ws, bs, zs, Gs, rates, 1.5, backend=backend)
    with pytest.raises(TypeError, match="dtype"):
        ops.wlinear_adapt_many(Ws, bs, zs, Gs, rates.float(), backend=backend)
