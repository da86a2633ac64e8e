"""A context-based offline meta-RL baseline in the style of FOCAL (Li et al., ICLR 2021).

A deterministic context encoder maps each transition (s, a, r, s') of a task's batch to a vector;
their mean over the batch is the task's latent z (``latent_dim``). The encoder is trained, as in
FOCAL, only by a distance-metric loss that pulls together the latents of two batches of the same
task and pushes apart those of different tasks:

    L_metric = mean over tasks i of |z_i - z'_i|^2
               + mean over pairs i != j of beta / (|z_i - z'_j|^n + eps)

with z from each task's inner batch and z' from its outer batch (``metric_beta``, ``metric_power``,
``metric_eps``). A value function V(s, z) and a policy mu(s, z) (plain MLPs on [s, z]) are trained
on the outer rows with MACAW's outer losses, conditioned on the DETACHED inner-batch latent:

    L_V  = mean (V(s, z) - (R + gamma_term V(s_term, z)))^2                 (target: no gradient)
    L_pi = mean -w log N(a; mu(s, z), sigma^2 I),  w = advantage weights of A = target - V(s, z)

FOCAL pairs its encoder with an off-policy actor-critic (BRAC); this baseline keeps MACAW's
advantage-weighted losses instead, so that the comparison isolates how a task is inferred
(a latent from the batch vs MACAW's gradient step), not which offline RL loss is used.

"Adaptation" on a test task is inference: z from its adaptation batch, no gradient step. The
unadapted policy is mu(s, 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from .algorithm import Adapted, DictConfig, MetaAlgorithm, MetaGradient, _adam_impl
from .data.batch import Batch
from .nets import MLP, PolicyNet, ValueNet, advantage_weights, gaussian_log_prob, mlp_forward

#: Names of the metrics `FOCAL.meta_step` returns, in order.
METRIC_NAMES = ("loss/value", "loss/policy", "loss/metric", "adv/mean", "adv/std", "weight/mean", "weight/max",
                "z/dist_same", "z/dist_other")


@dataclass
class FOCALConfig(DictConfig):
    """Hyper-parameters of the FOCAL-style baseline (shared names mean what MACAW's do)."""

    net_width: int = 100
    """Hidden width of the value function, the policy and the encoder."""
    net_depth: int = 3
    """Hidden layers of the value function and the policy."""
    encoder_depth: int = 2
    """Hidden layers of the context encoder."""
    latent_dim: int = 8
    """Size of the task latent z."""
    outer_value_lr: float = 1e-5
    """Adam learning rate of the value function."""
    outer_policy_lr: float = 1e-4
    """Adam learning rate of the policy."""
    encoder_lr: float = 3e-4
    """Adam learning rate of the context encoder."""
    metric_beta: float = 1.0
    """Weight of the push-apart term of the distance-metric loss."""
    metric_power: float = 2.0
    """Power n of the distance in the push-apart term."""
    metric_eps: float = 0.1
    """eps in beta / (|z_i - z'_j|^n + eps)."""
    action_sigma: float = 0.2
    """Standard deviation of the Gaussian policy."""
    adaptation_temp: float = 1.0
    """Temperature of the advantage weights."""
    exp_advantage_clip: float = 20.0
    """Largest advantage weight."""

    def validate(self) -> None:
        for name in ("net_width", "net_depth", "encoder_depth", "latent_dim"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"focal.{name}: expected a positive integer, got {v!r}")
        for f in fields(self):
            if f.type in ("float", float):
                v = getattr(self, f.name)
                if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
                    raise ValueError(f"focal.{f.name}: expected a positive number, got {v!r}")



def transitions(batch: Batch) -> Tensor:
    """The encoder's input per row: [s, a, r, s'] (T, B, 2 obs + act + 1)."""
    return torch.cat([batch.obs, batch.action, batch.reward.unsqueeze(-1), batch.next_obs], dim=-1)


def metric_loss(z: Tensor, z2: Tensor, beta: float, power: float, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """FOCAL's distance-metric loss between two latents per task (T, Z), and the mean distances of
    same-task and different-task pairs."""
    d2 = (z.unsqueeze(1) - z2.unsqueeze(0)).pow(2).sum(-1)          # (T, T): |z_i - z'_j|^2
    T = z.shape[0]
    same = torch.eye(T, dtype=torch.bool, device=z.device)
    loss = d2.diagonal().mean()
    dist = d2.clamp_min(1e-30).sqrt()
    if T > 1:
        loss = loss + (beta / (dist[~same].pow(power) + eps)).mean()
        other = dist[~same].mean()
    else:
        other = torch.zeros((), dtype=z.dtype, device=z.device)
    return loss, dist.diagonal().mean(), other


class FOCAL(MetaAlgorithm):
    """Context encoder (distance-metric learning) + z-conditioned value function and AWR policy."""

    metric_names = METRIC_NAMES
    state_format = "macaw-fast/focal"

    def __init__(self, obs_dim: int, act_dim: int, n_train_tasks: int, config: FOCALConfig | None = None,
                 *, device=None, dtype=torch.float32, backend="auto", fused: bool | None = None,
                 ops_backend: str = "auto", chunk_size: int | str = "auto") -> None:
        self.config = c = config if config is not None else FOCALConfig()
        c.validate()
        self._setup(obs_dim, act_dim, n_train_tasks, device=device, backend=backend, fused=fused,
                    ops_backend=ops_backend, chunk_size=chunk_size)
        kw = {"device": device, "dtype": dtype}
        Z = c.latent_dim
        self.encoder = MLP([2 * obs_dim + act_dim + 1] + [c.net_width] * c.encoder_depth + [Z], False, **kw)
        self.vf = ValueNet(obs_dim + Z, c.net_width, c.net_depth, False, **kw)
        self.policy = PolicyNet(obs_dim + Z, act_dim, c.net_width, c.net_depth, False, 1, False, **kw)
        self.optimizer = torch.optim.Adam([
            {"params": list(self.vf.parameters()), "lr": c.outer_value_lr, "name": "value"},
            {"params": list(self.policy.parameters()), "lr": c.outer_policy_lr, "name": "policy"},
            {"params": list(self.encoder.parameters()), "lr": c.encoder_lr, "name": "encoder"},
        ], **_adam_impl(self.vf.layers[0].weight.device))

    def _layers(self) -> list[nn.Module]:
        return list(self.vf.layers) + self.policy.layers + list(self.encoder.layers)

    # ------------------------------------------------------------------ the pieces
    def latent(self, batch: Batch, thetas=None) -> Tensor:
        """Each task's latent z (T, Z): the mean over its rows of the encoded transitions."""
        th = self.encoder.thetas() if thetas is None else thetas
        return mlp_forward(th, self.encoder.dims, transitions(batch)).mean(1)

    @staticmethod
    def _with_z(obs: Tensor, z: Tensor) -> Tensor:
        """[obs, z] with z (T, Z) broadcast over the rows of obs (T, B, obs)."""
        return torch.cat([obs, z.unsqueeze(-2).expand(*obs.shape[:-1], z.shape[-1])], dim=-1)

    def _rl_losses(self, v_th, p_th, z: Tensor, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-task value and policy losses (T,), advantages and weights (T, B) of ``batch`` given z."""
        c = self.config
        v = self.vf.forward_thetas(v_th, self._with_z(batch.obs, z))
        with torch.no_grad():
            v_next = self.vf.forward_thetas([t.detach() for t in v_th], self._with_z(batch.terminal_obs, z))
            target = batch.mc_return + batch.terminal_discount * v_next
            adv = target - v.detach()
            w = advantage_weights(adv, c.adaptation_temp, c.exp_advantage_clip)
        lv = (v - target).pow(2).mean(-1)
        mu = self.policy.mean(p_th, self._with_z(batch.obs, z))
        lp = (-w * gaussian_log_prob(batch.action, mu, c.action_sigma)).mean(-1)
        return lv, lp, adv, w

    def _loss(self, inner: Batch, outer: Batch):
        c = self.config
        z_in, z_out = self.latent(inner), self.latent(outer)
        lm, d_same, d_other = metric_loss(z_in, z_out, c.metric_beta, c.metric_power, c.metric_eps)
        lv, lp, adv, w = self._rl_losses(self.vf.thetas(), self.policy.trunk.thetas(), z_in.detach(), outer)
        loss = lv.mean() + lp.mean() + lm
        vals = [lv.mean(), lp.mean(), lm, adv.mean(), adv.std(), w.mean(), w.max(), d_same, d_other]
        return loss, vals

    # ------------------------------------------------------------------ training
    def meta_gradient(self, inner: Batch, outer: Batch, chunk_size: int | str | None = None, *,
                      check_inputs: bool = True) -> MetaGradient:
        """Gradient of L_V + L_pi + L_metric over the step's tasks (one pass: nothing to chunk)."""
        if check_inputs:
            self._check_pair(inner, outer)
        self.optimizer.zero_grad(set_to_none=True)
        loss, vals = self._loss(inner, outer)
        loss.backward()
        with torch.no_grad():
            metrics = torch.stack([v.detach() for v in vals] + [loss.detach()])
        return MetaGradient(metrics, [None] * len(self._layers()))

    def meta_loss(self, inner: Batch, outer: Batch) -> tuple[Tensor, dict]:
        self._check_pair(inner, outer)
        loss, vals = self._loss(inner, outer)
        return loss, dict(zip(METRIC_NAMES, [float(x) for x in vals]))

    # ------------------------------------------------------------------ inference
    def adapt(self, batch: Batch) -> Adapted:
        """Each task's latent from its batch (no gradient step): ``Adapted(value=[z], policy=[z])``."""
        self._check(batch, "batch")
        with torch.no_grad():
            z = self.latent(batch)
        return Adapted(value=[z], policy=[z])

    def act(self, obs: Tensor, adapted: Adapted | None = None, tasks=None) -> Tensor:
        """Policy mean mu(obs, z) for obs (T, B, obs_dim): z of each adapted task, or 0 (unadapted)."""
        if adapted is not None and tasks is not None:
            adapted = adapted.select(tasks)
        if adapted is None:
            z = obs.new_zeros(*obs.shape[:-2], self.config.latent_dim) if obs.dim() >= 2 else \
                obs.new_zeros(self.config.latent_dim)
        else:
            z = adapted.policy[0]
        if obs.dim() == 1:
            return self.policy.mean(self.policy.trunk.thetas(), torch.cat([obs, z.reshape(-1)]))
        return self.policy.mean(self.policy.trunk.thetas(), self._with_z(obs, z))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"format": self.state_format, "version": 1,
                "dims": {"obs_dim": self.obs_dim, "act_dim": self.act_dim, "n_train_tasks": self.n_train_tasks},
                "config": self.config.to_dict(), "encoder": self.encoder.state_dict(), "vf": self.vf.state_dict(),
                "policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != self.state_format:
            raise ValueError(f"not a macaw-fast FOCAL state (expected 'format': {self.state_format!r}, "
                             f"got {state.get('format')!r})")
        self.encoder.load_state_dict(state["encoder"])
        self.vf.load_state_dict(state["vf"])
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])

    @classmethod
    def from_state_dict(cls, state: dict, **kw) -> "FOCAL":
        dims = state["dims"]
        dtype = next(iter(state["vf"].values())).dtype
        learner = cls(dims["obs_dim"], dims["act_dim"], dims["n_train_tasks"], FOCALConfig.from_dict(state["config"]),
                      dtype=dtype, **kw)
        learner.load_state_dict(state)
        return learner
