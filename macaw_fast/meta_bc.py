"""Meta-behaviour-cloning (the paper's "Meta-BC" baseline): MACAW's policy and inner step without
values or advantages.

The same weight-transform policy trunk and learned per-tensor inner rates as MACAW
(docs/algorithm.md §2, §4); both losses are behaviour cloning,

    L_BC(theta, D) = -mean_{(s, a) in D} log N(a; tanh(trunk_theta(s)), sigma^2 I),

the inner step is theta'_i = theta - softplus(rho) * grad L_BC(theta, D_i^in) (one step, the rank-1
update of docs/algorithm.md §5), and the meta-objective is sum_i L_BC(theta'_i, D_i^out) / N_train.
There is no value function, no advantage head and no advantage weighting. Every backend runs it
(`bc_loss`, `bc_inner_grads`, `adapt` of `macaw_fast.backends`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .algorithm import Adapted, DictConfig, MetaAlgorithm, MetaGradient, _adam_impl
from .data.batch import Batch
from .nets import PolicyNet

#: Names of the metrics `MetaBC.meta_loss` / `meta_step` return, in order.
METRIC_NAMES = ("loss/bc_inner", "loss/bc_outer", "lr/policy_inner_mean")


@dataclass
class MetaBCConfig(DictConfig):
    """Hyper-parameters of meta-behaviour-cloning. Each field means what MACAW's field of the same
    name means (`MacawConfig`), so the same presets and ``--field`` flags set both."""

    net_width: int = 100
    """Hidden width of the policy trunk."""
    net_depth: int = 3
    """Hidden layers of the policy trunk."""
    wlinear: bool = True
    """Weight-transform layers (theta = W z + b); False: plain linear layers."""
    wlinear_dim: int = 100
    """Latent size D of the weight-transform layers."""
    inner_policy_lr: float = 1e-3
    """Initial inner step size softplus^-1 of every trunk tensor's learned rate."""
    outer_policy_lr: float = 1e-4
    """Adam learning rate of the policy."""
    lrlr: float = 1e-3
    """Adam learning rate of the learned inner rates."""
    action_sigma: float = 0.2
    """Standard deviation of the Gaussian policy."""

    def validate(self) -> None:
        """Raise ValueError naming the first field with a bad value."""
        for name in ("net_width", "net_depth", "wlinear_dim"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"meta_bc.{name}: expected a positive integer, got {v!r}")
        for name in ("inner_policy_lr", "outer_policy_lr", "lrlr", "action_sigma"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"meta_bc.{name}: expected a positive number, got {v!r}")
        if not isinstance(self.wlinear, bool):
            raise ValueError(f"meta_bc.wlinear: expected true or false, got {self.wlinear!r}")



class MetaBC(MetaAlgorithm):
    """Meta-behaviour-cloning learner: the policy trunk, its learned inner rates and Adam.

    Same constructor arguments and methods as `macaw_fast.MetaLearner` (``meta_loss``,
    ``meta_gradient``, ``meta_step``, ``adapt``, ``act``, ``state_dict``); ``config`` is a
    `MetaBCConfig`.
    """

    metric_names = METRIC_NAMES
    state_format = "macaw-fast/meta-bc"

    def __init__(self, obs_dim: int, act_dim: int, n_train_tasks: int, config: MetaBCConfig | None = None,
                 *, device=None, dtype=torch.float32, backend="auto", fused: bool | None = None,
                 ops_backend: str = "auto", chunk_size: int | str = "auto") -> None:
        self.config = c = config if config is not None else MetaBCConfig()
        c.validate()
        self._setup(obs_dim, act_dim, n_train_tasks, device=device, backend=backend, fused=fused,
                    ops_backend=ops_backend, chunk_size=chunk_size)
        kw = {"device": device, "dtype": dtype}
        self.policy = PolicyNet(obs_dim, act_dim, c.net_width, c.net_depth, False, 1, c.wlinear, c.wlinear_dim, **kw)
        k = 3 if c.wlinear else 2
        self.policy_lrs = nn.Parameter(torch.full((len(self.policy.layers), k), math.log(c.inner_policy_lr), **kw))
        self.optimizer = torch.optim.Adam([
            {"params": list(self.policy.parameters()), "lr": c.outer_policy_lr, "name": "policy"},
            {"params": [self.policy_lrs], "lr": c.lrlr, "name": "lrs"},
        ], **_adam_impl(self.policy_lrs.device))

    def _layers(self) -> list[nn.Module]:
        return self.policy.layers

    def policy_rates(self) -> Tensor:
        """Inner step sizes softplus(rho) of the trunk, (layers, tensors per layer)."""
        return F.softplus(self.policy_lrs)

    # ------------------------------------------------------------------ the algorithm
    def _adapt(self, batch: Batch, thetas) -> tuple[list[Tensor], Tensor]:
        """theta'_i = theta - softplus(rho) * grad L_BC(theta, D_i) for every task; and L_BC (T,)."""
        b = self.backend
        loss_in, grads = b.bc_inner_grads(self.policy, thetas, batch, self.config.action_sigma)
        return b.adapt(self.policy.layers, thetas, grads, self.policy_rates()), loss_in

    def _loss_parts(self, inner: Batch, outer: Batch, thetas) -> tuple[Tensor, tuple]:
        """sum_i L_BC(theta'_i, D_i^out) / N_train, and the detached inner and outer losses (T,)."""
        adapted, loss_in = self._adapt(inner, thetas)
        loss_out = self.backend.bc_loss(self.policy, adapted, outer, self.config.action_sigma)
        return loss_out.sum() / self.n_train_tasks, (loss_in.detach(), loss_out.detach())

    def _metric_values(self, parts: list[tuple], losses: list[Tensor]) -> Tensor:
        with torch.no_grad():
            lin, lout = (torch.cat(p) for p in zip(*parts))
            return torch.stack([lin.mean(), lout.mean(), self.policy_rates().mean(), torch.stack(losses).sum()])

    def meta_loss(self, inner: Batch, outer: Batch) -> tuple[Tensor, dict]:
        """The meta-objective and its metrics (call ``backward()`` on the loss)."""
        self._check_pair(inner, outer)
        loss, parts = self._loss_parts(inner, outer, self.backend.thetas(self.policy.layers))
        return loss, dict(zip(METRIC_NAMES, self._metric_values([parts], [loss.detach()]).tolist()))

    def meta_gradient(self, inner: Batch, outer: Batch, chunk_size: int | str | None = None, *,
                      check_inputs: bool = True) -> MetaGradient:
        """The meta-gradient of `meta_loss` in chunks of tasks (as `MetaLearner.meta_gradient`)."""
        if check_inputs:
            self._check_pair(inner, outer)
        T = inner.num_tasks
        cs = self.resolve_chunk_size(T, chunk_size)
        b, layers = self.backend, self._layers()
        self.optimizer.zero_grad(set_to_none=True)
        leaves = b.step_leaves(layers, T, one_chunk=cs == T)
        losses, parts = [], []
        for start in range(0, T, cs):
            inner_c, outer_c = self._slice(inner, outer, start, min(start + cs, T))
            loss, part = self._loss_parts(inner_c, outer_c, b.chunk_thetas(layers, leaves))
            loss.backward()
            losses.append(loss.detach())
            parts.append(part)
        pending = b.finish_gradients(layers, leaves)
        return MetaGradient(self._metric_values(parts, losses), leaves, pending)

    def adapt(self, batch: Batch) -> Adapted:
        """One behaviour-cloning step of the trunk on each task's batch."""
        self._check(batch, "batch")
        policy, _ = self._adapt(batch, self.backend.thetas(self.policy.layers))
        return Adapted(value=[], policy=policy)

    def act(self, obs: Tensor, adapted: Adapted | None = None, tasks=None) -> Tensor:
        """Policy mean for obs (T, B, obs_dim): adapted per task, or the meta-trained policy."""
        if adapted is not None and tasks is not None:
            adapted = adapted.select(tasks)
        thetas = adapted.policy if adapted is not None else self.policy.trunk.thetas()
        return self.backend.policy_mean(self.policy, thetas, obs)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"format": self.state_format, "version": 1,
                "dims": {"obs_dim": self.obs_dim, "act_dim": self.act_dim, "n_train_tasks": self.n_train_tasks},
                "config": self.config.to_dict(), "policy": self.policy.state_dict(),
                "policy_lrs": self.policy_lrs.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != self.state_format:
            raise ValueError(f"not a macaw-fast MetaBC state (expected 'format': {self.state_format!r}, "
                             f"got {state.get('format')!r})")
        dims = {"obs_dim": self.obs_dim, "act_dim": self.act_dim, "n_train_tasks": self.n_train_tasks}
        if state["dims"] != dims:
            raise ValueError(f"state dims {state['dims']} do not match this learner's {dims}")
        if state["config"] != self.config.to_dict():
            diff = {k for k, v in state["config"].items() if self.config.to_dict().get(k) != v}
            raise ValueError(f"state config differs from this learner's in {sorted(diff)}")
        self.policy.load_state_dict(state["policy"])
        with torch.no_grad():
            self.policy_lrs.copy_(state["policy_lrs"])
        self.optimizer.load_state_dict(state["optimizer"])

    @classmethod
    def from_state_dict(cls, state: dict, *, device=None, backend="auto", fused: bool | None = None,
                        ops_backend: str = "auto", chunk_size: int | str = "auto") -> "MetaBC":
        dims = state["dims"]
        learner = cls(dims["obs_dim"], dims["act_dim"], dims["n_train_tasks"], MetaBCConfig.from_dict(state["config"]),
                      device=device, dtype=state["policy_lrs"].dtype, backend=backend, fused=fused,
                      ops_backend=ops_backend, chunk_size=chunk_size)
        learner.load_state_dict(state)
        return learner
