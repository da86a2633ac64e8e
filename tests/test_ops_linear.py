"""`macaw_fast.ops.batched_linear` / `concat_relu_linear` vs float64 unfused torch compositions.

Torch twin in the normal suite; Triton kernels through the interpreter when marked ``triton``.
"""

import pytest
import torch

from macaw_fast.ops import batched_linear, concat_relu_linear
from macaw_fast.ops._common import interpreter_requested, triton_importable
from macaw_fast.ops.batched_linear import batched_linear_reference

F64 = torch.float64


def rand(*shape, seed=0, dtype=F64):
    """A random tensor requiring grad, deterministic per seed."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_()


# (T, N, in, out): T=1, N not a multiple of the 32-row block, in/out of 1, K > one 32-wide step.
SHAPES = [(1, 1, 1, 1), (2, 33, 3, 1), (3, 7, 40, 70), (1, 70, 1, 17)]


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("in_relu,out_relu", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("T,N,K,O", SHAPES)
def test_forward_and_grads_match_oracle(backend, T, N, K, O, in_relu, out_relu, shared):
    x = rand(T, N, K, seed=1)
    theta = rand(*((K * O + O,) if shared else (T, K * O + O)), seed=2)
    got = batched_linear(x, theta, O, in_relu=in_relu, out_relu=out_relu, backend=backend)
    want = batched_linear_reference(x, theta, O, in_relu, out_relu)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    cot = rand(T, N, O, seed=3).detach()
    for a, b in zip(torch.autograd.grad(got, (x, theta), cot), torch.autograd.grad(want, (x, theta), cot)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("T,N,H,A,O", [(1, 1, 1, 1, 1), (2, 35, 20, 6, 32), (3, 5, 33, 2, 1)])
def test_concat_relu_matches_oracle(backend, T, N, H, A, O):
    h, a = rand(T, N, H, seed=4), rand(T, N, A, seed=5)
    theta = rand(T, (H + A) * O + O, seed=6)
    got = concat_relu_linear(h, a, theta, O, backend=backend)
    want = batched_linear_reference(h, theta, O, a=a)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    cot = rand(T, N, O, seed=7).detach()
    for x, y in zip(torch.autograd.grad(got, (h, a, theta), cot), torch.autograd.grad(want, (h, a, theta), cot)):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", ["plain", "relus", "shared", "concat"])
def test_gradcheck_and_gradgradcheck(backend, variant):
    T, N, K, O = 2, 3, 2, 2
    x = rand(T, N, K, seed=8)
    if variant == "concat":
        a = rand(T, N, 1, seed=9)
        theta = rand(T, (K + 1) * O + O, seed=10)
        fn, args = (lambda x, a, th: concat_relu_linear(x, a, th, O, backend=backend)), (x, a, theta)
    else:
        theta = rand(*((K * O + O,) if variant == "shared" else (T, K * O + O)), seed=11)
        r = variant == "relus"
        fn, args = (lambda x, th: batched_linear(x, th, O, in_relu=r, out_relu=r, backend=backend)), (x, theta)
    fast = backend == "triton"       # the interpreter is slow: a random projection is enough there
    assert torch.autograd.gradcheck(fn, args, fast_mode=fast)
    assert torch.autograd.gradgradcheck(fn, args, fast_mode=fast)


def test_second_order_through_two_layers(backend):
    """Inner-loss style: grad w.r.t. theta with create_graph, then grad of that w.r.t. everything."""
    x = rand(2, 9, 3, seed=12)
    th1, th2 = rand(2, 3 * 4 + 4, seed=13), rand(2, 4 * 1 + 1, seed=14)
    def meta(lin):
        h = lin(x, th1, 4, False)
        y = lin(h, th2, 1, True)
        g1, g2 = torch.autograd.grad(y.pow(2).sum(), (th1, th2), create_graph=True)
        return torch.autograd.grad((g1.pow(2).sum() + g2.sin().sum()), (x, th1, th2))
    got = meta(lambda x, t, o, r: batched_linear(x, t, o, in_relu=r, backend=backend))
    want = meta(lambda x, t, o, r: batched_linear_reference(x, t, o, r))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_torch_func_grad_and_vmap(backend):
    x, theta = rand(2, 5, 3, seed=15).detach(), rand(2, 3 * 2 + 2, seed=16).detach()
    f = lambda th: batched_linear(x, th, 2, in_relu=True, backend=backend).tanh().sum()  # noqa: E731
    r = lambda th: batched_linear_reference(x, th, 2, True).tanh().sum()  # noqa: E731
    torch.testing.assert_close(torch.func.grad(f)(theta), torch.func.grad(r)(theta), rtol=1e-12, atol=1e-12)
    hess = torch.func.jacrev(torch.func.grad(f))(theta)
    torch.testing.assert_close(hess, torch.func.jacrev(torch.func.grad(r))(theta), rtol=1e-10, atol=1e-12)
    xs = torch.stack([x, -x])
    got = torch.func.vmap(lambda x: batched_linear(x, theta, 2, backend=backend))(xs)
    torch.testing.assert_close(got[1], batched_linear_reference(-x, theta, 2), rtol=1e-12, atol=1e-12)


def test_non_contiguous_inputs(backend):
    x = rand(3, 4, 6, seed=17).detach().transpose(0, 1).contiguous().transpose(0, 1)   # strides permuted
    theta = torch.stack([rand(3, 6 * 2 + 2, seed=18).detach()] * 2, dim=-1)[..., 1]      # stride 2 along P
    h = rand(3, 4, 8, seed=19).detach()[..., ::2]                                         # stride 2 along features
    a = rand(3, 4, 1, seed=20).detach()
    assert not (x.is_contiguous() or theta.is_contiguous() or h.is_contiguous())
    torch.testing.assert_close(batched_linear(x, theta, 2, in_relu=True, backend=backend),
                               batched_linear_reference(x.contiguous(), theta.contiguous(), 2, True),
                               rtol=1e-12, atol=1e-12)
    th2 = rand(3, 5 * 3 + 3, seed=21).detach()
    torch.testing.assert_close(concat_relu_linear(h, a, th2, 3, backend=backend),
                               batched_linear_reference(h.contiguous(), th2, 3, a=a), rtol=1e-12, atol=1e-12)


def test_float32_paper_shape_close_to_float64():
    """fp32 at the paper's trunk layer (T=5, N=256, 100 -> 100) agrees with float64 to fp32 rounding."""
    x, theta = rand(5, 256, 100, seed=22), rand(5, 100 * 100 + 100, seed=23)
    want = batched_linear_reference(x, theta, 100, True)
    got = batched_linear(x.detach().float(), theta.detach().float(), 100, in_relu=True, backend="torch")
    # sums of 100 products of O(1) numbers: |error| ~ sqrt(100) * 6e-8 * 10 ~ 1e-5
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-5, atol=1e-4)


def test_bad_inputs():
    x, theta = rand(2, 3, 4).detach(), rand(2, 4 * 5 + 5).detach()
    with pytest.raises(ValueError, match=r"theta must have shape \(2, 25\)"):
        batched_linear(x, theta[:, :-1], 5)
    with pytest.raises(ValueError, match="theta must be a"):
        batched_linear(x, theta[None], 5)
    with pytest.raises(ValueError, match="x must have 3 dimensions"):
        batched_linear(x[0], theta, 5)
    with pytest.raises(ValueError, match="out_features"):
        batched_linear(x, theta, 0)
    with pytest.raises(TypeError, match="dtype"):
        batched_linear(x.float(), theta, 5)
    with pytest.raises(TypeError, match="float32 or float64"):
        batched_linear(x.long(), theta.long(), 5)
    with pytest.raises(ValueError, match="is on meta"):
        batched_linear(x, theta.to("meta"), 5)
    with pytest.raises(ValueError, match=r"a must have shape \(2, 3, \?\)"):
        concat_relu_linear(x, rand(2, 4, 1).detach(), rand(2, 5 * 5 + 5).detach(), 5)
    if not interpreter_requested():
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            batched_linear(x, theta, 5, backend="triton")


def test_float32_backend_close_to_float64(backend):
    """The float32 path of each backend agrees with float64 (blocks in N, K and out all partial)."""
    x, theta = rand(2, 45, 50, seed=24), rand(2, 50 * 70 + 70, seed=25)
    want = batched_linear_reference(x, theta, 70, True).detach()
    got = batched_linear(x.detach().float(), theta.detach().float(), 70, in_relu=True, backend=backend)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------- the double backward (second order)
from macaw_fast.ops.batched_linear import (  # noqa: E402
    LinearDoubleBackward, _backward_torch, _double_backward_torch)


def _vjp_of_backward(ggx, gga, ggth, gy, x, a, th, y, O, ir, orl):
    """Oracle: autograd's VJP of the differentiable first-order backward (zeros for absent cotangents)."""
    prim = [gy, x, th] + ([a] if a is not None else [])

    def f(gy_, x_, th_, *a_):
        gx, ga, gth = _backward_torch(gy_, x_, a_[0] if a_ else None, th_, y, O, ir, orl)
        return (gx, gth) + ((ga,) if a_ else ())
    outs, vjp = torch.func.vjp(f, *prim)
    z = torch.zeros_like
    cts = [ggx if ggx is not None else z(outs[0]), ggth if ggth is not None else z(outs[1])]
    if a is not None:
        cts.append(gga if gga is not None else z(outs[2]))
    v = vjp(tuple(cts))
    return v[0], v[1], (v[3] if a is not None else None), v[2]


@pytest.mark.parametrize("cots", ["both", "x_only", "theta_only"])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("ir,orl", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("T,N,K1,KA,O", [(1, 1, 1, 0, 1), (2, 33, 40, 0, 17), (2, 7, 20, 3, 5)])
def test_double_backward_matches_vjp_of_backward(backend, T, N, K1, KA, O, ir, orl, shared, cots):
    """g_gy, g_x, g_a, g_theta of the second-order backward equal autograd's VJP (float64)."""
    K = K1 + KA
    x, th = rand(T, N, K1, seed=31).detach(), rand(*((K * O + O,) if shared else (T, K * O + O)), seed=32).detach()
    a = rand(T, N, KA, seed=33).detach() if KA else None
    gy, y = rand(T, N, O, seed=34).detach(), (rand(T, N, O, seed=35).detach() if orl else None)
    hx, hth = cots in ("both", "x_only"), cots in ("both", "theta_only")
    ggx = rand(T, N, K1, seed=36).detach() if hx else None
    gga = rand(T, N, KA, seed=37).detach() if (hx and KA) else None
    ggth = rand(*th.shape, seed=38).detach() if hth else None
    args = (ggx, gga, ggth, gy, x, a, th, y, O, ir, orl)
    got = LinearDoubleBackward.apply(*args) if backend == "triton" else _double_backward_torch(*args)
    want = _vjp_of_backward(*args)
    for name, g, w in zip(("g_gy", "g_x", "g_a", "g_theta"), got, want):
        if g is None:                         # absent term: the oracle's is exactly zero (or absent)
            assert w is None or w.abs().max() == 0, name
        else:
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12, msg=lambda m: f"{name}: {m}")


@pytest.mark.triton
@pytest.mark.parametrize("concat", [False, True])
def test_double_backward_function_gradcheck(concat):
    """LinearDoubleBackward's own backward (third order, torch VJP) is correct too."""
    if not (interpreter_requested() and triton_importable()):
        pytest.skip("the Function runs Triton kernels: needs TRITON_INTERPRET=1 and triton")
    T, N, K1, O = 2, 3, 2, 2
    KA = 1 if concat else 0
    K = K1 + KA
    x, th, gy = rand(T, N, K1, seed=40), rand(T, K * O + O, seed=41), rand(T, N, O, seed=42)
    a = rand(T, N, KA, seed=43) if concat else None
    ggx, ggth = rand(T, N, K1, seed=44), rand(T, K * O + O, seed=45)
    gga = rand(T, N, KA, seed=46) if concat else None
    y = rand(T, N, O, seed=47).detach()
    if concat:
        fn = lambda ggx, gga, ggth, gy, x, a, th: tuple(  # noqa: E731
            t for t in LinearDoubleBackward.apply(ggx, gga, ggth, gy, x, a, th, y, O, True, True) if t is not None)
        args = (ggx, gga, ggth, gy, x, a, th)
    else:
        fn = lambda ggx, ggth, gy, x, th: tuple(  # noqa: E731
            t for t in LinearDoubleBackward.apply(ggx, None, ggth, gy, x, None, th, y, O, True, False) if t is not None)
        args = (ggx, ggth, gy, x, th)
    assert torch.autograd.gradcheck(fn, args, fast_mode=True)
