"""MACAW's meta-training step for all tasks of a task batch in one batched pass (docs/algorithm.md §4, §5).

`MetaLearner` owns the value function, the policy (with its advantage head), one learned inner
rate per parameter tensor (softplus(rho)), the head weight softplus(kappa), and the Adam state.
Every task's inner step is taken at once: per-task gradients with respect to each layer's
generated parameters come from one batched backward pass, and the adapted parameters from the
rank-1 identity of docs/algorithm.md §5, so no task ever gets its own copy of a weight matrix W.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import lowrank_adam
from .config import MacawConfig
from .data.batch import Batch
from .inner_grad import policy_inner_grads, value_inner_grads
from .nets import (PolicyNet, WLinear, ValueNet, accumulate_fused_theta_grads, adapt_many,
                   advantage_weights, can_adapt_many, fused_theta_leaves, gaussian_log_prob, theta_leaves)


#: `MetaLearner(chunk_size='auto')`: task batches up to this size run the meta-step's backward in
#: one pass; larger ones in the fewest equal chunks of at most this many tasks (bounds the memory
#: held by the graph; measured at the paper config, see `MetaLearner.meta_step`). Unfused, the
#: value part (the smaller graph) then runs for two such chunks at once.
AUTO_CHUNK_MAX = 18

#: Names of the metrics `MetaLearner.meta_loss` returns, in order.
METRIC_NAMES = ("loss/value_inner", "loss/value_outer", "loss/policy_inner", "loss/policy_outer",
                "adv/mean", "adv/std", "weight/mean", "weight/max",
                "lr/value_inner_mean", "lr/policy_inner_mean", "adv_head_weight")


def fused_available() -> bool:
    """Whether ``MetaLearner(..., fused=True)`` can run here (the fused ops import and run)."""
    try:
        from . import ops
    except ImportError:
        return False
    return ops.available().get("torch") is True


def _adam_impl(device: torch.device) -> dict:
    """The fastest Adam implementation for the device (same update rule; fused is ~4x on CPU)."""
    return {"fused": True} if device.type in ("cpu", "cuda") else {"foreach": True}


@dataclass
class Adapted:
    """Per-task adapted generated parameters: one (T, P) tensor per layer."""

    value: list[Tensor]
    policy: list[Tensor]
    """Trunk layers then (when present) head layers."""

    def __len__(self) -> int:
        """Number of tasks T."""
        return int((self.policy or self.value)[0].shape[0])

    def select(self, tasks) -> "Adapted":
        """The adapted parameters of a subset of the tasks: ``tasks`` is an index, a list of indices,
        a slice or a boolean/integer tensor over the T tasks (in the order they were adapted)."""
        if isinstance(tasks, int):
            tasks = [tasks]
        if isinstance(tasks, (list, tuple)):
            n = len(self)
            bad = [t for t in tasks if not isinstance(t, int) or not -n <= t < n]
            if bad:
                raise IndexError(f"Adapted.select: task indices {bad} out of range for {n} adapted tasks")
            tasks = torch.as_tensor(tasks, dtype=torch.long, device=(self.policy or self.value)[0].device)
        return Adapted(value=[p[tasks] for p in self.value], policy=[p[tasks] for p in self.policy])


class MetaLearner:
    """MACAW meta-learner: networks, learned rates, the batched meta-step and its optimizer.

    Args:
        obs_dim, act_dim: observation and action sizes.
        n_train_tasks: N_train; the outer losses are summed over the task batch and divided by it.
        config: hyper-parameters (defaults: the paper's).
        device, dtype: where the parameters live.
        fused: run the step with the fused ops of `macaw_fast.ops` (same results).
        ops_backend: with ``fused``, the ops backend: 'auto' (Triton on CUDA, or on CPU under
            ``TRITON_INTERPRET=1``; the torch twins otherwise), 'triton' or 'torch'.
        chunk_size: tasks per backward pass in `meta_step` ('auto': see `AUTO_CHUNK_MAX`; an int:
            at most that many). Same meta-gradient whatever the value; smaller holds less memory.
    """

    def __init__(self, obs_dim: int, act_dim: int, n_train_tasks: int, config: MacawConfig | None = None,
                 *, device=None, dtype=torch.float32, fused: bool = False, ops_backend: str = "auto",
                 chunk_size: int | str = "auto") -> None:
        self.config = config = config if config is not None else MacawConfig()
        config.validate()
        for name, v in (("obs_dim", obs_dim), ("act_dim", act_dim), ("n_train_tasks", n_train_tasks)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: expected a positive integer, got {v!r}")
        self.obs_dim, self.act_dim, self.n_train_tasks = obs_dim, act_dim, n_train_tasks
        self.fused = fused
        #: Default tasks per backward pass of `meta_step` ('auto' or a positive int).
        self.chunk_size = chunk_size
        #: Unfused `meta_step` on the CPU: Adam-update each WLinear weight straight from its
        #: low-rank gradient factors (`macaw_fast.lowrank_adam`: one pass over W, no dense
        #: gradient, so W's ``.grad`` stays None after the step). False: form W's dense gradient
        #: and leave every update to ``optimizer.step()`` (same parameters to rounding).
        self.lowrank_adam = True
        #: Unfused steps: the value net's inner gradients as one autograd node with a hand-written
        #: Hessian-vector product (`macaw_fast.inner_grad`) instead of a create_graph backward.
        self.manual_value_grads = True
        #: Likewise for the policy's inner gradients (trunk, tanh mean, advantage head, kappa).
        self.manual_policy_grads = True
        #: Unfused, on the CPU: each net's inner steps (`WLinear.adapt` of every layer) as one
        #: autograd node with a hand-written backward (`macaw_fast.nets.adapt_many`).
        self.manual_adapt = True
        self.resolve_chunk_size(1)      # validates chunk_size
        if ops_backend not in ("auto", "triton", "torch"):
            raise ValueError(f"ops_backend: expected 'auto', 'triton' or 'torch', got {ops_backend!r}")
        #: Backend name handed to every op when fused, else None (plain torch ops).
        self.backend = ops_backend if fused else None
        kw = {"device": device, "dtype": dtype}
        c = config
        self.vf = ValueNet(obs_dim, c.net_width, c.net_depth, c.wlinear, c.wlinear_dim, **kw)
        self.policy = PolicyNet(obs_dim, act_dim, c.net_width, c.net_depth, c.advantage_head,
                                c.head_width, c.wlinear, c.wlinear_dim, **kw)
        k = 3 if c.wlinear else 2
        self.vf_lrs = nn.Parameter(torch.full((len(self.vf.layers), k), math.log(c.inner_value_lr), **kw))
        self.policy_lrs = nn.Parameter(torch.full((len(self.policy.layers), k), math.log(c.inner_policy_lr), **kw))
        self.adv_coef = nn.Parameter(torch.tensor(math.log(c.advantage_head_coef), **kw))
        self.optimizer = torch.optim.Adam([
            {"params": list(self.vf.parameters()), "lr": c.outer_value_lr, "name": "value"},
            {"params": list(self.policy.parameters()), "lr": c.outer_policy_lr, "name": "policy"},
            {"params": [self.vf_lrs, self.policy_lrs, self.adv_coef], "lr": c.lrlr, "name": "lrs"},
        ], **_adam_impl(self.vf_lrs.device))

    # ------------------------------------------------------------------ parameters
    def parameters(self) -> list[Tensor]:
        """Every trained tensor: value net, policy (with head), rates and kappa."""
        return [g for group in self.optimizer.param_groups for g in group["params"]]

    @property
    def device(self) -> torch.device:
        return self.vf_lrs.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vf_lrs.dtype

    def value_rates(self) -> Tensor:
        """Inner step sizes softplus(rho) of the value net, (layers, tensors per layer)."""
        return F.softplus(self.vf_lrs)

    def policy_rates(self) -> Tensor:
        """Inner step sizes softplus(rho) of the policy (trunk then head), (layers, tensors per layer)."""
        return F.softplus(self.policy_lrs)

    def head_weight(self) -> Tensor:
        """softplus(kappa), the weight of the advantage-head loss in the inner policy loss."""
        return F.softplus(self.adv_coef)

    # ------------------------------------------------------------------ the inner step
    def _check(self, batch: Batch, name: str) -> None:
        if not isinstance(batch, Batch):
            raise TypeError(f"{name}: expected a macaw_fast.data.Batch, got {type(batch).__name__}")
        batch.validate(self.obs_dim, self.act_dim, name)
        if batch.obs.dtype != self.dtype or batch.obs.device != self.device:
            raise TypeError(f"{name}: expected tensors of dtype {self.dtype} on {self.device}, "
                            f"got {batch.obs.dtype} on {batch.obs.device} (use batch.to(...))")
        if batch.batch_size < 2:
            raise ValueError(f"{name}: advantage weights need at least 2 rows per task (unbiased std), "
                             f"got batch size {batch.batch_size}")

    def _adapt_value(self, inner: Batch, with_target: bool, thetas: Sequence[Tensor] | None = None):
        """phi'_i for every task (and the target mix phi^tgt_i), as generated parameters.

        ``thetas``: the value net's generated parameters to start from (default: generated here).
        """
        T = inner.num_tasks
        if thetas is None:
            thetas = self.vf.thetas(low_rank_grad=not self.fused)
        if not self.fused and self.manual_value_grads:
            # one autograd node whose backward is a hand-written Hessian-vector product
            loss_in, grads = value_inner_grads(thetas, self.vf.layer_dims(), inner.obs, inner.mc_return)
        else:
            per_task = [th.expand(T, -1) for th in thetas]
            v = self.vf.forward_thetas(per_task, inner.obs, self.backend)
        if self.fused:       # one launch for the loss, one for its backward, one for the double backward
            from .ops import value_mse
            from .ops._common import cached_full
            loss_in = value_mse(v, inner.mc_return, backend=self.backend)
            grads = torch.autograd.grad(loss_in, per_task, cached_full((T,), 1.0, v.dtype, v.device),
                                        create_graph=True)
        elif not self.manual_value_grads:
            loss_in = (v - inner.mc_return).pow(2).mean(-1)                       # (T,)
            grads = torch.autograd.grad(loss_in.sum(), per_task, create_graph=True)
        rates = self.value_rates()
        alpha = self.config.target_vf_alpha if with_target else None
        if self.fused and all(isinstance(m, WLinear) for m in self.vf.layers):
            # every layer's inner step in three launches (ops.wlinear_adapt_many); rates stay one tensor
            from .ops import wlinear_adapt_many
            ls = self.vf.layers
            out = wlinear_adapt_many([m.weight for m in ls], [m.bias for m in ls], [m.z for m in ls], grads, rates,
                                     alpha, backend=self.backend)
        elif self._adapt_many_ok(self.vf.layers, thetas):
            new = adapt_many(self.vf.layers, thetas, grads, rates, alpha)     # one autograd node
            out = list(zip(*new)) if with_target else new
        else:
            if self.fused:
                rates = rates.unbind(0)          # one backward op (a stack) instead of a select per layer
            out = [layer.adapt(th, g, rates[k], alpha, self.backend)
                   for k, (layer, th, g) in enumerate(zip(self.vf.layers, thetas, grads))]
        if with_target:
            return [o[0] for o in out], [o[1] for o in out], loss_in
        return out, None, loss_in

    def _adapt_many_ok(self, layers, thetas) -> bool:
        """Whether the inner steps run as one node (`nets.adapt_many`): unfused, `manual_adapt`, on
        the CPU (the node reads the rates as numbers: a host sync on a GPU), W-gradient gatherers."""
        return (not self.fused and self.manual_adapt and self.device.type == "cpu"
                and can_adapt_many(layers, thetas))

    def _advantages(self, value_thetas: Sequence[Tensor], batch: Batch, v_obs: Tensor | None = None) -> Tensor:
        """A = mc_return + terminal_discount * V(terminal_obs) - V(obs), no gradient.

        ``v_obs``: V(obs) when already computed (its values are used, not its graph).
        """
        with torch.no_grad():
            th = [t.detach() for t in value_thetas]
            if self.fused:   # mc_return + discount * V(terminal_obs) - V(obs) in one launch
                from .ops import bootstrap_advantage
                if v_obs is None:
                    both = torch.cat([batch.terminal_obs, batch.obs], dim=1)
                    v = self.vf.forward_thetas(th, both, self.backend)
                    B = batch.batch_size
                    v_next, v_obs = v[:, :B], v[:, B:]
                else:
                    v_next = self.vf.forward_thetas(th, batch.terminal_obs, self.backend)
                return bootstrap_advantage(batch.mc_return, batch.terminal_discount, v_next, v_obs.detach(),
                                           backend=self.backend)
            if v_obs is not None:
                return batch.mc_return + batch.terminal_discount * self.vf.forward_thetas(
                    th, batch.terminal_obs, self.backend) - v_obs.detach()
            both = torch.cat([batch.terminal_obs, batch.obs], dim=1)
            v = self.vf.forward_thetas(th, both, self.backend)
            B = batch.batch_size
            return batch.mc_return + batch.terminal_discount * v[:, :B] - v[:, B:]

    def _advantages_pair(self, value_thetas: Sequence[Tensor], inner: Batch, outer: Batch,
                         v_out: Tensor) -> tuple[Tensor, Tensor]:
        """`_advantages` of the inner and the outer batch (with V(outer.obs) = ``v_out`` given) from
        ONE forward pass of the adapted value function over inner.terminal_obs, inner.obs and
        outer.terminal_obs (fewer, larger GEMMs than three passes)."""
        with torch.no_grad():
            B = inner.batch_size
            x = torch.cat([inner.terminal_obs, inner.obs, outer.terminal_obs], dim=1)
            v = self.vf.forward_thetas([t.detach() for t in value_thetas], x, self.backend)
            adv_in = inner.mc_return + inner.terminal_discount * v[:, :B] - v[:, B:2 * B]
            adv_out = outer.mc_return + outer.terminal_discount * v[:, 2 * B:] - v_out.detach()
        return adv_in, adv_out

    def _policy_inner_loss(self, thetas: Sequence[Tensor], batch: Batch, adv: Tensor, weights: Tensor):
        c = self.config
        n_trunk = self.policy.num_trunk_layers
        if self.fused:       # the trunk's pre-activations: ops.awr_loss applies the mean's tanh
            from .nets import mlp_forward
            mu, hidden = mlp_forward(thetas[:n_trunk], self.policy.trunk.dims, batch.obs, return_hidden=True,
                                     backend=self.backend)
        else:
            mu, hidden = self.policy.mean(thetas[:n_trunk], batch.obs, return_hidden=True, backend=self.backend)
        if self.fused:
            from .ops import awr_loss
            head = self.policy.head is not None
            pred = self.policy.advantage(thetas[n_trunk:], hidden, batch.action, self.backend) if head else None
            return awr_loss(mu, batch.action, adv, sigma=c.action_sigma, temp=c.adaptation_temp,
                            max_weight=c.exp_advantage_clip, pred=pred,
                            head_weight=self.head_weight() if head else None, tanh=True, backend=self.backend)
        logp = gaussian_log_prob(batch.action, mu, c.action_sigma)
        loss = (-weights * logp).mean(-1)
        if self.policy.head is not None:
            pred = self.policy.advantage(thetas[n_trunk:], hidden, batch.action)
            loss = loss + self.head_weight() * (pred - adv).pow(2).mean(-1)
        return loss

    def _adapt_policy(self, inner: Batch, adv: Tensor, weights: Tensor, layers: int | None = None,
                      thetas: Sequence[Tensor] | None = None):
        """theta'_i for every task; ``layers`` limits the result to the first few layers.

        ``thetas``: the policy's generated parameters to start from (default: generated here).
        """
        T = inner.num_tasks
        if thetas is None:
            thetas = [layer.theta(not self.fused) if isinstance(layer, WLinear) else layer.theta()
                      for layer in self.policy.layers]
        n = len(thetas) if layers is None else layers
        if not self.fused and self.manual_policy_grads:
            c = self.config
            head = self.policy.head
            loss_in, grads = policy_inner_grads(
                thetas, self.policy.trunk.layer_dims(), head.layer_dims() if head is not None else (),
                inner.obs, inner.action, adv, weights, c.action_sigma,
                self.head_weight() if head is not None else None, n)
        else:
            per_task = [th.expand(T, -1) for th in thetas]
            loss_in = self._policy_inner_loss(per_task, inner, adv, weights)
        if self.fused:       # a cached seed instead of sum + ones_like
            from .ops._common import cached_full
            grads = torch.autograd.grad(loss_in, per_task[:n], cached_full((T,), 1.0, loss_in.dtype, loss_in.device),
                                        create_graph=True)
        elif not self.manual_policy_grads:
            grads = torch.autograd.grad(loss_in.sum(), per_task[:n], create_graph=True)
        rates = self.policy_rates()
        layers_ = self.policy.layers
        if self.fused and all(isinstance(m, WLinear) for m in layers_[:n]):
            # the first n layers' inner steps in three launches (ops.wlinear_adapt_many)
            from .ops import wlinear_adapt_many
            ls = layers_[:n]
            return wlinear_adapt_many([m.weight for m in ls], [m.bias for m in ls], [m.z for m in ls], grads, rates,
                                      None, backend=self.backend), loss_in
        if self._adapt_many_ok(layers_[:n], thetas[:n]):
            return adapt_many(layers_[:n], thetas[:n], grads, rates[:n]), loss_in      # one autograd node
        if self.fused:
            rates = rates.unbind(0)
        return [layers_[k].adapt(thetas[k], grads[k], rates[k], None, self.backend) for k in range(n)], loss_in

    def adapt(self, batch: Batch) -> Adapted:
        """Adapt value function then policy to each task's batch (one step each, docs/algorithm.md §6)."""
        self._check(batch, "batch")
        c = self.config
        value, _, _ = self._adapt_value(batch, with_target=False)
        adv = self._advantages(value, batch)
        w = advantage_weights(adv, c.adaptation_temp, c.exp_advantage_clip)
        policy, _ = self._adapt_policy(batch, adv, w)
        return Adapted(value=value, policy=policy)

    def act(self, obs: Tensor, adapted: Adapted | None = None, tasks=None) -> Tensor:
        """Policy mean for obs (T, B, obs_dim): adapted per task, or the meta-trained policy.

        ``tasks`` picks which of the adapted tasks ``obs`` belongs to (as :meth:`Adapted.select`),
        e.g. ``act(obs_of_task_2, adapted, tasks=[2])`` with obs (1, B, obs_dim).
        """
        if adapted is not None and tasks is not None:
            adapted = adapted.select(tasks)
        if adapted is not None and obs.dim() == 3 and obs.shape[0] != len(adapted):
            raise ValueError(f"act: obs holds {obs.shape[0]} tasks but {len(adapted)} adapted tasks were given "
                             f"(pick them with tasks=[...])")
        n = self.policy.num_trunk_layers
        thetas = adapted.policy[:n] if adapted is not None else self.policy.trunk.thetas()
        return self.policy.mean(thetas, obs, backend=self.backend)

    # ------------------------------------------------------------------ the meta-step
    def meta_loss(self, inner: Batch, outer: Batch) -> tuple[Tensor, dict]:
        """The meta-objective (sum over the task batch of outer losses) / N_train, and metrics.

        inner, outer: per-task batches (T, B, ...) of the same T tasks, in the same order.
        """
        self._check_pair(inner, outer)
        loss, parts = self._meta_loss_parts(inner, outer)
        metrics = dict(zip(METRIC_NAMES, self._metric_values([parts]).tolist()))
        return loss, metrics

    def _check_pair(self, inner: Batch, outer: Batch) -> None:
        self._check(inner, "inner")
        self._check(outer, "outer")
        if inner.num_tasks != outer.num_tasks:
            raise ValueError(f"inner and outer batches must hold the same tasks: inner has T={inner.num_tasks}, "
                             f"outer has T={outer.num_tasks}")

    def _meta_loss_parts(self, inner: Batch, outer: Batch, thetas: tuple | None = None,
                         value_backward: bool = False) -> tuple[Tensor, tuple]:
        """`meta_loss` without input checks or metrics: (loss, per-task pieces of the metrics).

        ``thetas``: (value thetas, policy thetas) to start from (default: generated here).
        ``value_backward``: run the value part's backward as soon as it is built, so that the value
        and policy graphs (each about half the memory) are never held together; the returned
        loss has the same value but its graph is the policy part's only (call backward on it).
        The pieces, all detached, are the inner and outer value and policy losses (T,) and the
        outer advantages and weights (T, B); `_metric_values` turns a list of them into metrics.
        """
        v_th, p_th = thetas if thetas is not None else (None, None)
        v_new, v_out, lv_in, lv_out = self._value_part(inner, outer, v_th, value_backward)
        lp_in, lp_out, adv_out, w_out = self._policy_part(inner, outer, p_th, v_new, v_out)
        if self.fused:
            from .ops import meta_objective
            loss = meta_objective(lv_out, lp_out, self.n_train_tasks, backend=self.backend)
        else:
            loss = (lv_out.sum() + lp_out.sum()) / self.n_train_tasks
        parts = tuple(t.detach() for t in (lv_in, lv_out, lp_in, lp_out, adv_out, w_out))
        return loss, parts

    def _value_part(self, inner: Batch, outer: Batch, v_th, value_backward: bool = False) -> tuple:
        """Value function: inner step, target mix, bootstrapped outer regression (docs/algorithm.md §4).

        Returns (adapted value thetas, V_phi'(outer.obs) (T, B), inner losses (T,), outer losses (T,));
        with ``value_backward`` the backward of sum(outer losses) / N_train has run (see
        `_meta_loss_parts`) and the outer losses come back detached.
        """
        v_new, v_tgt, lv_in = self._adapt_value(inner, with_target=True, thetas=v_th)
        v_out = self.vf.forward_thetas(v_new, outer.obs, self.backend)
        if self.fused:       # the bootstrapped target is formed inside ops.value_mse
            from .ops import value_mse
            from .ops._common import cached_full
            with torch.no_grad():
                v_next = self.vf.forward_thetas([t.detach() for t in v_tgt], outer.terminal_obs, self.backend)
            lv_out = value_mse(v_out, outer.mc_return, outer.terminal_discount, v_next, backend=self.backend)
        else:
            with torch.no_grad():
                target = outer.mc_return + outer.terminal_discount * self.vf.forward_thetas(
                    [t.detach() for t in v_tgt], outer.terminal_obs, self.backend)
            lv_out = (v_out - target).pow(2).mean(-1)
        if value_backward:
            if self.fused:   # d(meta-loss)/d(lv_out) = 1 / N_train: a cached seed, no launches
                lv_out.backward(cached_full(lv_out.shape, 1.0, lv_out.dtype, lv_out.device, self.n_train_tasks))
            else:
                (lv_out.sum() / self.n_train_tasks).backward()
            lv_out = lv_out.detach()
        return v_new, v_out, lv_in, lv_out

    def _policy_part(self, inner: Batch, outer: Batch, p_th, v_new: Sequence[Tensor], v_out: Tensor) -> tuple:
        """Policy: advantages from the adapted value function (no gradient into it), inner step,
        weighted outer loss (docs/algorithm.md §4). ``v_new``, ``v_out``: from `_value_part` (used as constants).

        Returns (inner losses (T,), outer losses (T,), outer advantages (T, B), outer weights (T, B)).
        """
        c = self.config
        if self.fused:
            adv_in, adv_out = self._advantages(v_new, inner), self._advantages(v_new, outer, v_obs=v_out)
        else:
            adv_in, adv_out = self._advantages_pair(v_new, inner, outer, v_out)
        if self.fused:       # awr_loss forms the weights itself (w_out comes back from it below)
            w_in = w_out = None
        else:
            w_in = advantage_weights(adv_in, c.adaptation_temp, c.exp_advantage_clip)
            w_out = advantage_weights(adv_out, c.adaptation_temp, c.exp_advantage_clip)
        n_trunk = self.policy.num_trunk_layers
        p_new, lp_in = self._adapt_policy(inner, adv_in, w_in, layers=n_trunk, thetas=p_th)
        if self.fused:       # the trunk's pre-activations: ops.awr_loss applies the mean's tanh
            from .nets import mlp_forward
            from .ops import awr_loss
            mu_out = mlp_forward(p_new, self.policy.trunk.dims, outer.obs, backend=self.backend)
            lp_out, w_out = awr_loss(mu_out, outer.action, adv_out, sigma=c.action_sigma, temp=c.adaptation_temp,
                                     max_weight=c.exp_advantage_clip, return_weights=True, tanh=True,
                                     backend=self.backend)
        else:
            mu_out = self.policy.mean(p_new, outer.obs, backend=self.backend)
            lp_out = (-w_out * gaussian_log_prob(outer.action, mu_out, c.action_sigma)).mean(-1)
        return lp_in, lp_out, adv_out, w_out

    def _metric_values(self, parts: Sequence[tuple], extra: Sequence[Tensor] = (),
                       losses: Sequence[Tensor] | None = None) -> Tensor:
        """The metrics (`METRIC_NAMES` order, then ``extra``, then the sum of ``losses`` if given)
        as one tensor, from the per-task pieces of one or more task chunks: every metric is over
        all tasks of all chunks. Fused: one `ops.step_metrics` launch (the losses summed in it)."""
        with torch.no_grad():
            lv_in, lv_out, lp_in, lp_out, adv_out, w_out = (
                p[0] if len(p) == 1 else torch.cat(p) for p in zip(*parts))
            if self.fused:
                from .ops import step_metrics
                out = step_metrics(lv_in, lv_out, lp_in, lp_out, adv_out, w_out, self.vf_lrs, self.policy_lrs,
                                   self.adv_coef, losses, backend=self.backend)
                if extra:
                    n = len(METRIC_NAMES)
                    out = torch.cat([out[:n], torch.stack(list(extra)), out[n:]])
                return out
            if losses is not None:
                extra = [*extra, torch.stack(list(losses)).sum()]
            return torch.stack([
                lv_in.mean(), lv_out.mean(), lp_in.mean(), lp_out.mean(),
                adv_out.mean(), adv_out.std(), w_out.mean(), w_out.max(),
                self.value_rates().mean(), self.policy_rates().mean(), self.head_weight(), *extra,
            ])

    def resolve_chunk_size(self, num_tasks: int, chunk_size: int | str | None = None) -> int:
        """Tasks per backward pass that `meta_step` uses for a task batch of ``num_tasks``.

        ``chunk_size``: None for this learner's `chunk_size`; 'auto' for the measured default
        (all tasks at once up to `AUTO_CHUNK_MAX` tasks, else the fewest equal chunks of at most
        that many); a positive int for at most that many tasks per chunk.
        """
        cs = self.chunk_size if chunk_size is None else chunk_size
        if cs == "auto":
            n_chunks = -(-num_tasks // AUTO_CHUNK_MAX)
            return -(-num_tasks // n_chunks)
        if not isinstance(cs, int) or isinstance(cs, bool) or cs < 1:
            raise ValueError(f"chunk_size: expected 'auto' or a positive integer, got {cs!r}")
        return min(cs, num_tasks)

    def meta_step(self, inner: Batch, outer: Batch, chunk_size: int | str | None = None) -> dict:
        """Zero grads, meta-loss, backward, one Adam step of all three groups. Returns metrics.

        The backward runs per chunk of at most ``chunk_size`` tasks (see `resolve_chunk_size`;
        default: this learner's `chunk_size`; with 'auto', unfused, the value part's pass covers
        two policy chunks, see `_value_chunk_size`). The meta-loss is a sum over tasks, so the
        gradients accumulate to the same meta-gradient while only one chunk's graph is held
        at a time; each W's gradient is still formed by one GEMM from all chunks' low-rank
        factors (generated parameters are made once, as leaves shared by the chunks; fused, each
        WLinear layer's leaf gradient becomes W, b and z's by one `ops.wlinear_theta_backward`).
        The metrics are over all tasks, as `meta_loss`'s.
        """
        self._check_pair(inner, outer)
        T = inner.num_tasks
        cs = self.resolve_chunk_size(T, chunk_size)
        self.optimizer.zero_grad(set_to_none=True)
        if self.fused:   # leaves without the low-rank W-gradient gatherer: one fused op per layer
            rows = T if cs == T else None       # one chunk: per-task (T, P) leaves, no expand sums
            n_vf = len(self.vf.layers)       # both nets' thetas in one ops.wlinear_generate launch
            leaves = fused_theta_leaves(list(self.vf.layers) + self.policy.layers, rows, self.backend)
            thetas = (leaves[:n_vf], leaves[n_vf:])
        else:
            leaves = theta_leaves(list(self.vf.layers) + self.policy.layers)     # one pass over every W
            n_vf = len(self.vf.layers)
            thetas = (leaves[:n_vf], leaves[n_vf:])
        vcs = self._value_chunk_size(T, cs, chunk_size)
        if vcs == cs:
            losses, parts = self._chunks_joint(inner, outer, thetas, cs)
        else:
            losses, parts = self._chunks_nested(inner, outer, thetas, vcs, cs)
        if self.fused:       # both nets' layers in one ops.wlinear_theta_backward_many launch
            accumulate_fused_theta_grads(list(self.vf.layers) + self.policy.layers, thetas[0] + thetas[1],
                                         self.backend)
        if self.fused:       # the chunks' losses are summed inside the metrics launch
            values = self._metric_values(parts, losses=losses).tolist()
        else:
            values = self._metric_values(parts, [torch.stack(losses).sum()]).tolist()
        value = values[-1]
        if not math.isfinite(value):
            raise FloatingPointError(f"meta-loss is not finite ({value}); parameters left unchanged")
        if not self.fused:   # after the finiteness check: the low-rank path updates W right away
            self._apply_theta_leaf_grads(thetas)
        self.optimizer.step()
        metrics = dict(zip(METRIC_NAMES, values))
        metrics["loss/meta"] = value
        return metrics

    def _value_chunk_size(self, T: int, cs: int, chunk_size) -> int:
        """Tasks per value-part pass of `meta_step`: with the 'auto' chunk size the unfused step runs
        the value part for up to two policy chunks at once (its graph is the smaller one; measured
        at T=35: one value pass instead of two saves its W products and overhead, and the peak
        stays below the per-task loop's); otherwise the policy's chunk size."""
        if self.fused or (self.chunk_size if chunk_size is None else chunk_size) != "auto":
            return cs
        return min(T, 2 * cs)

    @staticmethod
    def _slice(inner: Batch, outer: Batch, start: int, stop: int) -> tuple[Batch, Batch]:
        if (start, stop) == (0, inner.num_tasks):
            return inner, outer
        return tuple(Batch(**{k: v[start:stop] for k, v in b}) for b in (inner, outer))

    @staticmethod
    def _chunk_thetas(net, ths) -> list:
        """A chunk's starting thetas: the shared leaves; plain (non-WLinear) layers regenerate theta."""
        return [layer.theta() if th is None else th for layer, th in zip(net.layers, ths)]

    def _chunks_joint(self, inner: Batch, outer: Batch, thetas: tuple, cs: int) -> tuple[list, list]:
        """`meta_step`'s backward in chunks of ``cs`` tasks, value and policy part per chunk."""
        losses, parts = [], []
        for start in range(0, inner.num_tasks, cs):
            inner_c, outer_c = self._slice(inner, outer, start, min(start + cs, inner.num_tasks))
            chunk_thetas = tuple(self._chunk_thetas(net, ths) for net, ths in zip((self.vf, self.policy), thetas))
            loss, part = self._meta_loss_parts(inner_c, outer_c, chunk_thetas, value_backward=True)
            loss.backward()
            losses.append(loss.detach())
            parts.append(part)
        return losses, parts

    def _chunks_nested(self, inner: Batch, outer: Batch, thetas: tuple, vcs: int, cs: int) -> tuple[list, list]:
        """`meta_step`'s backward with the value part in chunks of ``vcs`` tasks and the policy part
        in chunks of ``cs`` inside each (unfused). Same meta-gradient: the policy uses the adapted
        value function's outputs as constants, so they can come from a larger pass."""
        T, n = inner.num_tasks, self.n_train_tasks
        losses, parts = [], []
        for vstart in range(0, T, vcs):
            vstop = min(vstart + vcs, T)
            inner_v, outer_v = self._slice(inner, outer, vstart, vstop)
            v_new, v_out, lv_in, lv_out = self._value_part(inner_v, outer_v, self._chunk_thetas(self.vf, thetas[0]),
                                                           value_backward=True)
            v_new, v_out = [t.detach() for t in v_new], v_out.detach()
            losses.append(lv_out.sum() / n)
            pieces = []
            for start in range(vstart, vstop, cs):
                stop = min(start + cs, vstop)
                rows = slice(start - vstart, stop - vstart)
                inner_c, outer_c = self._slice(inner, outer, start, stop)
                lp_in, lp_out, adv_out, w_out = self._policy_part(
                    inner_c, outer_c, self._chunk_thetas(self.policy, thetas[1]), [t[rows] for t in v_new],
                    v_out[rows])
                loss = lp_out.sum() / n
                loss.backward()
                losses.append(loss.detach())
                pieces.append(tuple(t.detach() for t in (lp_in, lp_out, adv_out, w_out)))
            parts.append((lv_in.detach(), lv_out) + tuple(torch.cat(p) for p in zip(*pieces)))
        return losses, parts

    def _apply_theta_leaf_grads(self, thetas: tuple) -> None:
        """Turn the theta leaves' gradients into z, W and b's: with `lowrank_adam`, W is updated
        here from its low-rank factors (`macaw_fast.lowrank_adam`; W's ``.grad`` stays None);
        otherwise W's dense gradient is formed and left to ``optimizer.step()``."""
        pairs = [(layer, th) for net, ths in zip((self.vf, self.policy), thetas)
                 for layer, th in zip(net.layers, ths) if th is not None]
        layers = [layer for layer, _ in pairs]
        if self.lowrank_adam and lowrank_adam.applicable(self.optimizer, [layer.weight for layer in layers]):
            lowrank_adam.lowrank_adam_step(self.optimizer, layers, [layer.theta_leaf_factors(th) for layer, th in pairs])
        else:
            for layer, th in pairs:
                layer.accumulate_theta_leaf_grad(th)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything needed to rebuild and resume: dims, config, parameters, Adam state."""
        return {
            "format": "macaw-fast/meta-learner",
            "version": 1,
            "dims": {"obs_dim": self.obs_dim, "act_dim": self.act_dim, "n_train_tasks": self.n_train_tasks},
            "config": self.config.to_dict(),
            "vf": self.vf.state_dict(),
            "policy": self.policy.state_dict(),
            "vf_lrs": self.vf_lrs.detach().clone(),
            "policy_lrs": self.policy_lrs.detach().clone(),
            "adv_coef": self.adv_coef.detach().clone(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Load a `state_dict`; dims and config must match this learner's."""
        if state.get("format") != "macaw-fast/meta-learner":
            raise ValueError("not a macaw-fast MetaLearner state (missing 'format': 'macaw-fast/meta-learner')")
        dims = {"obs_dim": self.obs_dim, "act_dim": self.act_dim, "n_train_tasks": self.n_train_tasks}
        if state["dims"] != dims:
            raise ValueError(f"state dims {state['dims']} do not match this learner's {dims}")
        if state["config"] != self.config.to_dict():
            diff = {k: v for k, v in state["config"].items() if self.config.to_dict().get(k) != v}
            raise ValueError(f"state config differs from this learner's in {sorted(diff)}")
        self.vf.load_state_dict(state["vf"])
        self.policy.load_state_dict(state["policy"])
        with torch.no_grad():
            for name in ("vf_lrs", "policy_lrs", "adv_coef"):
                dst, src = getattr(self, name), state[name]
                if dst.shape != src.shape:
                    raise ValueError(f"state['{name}']: expected shape {tuple(dst.shape)}, got {tuple(src.shape)}")
                dst.copy_(src)
        self.optimizer.load_state_dict(state["optimizer"])

    @classmethod
    def from_checkpoint(cls, path, *, device=None, fused: bool = False, ops_backend: str = "auto",
                        chunk_size: int | str = "auto") -> "MetaLearner":
        """A learner from a ``macaw-fast train`` checkpoint file or run directory (its
        ``checkpoints/latest.pt``), verified against its SHA-256. For the paper's ``archive_*.pt``
        use :func:`macaw_fast.paper.load_archive`."""
        from .checkpoint import load_checkpoint

        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "checkpoints", "latest.pt")
        st = load_checkpoint(path, map_location="cpu")
        return cls.from_state_dict(st["learner"], device=device, fused=fused, ops_backend=ops_backend,
                                   chunk_size=chunk_size)

    @classmethod
    def from_state_dict(cls, state: dict, *, device=None, fused: bool = False, ops_backend: str = "auto",
                        chunk_size: int | str = "auto") -> "MetaLearner":
        """Build a learner from a `state_dict` (dims, config and dtype taken from it)."""
        dims = state["dims"]
        learner = cls(dims["obs_dim"], dims["act_dim"], dims["n_train_tasks"],
                      MacawConfig.from_dict(state["config"]), device=device,
                      dtype=state["vf_lrs"].dtype, fused=fused, ops_backend=ops_backend, chunk_size=chunk_size)
        learner.load_state_dict(state)
        return learner
