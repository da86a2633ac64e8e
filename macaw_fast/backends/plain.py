"""The plain-torch execution strategy: MACAW's operations as ordinary autograd (the readable one).

`TorchBackend` is also the base class of the other strategies: each overrides only the operations
it runs differently, with the same inputs, outputs and meaning (listed in docs/algorithm.md §4,
"Where each piece runs").
Every tensor that carries a task axis is (T, ...) with T tasks of the meta-batch; generated
parameters ``thetas`` are one tensor per layer, shared (P,) or per task (T, P).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nets import PolicyNet, ValueNet, advantage_weights, gaussian_log_prob


class TorchBackend:
    """MACAW's operations in plain torch (create_graph autograd for the inner gradients).

    Works on every device and dtype; the meta-gradient equals the per-task reference loop. The
    other strategies subclass it (`macaw_fast.backends.cpu.CpuBackend`,
    `macaw_fast.backends.fused.FusedBackend`).
    """

    #: The word `MetaLearner(backend=...)` and ``macaw-fast train --backend`` use for this strategy.
    name = "torch"

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # ------------------------------------------------------------------ generated parameters
    def thetas(self, layers) -> list[Tensor]:
        """theta_k (P_k,) of every layer, with graph back to the layer's parameters."""
        return [layer.theta() for layer in layers]

    def step_leaves(self, layers, num_tasks: int, one_chunk: bool) -> list[Tensor | None]:
        """Generated parameters shared by every task chunk of one meta-step (leaves whose ``.grad``
        gathers dL/dtheta over all chunks), or None for a layer whose chunks make their own (here:
        every layer; autograd then adds each chunk's gradient into z, W, b directly)."""
        return [None] * len(layers)

    def chunk_thetas(self, layers, leaves: list[Tensor | None]) -> list[Tensor]:
        """One chunk's starting thetas: the step's leaves, or theta made afresh (with graph)."""
        return [layer.theta() if th is None else th for layer, th in zip(layers, leaves)]

    def finish_gradients(self, layers, leaves: list[Tensor | None]) -> object:
        """After every chunk's backward: turn what the leaves gathered into parameter gradients.
        Returns what `apply_update` / `dense_gradients` still need (None: every ``.grad`` is set)."""
        return None

    def dense_gradients(self, layers, leaves: list[Tensor | None], pending: object) -> None:
        """Form every parameter's ``.grad`` from ``pending`` (for drivers that reduce gradients)."""

    def apply_update(self, optimizer: torch.optim.Optimizer, layers, leaves: list[Tensor | None],
                     pending: object) -> None:
        """One optimizer step of every parameter from the meta-gradient."""
        optimizer.step()

    def value_chunk_size(self, num_tasks: int, chunk: int, auto: bool) -> int:
        """Tasks per value-part pass when the policy part runs in chunks of ``chunk`` tasks."""
        return chunk

    # ------------------------------------------------------------------ forward passes
    def value(self, vf: ValueNet, thetas, obs: Tensor) -> Tensor:
        """V(obs) (T, B), with graph."""
        return vf.forward_thetas(thetas, obs)

    def value_nograd(self, vf: ValueNet, thetas, obs: Tensor) -> Tensor:
        """V(obs) (T, B) without a graph (advantages and bootstrap targets)."""
        with torch.no_grad():
            return self.value(vf, [t.detach() for t in thetas], obs)

    def policy_mean(self, policy: PolicyNet, thetas, obs: Tensor) -> Tensor:
        """mu(obs) = tanh(trunk(obs)) (T, B, act)."""
        return policy.mean(thetas, obs)

    # ------------------------------------------------------------------ the inner steps
    def value_inner_grads(self, vf: ValueNet, thetas, obs: Tensor, target: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Per-task inner value losses L_V(phi) = mean_b (V(s_b) - R_b)^2 (T,) and their gradients
        dL_V/dtheta_k (T, P_k) for every layer, differentiable once more."""
        T = obs.shape[0]
        per_task = [th.expand(T, -1) for th in thetas]
        loss = (self.value(vf, per_task, obs) - target).pow(2).mean(-1)
        return loss, list(torch.autograd.grad(loss.sum(), per_task, create_graph=True))

    def policy_inner_loss(self, policy: PolicyNet, thetas, batch, adv: Tensor, weights: Tensor | None,
                          head_weight: Tensor | None, config) -> Tensor:
        """Per-task inner policy loss (T,): the advantage-weighted regression term
        -mean_b w_b log pi(a_b|s_b) plus softplus(kappa) * mean_b (A_hat(s_b, a_b) - A_b)^2."""
        n = policy.num_trunk_layers
        mu, hidden = policy.mean(thetas[:n], batch.obs, return_hidden=True)
        loss = (-weights * gaussian_log_prob(batch.action, mu, config.action_sigma)).mean(-1)
        if policy.head is not None:
            pred = policy.advantage(thetas[n:], hidden, batch.action)
            loss = loss + head_weight * (pred - adv).pow(2).mean(-1)
        return loss

    def policy_inner_grads(self, policy: PolicyNet, thetas, batch, adv: Tensor, weights: Tensor | None,
                           head_weight: Tensor | None, config, n_grads: int) -> tuple[Tensor, list[Tensor]]:
        """`policy_inner_loss` (T,) and its gradients for the first ``n_grads`` layers."""
        T = batch.num_tasks
        per_task = [th.expand(T, -1) for th in thetas]
        loss = self.policy_inner_loss(policy, per_task, batch, adv, weights, head_weight, config)
        return loss, list(torch.autograd.grad(loss.sum(), per_task[:n_grads], create_graph=True))

    def bc_loss(self, policy: PolicyNet, thetas, batch, sigma: float) -> Tensor:
        """Behaviour cloning: -mean_b log N(a_b; mu_theta(s_b), sigma^2 I) per task (T,) (trunk thetas)."""
        mu = self.policy_mean(policy, thetas, batch.obs)
        return -gaussian_log_prob(batch.action, mu, sigma).mean(-1)

    def bc_inner_grads(self, policy: PolicyNet, thetas, batch, sigma: float) -> tuple[Tensor, list[Tensor]]:
        """`bc_loss` (T,) and its gradients with respect to every trunk layer, differentiable once more."""
        T = batch.num_tasks
        per_task = [th.expand(T, -1) for th in thetas]
        loss = TorchBackend.bc_loss(self, policy, per_task, batch, sigma)
        return loss, list(torch.autograd.grad(loss.sum(), per_task, create_graph=True))

    def adapt(self, layers: list[nn.Module], thetas, grads, rates: Tensor, alpha: float | None = None):
        """One inner SGD step of every task and layer (`WLinear.adapt`: the rank-1 identity).

        rates: (layers, tensors per layer) learned step sizes. Returns the adapted thetas (T, P_k),
        and with ``alpha`` also the target mixes: (adapted, targets)."""
        out = [layer.adapt(th, g, rates[k], alpha) for k, (layer, th, g) in enumerate(zip(layers, thetas, grads))]
        return ([o[0] for o in out], [o[1] for o in out]) if alpha is not None else out

    # ------------------------------------------------------------------ advantages and weights
    def advantage_weights(self, adv: Tensor, config) -> Tensor | None:
        """exp(clip((A - mean A) / (std A * temperature))) per task; None where the strategy's
        AWR loss forms them itself."""
        return advantage_weights(adv, config.adaptation_temp, config.exp_advantage_clip)

    def advantages(self, vf: ValueNet, thetas, batch) -> Tensor:
        """A = R + gamma_term * V(s_term) - V(s) (T, B), no gradient."""
        both = torch.cat([batch.terminal_obs, batch.obs], dim=1)
        v = self.value_nograd(vf, thetas, both)
        B = batch.batch_size
        return batch.mc_return + batch.terminal_discount * v[:, :B] - v[:, B:]

    def advantages_pair(self, vf: ValueNet, thetas, inner, outer, v_out: Tensor) -> tuple[Tensor, Tensor]:
        """`advantages` of the inner and the outer batch, V(outer.obs) = ``v_out`` given, from one
        forward pass over inner.terminal_obs, inner.obs and outer.terminal_obs."""
        B = inner.batch_size
        x = torch.cat([inner.terminal_obs, inner.obs, outer.terminal_obs], dim=1)
        v = self.value_nograd(vf, thetas, x)
        adv_in = inner.mc_return + inner.terminal_discount * v[:, :B] - v[:, B:2 * B]
        adv_out = outer.mc_return + outer.terminal_discount * v[:, 2 * B:] - v_out.detach()
        return adv_in, adv_out

    # ------------------------------------------------------------------ the outer losses
    def value_outer_loss(self, v_out: Tensor, outer, v_next: Tensor) -> Tensor:
        """mean_b (V_phi'(s_b) - (R_b + gamma_term * V_tgt(s_term)))^2 per task (T,)."""
        return (v_out - (outer.mc_return + outer.terminal_discount * v_next)).pow(2).mean(-1)

    def policy_outer_loss(self, policy: PolicyNet, thetas, outer, adv: Tensor, weights: Tensor | None,
                          config) -> tuple[Tensor, Tensor]:
        """-mean_b w_b log pi_theta'(a_b|s_b) per task (T,), and the weights w (T, B)."""
        mu = policy.mean(thetas, outer.obs)
        return (-weights * gaussian_log_prob(outer.action, mu, config.action_sigma)).mean(-1), weights

    def meta_objective(self, value_losses: Tensor, policy_losses: Tensor, n_train_tasks: int) -> Tensor:
        """(sum of the outer value losses + sum of the outer policy losses) / N_train."""
        return (value_losses.sum() + policy_losses.sum()) / n_train_tasks

    def backward_value_part(self, value_losses: Tensor, n_train_tasks: int) -> None:
        """Backward of sum(value losses) / N_train (the value part's share of the meta-objective)."""
        (value_losses.sum() / n_train_tasks).backward()

    # ------------------------------------------------------------------ metrics
    def metrics(self, parts: tuple, rho: tuple[Tensor, Tensor, Tensor], losses: list[Tensor]) -> Tensor:
        """The step's metrics as one tensor, `macaw_fast.macaw.METRIC_NAMES` order then the summed
        ``losses``. ``parts``: per-task inner/outer value and policy losses (T,), outer advantages
        and weights (T, B); ``rho``: the raw (value rates, policy rates, kappa) parameters."""
        lv_in, lv_out, lp_in, lp_out, adv, w = parts
        v_rho, p_rho, kappa = (F.softplus(r) for r in rho)
        return torch.stack([lv_in.mean(), lv_out.mean(), lp_in.mean(), lp_out.mean(), adv.mean(), adv.std(),
                            w.mean(), w.max(), v_rho.mean(), p_rho.mean(), kappa, torch.stack(losses).sum()])
