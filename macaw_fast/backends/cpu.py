"""The CPU execution strategy: hand-written autograd nodes and compiled kernels, same results.

What it changes against `TorchBackend` (every piece equals the plain one to rounding; the tests
compare each with the float64 reference loop):

* inner gradients: one autograd node per net whose backward is a hand-written Hessian-vector
  product (`macaw_fast.backends.inner_grad`), instead of a create_graph backward;
* W's gradient: every product with a weight-transform layer's W records low-rank factors in the
  layer's `WGradGatherer` (`macaw_fast.backends.lowrank`), so no dense P x D gradient is built per
  use; at the end of the step W is Adam-updated straight from the factors
  (`macaw_fast.backends.lowrank_adam`, one pass over W) or its gradient formed by one GEMM;
* each net's inner steps as one autograd node (`lowrank.adapt_many`) on the CPU;
* generated parameters W z + b of every layer and the no-grad value forward by the compiled
  kernels of `macaw_fast._C` where they apply (float32/float64, contiguous, CPU).

It runs on any device (the compiled pieces fall back to torch off the CPU).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary

from ..nets import WLinear
from . import lowrank, lowrank_adam
from .inner_grad import policy_inner_grads, value_inner_grads
from .plain import TorchBackend


class CpuBackend(TorchBackend):
    """MACAW's operations with hand-written Hessian-vector products, low-rank W gradients and
    compiled CPU kernels.

    Args:
        lowrank_adam: Adam-update each weight-transform W straight from its low-rank gradient
            factors (one pass over W; W's ``.grad`` stays None after the step). False: form W's
            dense gradient and leave every update to ``optimizer.step()`` (same parameters to
            rounding; needed to read W's meta-gradient).
    """

    name = "cpu"

    def __init__(self, lowrank_adam: bool = True) -> None:
        self.lowrank_adam = lowrank_adam
        # the W-gradient gatherer of every generated-parameter tensor this strategy made (by
        # identity; an entry goes when its tensor does)
        self._gatherers = WeakIdKeyDictionary()

    def __repr__(self) -> str:
        return f"CpuBackend(lowrank_adam={self.lowrank_adam})"

    # ------------------------------------------------------------------ generated parameters
    def thetas(self, layers) -> list[Tensor]:
        out = []
        for layer in layers:
            if isinstance(layer, WLinear):
                acc = lowrank.WGradGatherer()
                theta = lowrank.generate(layer, acc)
                self._gatherers[theta] = acc
                out.append(theta)
            else:
                out.append(layer.theta())
        return out

    def step_leaves(self, layers, num_tasks: int, one_chunk: bool) -> list[Tensor | None]:
        # every W z + b from one compiled pass over the layers' W (memory-bound: ~2x one BLAS
        # matrix-vector product per layer)
        made = iter(lowrank.generate_thetas([m for m in layers if isinstance(m, WLinear)]))
        out: list[Tensor | None] = []
        for layer in layers:
            if isinstance(layer, WLinear):
                theta = next(made).requires_grad_(True)
                self._gatherers[theta] = lowrank.WGradGatherer()
                out.append(theta)
            else:
                out.append(None)
        return out

    def factors(self, layers, leaves) -> list[tuple]:
        """Each weight-transform layer's meta-gradient still held by its leaf, as (layer, A (K, P),
        B (K, D)): dL/dW = A^T B, row 0 of A is dL/dtheta (b's gradient; W^T A[0] adds to z's) and
        row 0 of B is z. Clears what the leaves gathered."""
        return [(layer, *lowrank.leaf_factors(layer, th, self._gatherers[th]))
                for layer, th in zip(layers, leaves) if th is not None]

    def update_from_factors(self, optimizer, items: list[tuple]) -> None:
        """The optimizer step from `factors`-style items (possibly summed or gathered over processes):
        each W Adam-updated straight from its factors when `lowrank_adam` applies (one pass over W),
        else W's dense gradient formed by one GEMM; then ``optimizer.step()``."""
        layers = [m for m, _, _ in items]
        if self.lowrank_adam and lowrank_adam.applicable(optimizer, [m.weight for m in layers]):
            lowrank_adam.lowrank_adam_step(optimizer, layers, [(a, b) for _, a, b in items])
        else:
            with torch.no_grad():
                for m, a, b in items:
                    # (P, K) @ (K, D) with a contiguous (P, K) left factor: ~1.6x faster than a transposed one
                    for p, g in ((m.weight, a.t().contiguous() @ b), (m.z, m.weight.t() @ a[0]), (m.bias, a[0])):
                        if p.grad is None:
                            p.grad = g
                        else:
                            p.grad.add_(g)
        optimizer.step()

    def dense_gradients(self, layers, leaves, pending) -> None:
        for layer, th in zip(layers, leaves):
            if th is not None:
                lowrank.accumulate_leaf_grad(layer, th, self._gatherers[th])

    def apply_update(self, optimizer, layers, leaves, pending) -> None:
        self.update_from_factors(optimizer, self.factors(layers, leaves))

    def value_chunk_size(self, num_tasks: int, chunk: int, auto: bool) -> int:
        # the value part's graph is the smaller one: with the 'auto' chunk size one value pass
        # covers two policy chunks (measured at T=35: fewer W products and less overhead, and the
        # peak memory stays below the per-task loop's)
        return min(num_tasks, 2 * chunk) if auto else chunk

    # ------------------------------------------------------------------ forward passes
    def value_nograd(self, vf, thetas, obs: Tensor) -> Tensor:
        with torch.no_grad():
            th = [t.detach() for t in thetas]
            out = lowrank.value_forward(th, vf.dims, obs)    # all layers per block of rows, ~3x
            return out if out is not None else vf.forward_thetas(th, obs)

    # ------------------------------------------------------------------ the inner steps
    def value_inner_grads(self, vf, thetas, obs: Tensor, target: Tensor):
        return value_inner_grads(thetas, vf.layer_dims(), obs, target)

    def policy_inner_grads(self, policy, thetas, batch, adv, weights, head_weight, config, n_grads: int):
        head = policy.head
        return policy_inner_grads(thetas, policy.trunk.layer_dims(), head.layer_dims() if head is not None else (),
                                  batch.obs, batch.action, adv, weights, config.action_sigma, head_weight, n_grads)

    def bc_inner_grads(self, policy, thetas, batch, sigma: float):
        # the policy node with unit weights and no head is exactly behaviour cloning
        ones = torch.ones(batch.num_tasks, batch.batch_size, dtype=batch.obs.dtype, device=batch.obs.device)
        return policy_inner_grads(thetas, policy.trunk.layer_dims(), (), batch.obs, batch.action, torch.zeros_like(ones),
                                  ones, sigma, None, len(thetas))

    def adapt(self, layers: list[nn.Module], thetas, grads, rates: Tensor, alpha: float | None = None):
        accs = [self._gatherers.get(th) for th in thetas]
        if (rates.device.type == "cpu" and all(isinstance(m, WLinear) for m in layers)
                and all(acc is not None for acc in accs)):
            # every layer's step as one node (it reads the rates as numbers: a host sync off the CPU)
            return lowrank.adapt_many(layers, thetas, accs, grads, rates, alpha)
        out = [layer.adapt(th, g, rates[k], alpha) if acc is None else lowrank.adapt(layer, th, acc, g, rates[k], alpha)
               for k, (layer, th, acc, g) in enumerate(zip(layers, thetas, accs, grads))]
        return ([o[0] for o in out], [o[1] for o in out]) if alpha is not None else out
