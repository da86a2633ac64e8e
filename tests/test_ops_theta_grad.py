"""ops.wlinear_theta_backward: gradients of theta = W z + b added to W, b, z's .grad in place."""

from __future__ import annotations

import pytest
import torch

import macaw_fast.ops as ops

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
