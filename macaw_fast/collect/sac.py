"""Soft actor-critic for many tasks at once: one set of tensors, a leading task dimension.

:class:`BatchedSAC` holds T independent SAC agents (docs/algorithm.md §10: two hidden layers, Adam 3e-4,
batch 256, gamma 0.99, tau 0.005, learned entropy temperature with target ``-act_dim``). Every
weight has shape ``(T, in, out)`` and every layer is one ``torch.baddbmm`` for all tasks; the twin
critics are stacked too (``(2T, in, out)``), so a critic forward is one bmm per layer. The loss
is the SUM over tasks of each task's own mean loss, and Adam works element-wise, so task t's
parameters follow exactly the trajectory that an independent one-task SAC with the same
initialisation, batches and noise would follow (``tests/test_collect_sac.py`` checks this against
:class:`SAC`, a plain ``nn.Linear`` implementation, in float64).

:class:`SAC` is that plain one-task agent: the oracle of the exactness test and the baseline of
``bench/bench_collect.py``.

Order of one update (as in the SAC papers and CleanRL's ``sac_continuous_action.py``):

1. critic: ``y = r + gamma (1 - done) (min(Q1', Q2')(s', a') - alpha log pi(a'|s'))`` with
   ``a' ~ pi(.|s')``; loss ``mean((Q1 - y)^2) + mean((Q2 - y)^2)``; Adam step.
2. actor: ``a ~ pi(.|s)`` (reparameterised), loss ``mean(alpha log pi(a|s) - min(Q1, Q2)(s, a))``
   with the critics just updated; Adam step on the actor only.
3. temperature: loss ``-mean(log_alpha (log pi(a|s) + target_entropy))``; Adam step.
4. targets: ``theta' <- (1 - tau) theta' + tau theta``.

``alpha`` in steps 1 and 2 is the value before step 3. The policy is a tanh-squashed Gaussian
with ``log_std`` clamped to [-20, 2]. ``done`` is 1 only for a true termination (a time limit is
not one), so targets bootstrap through truncation.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor, nn

__all__ = ["SACConfig", "BatchedSAC", "SAC", "squashed_gaussian"]

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
#: SACConfig.matmul values -> the dtype of the hidden layers' products (None: the parameters' own).
MATMUL_DTYPES = {"float32": None, "bfloat16": torch.bfloat16}
_LOG2 = math.log(2.0)


@dataclass
class SACConfig:
    """Hyper-parameters of one SAC agent (the same for every task)."""

    width: int = 256
    """Units in each of the two hidden layers (actor and critics)."""
    lr: float = 3e-4
    """Adam learning rate (actor, critics and temperature)."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak coefficient of the target critics."""
    batch_size: int = 256
    """Transitions per task per update."""
    init_alpha: float = 1.0
    """Initial entropy temperature."""
    matmul: str = "float32"
    """Precision of the hidden layers' matrix products (forward and backward): 'float32', or
    'bfloat16' (inputs and weights rounded to bfloat16, products accumulated in float32; the
    activations between hidden layers stay bfloat16; the output layers, losses, parameters and
    Adam stay float32). bfloat16 is ~3x faster per GEMM on CPUs with AVX512-BF16 or AMX and
    slower elsewhere; it is not bit-comparable with float32 (docs/collect.md)."""

    def validate(self) -> "SACConfig":
        """Raise ValueError naming the first bad field."""
        if not isinstance(self.width, int) or self.width < 1:
            raise ValueError(f"width: expected a positive int, got {self.width!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {self.batch_size!r}")
        if self.matmul not in MATMUL_DTYPES:
            raise ValueError(f"matmul: expected one of {', '.join(MATMUL_DTYPES)}, got {self.matmul!r}")
        for name, lo, hi in (("lr", 0.0, math.inf), ("gamma", 0.0, 1.0), ("tau", 0.0, 1.0), ("init_alpha", 0.0, math.inf)):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not (lo < v <= hi) or not math.isfinite(v):
                raise ValueError(f"{name}: expected a number in ({lo}, {hi}], got {v!r}")
        return self


def squashed_gaussian(mean: Tensor, log_std: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """Reparameterised tanh-Gaussian sample ``tanh(mean + std * eps)`` and its log-density.

    The log-density sums over the last dimension and includes the tanh correction
    ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))`` (numerically stable form).
    """
    std = log_std.exp()
    u = mean + std * eps
    logp = (-0.5 * eps.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    logp = logp - (2.0 * (_LOG2 - u - nn.functional.softplus(-2.0 * u))).sum(-1)
    return torch.tanh(u), logp


def _init_linear(n: int, fan_in: int, fan_out: int, generator: torch.Generator | None, dtype) -> tuple[Tensor, Tensor]:
    """``n`` layers initialised like ``nn.Linear`` (U(-1/sqrt(in), 1/sqrt(in)) for weight and bias)."""
    bound = 1.0 / math.sqrt(fan_in)
    w = (torch.rand(n, fan_in, fan_out, generator=generator, dtype=dtype) * 2 - 1) * bound
    b = (torch.rand(n, 1, fan_out, generator=generator, dtype=dtype) * 2 - 1) * bound
    return w, b


def _mlp(x: Tensor, layers: list[tuple[Tensor, Tensor]], mm_dtype: torch.dtype | None = None) -> Tensor:
    """Batched MLP: ``x`` (N, B, in) through (W (N, in, out), b (N, 1, out)) pairs, ReLU between.

    A layer with one output (the critics' last) is a broadcast multiply and a sum: MKL's batched
    GEMM with N = 1 ran at ~2 GFLOP/s here (3.3 ms for (100, 256, 128) x (100, 128, 1)). The ReLUs
    run in place on each layer's fresh output (baddbmm's backward does not read its output).

    ``mm_dtype`` (e.g. bfloat16): the hidden layers multiply in that dtype (their input, weight
    and bias cast to it; autograd casts the gradients back), so the activations between them are
    in it too; the output layer runs in the parameters' dtype.
    """
    last = len(layers) - 1
    for i, (w, b) in enumerate(layers):
        if w.shape[-1] == 1:                    # promotes a low-precision x to w's dtype
            x = (x * w.transpose(1, 2)).sum(-1, keepdim=True) + b
        elif mm_dtype is not None and i < last:
            x = torch.baddbmm(b.to(mm_dtype), x.to(mm_dtype), w.to(mm_dtype))
        else:
            x = torch.baddbmm(b, x.to(w.dtype), w)
        if i < last:
            x = x.relu_()
    return x


class BatchedSAC:
    """T independent SAC agents whose parameters carry a leading task dimension.

    ``actor[k] = (W, b)`` with W (T, in, out), b (T, 1, out); ``critic[k]`` the same with 2T
    leading entries (rows 0..T-1 are Q1 of each task, T..2T-1 Q2); ``log_alpha`` (T,).
    """

    def __init__(self, num_tasks: int, obs_dim: int, act_dim: int, config: SACConfig | None = None,
                 seed: int | None = 0, dtype: torch.dtype = torch.float32, fused_adam: bool | None = None):
        self.cfg = (config or SACConfig()).validate()
        if num_tasks < 1 or obs_dim < 1 or act_dim < 1:
            raise ValueError(f"num_tasks, obs_dim, act_dim: expected positive ints, got {num_tasks}, {obs_dim}, {act_dim}")
        self.T, self.obs_dim, self.act_dim, self.dtype = num_tasks, obs_dim, act_dim, dtype
        self._mm_dtype = MATMUL_DTYPES[self.cfg.matmul]
        g = None if seed is None else torch.Generator().manual_seed(seed)
        H = self.cfg.width
        T = num_tasks
        self.actor = [_init_linear(T, i, o, g, dtype) for i, o in ((obs_dim, H), (H, H), (H, 2 * act_dim))]
        self.critic = [_init_linear(2 * T, i, o, g, dtype) for i, o in ((obs_dim + act_dim, H), (H, H), (H, 1))]
        self.critic_target = [(w.clone(), b.clone()) for w, b in self.critic]
        self.log_alpha = torch.full((T,), math.log(self.cfg.init_alpha), dtype=dtype)
        for p in self.actor_params() + self.critic_params() + [self.log_alpha]:
            p.requires_grad_(True)
        self.target_entropy = -float(act_dim)
        kw = {"lr": self.cfg.lr}
        if fused_adam is None:
            fused_adam = dtype in (torch.float32, torch.float64)
        kw["fused" if fused_adam else "foreach"] = True
        self.actor_opt = torch.optim.Adam(self.actor_params(), **kw)
        self.critic_opt = torch.optim.Adam(self.critic_params(), **kw)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], **kw)

    # ---- parameters

    def actor_params(self) -> list[Tensor]:
        """Actor tensors in layer order (W0, b0, W1, b1, W2, b2)."""
        return [t for wb in self.actor for t in wb]

    def critic_params(self) -> list[Tensor]:
        """Critic tensors in layer order, both critics stacked."""
        return [t for wb in self.critic for t in wb]

    def target_params(self) -> list[Tensor]:
        """Target-critic tensors in layer order."""
        return [t for wb in self.critic_target for t in wb]

    # ---- networks

    def policy(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and clamped log-std of the pre-tanh Gaussian; ``obs`` (T, B, obs_dim)."""
        out = _mlp(obs, self.actor, self._mm_dtype)
        mean, log_std = out.split(self.act_dim, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def q(self, obs: Tensor, action: Tensor, params: list[tuple[Tensor, Tensor]] | None = None) -> Tensor:
        """Both critics at (obs, action) (T, B, .): returns (2, T, B)."""
        x = torch.cat((obs, action), -1)
        x = x.unsqueeze(0).expand(2, *x.shape).reshape(2 * self.T, *x.shape[1:])
        return _mlp(x, self.critic if params is None else params, self._mm_dtype).view(2, self.T, -1)

    @torch.no_grad()
    def act(self, obs: Tensor, eps: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Sampled actions for ``obs`` (T, B, obs_dim), with the given standard-normal noise ``eps``
        (T, B, act_dim) or fresh noise from ``generator``."""
        mean, log_std = self.policy(obs)
        if eps is None:
            eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        a, _ = squashed_gaussian(mean, log_std, eps)
        return a

    @torch.no_grad()
    def act_mean(self, obs: Tensor) -> Tensor:
        """The mean action ``tanh(mu(obs))`` (for evaluation rollouts); ``obs`` (T, B, obs_dim)."""
        return torch.tanh(self.policy(obs)[0])

    # ---- the update

    def update(self, batch: Mapping[str, Tensor], eps_next: Tensor | None = None, eps_pi: Tensor | None = None,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """One SAC update of every task's agent on its own batch.

        ``batch`` holds ``obs`` (T, B, obs), ``action`` (T, B, act), ``reward`` (T, B),
        ``next_obs`` (T, B, obs), ``done`` (T, B) (1 = terminated). ``eps_next``/``eps_pi``
        (T, B, act) are the standard-normal draws for a' and a (drawn from ``generator`` when
        omitted). Returns per-task metrics (each (T,), detached).
        """
        obs, act, rew, nobs, done = (batch[k] for k in ("obs", "action", "reward", "next_obs", "done"))
        T, B = rew.shape
        if T != self.T:
            raise ValueError(f"batch has {T} tasks, the agent {self.T}")
        shape = (T, B, self.act_dim)
        if eps_next is None:
            eps_next = torch.randn(shape, generator=generator, dtype=obs.dtype)
        if eps_pi is None:
            eps_pi = torch.randn(shape, generator=generator, dtype=obs.dtype)
        cfg = self.cfg
        alpha = self.log_alpha.detach().exp()  # (T,)

        # 1. critics
        with torch.no_grad():
            mean, log_std = self.policy(nobs)
            a2, logp2 = squashed_gaussian(mean, log_std, eps_next)
            qt = self.q(nobs, a2, self.critic_target).min(0).values
            y = rew + cfg.gamma * (1.0 - done) * (qt - alpha[:, None] * logp2)
        qs = self.q(obs, act)
        critic_loss_t = (qs - y).square().mean(-1).sum(0)  # (T,): mean over batch, sum of both critics
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss_t.sum().backward(inputs=self.critic_params())
        self.critic_opt.step()

        # 2. actor (gradients flow through the critics to the action but only the actor is updated)
        mean, log_std = self.policy(obs)
        a, logp = squashed_gaussian(mean, log_std, eps_pi)
        qpi = self.q(obs, a).min(0).values
        actor_loss_t = (alpha[:, None] * logp - qpi).mean(-1)
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss_t.sum().backward(inputs=self.actor_params())
        self.actor_opt.step()

        # 3. temperature
        alpha_loss_t = -(self.log_alpha[:, None] * (logp.detach() + self.target_entropy)).mean(-1)
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss_t.sum().backward()
        self.alpha_opt.step()

        # 4. targets
        with torch.no_grad():
            torch._foreach_lerp_(self.target_params(), self.critic_params(), cfg.tau)
        return {"loss/critic": critic_loss_t.detach(), "loss/actor": actor_loss_t.detach(),
                "alpha": alpha, "entropy": -logp.detach().mean(-1)}

    # ---- state

    def state_dict(self) -> dict:
        """Everything needed to continue training: parameters, targets and the three Adam states."""
        return {"actor": [t.detach().clone() for t in self.actor_params()],
                "critic": [t.detach().clone() for t in self.critic_params()],
                "critic_target": [t.clone() for t in self.target_params()],
                "log_alpha": self.log_alpha.detach().clone(),
                # deep copies: Optimizer.state_dict() returns the live moment tensors, and
                # load_state_dict would alias them into the other optimizer
                "actor_opt": copy.deepcopy(self.actor_opt.state_dict()),
                "critic_opt": copy.deepcopy(self.critic_opt.state_dict()),
                "alpha_opt": copy.deepcopy(self.alpha_opt.state_dict())}

    def load_state_dict(self, sd: Mapping) -> None:
        """Restore :meth:`state_dict` (shapes must match)."""
        with torch.no_grad():
            for dst, src, name in ((self.actor_params(), sd["actor"], "actor"),
                                   (self.critic_params(), sd["critic"], "critic"),
                                   (self.target_params(), sd["critic_target"], "critic_target"),
                                   ([self.log_alpha], [sd["log_alpha"]], "log_alpha")):
                if len(dst) != len(src):
                    raise ValueError(f"checkpoint {name}: expected {len(dst)} tensors, got {len(src)}")
                for d, s in zip(dst, src):
                    if d.shape != s.shape:
                        raise ValueError(f"checkpoint {name}: expected shape {tuple(d.shape)}, got {tuple(s.shape)}")
                    d.copy_(s)
        self.actor_opt.load_state_dict(sd["actor_opt"])
        self.critic_opt.load_state_dict(sd["critic_opt"])
        self.alpha_opt.load_state_dict(sd["alpha_opt"])


# --------------------------------------------------------------------------------------------
# the plain one-task agent (oracle and baseline)


class _Critic(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim + act_dim, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                 nn.Linear(width, 1))

    def forward(self, obs: Tensor, act: Tensor) -> Tensor:
        return self.net(torch.cat((obs, act), -1)).squeeze(-1)


class SAC(nn.Module):
    """One task's SAC agent written the ordinary way (``nn.Linear`` layers, three optimizers)."""

    def __init__(self, obs_dim: int, act_dim: int, config: SACConfig | None = None, fused_adam: bool = True):
        super().__init__()
        self.cfg = (config or SACConfig()).validate()
        if self.cfg.matmul != "float32":
            raise ValueError(f"matmul: the one-task SAC multiplies in its parameters' dtype; expected 'float32', "
                             f"got {self.cfg.matmul!r}")
        H = self.cfg.width
        self.act_dim = act_dim
        self.actor = nn.Sequential(nn.Linear(obs_dim, H), nn.ReLU(), nn.Linear(H, H), nn.ReLU(), nn.Linear(H, 2 * act_dim))
        self.q1, self.q2 = _Critic(obs_dim, act_dim, H), _Critic(obs_dim, act_dim, H)
        self.q1_target, self.q2_target = _Critic(obs_dim, act_dim, H), _Critic(obs_dim, act_dim, H)
        self.q1_target.load_state_dict(self.q1.state_dict())
        self.q2_target.load_state_dict(self.q2.state_dict())
        self.log_alpha = nn.Parameter(torch.tensor(math.log(self.cfg.init_alpha)))
        self.target_entropy = -float(act_dim)
        kw = {"lr": self.cfg.lr, ("fused" if fused_adam else "foreach"): True}
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), **kw)
        self.critic_opt = torch.optim.Adam(list(self.q1.parameters()) + list(self.q2.parameters()), **kw)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], **kw)

    def policy(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and clamped log-std of the pre-tanh Gaussian."""
        mean, log_std = self.actor(obs).split(self.act_dim, -1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    @torch.no_grad()
    def act(self, obs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A sampled action for ``obs``."""
        mean, log_std = self.policy(obs)
        return squashed_gaussian(mean, log_std, torch.randn(mean.shape, generator=generator, dtype=mean.dtype))[0]

    def update(self, batch: Mapping[str, Tensor], eps_next: Tensor | None = None, eps_pi: Tensor | None = None,
               generator: torch.Generator | None = None) -> dict[str, float]:
        """One SAC update on ``batch`` (``obs`` (B, obs), ``action``, ``reward`` (B,), ``next_obs``, ``done``)."""
        obs, act, rew, nobs, done = (batch[k] for k in ("obs", "action", "reward", "next_obs", "done"))
        shape = (rew.shape[0], self.act_dim)
        eps_next = torch.randn(shape, generator=generator, dtype=obs.dtype) if eps_next is None else eps_next
        eps_pi = torch.randn(shape, generator=generator, dtype=obs.dtype) if eps_pi is None else eps_pi
        cfg = self.cfg
        alpha = self.log_alpha.detach().exp()
        with torch.no_grad():
            a2, logp2 = squashed_gaussian(*self.policy(nobs), eps_next)
            qt = torch.min(self.q1_target(nobs, a2), self.q2_target(nobs, a2))
            y = rew + cfg.gamma * (1.0 - done) * (qt - alpha * logp2)
        critic_loss = ((self.q1(obs, act) - y) ** 2).mean() + ((self.q2(obs, act) - y) ** 2).mean()
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()

        a, logp = squashed_gaussian(*self.policy(obs), eps_pi)
        for p in list(self.q1.parameters()) + list(self.q2.parameters()):
            p.requires_grad_(False)
        actor_loss = (alpha * logp - torch.min(self.q1(obs, a), self.q2(obs, a))).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        for p in list(self.q1.parameters()) + list(self.q2.parameters()):
            p.requires_grad_(True)

        alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        self.alpha_opt.zero_grad()
        alpha_loss.backward()
        self.alpha_opt.step()

        with torch.no_grad():
            for net, tgt in ((self.q1, self.q1_target), (self.q2, self.q2_target)):
                for p, pt in zip(net.parameters(), tgt.parameters()):
                    pt.mul_(1 - cfg.tau).add_(p, alpha=cfg.tau)
        return {"loss/critic": critic_loss.item(), "loss/actor": actor_loss.item(), "alpha": alpha.item()}

    @classmethod
    def from_batched(cls, agent: BatchedSAC, task: int) -> "SAC":
        """A one-task agent holding exactly task ``task``'s parameters of ``agent`` (fresh optimizers)."""
        sac = cls(agent.obs_dim, agent.act_dim, agent.cfg).to(agent.dtype)
        T = agent.T
        with torch.no_grad():
            for lin, (w, b) in zip(sac.actor[::2], agent.actor):
                lin.weight.copy_(w[task].T)
                lin.bias.copy_(b[task, 0])
            for q, qt, k in ((sac.q1, sac.q1_target, task), (sac.q2, sac.q2_target, T + task)):
                for lin, lint, (w, b), (wt, bt) in zip(q.net[::2], qt.net[::2], agent.critic, agent.critic_target):
                    lin.weight.copy_(w[k].T)
                    lin.bias.copy_(b[k, 0])
                    lint.weight.copy_(wt[k].T)
                    lint.bias.copy_(bt[k, 0])
            sac.log_alpha.copy_(agent.log_alpha[task])
        # optimizers were built before .to(dtype): rebuild them on the converted parameters
        kw = dict(agent.actor_opt.defaults)
        kw = {"lr": kw["lr"], "fused": kw.get("fused") or None, "foreach": kw.get("foreach") or None}
        kw = {k: v for k, v in kw.items() if v is not None}
        sac.actor_opt = torch.optim.Adam(sac.actor.parameters(), **kw)
        sac.critic_opt = torch.optim.Adam(list(sac.q1.parameters()) + list(sac.q2.parameters()), **kw)
        sac.alpha_opt = torch.optim.Adam([sac.log_alpha], **kw)
        return sac
