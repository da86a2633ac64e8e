"""fused_ops.bootstrap_advantage (A = ret + disc * V(next) - V) and ops.meta_objective vs float64 torch."""

from __future__ import annotations

import pytest
import torch

import macaw_fast.backends.fused_ops as ops

F64 = torch.float64


def _four(T, N, seed, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(T, N, generator=g, dtype=F64).to(dtype) for _ in range(4)]


@pytest.mark.parametrize("T,N", [(1, 1), (3, 7), (2, 300), (5, 513)])
def test_advantage_matches_composition(backend, T, N):
    ret, disc, vn, v = _four(T, N, seed=T * N)
    got = ops.bootstrap_advantage(ret, disc, vn, v, backend=backend)
    assert got.shape == (T, N) and got.is_contiguous()
    torch.testing.assert_close(got, ret + disc * vn - v, rtol=1e-15, atol=1e-15)


def test_advantage_strided_halves_float32_and_no_graph(backend):
    """The meta-step passes the two halves of one value pass over [terminal_obs, obs]."""
    ret, disc, _, _ = _four(3, 9, seed=1, dtype=torch.float32)
    both = torch.randn(3, 18, requires_grad=True)
    got = ops.bootstrap_advantage(ret, disc, both[:, :9], both[:, 9:], backend=backend)
    assert got.dtype == torch.float32 and not got.requires_grad
    want = ret.double() + disc.double() * both[:, :9].detach().double() - both[:, 9:].detach().double()
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    t = torch.randn(9, 3).t()                                           # transposed input
    torch.testing.assert_close(ops.bootstrap_advantage(t, disc, t, disc, backend=backend), t + disc * t - disc)


def test_advantage_bad_input(backend):
    ret, disc, vn, v = _four(2, 5, seed=2)
    with pytest.raises(ValueError, match="v_next must have shape"):
        ops.bootstrap_advantage(ret, disc, vn[:, :4], v, backend=backend)
    with pytest.raises(TypeError, match="dtype"):
        ops.bootstrap_advantage(ret, disc.float(), vn, v, backend=backend)
    with pytest.raises(ValueError, match="must have 2 dimensions"):
        ops.bootstrap_advantage(ret[0], disc, vn, v, backend=backend)


@pytest.mark.parametrize("T", [1, 5, 300])
def test_objective_value_and_grads(backend, T):
    g = torch.Generator().manual_seed(T)
    a = torch.randn(T, generator=g, dtype=F64, requires_grad=True)
    b = torch.randn(T, generator=g, dtype=F64, requires_grad=True)
    got = ops.meta_objective(a, b, 7, backend=backend)
    want = (a.sum() + b.sum()) / 7
    assert got.shape == ()
    torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-15)
    ga = torch.autograd.grad(got, (a, b))
    wa = torch.autograd.grad(want, (a, b))
    for x, y in zip(ga, wa):
        assert torch.equal(x, y)
    small = (a[:3].detach().requires_grad_(), b[:3].detach().requires_grad_())     # gradcheck cost ~ T^2
    assert torch.autograd.gradcheck(lambda x, y: ops.meta_objective(x, y, 3, backend=backend), small)
    assert torch.autograd.gradgradcheck(lambda x, y: ops.meta_objective(x, y, 3, backend=backend) ** 2, small)


def test_objective_one_input_detached_func_grad_and_float32(backend):
    a = torch.randn(4, dtype=F64)
    b = torch.randn(4, dtype=F64, requires_grad=True)
    gb, = torch.autograd.grad(ops.meta_objective(a, b, 2, backend=backend), b)
    assert torch.equal(gb, torch.full((4,), 0.5, dtype=F64))
    f = lambda y: ops.meta_objective(a, y, 3, backend=backend)  # noqa: E731
    torch.testing.assert_close(torch.func.grad(f)(b.detach()), torch.full((4,), 1 / 3, dtype=F64))
    a32, b32 = a.float(), b.detach().float()
    torch.testing.assert_close(ops.meta_objective(a32, b32, 3, backend=backend), (a32.sum() + b32.sum()) / 3)


def test_torch_objective_is_the_composition_bitwise():
    a, b = torch.randn(35, dtype=torch.float32), torch.randn(35, dtype=torch.float32)
    assert torch.equal(ops.meta_objective(a, b, 35, backend="torch"), (a.sum() + b.sum()) / 35)


def test_objective_bad_input(backend):
    a = torch.randn(3, dtype=F64)
    with pytest.raises(ValueError, match="n must be a positive int"):
        ops.meta_objective(a, a, 0, backend=backend)
    with pytest.raises(ValueError, match="b must have shape"):
        ops.meta_objective(a, a[:2], 3, backend=backend)
    with pytest.raises(TypeError, match="dtype"):
        ops.meta_objective(a, a.float(), 3, backend=backend)
    with pytest.raises(ValueError, match="empty"):
        ops.meta_objective(a[:0], a[:0], 3, backend=backend)
