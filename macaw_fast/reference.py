"""The MACAW meta-loss as a plain loop over tasks with per-task parameter copies (docs/algorithm.md §4).

This is the oracle for tests and the baseline for benchmarks. It is written to be obviously
correct, not fast: for each task it copies every parameter tensor (z, W, b of every layer), takes
the inner step on the copies with ``torch.autograd.grad(create_graph=True)`` the way the paper's
code does with `higher`, builds the target value function as an explicit parameter-space mix of
the copies, and evaluates the outer losses with the adapted copies.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .data.batch import Batch
from .macaw import MetaLearner


def _layer_forward(params: dict, x: Tensor, in_f: int, out_f: int, wlinear: bool) -> Tensor:
    if wlinear:
        theta = params["weight"] @ params["z"] + params["bias"]
        weight = theta[: in_f * out_f].view(in_f, out_f)
        bias = theta[in_f * out_f:]
    else:
        weight, bias = params["weight"], params["bias"]
    return x @ weight + bias


def _mlp(layers: list, dims: list, x: Tensor, wlinear: bool):
    """Returns (output, last hidden layer's output before its ReLU)."""
    hidden = None
    for k, params in enumerate(layers):
        if k > 0:
            x = torch.relu(x)
        x = _layer_forward(params, x, dims[k], dims[k + 1], wlinear)
        if k == len(layers) - 2:
            hidden = x
    return x, hidden


def _copy(module_layers) -> list:
    """A fresh per-task copy of every parameter tensor (differentiable w.r.t. the originals)."""
    return [{name: getattr(layer, name).clone() for name in layer.tensor_names} for layer in module_layers]


def _sgd(layers: list, grads: list, rates: Tensor) -> list:
    return [{name: p[name] - rates[k, j] * g[name] for j, name in enumerate(p)}
            for k, (p, g) in enumerate(zip(layers, grads))]


def _grads(loss: Tensor, layers: list) -> list:
    flat = [p for layer in layers for p in layer.values()]
    g = iter(torch.autograd.grad(loss, flat, create_graph=True))
    return [{name: next(g) for name in layer} for layer in layers]


def _logp(action: Tensor, mean: Tensor, sigma: float) -> Tensor:
    dist = torch.distributions.Normal(mean, sigma)
    return dist.log_prob(action).sum(-1)


def _weights(adv: Tensor, temp: float, max_weight: float) -> Tensor:
    normalised = (adv - adv.mean()) / (adv.std() * temp)
    return torch.exp(torch.clamp(normalised, max=math.log(max_weight)))


def task_outer_losses(learner: MetaLearner, inner: Batch, outer: Batch, i: int) -> tuple[Tensor, Tensor]:
    """Task i's outer value loss and outer policy loss, through its own inner step."""
    c = learner.config
    wl = c.wlinear
    vdims = learner.vf.dims
    tdims = learner.policy.trunk.dims
    n_trunk = learner.policy.num_trunk_layers
    v_rates = F.softplus(learner.vf_lrs)
    p_rates = F.softplus(learner.policy_lrs)
    head_weight = F.softplus(learner.adv_coef)
    s_in, a_in = inner.obs[i], inner.action[i]
    s_out, a_out = outer.obs[i], outer.action[i]

    # ---- value function: one SGD step on the Monte-Carlo regression loss
    phi = _copy(learner.vf.layers)
    v = _mlp(phi, vdims, s_in, wl)[0].squeeze(-1)
    loss_v_in = ((v - inner.mc_return[i]) ** 2).mean()
    phi_new = _sgd(phi, _grads(loss_v_in, phi), v_rates)
    a = c.target_vf_alpha
    phi_tgt = [{name: a * p[name] + (1 - a) * q[name] for name in p} for p, q in zip(phi, phi_new)]

    def value(params, s):
        return _mlp(params, vdims, s, wl)[0].squeeze(-1)

    with torch.no_grad():
        target = outer.mc_return[i] + outer.terminal_discount[i] * value(phi_tgt, outer.terminal_obs[i])
    loss_v_out = ((value(phi_new, s_out) - target) ** 2).mean()

    # ---- policy: advantages from the adapted value function (no gradient into it)
    with torch.no_grad():
        adv_in = inner.mc_return[i] + inner.terminal_discount[i] * value(phi_new, inner.terminal_obs[i]) - value(phi_new, s_in)
        adv_out = outer.mc_return[i] + outer.terminal_discount[i] * value(phi_new, outer.terminal_obs[i]) - value(phi_new, s_out)
    w_in = _weights(adv_in, c.adaptation_temp, c.exp_advantage_clip)
    w_out = _weights(adv_out, c.adaptation_temp, c.exp_advantage_clip)

    theta = _copy(learner.policy.layers)
    out, hidden = _mlp(theta[:n_trunk], tdims, s_in, wl)
    loss_p_in = (-w_in * _logp(a_in, torch.tanh(out), c.action_sigma)).mean()
    if learner.policy.head is not None:
        head_in = torch.relu(torch.cat([hidden, a_in], dim=-1))
        pred = _mlp(theta[n_trunk:], learner.policy.head.dims, head_in, wl)[0].squeeze(-1)
        loss_p_in = loss_p_in + head_weight * ((pred - adv_in) ** 2).mean()
    theta_new = _sgd(theta, _grads(loss_p_in, theta), p_rates)
    mu_out = torch.tanh(_mlp(theta_new[:n_trunk], tdims, s_out, wl)[0])
    loss_p_out = (-w_out * _logp(a_out, mu_out, c.action_sigma)).mean()
    return loss_v_out, loss_p_out


def reference_meta_loss(learner: MetaLearner, inner: Batch, outer: Batch) -> Tensor:
    """Sum over tasks of the outer value and policy losses, divided by N_train (one graph)."""
    total = 0.0
    for i in range(inner.num_tasks):
        loss_v, loss_p = task_outer_losses(learner, inner, outer, i)
        total = total + loss_v + loss_p
    return total / learner.n_train_tasks


def reference_backward(learner: MetaLearner, inner: Batch, outer: Batch) -> float:
    """The paper's way: per task, build its graph and call backward (grads accumulate in .grad).

    Leaves the meta-gradient in every parameter's ``.grad`` and returns the meta-loss value.
    """
    total = 0.0
    for i in range(inner.num_tasks):
        loss_v, loss_p = task_outer_losses(learner, inner, outer, i)
        loss = (loss_v + loss_p) / learner.n_train_tasks
        loss.backward()
        total += loss.item()
    return total
