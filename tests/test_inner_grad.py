"""`macaw_fast.backends.inner_grad.value_inner_grads` against autograd (create_graph) in float64: the inner
losses and gradients, and its hand-written Hessian-vector product, with every cotangent pattern."""

from __future__ import annotations

import pytest
import torch

from macaw_fast.backends import TorchBackend
from macaw_fast.backends.inner_grad import policy_inner_grads, value_inner_grads
from macaw_fast.nets import mlp_forward

from helpers import random_batch, rel_err


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


def _policy_problem(head: bool, T: int, B: int, seed: int, width=6, depth=2, act=3, obs=4, head_width=5):
    from helpers import make_learner
    from macaw_fast.nets import advantage_weights

    learner = make_learner(obs, act, n_train=7, seed=seed, net_width=width, net_depth=depth, wlinear_dim=4,
                           head_width=head_width, advantage_head=head)
    g = torch.Generator().manual_seed(seed)
    batch = random_batch(T, B, obs, act, seed=seed)
    adv = torch.randn(T, B, generator=g, dtype=torch.float64)
    weights = advantage_weights(adv, 1.0, 20.0)
    thetas = [layer.theta().detach().requires_grad_(True) for layer in learner.policy.layers]
    kappa = learner.head_weight().detach().requires_grad_(True)
    return learner, batch, adv, weights, thetas, kappa


@pytest.mark.parametrize("head", [True, False], ids=["head", "no-head"])
@pytest.mark.parametrize("T,B,depth", [(1, 3, 2), (4, 7, 3), (2, 16, 1)])
@pytest.mark.parametrize("all_layers", [False, True], ids=["trunk-grads", "all-grads"])
def test_policy_inner_grads_match_autograd(head, T, B, depth, all_layers):
    learner, batch, adv, weights, thetas, kappa = _policy_problem(head, T, B, seed=T + 10 * B + depth,
                                                                  depth=depth)
    n_trunk = learner.policy.num_trunk_layers
    n = len(thetas) if all_layers else n_trunk
    per_task = [th.expand(T, -1) for th in thetas]
    loss_a = TorchBackend().policy_inner_loss(learner.policy, per_task, batch, adv, weights,
                                              kappa if head else None, learner.config)
    grads_a = torch.autograd.grad(loss_a.sum(), per_task[:n], create_graph=True)
    hd = learner.policy.head.layer_dims() if head else ()
    loss_m, grads_m = policy_inner_grads(thetas, learner.policy.trunk.layer_dims(), hd, batch.obs, batch.action,
                                         adv, weights, learner.config.action_sigma, kappa if head else None, n)
    assert rel_err(loss_m.detach(), loss_a.detach()) <= 1e-12
    assert len(grads_m) == n
    for a, m in zip(grads_a, grads_m):
        assert rel_err(m.detach(), a.detach()) <= 1e-12
    wrt = thetas + ([kappa] if head else [])
    g = torch.Generator().manual_seed(3)
    for use in ([True] * n, [k % 2 == 1 for k in range(n)], [k == 0 for k in range(n)]):
        for with_loss in (False, True):
            cot = [torch.randn(a.shape, generator=g, dtype=torch.float64) for a in grads_a]
            cl = torch.randn(T, generator=g, dtype=torch.float64)
            pick = lambda xs: [x for x, u in zip(xs, use) if u]       # noqa: E731
            outs_a = pick(grads_a) + ([loss_a] if with_loss else [])
            outs_m = pick(grads_m) + ([loss_m] if with_loss else [])
            cots = pick(cot) + ([cl] if with_loss else [])
            want = torch.autograd.grad(outs_a, wrt, cots, retain_graph=True, allow_unused=True)
            got = torch.autograd.grad(outs_m, wrt, cots, retain_graph=True, allow_unused=True)
            for k, (w, h) in enumerate(zip(want, got)):
                w = torch.zeros_like(wrt[k]) if w is None else w
                h = torch.zeros_like(wrt[k]) if h is None else h
                assert rel_err(h, w) <= 1e-10 or (w.norm() == 0 and h.norm() < 1e-14), (k, use, with_loss)


def test_policy_inner_grads_bad_input():
    learner, batch, adv, weights, thetas, kappa = _policy_problem(True, 2, 5, seed=1)
    td, hd = learner.policy.trunk.layer_dims(), learner.policy.head.layer_dims()
    args = (batch.obs, batch.action, adv, weights, 0.2)
    with pytest.raises(ValueError, match="theta 2 has shape"):
        policy_inner_grads(thetas[:2] + [thetas[2][:-1]] + thetas[3:], td, hd, *args, kappa, 3)
    with pytest.raises(ValueError, match="n_grads must be in"):
        policy_inner_grads(thetas, td, hd, *args, kappa, 0)
    with pytest.raises(ValueError, match="head_weight"):
        policy_inner_grads(thetas, td, hd, *args, None, 3)
    with pytest.raises(ValueError, match="adv must not require"):
        policy_inner_grads(thetas, td, hd, batch.obs, batch.action, adv.requires_grad_(True), weights, 0.2, kappa, 3)
