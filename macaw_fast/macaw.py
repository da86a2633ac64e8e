"""MACAW's meta-training step for all tasks of a task batch in one batched pass (docs/algorithm.md §4, §5).

`MetaLearner` owns the value function, the policy (with its advantage head), one learned inner
rate per parameter tensor (softplus(rho)), the head weight softplus(kappa), and the Adam state.
Every task's inner step is taken at once: per-task gradients with respect to each layer's
generated parameters come from one batched backward pass, and the adapted parameters from the
rank-1 identity of docs/algorithm.md §5, so no task ever gets its own copy of a weight matrix W.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .algorithm import AUTO_CHUNK_MAX, Adapted, MetaAlgorithm, MetaGradient, _adam_impl  # noqa: F401 (re-exported)
from .config import MacawConfig
from .data.batch import Batch
from .nets import PolicyNet, ValueNet


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


class MetaLearner(MetaAlgorithm):
    """MACAW meta-learner: networks, learned rates, the batched meta-step and its optimizer.

    Args:
        obs_dim, act_dim: observation and action sizes.
        n_train_tasks: N_train; the outer losses are summed over the task batch and divided by it.
        config: hyper-parameters (defaults: the paper's).
        device, dtype: where the parameters live.
        backend: how the step runs (`macaw_fast.backends`): 'auto' (fused on CUDA, cpu on the CPU
            when the compiled extension is built, torch otherwise), 'torch', 'cpu', 'fused', or a
            backend instance. Same meta-gradient whichever runs.
        fused: ``True`` is the older spelling of ``backend='fused'``; ``False`` rules fused out of 'auto'.
        ops_backend: with the fused backend, how its ops run: 'auto', 'triton' or 'torch'.
        chunk_size: tasks per backward pass in `meta_step` ('auto': see `AUTO_CHUNK_MAX`; an int:
            at most that many). Same meta-gradient whatever the value; smaller holds less memory.
    """

    def __init__(self, obs_dim: int, act_dim: int, n_train_tasks: int, config: MacawConfig | None = None,
                 *, device=None, dtype=torch.float32, backend="auto", fused: bool | None = None,
                 ops_backend: str = "auto", chunk_size: int | str = "auto") -> None:
        self.config = config = config if config is not None else MacawConfig()
        config.validate()
        self._setup(obs_dim, act_dim, n_train_tasks, device=device, backend=backend, fused=fused,
                    ops_backend=ops_backend, chunk_size=chunk_size)
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

    metric_names = METRIC_NAMES
    state_format = "macaw-fast/meta-learner"

    def value_rates(self) -> Tensor:
        """Inner step sizes softplus(rho) of the value net, (layers, tensors per layer)."""
        return F.softplus(self.vf_lrs)

    def policy_rates(self) -> Tensor:
        """Inner step sizes softplus(rho) of the policy (trunk then head), (layers, tensors per layer)."""
        return F.softplus(self.policy_lrs)

    def head_weight(self) -> Tensor:
        """softplus(kappa), the weight of the advantage-head loss in the inner policy loss."""
        return F.softplus(self.adv_coef)

    def _layers(self) -> list[nn.Module]:
        """Every generated-parameter layer: the value net's, then the policy's (trunk, head)."""
        return list(self.vf.layers) + self.policy.layers

    # ------------------------------------------------------------------ MACAW, in the paper's order
    # Every function below states one piece of docs/algorithm.md §4; `self.backend` runs it.

    def _adapt_value(self, inner: Batch, thetas, with_target: bool):
        """Inner value step (§4, eq. 1): phi'_i = phi - eta_V * grad L_V(phi, D_i^in) per task i, and
        with ``with_target`` the target network's mix phi^tgt_i = a phi + (1 - a) phi'_i.
        Returns (phi', phi^tgt or None, inner losses (T,))."""
        b = self.backend
        loss_in, grads = b.value_inner_grads(self.vf, thetas, inner.obs, inner.mc_return)
        alpha = self.config.target_vf_alpha if with_target else None
        out = b.adapt(list(self.vf.layers), thetas, grads, self.value_rates(), alpha)
        return (*out, loss_in) if with_target else (out, None, loss_in)

    def _adapt_policy(self, inner: Batch, thetas, adv: Tensor, weights: Tensor | None, n_layers: int):
        """Inner policy step (§4, eq. 2): theta'_i = theta - eta_pi * grad L_pi^in(theta, D_i^in),
        L_pi^in = advantage-weighted regression + softplus(kappa) * advantage-head regression.
        Only the first ``n_layers`` layers are adapted (the outer loss uses the trunk only)."""
        b = self.backend
        head = self.head_weight() if self.policy.head is not None else None
        loss_in, grads = b.policy_inner_grads(self.policy, thetas, inner, adv, weights, head, self.config, n_layers)
        return b.adapt(self.policy.layers[:n_layers], thetas[:n_layers], grads, self.policy_rates()[:n_layers]), loss_in

    def _value_part(self, inner: Batch, outer: Batch, thetas, value_backward: bool = False) -> tuple:
        """Inner value step, then the outer value loss (§4, eq. 3) against the bootstrapped target
        R + gamma_term * V_phi^tgt(s_term) on the outer batch.

        Returns (phi', V_phi'(outer.obs) (T, B), inner losses (T,), outer losses (T,)); with
        ``value_backward`` the backward of sum(outer losses) / N_train has run (so the value and
        policy graphs, each about half the memory, are never held together) and the outer
        losses come back detached.
        """
        b = self.backend
        v_new, v_tgt, lv_in = self._adapt_value(inner, thetas, with_target=True)
        v_out = b.value(self.vf, v_new, outer.obs)
        v_next = b.value_nograd(self.vf, v_tgt, outer.terminal_obs)
        lv_out = b.value_outer_loss(v_out, outer, v_next)
        if value_backward:
            b.backward_value_part(lv_out, self.n_train_tasks)
            lv_out = lv_out.detach()
        return v_new, v_out, lv_in, lv_out

    def _policy_part(self, inner: Batch, outer: Batch, thetas, v_new, v_out: Tensor) -> tuple:
        """Advantages from the adapted value function (constants), the inner policy step, and the
        outer AWR loss (§4, eq. 4) -mean_b w_b log pi_theta'(a_b | s_b) on the outer batch.

        Returns (inner losses (T,), outer losses (T,), outer advantages (T, B), outer weights (T, B)).
        """
        b, c = self.backend, self.config
        adv_in, adv_out = b.advantages_pair(self.vf, v_new, inner, outer, v_out)
        w_in, w_out = b.advantage_weights(adv_in, c), b.advantage_weights(adv_out, c)
        p_new, lp_in = self._adapt_policy(inner, thetas, adv_in, w_in, self.policy.num_trunk_layers)
        lp_out, w_out = b.policy_outer_loss(self.policy, p_new, outer, adv_out, w_out, c)
        return lp_in, lp_out, adv_out, w_out

    def _meta_loss_parts(self, inner: Batch, outer: Batch, thetas: tuple, value_backward: bool = False):
        """The meta-objective (§4, eq. 5): (sum_i L_V^out_i + sum_i L_pi^out_i) / N_train, and the
        detached per-task pieces of the metrics (inner/outer value and policy losses, outer
        advantages and weights). ``thetas``: (value thetas, policy thetas) to start from."""
        v_new, v_out, lv_in, lv_out = self._value_part(inner, outer, thetas[0], value_backward)
        lp_in, lp_out, adv_out, w_out = self._policy_part(inner, outer, thetas[1], v_new, v_out)
        loss = self.backend.meta_objective(lv_out, lp_out, self.n_train_tasks)
        return loss, tuple(t.detach() for t in (lv_in, lv_out, lp_in, lp_out, adv_out, w_out))

    def _metric_values(self, parts: Sequence[tuple], losses: Sequence[Tensor]) -> Tensor:
        """`METRIC_NAMES` then the sum of ``losses`` as one tensor, over every task of every chunk."""
        with torch.no_grad():
            joined = tuple(p[0] if len(p) == 1 else torch.cat(p) for p in zip(*parts))
            return self.backend.metrics(joined, (self.vf_lrs, self.policy_lrs, self.adv_coef), list(losses))

    # ------------------------------------------------------------------ adaptation (test time)
    def adapt(self, batch: Batch) -> Adapted:
        """Adapt value function then policy to each task's batch (one step each, docs/algorithm.md §6)."""
        self._check(batch, "batch")
        b, c = self.backend, self.config
        value, _, _ = self._adapt_value(batch, b.thetas(self.vf.layers), with_target=False)
        adv = b.advantages(self.vf, value, batch)
        p_thetas = b.thetas(self.policy.layers)
        policy, _ = self._adapt_policy(batch, p_thetas, adv, b.advantage_weights(adv, c), len(p_thetas))
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
        return self.backend.policy_mean(self.policy, thetas, obs)

    # ------------------------------------------------------------------ the meta-step
    def meta_loss(self, inner: Batch, outer: Batch) -> tuple[Tensor, dict]:
        """The meta-objective (sum over the task batch of outer losses) / N_train, and metrics.

        inner, outer: per-task batches (T, B, ...) of the same T tasks, in the same order. Call
        ``backward()`` on the loss for the meta-gradient (`meta_gradient` is the chunked,
        faster way to the same numbers).
        """
        self._check_pair(inner, outer)
        b = self.backend
        loss, parts = self._meta_loss_parts(inner, outer, (b.thetas(self.vf.layers), b.thetas(self.policy.layers)))
        metrics = dict(zip(METRIC_NAMES, self._metric_values([parts], [loss.detach()]).tolist()))
        return loss, metrics

    def _value_chunk_size(self, T: int, cs: int, chunk_size) -> int:
        """Tasks per value-part pass of `meta_gradient` (the backend's choice; the policy's chunk size
        or, for the cpu backend with the 'auto' chunk size, two policy chunks)."""
        auto = (self.chunk_size if chunk_size is None else chunk_size) == "auto"
        return self.backend.value_chunk_size(T, cs, auto)

    def meta_gradient(self, inner: Batch, outer: Batch, chunk_size: int | str | None = None, *,
                      check_inputs: bool = True) -> MetaGradient:
        """Zero the gradients and compute the meta-gradient of `meta_loss`, without updating.

        The backward runs per chunk of at most ``chunk_size`` tasks (see `resolve_chunk_size`;
        default: this learner's `chunk_size`). The meta-loss is a sum over tasks, so the chunks'
        gradients add up to the same meta-gradient while only one chunk's graph is held at a time;
        the generated parameters are made once per step, as leaves shared by the chunks, and their
        gradient becomes z, W and b's at the end (`backends.TorchBackend.finish_gradients`). No
        value is read back to the host (``check_inputs=False`` also skips the batches' checks, whose
        finiteness test reads one flag back: for callers that checked them, e.g. the CUDA graph).
        Apply it with `apply_update`; `meta_step` does both.
        """
        if check_inputs:
            self._check_pair(inner, outer)
        T = inner.num_tasks
        cs = self.resolve_chunk_size(T, chunk_size)
        vcs = self._value_chunk_size(T, cs, chunk_size)
        b, layers = self.backend, self._layers()
        self.optimizer.zero_grad(set_to_none=True)
        leaves = b.step_leaves(layers, T, one_chunk=cs == T)
        n_vf = len(self.vf.layers)
        if vcs == cs:
            losses, parts = self._chunks_joint(inner, outer, (leaves[:n_vf], leaves[n_vf:]), cs)
        else:
            losses, parts = self._chunks_nested(inner, outer, (leaves[:n_vf], leaves[n_vf:]), vcs, cs)
        pending = b.finish_gradients(layers, leaves)
        return MetaGradient(self._metric_values(parts, losses), leaves, pending)

    def _chunks_joint(self, inner: Batch, outer: Batch, leaves: tuple, cs: int) -> tuple[list, list]:
        """`meta_gradient`'s backward in chunks of ``cs`` tasks, value and policy part per chunk."""
        b = self.backend
        losses, parts = [], []
        for start in range(0, inner.num_tasks, cs):
            inner_c, outer_c = self._slice(inner, outer, start, min(start + cs, inner.num_tasks))
            thetas = (b.chunk_thetas(self.vf.layers, leaves[0]), b.chunk_thetas(self.policy.layers, leaves[1]))
            loss, part = self._meta_loss_parts(inner_c, outer_c, thetas, value_backward=True)
            loss.backward()
            losses.append(loss.detach())
            parts.append(part)
        return losses, parts

    def _chunks_nested(self, inner: Batch, outer: Batch, leaves: tuple, vcs: int, cs: int) -> tuple[list, list]:
        """`meta_gradient`'s backward with the value part in chunks of ``vcs`` tasks and the policy
        part in chunks of ``cs`` inside each. Same meta-gradient: the policy uses the adapted value
        function's outputs as constants, so they can come from a larger pass."""
        b = self.backend
        T, n = inner.num_tasks, self.n_train_tasks
        losses, parts = [], []
        for vstart in range(0, T, vcs):
            vstop = min(vstart + vcs, T)
            inner_v, outer_v = self._slice(inner, outer, vstart, vstop)
            v_new, v_out, lv_in, lv_out = self._value_part(inner_v, outer_v, b.chunk_thetas(self.vf.layers, leaves[0]),
                                                           value_backward=True)
            v_new, v_out = [t.detach() for t in v_new], v_out.detach()
            losses.append(lv_out.sum() / n)
            pieces = []
            for start in range(vstart, vstop, cs):
                stop = min(start + cs, vstop)
                rows = slice(start - vstart, stop - vstart)
                inner_c, outer_c = self._slice(inner, outer, start, stop)
                lp_in, lp_out, adv_out, w_out = self._policy_part(
                    inner_c, outer_c, b.chunk_thetas(self.policy.layers, leaves[1]), [t[rows] for t in v_new],
                    v_out[rows])
                loss = lp_out.sum() / n
                loss.backward()
                losses.append(loss.detach())
                pieces.append(tuple(t.detach() for t in (lp_in, lp_out, adv_out, w_out)))
            parts.append((lv_in.detach(), lv_out) + tuple(torch.cat(p) for p in zip(*pieces)))
        return losses, parts

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
    def from_state_dict(cls, state: dict, *, device=None, backend="auto", fused: bool | None = None,
                        ops_backend: str = "auto", chunk_size: int | str = "auto") -> "MetaLearner":
        """Build a learner from a `state_dict` (dims, config and dtype taken from it)."""
        dims = state["dims"]
        learner = cls(dims["obs_dim"], dims["act_dim"], dims["n_train_tasks"],
                      MacawConfig.from_dict(state["config"]), device=device,
                      dtype=state["vf_lrs"].dtype, backend=backend, fused=fused, ops_backend=ops_backend,
                      chunk_size=chunk_size)
        learner.load_state_dict(state)
        return learner
