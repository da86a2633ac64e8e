"""The fused execution strategy: the meta-step as a few fused ops of `macaw_fast.ops` (Triton on
CUDA, or the ops' torch twins), same results.

What it changes against `TorchBackend`:

* forward passes: each layer with its input ReLU as one `ops.batched_linear` (the head's first
  layer as `ops.concat_relu_linear`); the policy's tanh is applied inside `ops.awr_loss`;
* losses: `ops.value_mse` (with the bootstrapped target formed inside), `ops.awr_loss` (which forms
  the advantage weights itself), `fused_ops.bootstrap_advantage`, `fused_ops.meta_objective`;
* inner steps: all layers of a net by `ops.wlinear_adapt_many` (three launches);
* generated parameters: every layer's W z + b by one `fused_ops.wlinear_generate` as plain leaves, and
  their gradient into W, b, z by one `fused_ops.wlinear_theta_backward_many`;
* metrics: one `fused_ops.step_metrics` launch; autograd seeds are cached constants (no launches).

Nothing here reads a value back to the host, so a whole step can be captured in a CUDA graph
(`macaw_fast.cuda_graph`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import ops
from . import fused_ops
from ..nets import WLinear
from ..ops._common import cached_full
from .plain import TorchBackend


class FusedBackend(TorchBackend):
    """MACAW's operations as fused ops.

    Args:
        ops_backend: how each op runs: 'auto' (Triton on CUDA, or on the CPU under
            ``TRITON_INTERPRET=1``; the torch twins otherwise), 'triton' or 'torch'.
    """

    name = "fused"

    def __init__(self, ops_backend: str = "auto") -> None:
        if ops_backend not in ("auto", "triton", "torch"):
            raise ValueError(f"ops_backend: expected 'auto', 'triton' or 'torch', got {ops_backend!r}")
        self.ops_backend = ops_backend

    def __repr__(self) -> str:
        return f"FusedBackend(ops_backend={self.ops_backend!r})"

    # ------------------------------------------------------------------ generated parameters
    def step_leaves(self, layers, num_tasks: int, one_chunk: bool) -> list[Tensor | None]:
        # one chunk: per-task (T, P) leaves (theta expanded, no copy), so the uses need no
        # expand-backward sum: the fused theta backward sums the (T, P) gradient instead
        wl = [m for m in layers if isinstance(m, WLinear)]
        with torch.no_grad():
            made = iter(fused_ops.wlinear_generate([m.weight for m in wl], [m.bias for m in wl], [m.z for m in wl],
                                             backend=self.ops_backend))
        out: list[Tensor | None] = []
        for layer in layers:
            if isinstance(layer, WLinear):
                theta = next(made)
                out.append((theta.expand(num_tasks, -1) if one_chunk else theta).requires_grad_(True))
            else:
                out.append(None)
        return out

    def finish_gradients(self, layers, leaves) -> object:
        pairs = [(m, th) for m, th in zip(layers, leaves) if th is not None and th.grad is not None]
        fused_ops.wlinear_theta_backward_many([m.weight for m, _ in pairs], [m.bias for m, _ in pairs],
                                        [m.z for m, _ in pairs], [th.grad for _, th in pairs],
                                        backend=self.ops_backend)
        return None

    # ------------------------------------------------------------------ forward passes
    def _mlp(self, thetas, dims, x: Tensor) -> Tensor:
        for k, th in enumerate(thetas):
            x = ops.batched_linear(x, th, dims[k + 1], in_relu=k > 0, backend=self.ops_backend)
        return x

    def value(self, vf, thetas, obs: Tensor) -> Tensor:
        return self._mlp(thetas, vf.dims, obs).squeeze(-1)

    def policy_mean(self, policy, thetas, obs: Tensor) -> Tensor:
        return torch.tanh(self._mlp(thetas, policy.trunk.dims, obs))

    def _head(self, policy, thetas, hidden: Tensor, action: Tensor) -> Tensor:
        dims = policy.head.dims
        x = ops.concat_relu_linear(hidden, action, thetas[0], dims[1], backend=self.ops_backend)
        for k in range(1, len(thetas)):
            x = ops.batched_linear(x, thetas[k], dims[k + 1], in_relu=True, backend=self.ops_backend)
        return x.squeeze(-1)

    # ------------------------------------------------------------------ the inner steps
    def value_inner_grads(self, vf, thetas, obs: Tensor, target: Tensor):
        T = obs.shape[0]
        per_task = [th.expand(T, -1) for th in thetas]
        loss = ops.value_mse(self.value(vf, per_task, obs), target, backend=self.ops_backend)
        grads = torch.autograd.grad(loss, per_task, cached_full((T,), 1.0, loss.dtype, loss.device),
                                    create_graph=True)
        return loss, list(grads)

    def policy_inner_loss(self, policy, thetas, batch, adv, weights, head_weight, config) -> Tensor:
        n = policy.num_trunk_layers
        h, hidden = batch.obs, None
        for k, th in enumerate(thetas[:n]):          # trunk pre-activations; awr_loss applies the tanh
            h = ops.batched_linear(h, th, policy.trunk.dims[k + 1], in_relu=k > 0, backend=self.ops_backend)
            if k == n - 2:
                hidden = h
        mu = h
        head = policy.head is not None
        pred = self._head(policy, thetas[n:], hidden, batch.action) if head else None
        return ops.awr_loss(mu, batch.action, adv, sigma=config.action_sigma, temp=config.adaptation_temp,
                            max_weight=config.exp_advantage_clip, pred=pred, head_weight=head_weight if head else None,
                            tanh=True, backend=self.ops_backend)

    def policy_inner_grads(self, policy, thetas, batch, adv, weights, head_weight, config, n_grads: int):
        T = batch.num_tasks
        per_task = [th.expand(T, -1) for th in thetas]
        loss = self.policy_inner_loss(policy, per_task, batch, adv, weights, head_weight, config)
        grads = torch.autograd.grad(loss, per_task[:n_grads], cached_full((T,), 1.0, loss.dtype, loss.device),
                                    create_graph=True)
        return loss, list(grads)

    def adapt(self, layers: list[nn.Module], thetas, grads, rates: Tensor, alpha: float | None = None):
        if all(isinstance(m, WLinear) for m in layers):    # every layer's step in three launches
            out = ops.wlinear_adapt_many([m.weight for m in layers], [m.bias for m in layers],
                                         [m.z for m in layers], grads, rates, alpha, backend=self.ops_backend)
            return ([o[0] for o in out], [o[1] for o in out]) if alpha is not None else out
        rates = rates.unbind(0)          # one backward op (a stack) instead of a select per layer
        out = [ops.wlinear_adapt(m.weight, m.bias, m.z, g, rates[k], alpha, backend=self.ops_backend)
               if isinstance(m, WLinear) else m.adapt(th, g, rates[k], alpha)
               for k, (m, th, g) in enumerate(zip(layers, thetas, grads))]
        return ([o[0] for o in out], [o[1] for o in out]) if alpha is not None else out

    # ------------------------------------------------------------------ advantages and weights
    def advantage_weights(self, adv: Tensor, config) -> Tensor | None:
        return None                      # ops.awr_loss forms them (and returns the outer ones)

    def advantages(self, vf, thetas, batch) -> Tensor:
        both = torch.cat([batch.terminal_obs, batch.obs], dim=1)
        v = self.value_nograd(vf, thetas, both)
        B = batch.batch_size
        return fused_ops.bootstrap_advantage(batch.mc_return, batch.terminal_discount, v[:, :B], v[:, B:],
                                       backend=self.ops_backend)

    def advantages_pair(self, vf, thetas, inner, outer, v_out: Tensor) -> tuple[Tensor, Tensor]:
        v_next = self.value_nograd(vf, thetas, outer.terminal_obs)
        adv_out = fused_ops.bootstrap_advantage(outer.mc_return, outer.terminal_discount, v_next, v_out.detach(),
                                          backend=self.ops_backend)
        return self.advantages(vf, thetas, inner), adv_out

    # ------------------------------------------------------------------ the outer losses
    def value_outer_loss(self, v_out: Tensor, outer, v_next: Tensor) -> Tensor:
        return ops.value_mse(v_out, outer.mc_return, outer.terminal_discount, v_next, backend=self.ops_backend)

    def policy_outer_loss(self, policy, thetas, outer, adv, weights, config) -> tuple[Tensor, Tensor]:
        mu = self._mlp(thetas, policy.trunk.dims, outer.obs)         # pre-activation: tanh inside
        return ops.awr_loss(mu, outer.action, adv, sigma=config.action_sigma, temp=config.adaptation_temp,
                            max_weight=config.exp_advantage_clip, return_weights=True, tanh=True,
                            backend=self.ops_backend)

    def meta_objective(self, value_losses: Tensor, policy_losses: Tensor, n_train_tasks: int) -> Tensor:
        return fused_ops.meta_objective(value_losses, policy_losses, n_train_tasks, backend=self.ops_backend)

    def backward_value_part(self, value_losses: Tensor, n_train_tasks: int) -> None:
        # d(meta-objective)/d(value loss) = 1 / N_train: a cached seed, no launches
        value_losses.backward(cached_full(value_losses.shape, 1.0, value_losses.dtype, value_losses.device,
                                          n_train_tasks))

    # ------------------------------------------------------------------ metrics
    def metrics(self, parts: tuple, rho, losses) -> Tensor:
        return fused_ops.step_metrics(*parts, *rho, losses, backend=self.ops_backend)
