"""ops.value_mse (the value regression loss with its bootstrapped target) vs the float64 composition."""

from __future__ import annotations

import importlib

import pytest
import torch

import macaw_fast.ops as ops
from macaw_fast.ops.value_mse import ValueMSEDoubleBackward, value_mse_reference

F64 = torch.float64
M = importlib.import_module("macaw_fast.ops.value_mse")    # the module (ops.value_mse is the function)


def make(T, N, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    r = lambda: torch.randn(T, N, generator=g, dtype=F64).to(dtype)  # noqa: E731
    v, ret, vn = r(), r() * 3, r()
    disc = torch.rand(T, N, generator=g, dtype=F64).to(dtype)
    disc[:, :: 3] = 0.0                   # terminal rows: no bootstrap
    return v.requires_grad_(), ret, disc, vn


# T=1, N=1, N not a multiple of the 256-row block, several blocks
SHAPES = [(1, 1), (2, 7), (3, 300), (5, 513)]


@pytest.mark.parametrize("T,N", SHAPES)
@pytest.mark.parametrize("boot", [False, True])
def test_forward_and_grads_match_reference(backend, T, N, boot):
    v, ret, disc, vn = make(T, N, seed=T + N)
    args = (ret, disc, vn) if boot else (ret,)
    got = ops.value_mse(v, *args, backend=backend)
    want = value_mse_reference(v, *args)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-14)
    w = torch.randn(T, dtype=F64)
    gv, = torch.autograd.grad((got * w).sum(), v, create_graph=True)
    rv, = torch.autograd.grad((want * w).sum(), v, create_graph=True)
    torch.testing.assert_close(gv, rv, rtol=1e-13, atol=1e-14)
    # second order (the meta-gradient differentiates the inner gradient): d/dv of <gv, c>
    c = torch.randn(T, N, dtype=F64)
    ggv, = torch.autograd.grad((gv * c).sum() + (gv ** 2).sum(), v)
    rgv, = torch.autograd.grad((rv * c).sum() + (rv ** 2).sum(), v)
    torch.testing.assert_close(ggv, rgv, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("boot", [False, True])
def test_gradcheck_and_gradgradcheck(backend, boot):
    v, ret, disc, vn = make(2, 5, seed=4)
    args = (ret, disc, vn) if boot else (ret,)
    fn = lambda v_: ops.value_mse(v_, *args, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (v,))
    assert torch.autograd.gradgradcheck(fn, (v,))


@pytest.mark.parametrize("boot", [False, True])
def test_double_backward_function_gradcheck(backend, boot):
    """Third order: the one-launch double backward's own backward (differentiable torch ops),
    checked numerically against its (Triton) forward; torch backend: the formula it replaces."""
    v, ret, disc, vn = make(2, 4, seed=5)
    if not boot:
        disc = vn = None
    g = torch.randn(2, dtype=F64, requires_grad=True)
    c = torch.randn(2, 4, dtype=F64, requires_grad=True)
    if backend == "triton":
        fn = lambda c_, g_, v_: ValueMSEDoubleBackward.apply(c_, g_, v_, ret, disc, vn)  # noqa: E731
    else:
        fn = lambda c_, g_, v_: M._double_backward_torch(c_, g_, v_, ret, disc, vn)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (c, g, v))
    assert torch.autograd.gradgradcheck(fn, (c, g, v))


def test_double_backward_matches_vjp_of_backward(backend):
    """The double backward (kernel or formula) equals autograd's VJP of the torch backward."""
    v, ret, disc, vn = make(3, 300, seed=6)
    v = v.detach().requires_grad_()
    g = torch.randn(1, dtype=F64).expand(3).clone().requires_grad_()
    c = torch.randn(300, 3, dtype=F64).t()           # non-contiguous cotangent
    fn = ValueMSEDoubleBackward.apply if backend == "triton" else M._double_backward_torch
    got = fn(c, g.detach().expand(3) if backend == "triton" else g.detach(), v.detach(), ret, disc, vn)
    want = torch.autograd.grad(M._backward_torch(g, v, ret, disc, vn), (g, v), c)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14)


def test_torch_func_grad_and_vmap(backend):
    v, ret, disc, vn = make(2, 6, seed=7)
    f = lambda v_: ops.value_mse(v_, ret, disc, vn, backend=backend).sum()  # noqa: E731
    r = lambda v_: value_mse_reference(v_, ret, disc, vn).sum()  # noqa: E731
    torch.testing.assert_close(torch.func.grad(f)(v.detach()), torch.func.grad(r)(v.detach()), rtol=1e-13, atol=1e-14)
    vb = torch.randn(3, 2, 6, dtype=F64)
    got = torch.vmap(lambda x: ops.value_mse(x, ret, backend=backend))(vb)
    torch.testing.assert_close(got, torch.stack([value_mse_reference(x, ret) for x in vb]), rtol=1e-13, atol=1e-14)


def test_non_contiguous_inputs_and_float32(backend):
    v, ret, disc, vn = make(3, 9, seed=8)
    vt = v.detach().t().contiguous().t().requires_grad_()      # (T, N) with strides (1, T)
    rt, dt, nt = (x.t().contiguous().t() for x in (ret, disc, vn))
    got = ops.value_mse(vt, rt, dt, nt, backend=backend)
    torch.testing.assert_close(got, value_mse_reference(v, ret, disc, vn), rtol=1e-13, atol=1e-14)
    g, = torch.autograd.grad(got.sum(), vt)
    torch.testing.assert_close(g, torch.autograd.grad(value_mse_reference(v, ret, disc, vn).sum(), v)[0])
    v32, r32, d32, n32 = make(3, 9, seed=8, dtype=torch.float32)
    got32 = ops.value_mse(v32, r32, d32, n32, backend=backend)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), got.detach(), rtol=1e-5, atol=1e-6)


def test_torch_twin_is_the_composition_bitwise():
    """First order, the torch twin rounds exactly as autograd of the composition (the CUDA-graph
    body writes the outer loss as the composition and compares gradients with torch.equal)."""
    v, ret, disc, vn = make(4, 33, seed=9)
    got = ops.value_mse(v, ret, disc, vn, backend="torch")
    want = (v - (ret + disc * vn)).pow(2).mean(-1)
    assert torch.equal(got, want)
    assert torch.equal(torch.autograd.grad(got.sum() / 7, v)[0], torch.autograd.grad(want.sum() / 7, v)[0])


def test_bad_input(backend):
    v, ret, disc, vn = make(2, 5, seed=1)
    with pytest.raises(ValueError, match="ret must have shape"):
        ops.value_mse(v, ret[:, :4], backend=backend)
    with pytest.raises(ValueError, match="disc and v_next go together"):
        ops.value_mse(v, ret, disc, backend=backend)
    with pytest.raises(TypeError, match="dtype"):
        ops.value_mse(v, ret.float(), backend=backend)
    with pytest.raises(ValueError, match="must have 2 dimensions"):
        ops.value_mse(v.unsqueeze(-1), ret, backend=backend)
    with pytest.raises(ValueError, match="v_next requires grad"):
        ops.value_mse(v, ret, disc, vn.requires_grad_(), backend=backend)
    with pytest.raises(ValueError, match="empty input"):
        ops.value_mse(v[:, :0], ret[:, :0], backend=backend)
