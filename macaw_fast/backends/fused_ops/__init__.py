"""The fused meta-step's own micro-ops (Triton kernels plus torch twins), used by `FusedBackend`.

Unlike the public ops of `macaw_fast.ops` (layers, losses and the inner step, which other
meta-RL code can use), these exist to cut kernel launches out of MACAW's step and have no use on
their own:

* `bootstrap_advantage`: advantages ret + disc * V(next) - V in one launch (no graph).
* `meta_objective`: (sum of outer value losses + sum of outer policy losses) / N_train.
* `step_metrics`: the meta-step's scalar metrics in one launch (no autograd).
* `wlinear_generate`: theta = W z + b of up to ten layers in one launch (no graph).
* `wlinear_theta_backward` / `wlinear_theta_backward_many`: the gradients of theta = W z + b added
  to W, b and z's ``.grad`` in place (first order, no graph), one launch for up to ten layers.

They dispatch like the public ops (``backend='auto' | 'triton' | 'torch'``, see `macaw_fast.ops`).
`_aot` compiles every kernel of both packages ahead of time (tests/test_triton_compile.py).
"""

from __future__ import annotations

from .advantage import bootstrap_advantage
from .generate import wlinear_generate
from .metrics import step_metrics
from .objective import meta_objective
from .theta_grad import wlinear_theta_backward, wlinear_theta_backward_many

__all__ = ["bootstrap_advantage", "meta_objective", "step_metrics", "wlinear_generate", "wlinear_theta_backward",
           "wlinear_theta_backward_many"]
