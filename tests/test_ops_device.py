"""Every op's Triton kernels on a real device against the float64 torch twin on the CPU.

On a machine with a CUDA GPU (and triton) this runs the compiled kernels, at odd small shapes and
at the paper's shapes, in float64 (gradients to 1e-10 relative, ``gradcheck`` and
``gradgradcheck`` on the GPU) and in float32 (IEEE products, so within float32 rounding of the
float64 oracle). Without a GPU it runs the small cases under Triton's interpreter when
``TRITON_INTERPRET=1`` is set (marked ``triton``), which keeps this harness itself tested in CI;
otherwise it is skipped.

For a differentiable op the check is three-fold on the same random inputs: outputs; the
vector-Jacobian product with random cotangents (first order); and the gradient of a random
projection of that product w.r.t. the inputs and the cotangents (second order: what MACAW's
meta-gradient differentiates through the inner step).
"""

from __future__ import annotations

import pytest
import torch

from macaw_fast import ops
from macaw_fast.backends import fused_ops
from macaw_fast.ops._common import interpreter_requested, triton_importable

from helpers import rel_err

if torch.cuda.is_available() and triton_importable() and not interpreter_requested():
    DEVICE = torch.device("cuda")
    pytestmark = pytest.mark.gpu
elif interpreter_requested() and triton_importable():
    DEVICE = torch.device("cpu")
    pytestmark = pytest.mark.triton
else:
    DEVICE = None
    pytestmark = pytest.mark.skip(reason="needs a CUDA GPU with triton, or TRITON_INTERPRET=1 and triton")

ON_GPU = DEVICE is not None and DEVICE.type == "cuda"
F64 = torch.float64
# float32 against the float64 oracle: IEEE float32 arithmetic (no TF32), sums of at most a few
# thousand terms: ~1e-6 relative; the second-order terms pass through exp(advantage weights)
# and products of two first-order quantities, so allow 1e-4 (a wrong term gives O(1)).
TOL = {torch.float64: 1e-10, torch.float32: 1e-4}


class Case:
    """An op call on named inputs: ``fn(inputs: dict, backend) -> tensor or tuple of tensors``.

    ``make(gen)`` draws the float64 CPU inputs; ``diff`` names the ones it is differentiable in.
    """

    def __init__(self, name, make, fn, diff=(), small=True):
        self.name, self.make, self.fn, self.diff, self.small = name, make, fn, tuple(diff), small

    def __repr__(self):
        return self.name


def _r(gen, *shape, scale=1.0):
    return torch.randn(shape, generator=gen, dtype=F64) * scale


def _adapt_inputs(T, P, D):
    return lambda g: {"W": _r(g, P, D, scale=D ** -0.5), "b": _r(g, P), "z": _r(g, D), "G": _r(g, T, P),
                      "rates": _r(g, 3).abs() * 0.3}


def _adapt_many_inputs(T, Ps, D):
    def make(g):
        d = {}
        for i, P in enumerate(Ps):
            d.update({f"W{i}": _r(g, P, D, scale=D ** -0.5), f"b{i}": _r(g, P), f"z{i}": _r(g, D), f"G{i}": _r(g, T, P)})
        d["rates"] = _r(g, len(Ps) + 1, 3).abs() * 0.3
        return d
    return make


def _adapt_many_fn(n, alpha):
    def fn(x, be):
        res = ops.wlinear_adapt_many([x[f"W{i}"] for i in range(n)], [x[f"b{i}"] for i in range(n)],
                                     [x[f"z{i}"] for i in range(n)], [x[f"G{i}"] for i in range(n)], x["rates"],
                                     alpha, backend=be)
        return tuple(t for r in res for t in (r if isinstance(r, tuple) else (r,)))
    return fn


def _linear_inputs(T, N, K, O, shared=False, strided=False):
    def make(g):
        x = _r(g, T, K, N).transpose(1, 2) if strided else _r(g, T, N, K)
        return {"x": x, "theta": _r(g, *(() if shared else (T,)), K * O + O, scale=K ** -0.5)}
    return make


def _awr_inputs(T, N, A, head):
    def make(g):
        d = {"mu": _r(g, T, N, A, scale=0.5), "action": torch.rand(T, N, A, generator=g, dtype=F64) * 1.8 - 0.9,
             "adv": _r(g, T, N, scale=2.0)}
        if head:
            d.update(pred=_r(g, T, N), hw=_r(g).abs() + 0.1)
        return d
    return make


def _awr_fn(head, tanh):
    def fn(x, be):
        kw = {"pred": x["pred"], "head_weight": x["hw"]} if head else {}
        return ops.awr_loss(x["mu"], x["action"], x["adv"], tanh=tanh, backend=be, **kw)
    return fn


def _value_inputs(T, N, boot):
    def make(g):
        d = {"v": _r(g, T, N), "ret": _r(g, T, N, scale=3.0)}
        if boot:
            d.update(disc=torch.rand(T, N, generator=g, dtype=F64), vn=_r(g, T, N))
        return d
    return make


def _cases():
    cases = []
    for (T, P, D), small in [((1, 7, 3), True), ((3, 33, 17), True), ((5, 10100, 100), False),
                             ((35, 2100, 100), False)]:
        for alpha in (None, 0.9):
            cases.append(Case(f"wlinear_adapt[T{T},P{P},D{D},alpha={alpha}]", _adapt_inputs(T, P, D),
                              lambda x, be, a=alpha: ops.wlinear_adapt(x["W"], x["b"], x["z"], x["G"], x["rates"], a,
                                                                      backend=be),
                              ("W", "b", "z", "G", "rates"), small))
    for (T, Ps, D), small in [((2, (5, 9, 3), 4), True), ((5, (2100, 10100, 10100, 606), 100), False)]:
        n = len(Ps)
        names = [f"{k}{i}" for i in range(n) for k in "WbzG"] + ["rates"]
        cases.append(Case(f"wlinear_adapt_many[T{T},L{n},D{D}]", _adapt_many_inputs(T, Ps, D),
                          _adapt_many_fn(n, 0.9), names, small))
    for (T, N, K, O), small in [((1, 1, 1, 1), True), ((2, 33, 3, 1), True), ((3, 7, 40, 70), True),
                                ((5, 256, 100, 100), False), ((35, 256, 20, 100), False)]:
        for in_relu, out_relu, shared in [(False, False, False), (True, True, False), (True, False, True)]:
            cases.append(Case(f"batched_linear[T{T},N{N},K{K},O{O},relu={in_relu}{out_relu},shared={shared}]",
                              _linear_inputs(T, N, K, O, shared),
                              lambda x, be, o=O, i=in_relu, r=out_relu: ops.batched_linear(
                                  x["x"], x["theta"], o, in_relu=i, out_relu=r, backend=be),
                              ("x", "theta"), small))
    cases.append(Case("batched_linear[strided x]", _linear_inputs(2, 19, 5, 3, strided=True),
                      lambda x, be: ops.batched_linear(x["x"], x["theta"], 3, in_relu=True, backend=be),
                      ("x", "theta")))
    for (T, N, H, A, O), small in [((1, 2, 1, 1, 1), True), ((2, 35, 20, 6, 32), True), ((5, 256, 100, 6, 32), False)]:
        def make(g, T=T, N=N, H=H, A=A, O=O):
            return {"h": _r(g, T, N, H), "a": _r(g, T, N, A), "theta": _r(g, T, (H + A) * O + O, scale=0.3)}
        cases.append(Case(f"concat_relu_linear[T{T},N{N},H{H},A{A},O{O}]", make,
                          lambda x, be, o=O: ops.concat_relu_linear(x["h"], x["a"], x["theta"], o, backend=be),
                          ("h", "a", "theta"), small))
    for (T, N, A), small in [((1, 2, 1), True), ((3, 37, 6), True), ((5, 256, 6), False), ((35, 256, 8), False)]:
        for head, tanh in [(False, False), (True, False), (True, True), (False, True)]:
            diff = ("mu", "action", "adv") + (("pred", "hw") if head else ())
            cases.append(Case(f"awr_loss[T{T},N{N},A{A},head={head},tanh={tanh}]", _awr_inputs(T, N, A, head),
                              _awr_fn(head, tanh), diff, small))
    for (T, N), small in [((1, 1), True), ((3, 37), True), ((35, 256), False)]:
        for boot in (False, True):
            cases.append(Case(f"value_mse[T{T},N{N},boot={boot}]", _value_inputs(T, N, boot),
                              lambda x, be, bt=boot: ops.value_mse(x["v"], x["ret"], x.get("disc"), x.get("vn"),
                                                                   backend=be),
                              ("v",), small))
    for T in (1, 5, 35):
        cases.append(Case(f"meta_objective[T{T}]", lambda g, T=T: {"a": _r(g, T), "b": _r(g, T)},
                          lambda x, be: fused_ops.meta_objective(x["a"], x["b"], 7, backend=be), ("a", "b")))
    return cases


CASES = _cases()
SELECTED = [c for c in CASES if ON_GPU or c.small]


def _inputs(case, seed, dtype):
    """(float64 CPU inputs, the same values as ``dtype`` on DEVICE); leaves require grad per ``diff``."""
    g = torch.Generator().manual_seed(seed)
    ref = case.make(g)
    dev = {}
    for k, v in ref.items():
        # keep the oracle's strides: a transposed input stays transposed on the device
        d = v.detach().to(DEVICE, dtype)
        if v.dim() >= 2 and not v.is_contiguous():
            d = v.detach().transpose(-1, -2).contiguous().to(DEVICE, dtype).transpose(-1, -2)
        dev[k] = d
    for name in case.diff:
        ref[name].requires_grad_(True)
        dev[name].requires_grad_(True)
    return ref, dev


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _leaves(x, case):
    return [x[k] for k in case.diff]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", SELECTED, ids=repr)
def test_op_matches_float64_twin(case, dtype):
    tol = TOL[dtype]
    ref, dev = _inputs(case, 1, dtype)
    want = _as_tuple(case.fn(ref, "torch"))
    got = _as_tuple(case.fn(dev, "triton"))
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.device.type == DEVICE.type and a.dtype == dtype and a.shape == b.shape
        assert torch.isfinite(a).all()
        assert rel_err(a.double().cpu(), b) <= tol, f"{case}: forward {rel_err(a.double().cpu(), b):.2e}"
    # first order: random cotangents (themselves differentiable for the second order)
    g = torch.Generator().manual_seed(2)
    cots_ref = [torch.randn(w.shape, generator=g, dtype=F64).requires_grad_() for w in want]
    cots_dev = [c.detach().to(DEVICE, dtype).requires_grad_() for c in cots_ref]
    gr = torch.autograd.grad(want, _leaves(ref, case), cots_ref, create_graph=True, allow_unused=True)
    gd = torch.autograd.grad(got, _leaves(dev, case), cots_dev, create_graph=True, allow_unused=True)
    for name, a, b in zip(case.diff, gd, gr):
        assert (a is None) == (b is None), f"{case}: d/d{name} present on one side only"
        if b is not None:
            assert rel_err(a.double().cpu(), b) <= tol, f"{case}: d/d{name} {rel_err(a.double().cpu(), b):.2e}"
    # second order: gradient of a random projection of the first-order gradients
    pairs = [(a, b) for a, b in zip(gd, gr) if b is not None and b.requires_grad]
    if not pairs:
        return
    vs = [torch.randn(b.shape, generator=g, dtype=F64) for _, b in pairs]
    s_ref = sum((b * v).sum() for (_, b), v in zip(pairs, vs))
    s_dev = sum((a * v.to(DEVICE, dtype)).sum() for (a, _), v in zip(pairs, vs))
    wrt_ref, wrt_dev = _leaves(ref, case) + cots_ref, _leaves(dev, case) + cots_dev
    hr = torch.autograd.grad(s_ref, wrt_ref, allow_unused=True)
    hd = torch.autograd.grad(s_dev, wrt_dev, allow_unused=True)
    names = list(case.diff) + [f"cotangent{i}" for i in range(len(cots_ref))]
    for name, a, b in zip(names, hd, hr):
        if b is None or not b.abs().sum():
            assert a is None or not a.abs().sum(), f"{case}: 2nd order d/d{name} should vanish"
            continue
        assert a is not None, f"{case}: 2nd order d/d{name} missing"
        assert rel_err(a.double().cpu(), b) <= tol, f"{case}: 2nd order d/d{name} {rel_err(a.double().cpu(), b):.2e}"


GRADCHECK = [c for c in CASES if c.small and ("T1" in c.name or "strided" in c.name or "L3" in c.name
                                              or "meta_objective" in c.name)]


@pytest.mark.skipif(not ON_GPU, reason="gradcheck of the compiled kernels needs a GPU (interpreted: per-op tests)")
@pytest.mark.parametrize("case", GRADCHECK, ids=repr)
def test_gradcheck_and_gradgradcheck_on_device(case):
    _, dev = _inputs(case, 3, F64)
    leaves = _leaves(dev, case)

    def f(*ts):
        x = dict(dev)
        x.update(zip(case.diff, ts))
        return _as_tuple(case.fn(x, "triton"))
    assert torch.autograd.gradcheck(f, leaves)
    assert torch.autograd.gradgradcheck(f, leaves)


def _theta_layers(dtype, device, Ps=(7, 33, 3), D=5, seed=4):
    g = torch.Generator().manual_seed(seed)
    out = []
    for P in Ps:
        out.append((_r(g, P, D).to(device, dtype), _r(g, P).to(device, dtype), _r(g, D).to(device, dtype),
                    _r(g, 3, P).to(device, dtype)))
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_graph_free_ops(dtype):
    """The ops without a graph (generate, theta backward, advantages, metrics, finiteness)."""
    tol = TOL[dtype]
    ref_layers, dev_layers = _theta_layers(F64, "cpu"), _theta_layers(dtype, DEVICE)
    cols = lambda layers, i: [lay[i] for lay in layers]  # noqa: E731
    want = fused_ops.wlinear_generate(cols(ref_layers, 0), cols(ref_layers, 1), cols(ref_layers, 2), backend="torch")
    got = fused_ops.wlinear_generate(cols(dev_layers, 0), cols(dev_layers, 1), cols(dev_layers, 2), backend="triton")
    for a, b in zip(got, want):
        assert rel_err(a.double().cpu(), b) <= tol
    for layers, be in ((ref_layers, "torch"), (dev_layers, "triton")):
        for W, b, z, _ in layers:
            for t in (W, b, z):
                t.requires_grad_(True)
                t.grad = None
        fused_ops.wlinear_theta_backward_many(cols(layers, 0), cols(layers, 1), cols(layers, 2),
                                        [layers[0][3], None, layers[2][3][0]], backend=be)
        W, b, z, dth = layers[1]
        fused_ops.wlinear_theta_backward(W, b, z, dth, backend=be)
        fused_ops.wlinear_theta_backward(W, b, z, dth[1], backend=be)          # accumulates into .grad
    for lr, ld in zip(ref_layers, dev_layers):
        for tr, td in zip(lr[:3], ld[:3]):
            assert rel_err(td.grad.double().cpu(), tr.grad) <= tol
    g = torch.Generator().manual_seed(5)
    four = [_r(g, 3, 37) for _ in range(4)]
    four[1] = four[1].abs()
    adv = fused_ops.bootstrap_advantage(*[t.to(DEVICE, dtype) for t in four], backend="triton")
    assert rel_err(adv.double().cpu(), four[0] + four[1] * four[2] - four[3]) <= tol
    margs = [_r(g, 3), _r(g, 3), _r(g, 3), _r(g, 3), _r(g, 3, 37), _r(g, 3, 37).exp(), _r(g, 4, 3), _r(g, 6, 3),
             _r(g), [_r(g), _r(g)]]
    to_dev = lambda a: [x.to(DEVICE, dtype) for x in a] if isinstance(a, list) else a.to(DEVICE, dtype)  # noqa: E731
    want = fused_ops.step_metrics(*margs, backend="torch")
    got = fused_ops.step_metrics(*[to_dev(a) for a in margs], backend="triton")
    assert rel_err(got.double().cpu(), want) <= tol
    ts = [_r(g, 3, 5).to(DEVICE, dtype) for _ in range(9)]
    assert ops.all_finite(ts, backend="triton") is True
    ts[8][2, 1] = float("nan")
    assert ops.all_finite(ts, backend="triton") is False
    ts[8][2, 1] = float("-inf")
    assert ops.all_finite(ts, backend="triton") is False
