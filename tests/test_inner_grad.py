"""`macaw_fast.inner_grad.value_inner_grads` against autograd (create_graph) in float64: the inner
losses and gradients, and its hand-written Hessian-vector product, with every cotangent pattern."""

from __future__ import annotations

import pytest
import torch

from macaw_fast.inner_grad import value_inner_grads
from macaw_fast.nets import mlp_forward

from helpers import rel_err


def _problem(dims, T, B, seed):
    g = torch.Generator().manual_seed(seed)
    thetas = [(torch.randn(i * o + o, generator=g, dtype=torch.float64) / i ** 0.5).requires_grad_(True)
              for i, o in dims]
    obs = torch.randn(T, B, dims[0][0], generator=g, dtype=torch.float64)
    ret = torch.randn(T, B, generator=g, dtype=torch.float64)
    return thetas, obs, ret


def _autograd(thetas, dims, obs, ret):
    T = obs.shape[0]
    per_task = [th.expand(T, -1) for th in thetas]
    layer_dims = [dims[0][0]] + [o for _, o in dims]
    v = mlp_forward(per_task, layer_dims, obs).squeeze(-1)
    loss = (v - ret).pow(2).mean(-1)
    return loss, list(torch.autograd.grad(loss.sum(), per_task, create_graph=True))


DIMS = [[(3, 1)], [(5, 4), (4, 1)], [(20, 100), (100, 100), (100, 100), (100, 1)], [(2, 7), (7, 1), (1, 3), (3, 1)]]


@pytest.mark.parametrize("dims", DIMS, ids=lambda d: "-".join(f"{i}x{o}" for i, o in d))
@pytest.mark.parametrize("T,B", [(1, 2), (5, 9), (3, 256)])
def test_forward_and_hessian_vector_product_match_autograd(dims, T, B):
    thetas, obs, ret = _problem(dims, T, B, seed=T * 100 + B)
    loss_a, grads_a = _autograd(thetas, dims, obs, ret)
    loss_m, grads_m = value_inner_grads(thetas, dims, obs, ret)
    assert rel_err(loss_m.detach(), loss_a.detach()) <= 1e-12
    for a, m in zip(grads_a, grads_m):
        assert m.shape == a.shape and rel_err(m.detach(), a.detach()) <= 1e-12
    g = torch.Generator().manual_seed(7)
    # cotangents on every output, on some only, and on the losses too
    patterns = [[True] * len(dims), [k % 2 == 0 for k in range(len(dims))], [False] * (len(dims) - 1) + [True]]
    for use in patterns:
        for with_loss in (False, True):
            cot = [torch.randn(a.shape, generator=g, dtype=torch.float64) for a in grads_a]
            cl = torch.randn(T, generator=g, dtype=torch.float64)
            outs_a = [a for a, u in zip(grads_a, use) if u] + ([loss_a] if with_loss else [])
            outs_m = [m for m, u in zip(grads_m, use) if u] + ([loss_m] if with_loss else [])
            cots = [c for c, u in zip(cot, use) if u] + ([cl] if with_loss else [])
            want = torch.autograd.grad(outs_a, thetas, cots, retain_graph=True, allow_unused=True)
            got = torch.autograd.grad(outs_m, thetas, cots, retain_graph=True, allow_unused=True)
            for k, (w, h) in enumerate(zip(want, got)):
                w = torch.zeros_like(thetas[k]) if w is None else w
                assert rel_err(h, w) <= 1e-11 or (w.norm() == 0 and h.norm() < 1e-14), (k, use, with_loss)


def test_only_first_order_and_bad_input():
    dims = [(3, 4), (4, 1)]
    thetas, obs, ret = _problem(dims, 2, 5, seed=1)
    _, grads = value_inner_grads(thetas, dims, obs, ret)
    (dth,) = torch.autograd.grad(grads[0].pow(2).sum(), [thetas[0]], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        dth.sum().backward()
    with pytest.raises(ValueError, match="theta 1 has shape"):
        value_inner_grads([thetas[0], thetas[1][:-1]], dims, obs, ret)
    with pytest.raises(ValueError, match="one output"):
        value_inner_grads(thetas, [(3, 4), (4, 2)], obs, ret)
    with pytest.raises(ValueError, match="must not require gradients"):
        value_inner_grads(thetas, dims, obs.requires_grad_(True), ret)
