"""fused_ops.wlinear_theta_backward: gradients of theta = W z + b added to W, b, z's .grad in place."""

from __future__ import annotations

import pytest
import torch

import macaw_fast.backends.fused_ops as ops

F64 = torch.float64


def _layer(P, D, seed, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=dtype).requires_grad_() for s in ((P, D), (P,), (D,))]


# P: 1, odd, one block short/over, several row chunks (> 128 blocks of 64 rows: P_CHUNK > 64)
@pytest.mark.parametrize("P,D", [(1, 1), (7, 3), (65, 100), (130, 5), (8300, 3)])
@pytest.mark.parametrize("pre", ["none", "all", "only_w"])
def test_matches_autograd_of_addmv(backend, P, D, pre):
    """The .grad after the op equals the old .grad plus autograd's gradient of addmv(b, W, z)."""
    W, b, z = _layer(P, D, seed=P + D)
    g = torch.Generator().manual_seed(1)
    dth = torch.randn(P, generator=g, dtype=F64)
    old = {}
    for name, p in zip("Wbz", (W, b, z)):
        if pre == "all" or (pre == "only_w" and name == "W"):
            p.grad = torch.randn(p.shape, generator=g, dtype=F64)
            old[name] = p.grad.clone()
    want = torch.autograd.grad(torch.addmv(b, W, z), (W, b, z), dth)
    ops.wlinear_theta_backward(W, b, z, dth, backend=backend)
    for name, p, w in zip("Wbz", (W, b, z), want):
        expect = w + old[name] if name in old else w
        torch.testing.assert_close(p.grad, expect, rtol=1e-12, atol=1e-12, msg=f"grad of {name}")


def test_accumulates_in_place_and_strided_weight(backend):
    """An existing .grad is updated in place (same storage); a transposed W is read correctly."""
    P, D = 9, 4
    Wt = torch.randn(D, P, dtype=F64)
    W = Wt.t().requires_grad_()              # non-contiguous (P, D)
    _, b, z = _layer(P, D, seed=3)
    dth = torch.randn(P, dtype=F64)
    bufs = [torch.randn(P, D, dtype=F64), torch.randn(P, dtype=F64), torch.randn(D, dtype=F64)]
    for p, buf in zip((W, b, z), bufs):
        p.grad = buf.clone()
    ptrs = [p.grad.data_ptr() for p in (W, b, z)]
    ops.wlinear_theta_backward(W, b, z, dth, backend=backend)
    assert [p.grad.data_ptr() for p in (W, b, z)] == ptrs
    torch.testing.assert_close(W.grad, bufs[0] + torch.outer(dth, z.detach()), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b.grad, bufs[1] + dth, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(z.grad, bufs[2] + W.detach().t() @ dth, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("R", [1, 3])
def test_rows_of_dtheta_are_summed(backend, R):
    """dtheta (R, P) (a theta used as R per-task copies) acts as its row sum."""
    P, D = 70, 5
    W, b, z = _layer(P, D, seed=6)
    dth = torch.randn(R, P, dtype=F64)
    ops.wlinear_theta_backward(W, b, z, dth, backend=backend)
    want = torch.autograd.grad(torch.addmv(b, W, z).expand(R, -1), (W, b, z), dth)
    for p, w in zip((W, b, z), want):
        torch.testing.assert_close(p.grad, w, rtol=1e-12, atol=1e-12)


def test_float32(backend):
    """float32 inputs give float32 gradients equal to autograd's."""
    P, D = 70, 6
    W, b, z = _layer(P, D, seed=4, dtype=torch.float32)
    dth = torch.randn(P)
    ops.wlinear_theta_backward(W, b, z, dth, backend=backend)
    want = torch.autograd.grad(torch.addmv(b, W, z), (W, b, z), dth)
    for p, w in zip((W, b, z), want):
        torch.testing.assert_close(p.grad, w, rtol=1e-5, atol=1e-5)


def test_bad_input_raises_clear_errors():
    """Wrong shapes, dtypes, a non-contiguous .grad buffer and an unknown backend are refused."""
    W, b, z = _layer(5, 3, seed=0)
    with pytest.raises(ValueError, match="dtheta must have shape"):
        ops.wlinear_theta_backward(W, b, z, torch.zeros(4, dtype=F64), backend="torch")
    with pytest.raises(TypeError, match="dtheta has dtype"):
        ops.wlinear_theta_backward(W, b, z, torch.zeros(5), backend="torch")
    with pytest.raises(ValueError, match="z must have shape"):
        ops.wlinear_theta_backward(W, b, torch.zeros(4, dtype=F64), torch.zeros(5, dtype=F64), backend="torch")
    W.grad = torch.zeros(3, 5, dtype=F64).t()        # right shape, not contiguous
    with pytest.raises(ValueError, match="weight.grad must be a contiguous"):
        ops.wlinear_theta_backward(W, b, z, torch.zeros(5, dtype=F64), backend="torch")
    W.grad = None
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.wlinear_theta_backward(W, b, z, torch.zeros(5, dtype=F64), backend="cuda")


# ------------------------------------------------------------------ many layers in one launch

def _many(shapes, seed):
    return [_layer(P, D, seed=seed + k) for k, (P, D) in enumerate(shapes)]


@pytest.mark.parametrize("shapes", [
    [(7, 3)],
    [(1, 4), (65, 4), (8300, 4), (9, 4)],                 # several row chunks in one layer (P_CHUNK > 64)
    [(P, 3) for P in range(1, 13)],                       # 12 layers: two launches
    [(9, 4), (20, 100), (5, 4), (70, 100)],               # groups by D
])
def test_many_matches_autograd_of_addmv(backend, shapes):
    """Each layer's .grad after the grouped op equals old .grad + autograd's gradient of addmv, for
    a mix of existing .grad (none / all / only W / only z), skipped layers and (R, P) dthetas."""
    layers = _many(shapes, seed=len(shapes))
    g = torch.Generator().manual_seed(2)
    dths, olds, wants = [], [], []
    for k, (W, b, z) in enumerate(layers):
        P = W.shape[0]
        if k % 5 == 3:
            dths.append(None)
            olds.append({})
            wants.append(None)
            continue
        dth = torch.randn(*((3, P) if k % 2 else (P,)), generator=g, dtype=F64)
        dths.append(dth)
        pre = {0: "", 1: "Wbz", 2: "W", 4: "z"}.get(k % 5, "")
        old = {}
        for name, p in zip("Wbz", (W, b, z)):
            if name in pre:
                p.grad = torch.randn(p.shape, generator=g, dtype=F64)
                old[name] = p.grad.clone()
        olds.append(old)
        d = dth.sum(0) if dth.dim() == 2 else dth
        wants.append(torch.autograd.grad(torch.addmv(b, W, z), (W, b, z), d))
    ops.wlinear_theta_backward_many(*(list(x) for x in zip(*layers)), dths, backend=backend)
    for k, ((W, b, z), old, want) in enumerate(zip(layers, olds, wants)):
        if want is None:
            assert W.grad is None and b.grad is None and z.grad is None, k
            continue
        for name, p, w in zip("Wbz", (W, b, z), want):
            expect = w + old[name] if name in old else w
            torch.testing.assert_close(p.grad, expect, rtol=1e-12, atol=1e-12, msg=f"layer {k} grad of {name}")


def test_many_bad_input(backend):
    (W, b, z), (W2, b2, z2) = _many([(6, 3), (5, 3)], seed=9)
    with pytest.raises(ValueError, match="one entry per layer"):
        ops.wlinear_theta_backward_many([W, W2], [b, b2], [z], [None, None], backend=backend)
    with pytest.raises(ValueError, match="dthetas\\[1\\] must have shape"):
        ops.wlinear_theta_backward_many([W, W2], [b, b2], [z, z2], [torch.zeros(6, dtype=F64),
                                                                     torch.zeros(6, dtype=F64)], backend=backend)
    # nothing to do: no error, no .grad
    ops.wlinear_theta_backward_many([W], [b], [z], [None], backend=backend)
    assert W.grad is None
