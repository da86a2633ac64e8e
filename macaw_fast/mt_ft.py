"""Multi-task offline RL, then fine-tuning (the paper's "MT + fine-tune" baseline).

One value function and one policy (plain MLPs, no weight-transform layers, no learned rates) are
trained offline on the pooled data of all training tasks with MACAW's outer losses and no
meta-learning:

    L_V  = mean over the pooled rows of (V(s) - (R + gamma_term * V(s_term)))^2   (target: no gradient)
    L_pi = mean over the pooled rows of -w log N(a; tanh(mu(s)), sigma^2 I),
    w    = exp(min((A - mean A) / (std A * temp), log max_weight)),  A = R + gamma_term V(s_term) - V(s).

At test time each task's copy is fine-tuned on its adaptation batch: ``ft_steps`` SGD steps of the
value function (rate ``ft_value_lr``), then ``ft_steps`` of the policy (rate ``ft_policy_lr``) with
advantages from the fine-tuned value function, all tasks at once (per-task parameters (T, P)).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .algorithm import Adapted, DictConfig, MetaAlgorithm, MetaGradient, _adam_impl
from .data.batch import Batch
from .nets import PolicyNet, ValueNet, advantage_weights, gaussian_log_prob

#: Names of the metrics `MTFT.meta_step` returns, in order.
METRIC_NAMES = ("loss/value", "loss/policy", "adv/mean", "adv/std", "weight/mean", "weight/max")


@dataclass
class MTFTConfig(DictConfig):
    """Hyper-parameters of multi-task training + fine-tuning (shared names mean what MACAW's do)."""

    net_width: int = 100
    """Hidden width of both networks."""
    net_depth: int = 3
    """Hidden layers of both networks."""
    outer_value_lr: float = 1e-5
    """Adam learning rate of the value function (offline training)."""
    outer_policy_lr: float = 1e-4
    """Adam learning rate of the policy (offline training)."""
    action_sigma: float = 0.2
    """Standard deviation of the Gaussian policy."""
    adaptation_temp: float = 1.0
    """Temperature of the advantage weights."""
    exp_advantage_clip: float = 20.0
    """Largest advantage weight."""
    ft_steps: int = 1
    """SGD steps of each network on a task's adaptation batch (1: as many as MACAW's adaptation)."""
    ft_value_lr: float = 1e-3
    """Fine-tuning step size of the value function."""
    ft_policy_lr: float = 1e-3
    """Fine-tuning step size of the policy."""

    def validate(self) -> None:
        for name in ("net_width", "net_depth", "ft_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"mt_ft.{name}: expected a positive integer, got {v!r}")
        for name in ("outer_value_lr", "outer_policy_lr", "action_sigma", "adaptation_temp", "exp_advantage_clip",
                     "ft_value_lr", "ft_policy_lr"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"mt_ft.{name}: expected a positive number, got {v!r}")



class MTFT(MetaAlgorithm):
    """Multi-task offline AWR on the pooled training tasks; per-task fine-tuning at test time."""

    metric_names = METRIC_NAMES
    state_format = "macaw-fast/mt-ft"

    def __init__(self, obs_dim: int, act_dim: int, n_train_tasks: int, config: MTFTConfig | None = None,
                 *, device=None, dtype=torch.float32, backend="auto", fused: bool | None = None,
                 ops_backend: str = "auto", chunk_size: int | str = "auto") -> None:
        self.config = c = config if config is not None else MTFTConfig()
        c.validate()
        self._setup(obs_dim, act_dim, n_train_tasks, device=device, backend=backend, fused=fused,
                    ops_backend=ops_backend, chunk_size=chunk_size)
        kw = {"device": device, "dtype": dtype}
        self.vf = ValueNet(obs_dim, c.net_width, c.net_depth, False, **kw)
        self.policy = PolicyNet(obs_dim, act_dim, c.net_width, c.net_depth, False, 1, False, **kw)
        self.optimizer = torch.optim.Adam([
            {"params": list(self.vf.parameters()), "lr": c.outer_value_lr, "name": "value"},
            {"params": list(self.policy.parameters()), "lr": c.outer_policy_lr, "name": "policy"},
        ], **_adam_impl(self.vf.layers[0].weight.device))

    def _layers(self) -> list[nn.Module]:
        return list(self.vf.layers) + self.policy.layers

    # ------------------------------------------------------------------ the losses, per task
    def _losses(self, v_th, p_th, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-task value and policy losses (T,), advantages and weights (T, B) of ``batch`` with
        thetas shared (P,) or per task (T, P)."""
        c = self.config
        v = self.vf.forward_thetas(v_th, batch.obs)
        with torch.no_grad():
            v_next = self.vf.forward_thetas([t.detach() for t in v_th], batch.terminal_obs)
            target = batch.mc_return + batch.terminal_discount * v_next
            adv = target - v.detach()
            w = advantage_weights(adv, c.adaptation_temp, c.exp_advantage_clip)
        lv = (v - target).pow(2).mean(-1)
        lp = (-w * gaussian_log_prob(batch.action, self.policy.mean(p_th, batch.obs), c.action_sigma)).mean(-1)
        return lv, lp, adv, w

    @staticmethod
    def _pooled(batch: Batch) -> Batch:
        """All tasks' rows as one task (1, T*B, ...)."""
        return Batch(**{k: v.reshape(1, -1, *v.shape[2:]) for k, v in batch})

    # ------------------------------------------------------------------ training
    def meta_gradient(self, inner: Batch, outer: Batch, chunk_size: int | str | None = None, *,
                      check_inputs: bool = True) -> MetaGradient:
        """Gradient of L_V + L_pi on the pooled rows of the step's tasks (``inner`` is not used:
        without meta-learning there is no inner step)."""
        if check_inputs:
            self._check_pair(inner, outer)
        self.optimizer.zero_grad(set_to_none=True)
        lv, lp, adv, w = self._losses(self.vf.thetas(), self.policy.trunk.thetas(), self._pooled(outer))
        loss = lv.sum() + lp.sum()
        loss.backward()
        with torch.no_grad():
            metrics = torch.stack([lv[0], lp[0], adv.mean(), adv.std(), w.mean(), w.max(), loss.detach()])
        return MetaGradient(metrics, [None] * len(self._layers()))

    def meta_loss(self, inner: Batch, outer: Batch) -> tuple[Tensor, dict]:
        self._check_pair(inner, outer)
        lv, lp, adv, w = self._losses(self.vf.thetas(), self.policy.trunk.thetas(), self._pooled(outer))
        loss = lv.sum() + lp.sum()
        vals = [lv[0], lp[0], adv.mean(), adv.std(), w.mean(), w.max()]
        return loss, dict(zip(METRIC_NAMES, [float(x) for x in vals]))

    # ------------------------------------------------------------------ fine-tuning
    def adapt(self, batch: Batch, steps: int | None = None) -> Adapted:
        """``steps`` (default ``config.ft_steps``) SGD steps of each task's value function, then of its
        policy, on the task's batch; every task at once."""
        self._check(batch, "batch")
        c = self.config
        steps = c.ft_steps if steps is None else steps
        T = batch.num_tasks
        with torch.enable_grad():
            v_th = [t.detach().expand(T, -1).clone() for t in self.vf.thetas()]
            for _ in range(steps):
                v_th = [t.requires_grad_(True) for t in v_th]
                lv, _, _, _ = self._losses(v_th, [t.detach() for t in self.policy.trunk.thetas()], batch)
                grads = torch.autograd.grad(lv.sum(), v_th)
                v_th = [(t - c.ft_value_lr * g).detach() for t, g in zip(v_th, grads)]
            p_th = [t.detach().expand(T, -1).clone() for t in self.policy.trunk.thetas()]
            for _ in range(steps):
                p_th = [t.requires_grad_(True) for t in p_th]
                _, lp, _, _ = self._losses(v_th, p_th, batch)
                grads = torch.autograd.grad(lp.sum(), p_th)
                p_th = [(t - c.ft_policy_lr * g).detach() for t, g in zip(p_th, grads)]
        return Adapted(value=v_th, policy=p_th)

    def set_fine_tuning(self, **fields) -> None:
        """Change ``ft_steps``, ``ft_value_lr`` and/or ``ft_policy_lr`` (validated; training is unaffected)."""
        bad = sorted(set(fields) - {"ft_steps", "ft_value_lr", "ft_policy_lr"})
        if bad:
            raise ValueError(f"mt_ft: {bad} are not fine-tuning settings (ft_steps, ft_value_lr, ft_policy_lr)")
        new = dataclasses.replace(self.config, **fields)
        new.validate()
        self.config = new

    def act(self, obs: Tensor, adapted: Adapted | None = None, tasks=None) -> Tensor:
        if adapted is not None and tasks is not None:
            adapted = adapted.select(tasks)
        thetas = adapted.policy if adapted is not None else self.policy.trunk.thetas()
        return self.policy.mean(thetas, obs)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"format": self.state_format, "version": 1,
                "dims": {"obs_dim": self.obs_dim, "act_dim": self.act_dim, "n_train_tasks": self.n_train_tasks},
                "config": self.config.to_dict(), "vf": self.vf.state_dict(), "policy": self.policy.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != self.state_format:
            raise ValueError(f"not a macaw-fast MTFT state (expected 'format': {self.state_format!r}, "
                             f"got {state.get('format')!r})")
        self.vf.load_state_dict(state["vf"])
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])

    @classmethod
    def from_state_dict(cls, state: dict, **kw) -> "MTFT":
        dims = state["dims"]
        dtype = next(iter(state["vf"].values())).dtype
        learner = cls(dims["obs_dim"], dims["act_dim"], dims["n_train_tasks"], MTFTConfig.from_dict(state["config"]),
                      dtype=dtype, **kw)
        learner.load_state_dict(state)
        return learner
