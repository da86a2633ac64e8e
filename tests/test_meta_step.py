"""The batched meta-step against the per-task reference loop (float64, relative error <= 1e-10)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from macaw_fast import MetaLearner
from macaw_fast.backends.cpu import CpuBackend
from macaw_fast.nets import WLinear
from macaw_fast.reference import reference_backward, reference_meta_loss

from helpers import grads_of, make_learner, param_names, random_batch, rel_err

TOL = 1e-10

CASES = [
    # T, obs, act, width, depth, D, head_width, B
    (1, 7, 3, 16, 2, 8, 5, 11),
    (2, 5, 1, 9, 1, 6, 4, 7),
    (5, 20, 6, 24, 3, 10, 8, 16),
    (5, 3, 2, 1, 2, 4, 1, 5),      # hidden width 1
    (3, 6, 2, 40, 2, 9, 4, 6),     # P = 1640 >= 1024: the adapt node's W products are compiled kernels
    (9, 6, 2, 40, 2, 9, 4, 6),     # ... and wlinear_right's task-vector tiles (8 float64 tasks + 1)
]


@pytest.mark.parametrize("T,obs,act,width,depth,D,hw,B", CASES)
@pytest.mark.parametrize("wlinear,head", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("backend", ["torch", "cpu", "fused"], ids=["torch", "cpu", "fused-torch"])
def test_meta_gradient_matches_reference(T, obs, act, width, depth, D, hw, B, wlinear, head, backend):
    learner = make_learner(obs, act, n_train=T + 4, seed=T + width, net_width=width, net_depth=depth,
                           wlinear_dim=D, head_width=hw, wlinear=wlinear, advantage_head=head,
                           backend=backend, ops_backend="torch")
    inner = random_batch(T, B, obs, act, seed=1)
    outer = random_batch(T, B, obs, act, seed=2)

    loss, _ = learner.meta_loss(inner, outer)
    loss.backward()
    batched = grads_of(learner)

    learner.optimizer.zero_grad(set_to_none=True)
    ref_loss = reference_meta_loss(learner, inner, outer)
    ref_loss.backward()
    reference = grads_of(learner)

    assert abs(loss.item() - ref_loss.item()) <= TOL * abs(ref_loss.item())
    for name, a, b in zip(param_names(learner), batched, reference):
        assert a.shape == b.shape, name
        if b.norm() == 0:   # e.g. kappa without a head
            assert a.norm() == 0, name
            continue
        assert rel_err(a, b) <= TOL, f"{name}: relative error {rel_err(a, b):.3e}"
    # every trained tensor really receives a gradient (kappa only with the head); a width-1 net
    # can legitimately have all its ReLUs off, so only check the others
    if width > 1:
        nonzero = {n for n, g in zip(param_names(learner), reference) if g.norm() > 0}
        assert ("adv_coef" in nonzero) == head
        assert {"vf_lrs", "policy_lrs"} <= nonzero


def test_paper_style_per_task_backward_matches():
    learner = make_learner(6, 2, n_train=11, net_width=12, net_depth=2, wlinear_dim=7, head_width=4)
    inner, outer = random_batch(3, 9, 6, 2, seed=5), random_batch(3, 9, 6, 2, seed=6)
    loss, _ = learner.meta_loss(inner, outer)
    loss.backward()
    batched = grads_of(learner)
    learner.optimizer.zero_grad(set_to_none=True)
    value = reference_backward(learner, inner, outer)
    assert abs(value - loss.item()) <= TOL * abs(loss.item())
    for name, a, b in zip(param_names(learner), batched, grads_of(learner)):
        assert rel_err(a, b) <= TOL, name


@pytest.mark.parametrize("wlinear", [True, False])
def test_parameters_after_meta_step_match_reference(wlinear):
    learner = make_learner(5, 2, n_train=4, net_width=10, net_depth=2, wlinear_dim=6, head_width=3, wlinear=wlinear)
    twin = MetaLearner.from_state_dict(copy.deepcopy(learner.state_dict()))
    inner, outer = random_batch(2, 8, 5, 2, seed=3), random_batch(2, 8, 5, 2, seed=4)
    for _ in range(3):   # several steps, so Adam's moments matter
        learner.meta_step(inner, outer)
        twin.optimizer.zero_grad(set_to_none=True)
        reference_backward(twin, inner, outer)
        twin.optimizer.step()
    for name, a, b in zip(param_names(learner), learner.parameters(), twin.parameters()):
        assert rel_err(a.detach(), b.detach()) <= TOL, name
    # and the step changed every group
    fresh = make_learner(5, 2, n_train=4, net_width=10, net_depth=2, wlinear_dim=6, head_width=3, wlinear=wlinear)
    for a, b in zip(learner.parameters(), fresh.parameters()):
        assert not torch.equal(a, b)


def test_adapt_matches_per_task_sgd():
    """adapt(): every layer's adapted generated parameters (head included) equal explicit per-task SGD."""
    from macaw_fast.nets import advantage_weights, gaussian_log_prob

    learner = make_learner(4, 2, n_train=3, net_width=8, net_depth=2, wlinear_dim=5, head_width=3)
    batch = random_batch(3, 10, 4, 2, seed=7)
    adapted = learner.adapt(batch)
    c = learner.config
    for i in range(3):
        one = batch.task(i)
        # value: explicit SGD on (z, W, b) of a deep copy
        vf = copy.deepcopy(learner.vf)
        v = vf.forward_thetas(vf.thetas(), one.obs)
        grads = torch.autograd.grad((v - one.mc_return).pow(2).mean(), list(vf.parameters()))
        rates = learner.value_rates().detach()
        with torch.no_grad():
            for k, layer in enumerate(vf.layers):
                for j, name in enumerate(layer.tensor_names):
                    p = getattr(layer, name)
                    p -= rates[k, j] * grads[[q is p for q in vf.parameters()].index(True)]
            for k, layer in enumerate(vf.layers):
                assert rel_err(adapted.value[k][i], layer.theta()) <= TOL
        # policy, from advantages of the adapted value function
        with torch.no_grad():
            vals = vf.forward_thetas(vf.thetas(), torch.cat([one.terminal_obs, one.obs], 1))
            adv = one.mc_return + one.terminal_discount * vals[:, :10] - vals[:, 10:]
        w = advantage_weights(adv, c.adaptation_temp, c.exp_advantage_clip)
        pol = copy.deepcopy(learner.policy)
        mu, h = pol.mean(pol.trunk.thetas(), one.obs, return_hidden=True)
        loss = (-w * gaussian_log_prob(one.action, mu, c.action_sigma)).mean()
        loss = loss + learner.head_weight().detach() * (pol.advantage(pol.head.thetas(), h, one.action) - adv).pow(2).mean()
        params = list(pol.parameters())
        grads = torch.autograd.grad(loss, params)
        rates = learner.policy_rates().detach()
        with torch.no_grad():
            for k, layer in enumerate(pol.layers):
                for j, name in enumerate(layer.tensor_names):
                    p = getattr(layer, name)
                    p -= rates[k, j] * grads[[q is p for q in params].index(True)]
            for k, layer in enumerate(pol.layers):
                assert rel_err(adapted.policy[k][i], layer.theta()) <= TOL, k


@pytest.mark.parametrize("alpha", [None, 0.3])
@pytest.mark.parametrize("T,dims,D", [(1, [(3, 4), (4, 1)], 5), (4, [(6, 5), (5, 5), (5, 2)], 3),
                                      (3, [(40, 30), (30, 40), (40, 1)], 9),    # P >= 1024: compiled products
                                      (9, [(40, 30), (30, 40), (40, 1)], 9)])   # ... with task-vector tiles
def test_adapt_many_matches_per_layer_adapt(T, dims, D, alpha):
    """backends.lowrank.adapt_many (one node, hand-written backward) against the cpu backend's adapt
    layer by layer: outputs, target mixes, and the gradients of z, b, G, the rates and W (its gathered
    factors), with random cotangents, one layer's output unused (a None cotangent) and G entering
    the loss twice."""
    from macaw_fast.backends import lowrank

    torch.manual_seed(T + len(dims))
    layers = [WLinear(i, o, D, dtype=torch.float64) for i, o in dims]
    rates = (torch.rand(len(dims), 3, dtype=torch.float64) + 0.1).requires_grad_(True)

    def run(many):
        accs = [lowrank.WGradGatherer() for _ in layers]
        thetas = [lowrank.generate(m, acc) for m, acc in zip(layers, accs)]
        gs = [torch.randn(T, m.num_generated, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
              .requires_grad_(True) for k, m in enumerate(layers)]
        if many:
            out = lowrank.adapt_many(layers, thetas, accs, gs, rates, alpha)
        else:
            per = [lowrank.adapt(m, th, acc, g, rates[k], alpha)
                   for k, (m, th, acc, g) in enumerate(zip(layers, thetas, accs, gs))]
            out = ([p[0] for p in per], [p[1] for p in per]) if alpha is not None else per
        new, tgt = out if alpha is not None else (out, None)
        cot = [torch.randn(th.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(50 + k))
               for k, th in enumerate(new)]
        # the last layer's output is unused; the first G also enters the loss directly
        loss = sum((c * th).sum() for c, th in zip(cot[:-1], new[:-1])) + gs[0].pow(2).sum() \
            + sum(th.sum() for th in thetas)
        for p in [*(q for m in layers for q in m.parameters()), rates, *gs]:
            p.grad = None
        loss.backward()
        res = [p.grad for m in layers for p in m.parameters()] + [rates.grad] + [g.grad for g in gs]
        assert sum(r is None for r in res) == 1 and gs[-1].grad is None    # only the unused layer's G
        res = [r.clone() for r in res if r is not None]
        return [t.detach() for t in new], ([t.detach() for t in tgt] if tgt is not None else []), res

    new_a, tgt_a, res_a = run(True)
    new_b, tgt_b, res_b = run(False)
    for a, b in zip(new_a + tgt_a, new_b + tgt_b):
        assert rel_err(a, b) <= 1e-13
    assert len(tgt_a) == (len(dims) if alpha is not None else 0)
    for a, b in zip(res_a, res_b):
        assert rel_err(a, b) <= 1e-13


def test_init_statistics():
    """z ~ N(0, (1/out)^2); W, b like nn.Linear(D, P): U(-1/sqrt(D), 1/sqrt(D))."""
    from macaw_fast.nets import WLinear

    torch.manual_seed(0)
    D = 100
    layer = WLinear(50, 4, D, dtype=torch.float64)       # out = 4: z std 0.25
    zs = torch.stack([WLinear(3, 4, D, dtype=torch.float64).z for _ in range(200)]).detach()
    assert abs(zs.std().item() - 0.25) < 0.01           # 20,000 samples: std error ~0.0013
    assert abs(zs.mean().item()) < 0.01
    bound = 1 / D ** 0.5
    W = layer.weight.detach()
    assert W.shape == (50 * 4 + 4, D) and layer.bias.shape == (204,)
    assert W.abs().max().item() <= bound and layer.bias.abs().max().item() <= bound
    assert abs(W.std().item() - bound / 3 ** 0.5) < 0.002  # uniform std = bound / sqrt(3)
    assert W.abs().max().item() > 0.99 * bound


def test_config_defaults_are_the_papers():
    from macaw_fast import MacawConfig

    c = MacawConfig()
    assert (c.net_width, c.net_depth, c.wlinear_dim) == (100, 3, 100)
    assert (c.outer_value_lr, c.outer_policy_lr, c.lrlr) == (1e-5, 1e-4, 1e-3)
    assert (c.inner_value_lr, c.inner_policy_lr, c.advantage_head_coef) == (1e-3, 1e-3, 0.01)
    assert (c.target_vf_alpha, c.action_sigma, c.exp_advantage_clip) == (0.9, 0.2, 20.0)
    learner = MetaLearner(20, 6, 35, dtype=torch.float64)
    assert learner.vf_lrs.shape == (4, 3) and learner.policy_lrs.shape == (6, 3)
    # softplus(log x) = log(1 + x)
    assert (learner.value_rates() - math.log1p(1e-3)).abs().max() < 1e-15
    assert (learner.policy_rates() - math.log1p(1e-3)).abs().max() < 1e-15
    assert abs(learner.head_weight().item() - math.log1p(0.01)) < 1e-15
    groups = {g["name"]: g["lr"] for g in learner.optimizer.param_groups}
    assert groups == {"value": 1e-5, "policy": 1e-4, "lrs": 1e-3}


def _reference_step(obs, act, kw, inner, outer):
    """A learner made from ``kw`` after one step of the per-task reference loop (Adam included), the
    loop's meta-gradients, and a fresh twin's `meta_loss` metrics."""
    ref = make_learner(obs, act, **kw)
    reference_backward(ref, inner, outer)
    reference = grads_of(ref)
    ref.optimizer.step()
    _, metrics_ref = make_learner(obs, act, **kw).meta_loss(inner, outer)
    return ref, reference, metrics_ref


@pytest.mark.parametrize("wlinear,head", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("backend,lowrank", [("torch", False), ("cpu", False), ("cpu", True), ("fused", False)],
                         ids=["torch", "cpu", "cpu-lowrank-adam", "fused-torch"])
def test_chunked_meta_step_matches_unchunked_and_reference(wlinear, head, backend, lowrank):
    """meta_step's backward per chunk of tasks: same meta-gradient, parameters and metrics.

    With the low-rank Adam (the default), WLinear weights never get a dense ``.grad``: their
    meta-gradient is checked through the parameters after Adam, every other tensor's directly."""
    T, B, obs, act = 5, 9, 6, 2
    kw = dict(n_train=11, net_width=12, net_depth=2, wlinear_dim=7, head_width=4, wlinear=wlinear,
              advantage_head=head, ops_backend="torch")
    inner, outer = random_batch(T, B, obs, act, seed=5), random_batch(T, B, obs, act, seed=6)
    ref, reference, metrics_ref = _reference_step(obs, act, kw, inner, outer)

    for chunk in (T, 1, 2, 3, "auto"):
        learner = make_learner(obs, act, **kw, backend=CpuBackend(lowrank_adam=lowrank) if backend == "cpu" else backend)
        metrics = learner.meta_step(inner, outer, chunk_size=chunk)
        assert learner.resolve_chunk_size(T, chunk) == (T if chunk == "auto" else chunk)
        wlinear_weights = {id(layer.weight) for net in (learner.vf, learner.policy) for layer in net.layers
                           if isinstance(layer, WLinear)}
        for name, p, a, b in zip(param_names(learner), learner.parameters(), grads_of(learner), reference):
            if lowrank and id(p) in wlinear_weights:
                assert p.grad is None, name        # updated from its factors, no dense gradient
                continue
            if b.norm() == 0:                       # .grad survives Adam
                assert a.norm() == 0, name
                continue
            assert rel_err(a, b) <= TOL, f"chunk {chunk}, {name}: relative error {rel_err(a, b):.3e}"
        for name, a, b in zip(param_names(learner), learner.parameters(), ref.parameters()):
            assert rel_err(a.detach(), b.detach()) <= TOL, f"chunk {chunk}, {name} after Adam"
        assert metrics.keys() == set(metrics_ref) | {"loss/meta"}
        for k, v in metrics_ref.items():
            assert abs(metrics[k] - v) <= 1e-12 * max(abs(v), 1e-300), (chunk, k)


@pytest.mark.parametrize("wlinear,head", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("lowrank", [False, True])
def test_nested_chunks_value_part_spans_two_policy_chunks(monkeypatch, wlinear, head, lowrank):
    """chunk_size 'auto' above AUTO_CHUNK_MAX tasks, unfused: the value part runs for two policy
    chunks at once (here, with the maximum patched to 2 tasks: value passes of 4 and 1 tasks, policy
    chunks of 2, 2 and 1). Same meta-gradient, parameters and metrics as the reference loop."""
    import macaw_fast.algorithm as algorithm_mod
    monkeypatch.setattr(algorithm_mod, "AUTO_CHUNK_MAX", 2)
    T, B, obs, act = 5, 9, 6, 2
    kw = dict(n_train=11, net_width=12, net_depth=2, wlinear_dim=7, head_width=4, wlinear=wlinear,
              advantage_head=head)
    inner, outer = random_batch(T, B, obs, act, seed=15), random_batch(T, B, obs, act, seed=16)
    ref, reference, metrics_ref = _reference_step(obs, act, kw, inner, outer)
    learner = make_learner(obs, act, **kw, backend=CpuBackend(lowrank_adam=lowrank))
    assert learner.resolve_chunk_size(T) == 2 and learner._value_chunk_size(T, 2, None) == 4
    calls = []
    value_part = learner._value_part
    monkeypatch.setattr(learner, "_value_part", lambda i, o, *a, **k: calls.append(i.num_tasks) or value_part(i, o, *a, **k))
    metrics = learner.meta_step(inner, outer)
    assert calls == [4, 1]
    wlinear_weights = {id(layer.weight) for net in (learner.vf, learner.policy) for layer in net.layers
                       if isinstance(layer, WLinear)}
    for name, p, a, b in zip(param_names(learner), learner.parameters(), grads_of(learner), reference):
        if lowrank and id(p) in wlinear_weights:
            continue                               # no dense W gradient: checked after Adam below
        assert rel_err(a, b) <= TOL, f"{name}: relative error {rel_err(a, b):.3e}"
    for name, a, b in zip(param_names(learner), learner.parameters(), ref.parameters()):
        assert rel_err(a.detach(), b.detach()) <= TOL, f"{name} after Adam"
    for k, v in metrics_ref.items():
        assert abs(metrics[k] - v) <= 1e-12 * max(abs(v), 1e-300), k
    # an explicit chunk size is a bound on every pass: no nesting
    assert learner._value_chunk_size(T, 2, 2) == 2


def test_chunked_meta_step_uneven_chunks_and_default():
    """7 tasks in chunks of 3 (3, 3, 1); the learner's chunk_size is the default of meta_step."""
    T, B, obs, act = 7, 6, 5, 3
    kw = dict(n_train=9, net_width=10, net_depth=3, wlinear_dim=6, head_width=3)
    inner, outer = random_batch(T, B, obs, act, seed=8), random_batch(T, B, obs, act, seed=9)
    ref = make_learner(obs, act, **kw)
    loss, _ = ref.meta_loss(inner, outer)
    loss.backward()
    whole = grads_of(ref)
    learner = make_learner(obs, act, **kw, backend=CpuBackend(lowrank_adam=False))   # keeps W's dense .grad
    learner.chunk_size = 3
    assert learner.resolve_chunk_size(T) == 3
    metrics = learner.meta_step(inner, outer)
    assert abs(metrics["loss/meta"] - loss.item()) <= TOL * abs(loss.item())
    for name, a, b in zip(param_names(learner), grads_of(learner), whole):
        assert rel_err(a, b) <= TOL, name


def test_chunk_size_resolution_and_errors():
    from macaw_fast.macaw import AUTO_CHUNK_MAX

    learner = make_learner(4, 2, n_train=3, net_width=4, net_depth=1, wlinear_dim=3, head_width=2)
    assert learner.resolve_chunk_size(1) == 1
    assert learner.resolve_chunk_size(AUTO_CHUNK_MAX) == AUTO_CHUNK_MAX
    # the fewest chunks of at most AUTO_CHUNK_MAX tasks, as equal as possible
    for T in (AUTO_CHUNK_MAX + 1, 35, 40, 3 * AUTO_CHUNK_MAX):
        cs = learner.resolve_chunk_size(T)
        n = -(-T // cs)
        assert cs <= AUTO_CHUNK_MAX and n == -(-T // AUTO_CHUNK_MAX) and n * cs - T < n
    assert learner.resolve_chunk_size(5, 100) == 5
    for bad in (0, -2, 1.5, "big", True):
        with pytest.raises(ValueError, match="chunk_size"):
            learner.resolve_chunk_size(5, bad)
        with pytest.raises(ValueError, match="chunk_size"):
            MetaLearner(4, 2, 3, chunk_size=bad)
