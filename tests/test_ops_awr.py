"""`macaw_fast.ops.awr_loss` vs the float64 unfused composition (the paper's loss, docs/algorithm.md §4).

Torch twin in the normal suite; Triton kernel through the interpreter when marked ``triton``.
"""

import math

import pytest
import torch

from macaw_fast.ops import awr_loss
from macaw_fast.ops._common import interpreter_requested, triton_importable
from macaw_fast.ops.awr_loss import awr_loss_reference

F64 = torch.float64


def make(T, N, A, seed=0, dtype=F64):
    """mu, actions, advantages (spread wide enough that some weights hit the clamp), predictions."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(T, N, A, generator=g, dtype=dtype).tanh()
    act = torch.randn(T, N, A, generator=g, dtype=dtype)
    adv = torch.randn(T, N, generator=g, dtype=dtype) * 3
    adv[:, 0] = 40.0 if N > 2 else adv[:, 0]       # an outlier: its normalised value exceeds log 20 only if N > 2
    pred = torch.randn(T, N, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (mu, act, adv, pred)]


# (T, N, A): T=1, N=2 (smallest with an unbiased std), N not a multiple of the 128-row block, A=1.
SHAPES = [(1, 2, 1), (2, 129, 6), (3, 37, 3), (5, 256, 6)]


@pytest.mark.parametrize("head", [False, True])
@pytest.mark.parametrize("T,N,A", SHAPES)
def test_forward_and_grads_match_oracle(backend, T, N, A, head):
    mu, act, adv, pred = make(T, N, A)
    hw = torch.tensor(0.37, dtype=F64, requires_grad=True)
    kw = {"pred": pred, "head_weight": hw} if head else {}
    got, w = awr_loss(mu, act, adv, sigma=0.2, temp=0.7, max_weight=20.0, return_weights=True,
                      backend=backend, **kw)
    want = awr_loss_reference(mu, act, adv, 0.2, 0.7, 20.0, **kw)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert not w.requires_grad and w.shape == (T, N)
    if N > 2:
        assert torch.isclose(w.max(), torch.tensor(20.0, dtype=F64))   # the clamp is exercised
    inputs = (mu, act, adv) + ((pred, hw) if head else ())
    cot = torch.linspace(0.5, 1.5, T, dtype=F64)
    ga = torch.autograd.grad(got, inputs, cot, allow_unused=True)
    gb = torch.autograd.grad(want, inputs, cot, allow_unused=True)
    for name, a, b in zip(("mu", "action", "adv", "pred", "head_weight"), ga, gb):
        if b is None:
            assert a is None or torch.count_nonzero(a) == 0, name
        else:
            torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12, msg=lambda m: f"grad {name}: {m}")


def test_gradcheck_and_gradgradcheck(backend):
    mu, act, adv, pred = make(2, 4, 2, seed=1)
    hw = torch.tensor(0.5, dtype=F64, requires_grad=True)
    adv = adv.detach()        # the weights are piecewise smooth in adv; gradcheck holds adv fixed
    fn = lambda mu, act, pred, hw: awr_loss(mu, act, adv, pred=pred, head_weight=hw, backend=backend)  # noqa: E731
    fast = backend == "triton"
    assert torch.autograd.gradcheck(fn, (mu, act, pred, hw), fast_mode=fast)
    assert torch.autograd.gradgradcheck(fn, (mu, act, pred, hw), fast_mode=fast)
    # adv enters the head term only (weights are constants): check that derivative alone
    fa = lambda adv_: awr_loss(mu.detach(), act.detach(), adv_, pred=pred.detach(), head_weight=0.5,  # noqa: E731
                               backend=backend) - awr_loss(mu.detach(), act.detach(), adv_, backend=backend).detach()
    a0 = adv.clone().requires_grad_()
    ga, = torch.autograd.grad(fa(a0).sum(), a0)
    torch.testing.assert_close(ga, -2 * 0.5 * (pred.detach() - adv) / 4)


def test_second_order_inner_loss(backend):
    """MACAW's use: grad of the inner loss w.r.t. mu (create_graph), then its grad w.r.t. kappa."""
    mu, act, adv, pred = make(2, 9, 3, seed=2)
    kappa = torch.tensor(math.log(0.01), dtype=F64, requires_grad=True)
    def meta(loss_fn):
        hw = torch.nn.functional.softplus(kappa)
        loss = loss_fn(mu, act, adv.detach(), pred, hw).sum()
        gmu, gpred = torch.autograd.grad(loss, (mu, pred), create_graph=True)
        return torch.autograd.grad(gmu.pow(2).sum() + gpred.pow(2).sum(), (kappa, mu, pred, act))
    got = meta(lambda m, a, v, p, h: awr_loss(m, a, v, pred=p, head_weight=h, backend=backend))
    want = meta(lambda m, a, v, p, h: awr_loss_reference(m, a, v, pred=p, head_weight=h))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_torch_func_grad_and_vmap(backend):
    mu, act, adv, pred = [t.detach() for t in make(2, 6, 2, seed=3)]
    f = lambda mu: awr_loss(mu, act, adv, backend=backend).sum()  # noqa: E731
    r = lambda mu: awr_loss_reference(mu, act, adv).sum()  # noqa: E731
    torch.testing.assert_close(torch.func.grad(f)(mu), torch.func.grad(r)(mu), rtol=1e-12, atol=1e-12)
    got = torch.func.vmap(lambda m: awr_loss(m, act, adv, backend=backend))(torch.stack([mu, -mu]))
    torch.testing.assert_close(got[1], awr_loss_reference(-mu, act, adv), rtol=1e-12, atol=1e-12)


def test_non_contiguous_inputs(backend):
    mu, act, adv, pred = [t.detach() for t in make(3, 10, 4, seed=4)]
    mu_nc = mu.transpose(0, 1).contiguous().transpose(0, 1)
    act_nc = torch.stack([act, act], -1)[..., 0]
    adv_nc = adv.t().contiguous().t()
    pred_nc = torch.stack([pred, pred], -1)[..., 1]
    assert not any(t.is_contiguous() for t in (mu_nc, act_nc, adv_nc, pred_nc))
    torch.testing.assert_close(awr_loss(mu_nc, act_nc, adv_nc, pred=pred_nc, head_weight=0.2, backend=backend),
                               awr_loss_reference(mu, act, adv, pred=pred, head_weight=0.2), rtol=1e-12, atol=1e-12)


def test_float32_close_to_float64():
    mu, act, adv, pred = make(5, 256, 6, seed=5)
    want = awr_loss_reference(mu, act, adv, pred=pred, head_weight=0.01).detach()
    got = awr_loss(*(t.detach().float() for t in (mu, act, adv)), pred=pred.detach().float(),
                   head_weight=0.01, backend="torch")
    # losses are O(100) (1/sigma^2 = 25 times squared errors, weights up to 20): fp32 relative rounding
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)


def test_bad_inputs():
    mu, act, adv, pred = [t.detach() for t in make(2, 5, 3)]
    with pytest.raises(ValueError, match=r"action must have shape \(2, 5, 3\)"):
        awr_loss(mu, act[:, :, :2], adv)
    with pytest.raises(ValueError, match=r"adv must have shape \(2, 5\)"):
        awr_loss(mu, act, adv[:, :4])
    with pytest.raises(ValueError, match="at least 2 rows"):
        awr_loss(mu[:, :1], act[:, :1], adv[:, :1])
    with pytest.raises(ValueError, match="pred and head_weight go together"):
        awr_loss(mu, act, adv, pred=pred)
    with pytest.raises(ValueError, match="sigma"):
        awr_loss(mu, act, adv, sigma=0.0)
    with pytest.raises(TypeError, match="dtype"):
        awr_loss(mu, act.float(), adv)
    with pytest.raises(ValueError, match="head_weight must hold one number"):
        awr_loss(mu, act, adv, pred=pred, head_weight=torch.ones(2, dtype=F64))
    with pytest.raises(ValueError, match="is on meta"):
        awr_loss(mu, act, adv.to("meta"))


def test_float32_backend_close_to_float64(backend):
    """The float32 path of each backend agrees with float64 (N over one 128-row block)."""
    mu, act, adv, pred = make(2, 200, 6, seed=6)
    want = awr_loss_reference(mu, act, adv, pred=pred, head_weight=0.05).detach()
    got = awr_loss(*(t.detach().float() for t in (mu, act, adv)), pred=pred.detach().float(),
                   head_weight=0.05, backend=backend)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------- the double backward (second order)
from macaw_fast.ops.awr_loss import (  # noqa: E402
    AWRDoubleBackward, _backward_torch, _constants, _double_backward_torch)

COT_SETS = {"meta_step": ("mu", "pred"), "all": ("mu", "act", "adv", "pred", "hw"), "act_adv": ("act", "adv"),
            "hw_only": ("hw",), "mu_only": ("mu",)}


def _dbwd_inputs(T, N, A, head, which, seed):
    """Detached primal inputs of AWRBackward and the chosen cotangents (None where absent)."""
    mu, act, adv, pred = [t.detach() for t in make(T, N, A, seed=seed)]
    g0 = torch.Generator().manual_seed(seed + 100)
    r = lambda *s: torch.randn(s, generator=g0, dtype=F64)  # noqa: E731
    g = r(T)
    hw = torch.tensor(0.7, dtype=F64)
    _, w = awr_loss(mu, act, adv, return_weights=True, backend="torch")
    if not head:
        pred = hw_ = None
        which = tuple(k for k in which if k in ("mu", "act"))
    else:
        hw_ = hw
    shapes = {"mu": (T, N, A), "act": (T, N, A), "adv": (T, N), "pred": (T, N), "hw": ()}
    cots = {k: (r(*shapes[k]) if k in which else None) for k in ("mu", "act", "adv", "pred", "hw")}
    return cots, (g, mu, act, adv, pred, hw_, w)


def _vjp_oracle(cots, prim, c_half, tanh=False):
    """Autograd's VJP of the differentiable first-order backward (zeros for absent cotangents)."""
    g, mu, act, adv, pred, hw, w = prim
    head = pred is not None
    xs = [g, mu, act] + ([adv, pred, hw] if head else [])

    def f(g_, mu_, act_, *rest):
        adv_, pred_, hw_ = rest if head else (adv, None, None)
        out = _backward_torch(g_, mu_, act_, adv_, pred_, hw_, w, c_half, tanh=tanh)
        return out if head else out[:2]
    outs, vjp = torch.func.vjp(f, *xs)
    keys = ["mu", "act", "adv", "pred", "hw"][:len(outs)]
    v = vjp(tuple(cots[k] if cots[k] is not None else torch.zeros_like(o) for k, o in zip(keys, outs)))
    return tuple(v) + (None,) * (6 - len(v))


@pytest.mark.parametrize("which", list(COT_SETS))
@pytest.mark.parametrize("head", [False, True])
@pytest.mark.parametrize("T,N,A", [(1, 2, 1), (2, 129, 3), (3, 37, 6)])
def test_double_backward_matches_vjp_of_backward(backend, T, N, A, head, which):
    """(d/dg, d/dmu, d/dact, d/dadv, d/dpred, d/dhw) of the second-order backward equal autograd's VJP."""
    cots, prim = _dbwd_inputs(T, N, A, head, COT_SETS[which], seed=7 * T + N)
    consts = _constants(0.2, 1.0, 20.0, A)
    c = [cots[k] for k in ("mu", "act", "adv", "pred", "hw")]
    if backend == "triton":
        got = AWRDoubleBackward.apply(*c, *prim, consts)
    else:
        got = _double_backward_torch(*c, *prim, consts[0])
    want = _vjp_oracle(cots, prim, consts[0])
    for name, a, b in zip(("g", "mu", "act", "adv", "pred", "hw"), got, want):
        if a is None:                         # absent term: the oracle's is exactly zero (or absent)
            assert b is None or torch.count_nonzero(b) == 0, name
        else:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("which", list(COT_SETS))
@pytest.mark.parametrize("head", [False, True])
@pytest.mark.parametrize("T,N,A", [(1, 2, 1), (3, 37, 6)])
def test_double_backward_with_tanh_matches_vjp_of_backward(backend, T, N, A, head, which):
    """The same with tanh inside the op (mu holds pre-activations): the extra curvature term."""
    cots, prim = _dbwd_inputs(T, N, A, head, COT_SETS[which], seed=5 * T + N)
    consts = _constants(0.2, 1.0, 20.0, A)
    c = [cots[k] for k in ("mu", "act", "adv", "pred", "hw")]
    if backend == "triton":
        got = AWRDoubleBackward.apply(*c, *prim, consts + (1.0,))
    else:
        got = _double_backward_torch(*c, *prim, consts[0], tanh=True)
    want = _vjp_oracle(cots, prim, consts[0], tanh=True)
    for name, a, b in zip(("g", "mu", "act", "adv", "pred", "hw"), got, want):
        if a is None:
            assert b is None or torch.count_nonzero(b) == 0, name
        else:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("head", [False, True])
@pytest.mark.parametrize("T,N,A", SHAPES)
def test_tanh_inside_matches_tanh_then_loss(backend, T, N, A, head):
    """awr_loss(x, tanh=True) == awr_loss(tanh(x)): loss, gradients and second order; the torch
    twin is bitwise the composition (autograd's tanh_backward), as the CUDA-graph body needs."""
    mu, act, adv, pred = make(T, N, A, seed=2)
    x = (mu.detach() * 2.0).requires_grad_()             # pre-activations, some beyond |x| > 1
    hw = torch.tensor(0.37, dtype=F64, requires_grad=True)
    kw = {"pred": pred, "head_weight": hw} if head else {}
    got = awr_loss(x, act, adv, tanh=True, backend=backend, **kw)
    want = awr_loss(torch.tanh(x), act, adv, backend="torch", **kw)
    ins = [x, act] + ([pred, hw] if head else [])
    gw = torch.linspace(0.5, 1.5, T, dtype=F64)
    ga = torch.autograd.grad((got * gw).sum(), ins, create_graph=True)
    gb = torch.autograd.grad((want * gw).sum(), ins, create_graph=True)
    if backend == "torch":
        assert torch.equal(got, want) and all(torch.equal(a, b) for a, b in zip(ga, gb))
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-12)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    ha = torch.autograd.grad(sum((q * q.detach().cos()).sum() for q in ga), ins)
    hb = torch.autograd.grad(sum((q * q.detach().cos()).sum() for q in gb), ins)
    for a, b in zip(ha, hb):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


def test_tanh_gradcheck_and_gradgradcheck(backend):
    mu, act, adv, pred = make(2, 5, 2, seed=4)
    fn = lambda x, a, p, h: awr_loss(x, a, adv, pred=p, head_weight=h, tanh=True, backend=backend)  # noqa: E731
    ins = (mu, act, pred, torch.tensor(0.2, dtype=F64, requires_grad=True))
    assert torch.autograd.gradcheck(fn, ins)
    assert torch.autograd.gradgradcheck(fn, ins)


@pytest.mark.triton
@pytest.mark.parametrize("tanh", [False, True])
@pytest.mark.parametrize("head", [False, True])
def test_double_backward_function_gradcheck(head, tanh):
    """AWRDoubleBackward's own backward (third order, torch VJP) is correct too; and the op's
    gradgradcheck through it with every cotangent present."""
    if not (interpreter_requested() and triton_importable()):
        pytest.skip("the Function runs Triton kernels: needs TRITON_INTERPRET=1 and triton")
    cots, prim = _dbwd_inputs(2, 5, 2, head, COT_SETS["all"], seed=3)
    consts = _constants(0.2, 1.0, 20.0, 2) + ((1.0,) if tanh else ())
    g, mu, act, adv, pred, hw, w = prim
    keys = ("mu", "act", "adv", "pred", "hw")
    diff = [cots[k] for k in keys if cots[k] is not None] + [g, mu, act] + ([adv, pred, hw] if head else [])
    diff = [t.clone().requires_grad_() for t in diff]
    nc = sum(cots[k] is not None for k in keys)

    def fn(*xs):
        cs = iter(xs[:nc])
        c = [next(cs) if cots[k] is not None else None for k in keys]
        rest = list(xs[nc:])
        p = rest[:3] + (rest[3:] if head else [adv, None, None]) + [w]
        return tuple(t for t in AWRDoubleBackward.apply(*c, *p, consts) if t is not None)
    assert torch.autograd.gradcheck(fn, tuple(diff), fast_mode=True)
