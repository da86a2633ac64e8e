"""The ops composed into a MACAW-style policy meta-gradient, and the package's dispatch/probe.

The meta-gradient (through the inner step, full second order) built from the ops must equal the
one built from plain autograd with explicit per-task copies of every W, in float64.
"""

import math
import subprocess
import sys

import pytest
import torch

import macaw_fast.ops as ops
from macaw_fast.ops._common import interpreter_requested, triton_importable
from macaw_fast.ops.awr_loss import awr_loss_reference
from macaw_fast.ops.batched_linear import batched_linear_reference
from macaw_fast.ops.wlinear_adapt import wlinear_adapt_reference

F64 = torch.float64


def policy_params(obs, act, width, head, D, seed=0):
    """Weight-transform layers (z, W, b) of a policy trunk [obs, width, width, act] and head."""
    g = torch.Generator().manual_seed(seed)
    dims = [(obs, width), (width, width), (width, act), (width + act, head), (head, 1)]
    layers = []
    for i, o in dims:
        P = i * o + o
        layers.append([(torch.randn(D, generator=g, dtype=F64) / o),
                       torch.randn(P, D, generator=g, dtype=F64) / D**0.5,
                       torch.randn(P, generator=g, dtype=F64) * 0.1])
    for layer in layers:
        for t in layer:
            t.requires_grad_()
    return dims, layers


def meta_gradient(lin, cat_lin, loss_fn, adapt, dims, layers, rho, kappa, inner, outer):
    """Sum over tasks of the outer AWR loss after one inner step of the trunk (docs/algorithm.md §4)."""
    obs_in, act_in, adv_in, obs_out, act_out, adv_out = inner + outer
    T = obs_in.shape[0]
    thetas = [W @ z + b for z, W, b in layers]
    per_task = [th.expand(T, -1) for th in thetas]
    h = lin(obs_in, per_task[0], dims[0][1], False)
    h = lin(h, per_task[1], dims[1][1], True)            # last hidden pre-activation
    mu = lin(h, per_task[2], dims[2][1], True).tanh()
    a1 = cat_lin(h, act_in, per_task[3], dims[3][1])
    pred = lin(a1, per_task[4], 1, True).squeeze(-1)
    hw = torch.nn.functional.softplus(kappa)
    loss_in = loss_fn(mu, act_in, adv_in, pred, hw)
    grads = torch.autograd.grad(loss_in.sum(), per_task[:3], create_graph=True)
    rates = torch.nn.functional.softplus(rho)
    new = [adapt(layers[k][1], layers[k][2], layers[k][0], grads[k], rates[k]) for k in range(3)]
    h = lin(obs_out, new[0], dims[0][1], False)
    h = lin(h, new[1], dims[1][1], True)
    mu = lin(h, new[2], dims[2][1], True).tanh()
    loss_out = loss_fn(mu, act_out, adv_out, None, None).sum() / 7.0
    params = [t for layer in layers for t in layer] + [rho, kappa]
    return torch.autograd.grad(loss_out, params, allow_unused=True)


@pytest.mark.parametrize("T,N", [(1, 3), (3, 19)])
def test_meta_gradient_equals_per_task_copy_reference(backend, T, N):
    obs, act, width, head, D = 4, 2, 6, 5, 3
    dims, layers = policy_params(obs, act, width, head, D)
    rho = torch.full((5, 3), math.log(0.05), dtype=F64, requires_grad=True)
    kappa = torch.tensor(math.log(0.01), dtype=F64, requires_grad=True)
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    inner = [r(T, N, obs), r(T, N, act).clamp(-1, 1), r(T, N)]
    outer = [r(T, N, obs), r(T, N, act).clamp(-1, 1), r(T, N)]

    got = meta_gradient(
        lambda x, th, o, ir: ops.batched_linear(x, th, o, in_relu=ir, backend=backend),
        lambda h, a, th, o: ops.concat_relu_linear(h, a, th, o, backend=backend),
        lambda mu, a, adv, p, hw: ops.awr_loss(mu, a, adv, pred=p, head_weight=hw, backend=backend),
        lambda W, b, z, G, rt: ops.wlinear_adapt(W, b, z, G, rt, backend=backend),
        dims, layers, rho, kappa, inner, outer)
    want = meta_gradient(
        lambda x, th, o, ir: batched_linear_reference(x, th, o, ir),
        lambda h, a, th, o: batched_linear_reference(h, th, o, a=a),
        lambda mu, a, adv, p, hw: awr_loss_reference(mu, a, adv, pred=p, head_weight=hw),
        wlinear_adapt_reference, dims, layers, rho, kappa, inner, outer)
    assert got[-1] is not None and want[-1] is not None   # kappa gets gradient only via 2nd order
    assert want[-1].abs() > 0
    for a, b in zip(got, want):
        assert a is not None and b is not None
        scale = b.abs().max().clamp_min(1e-30)
        assert ((a - b).abs().max() / scale) <= 1e-10


def test_available_reports_torch_and_auto_choice():
    info = ops.available()
    assert info["torch"] is True
    assert info["auto_cpu"] == ("triton" if interpreter_requested() and triton_importable() else "torch")
    if not torch.cuda.is_available():
        assert info["triton_cuda"] != True  # noqa: E712 - must be a reason string here


def test_package_works_without_triton():
    """Importing and running the ops must not need triton (blocked from import in a subprocess)."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, macaw_fast.ops as ops\n"
        "x = torch.randn(2, 3, 4); th = torch.randn(2, 4 * 2 + 2)\n"
        "assert ops.batched_linear(x, th, 2).shape == (2, 3, 2)\n"
        "info = ops.available(); assert info['torch'] is True, info\n"
        "assert 'not installed' in info['triton_interpreter'], info\n"
        "try:\n"
        "    ops.batched_linear(x, th, 2, backend='triton')\n"
        "except RuntimeError as e:\n"
        "    assert 'TRITON_INTERPRET' in str(e) or 'triton' in str(e)\n"
        "else:\n"
        "    raise SystemExit('expected an error')\n"
        "print('ok')\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout


@pytest.mark.triton
def test_triton_backend_runs_its_backward_kernels(monkeypatch):
    """With backend='triton' the first-order backward of every op is the Triton one (no silent
    fall-back to the torch twin), and its result equals the twin's."""
    if not (interpreter_requested() and triton_importable()):
        pytest.skip("needs TRITON_INTERPRET=1 and triton")
    import importlib   # (``import a.b as m`` would give the function that shares the module's name)
    m_awr, m_lin, m_adapt = (importlib.import_module(f"macaw_fast.ops.{n}")
                             for n in ("awr_loss", "batched_linear", "wlinear_adapt"))
    calls = []
    for mod in (m_awr, m_lin, m_adapt):
        orig = mod._backward_triton
        monkeypatch.setattr(mod, "_backward_triton",
                            lambda *a, _o=orig, _m=mod.__name__: (calls.append(_m), _o(*a))[1])
    g = torch.Generator().manual_seed(5)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64).requires_grad_()  # noqa: E731
    x, th, W, b, z, G, rates = r(2, 5, 3), r(2, 3 * 2 + 2), r(8, 4), r(8), r(4), r(2, 8), r(3)
    mu, act, adv = r(2, 5, 2), r(2, 5, 2), r(2, 5).detach()
    for be in ("triton", "torch"):
        y = ops.batched_linear(x, th, 2, in_relu=True, backend=be)
        t1, t2 = ops.wlinear_adapt(W, b, z, G, rates, 0.9, backend=be)
        loss = ops.awr_loss(mu, act, adv, backend=be)
        grads = torch.autograd.grad(y.sum() + t1.pow(2).sum() + t2.sum() + loss.sum(),
                                    (x, th, W, b, z, G, rates, mu, act))
        if be == "triton":
            got = grads
            assert sorted(set(calls)) == sorted({m_awr.__name__, m_lin.__name__, m_adapt.__name__})
    for a, c in zip(got, grads):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)
