"""`macaw_fast.ops.wlinear_adapt` vs a float64 oracle with explicit per-task copies of W.

Every test runs on the torch twin (normal suite) and on the Triton kernels through the interpreter
(marked ``triton``; skipped unless TRITON_INTERPRET=1 was set for the process).
"""

import pytest
import torch

from macaw_fast.ops import wlinear_adapt
from macaw_fast.ops.wlinear_adapt import wlinear_adapt_reference

F64 = torch.float64


def make(T, P, D, dtype=F64, seed=0):
    """Random layer (W, b, z), per-task gradients G and positive rates, all requiring grad."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(P, D, generator=g, dtype=dtype) / D**0.5
    b = torch.randn(P, generator=g, dtype=dtype)
    z = torch.randn(D, generator=g, dtype=dtype)
    G = torch.randn(T, P, generator=g, dtype=dtype)
    rates = torch.rand(3, generator=g, dtype=dtype) * 0.5 + 0.05
    return [t.requires_grad_() for t in (W, b, z, G, rates)]


# (T, P, D): T=1, P not a multiple of the 64-row block, in/out of 1 (P = 1*1 + 1 = 2), D of 1.
SHAPES = [(1, 2, 1), (3, 37, 5), (2, 130, 17), (5, 65, 70)]


@pytest.mark.parametrize("alpha", [None, 0.9])
@pytest.mark.parametrize("T,P,D", SHAPES)
def test_forward_and_grads_match_oracle(backend, T, P, D, alpha):
    inputs = make(T, P, D)
    got = wlinear_adapt(*inputs, alpha, backend=backend)
    want = wlinear_adapt_reference(*inputs, alpha)
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    g = torch.Generator().manual_seed(1)
    cot = [torch.randn(w.shape, generator=g, dtype=F64) for w in want]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    ga = torch.autograd.grad(got, inputs, cot)
    gb = torch.autograd.grad(want, inputs, cot)
    for name, a, b in zip(("W", "b", "z", "G", "rates"), ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("alpha", [None, 0.9])
def test_second_order_matches_oracle(backend, alpha):
    """Hessian-vector products (grad of grad) equal the oracle's: the backward is differentiable."""
    inputs = make(2, 9, 4, seed=3)
    def hvp(fn):
        out = fn(*inputs, alpha)
        out = out if isinstance(out, tuple) else (out,)
        s = sum((o.sin() * (k + 1)).sum() for k, o in enumerate(out))
        grads = torch.autograd.grad(s, inputs, create_graph=True)
        return torch.autograd.grad(sum((gr * gr).sum() for gr in grads), inputs)
    got = hvp(lambda *a: wlinear_adapt(*a, backend=backend))
    want = hvp(wlinear_adapt_reference)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("alpha", [None, 0.5])
def test_gradcheck_and_gradgradcheck(backend, alpha):
    inputs = make(2, 6, 3, seed=2)
    fn = lambda *a: wlinear_adapt(*a, alpha, backend=backend)  # noqa: E731
    fast = backend == "triton"      # the interpreter is slow: a random projection is enough there
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=fast)
    assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=fast)


def test_torch_func_grad_and_vmap(backend):
    W, b, z, G, rates = [t.detach() for t in make(3, 12, 5, seed=4)]
    loss = lambda W, z, rates: wlinear_adapt(W, b, z, G, rates, 0.9, backend=backend)[1].pow(2).sum()  # noqa: E731
    ref = lambda W, z, rates: wlinear_adapt_reference(W, b, z, G, rates, 0.9)[1].pow(2).sum()  # noqa: E731
    for a, c in zip(torch.func.grad(loss, argnums=(0, 1, 2))(W, z, rates),
                    torch.func.grad(ref, argnums=(0, 1, 2))(W, z, rates)):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)
    # second order through torch.func: d/dz of |d loss/d rates|^2
    gg = torch.func.grad(lambda z: torch.func.grad(loss, argnums=2)(W, z, rates).pow(2).sum())(z)
    gg_ref = torch.func.grad(lambda z: torch.func.grad(ref, argnums=2)(W, z, rates).pow(2).sum())(z)
    torch.testing.assert_close(gg, gg_ref, rtol=1e-10, atol=1e-12)
    # vmap over a batch of latents
    zs = torch.stack([z, 2 * z])
    got = torch.func.vmap(lambda z: wlinear_adapt(W, b, z, G, rates, backend=backend))(zs)
    torch.testing.assert_close(got[1], wlinear_adapt_reference(W, b, 2 * z, G, rates), rtol=1e-12, atol=1e-12)


def test_non_contiguous_inputs(backend):
    """Transposed W and strided G give the same result as contiguous copies."""
    W, b, z, G, rates = [t.detach() for t in make(3, 20, 6, seed=5)]
    Wt = W.t().contiguous().t()                      # (P, D) with strides (1, P)
    Gs = torch.stack([G, G], dim=-1)[..., 0]         # (T, P) with stride 2 along P
    zs = torch.stack([z, z], dim=-1)[:, 0]           # (D,) with stride 2
    assert not Wt.is_contiguous() and not Gs.is_contiguous()
    got = wlinear_adapt(Wt, b, zs, Gs, rates, 0.9, backend=backend)
    want = wlinear_adapt_reference(W, b, z, G, rates, 0.9)
    for a, c in zip(got, want):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)


def test_float32_paper_shape_close_to_float64():
    """fp32 at the paper's largest layer (100 x 100, D = 100, T = 5) is within fp32 rounding."""
    inputs = make(5, 100 * 100 + 100, 100)
    want = wlinear_adapt_reference(*inputs, 0.9)
    got = wlinear_adapt(*[t.detach().float() for t in inputs], 0.9, backend="torch")
    for a, c in zip(got, want):
        # |theta| ~ 1; sums of 100-200 fp32 products: a few ulps of 1e-7 each
        torch.testing.assert_close(a.double(), c.detach(), rtol=1e-5, atol=1e-5)


def test_bad_inputs():
    W, b, z, G, rates = [t.detach() for t in make(2, 6, 3)]
    with pytest.raises(ValueError, match="G must have shape"):
        wlinear_adapt(W, b, z, G[:, :5], rates)
    with pytest.raises(ValueError, match="z must have shape"):
        wlinear_adapt(W, b, z[:2], G, rates)
    with pytest.raises(ValueError, match="rates must have shape"):
        wlinear_adapt(W, b, z, G, rates[:2])
    with pytest.raises(TypeError, match="dtype"):
        wlinear_adapt(W, b.float(), z, G, rates)
    with pytest.raises(TypeError, match="float32 or float64"):
        wlinear_adapt(W.half(), b.half(), z.half(), G.half(), rates.half())
    with pytest.raises(ValueError, match="is on meta"):
        wlinear_adapt(W, b, z.to("meta"), G, rates)
    with pytest.raises(ValueError, match="alpha"):
        wlinear_adapt(W, b, z, G, rates, 1.5)
    with pytest.raises(ValueError, match="backend"):
        wlinear_adapt(W, b, z, G, rates, backend="cuda")
    with pytest.raises(TypeError, match="torch.Tensor"):
        wlinear_adapt(W.numpy(), b, z, G, rates)


def test_float32_backend_close_to_float64(backend):
    """The float32 path of each backend (mid-size, several P blocks) agrees with float64."""
    inputs = make(3, 200, 40)
    want = wlinear_adapt_reference(*inputs, 0.9)
    got = wlinear_adapt(*[t.detach().float() for t in inputs], 0.9, backend=backend)
    for a, c in zip(got, want):
        torch.testing.assert_close(a.double(), c.detach(), rtol=1e-5, atol=1e-5)
