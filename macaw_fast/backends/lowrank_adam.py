"""Adam steps of WLinear weights from their low-rank gradient factors, without a dense gradient.

The batched meta-step gathers every WLinear layer's dL/dW as factors, A^T B with A (K, P) and
B (K, D) (row 0 of A is dL/dtheta and row 0 of B is z; see `macaw_fast.backends.lowrank.leaf_factors`).
The plain way forms the P x D gradient with a GEMM, reads W again for z's gradient W^T dL/dtheta,
and leaves Adam to read the gradient, W and both moments. `lowrank_adam_step` hands the factors to
the compiled `macaw_fast._C.lowrank_adam_step`, which does all of that in one pass over each W:
z's gradient (from W before the update) and the Adam update of W and its moments in place, with
exactly torch.optim.Adam's rule and state (``exp_avg``, ``exp_avg_sq``, ``step``), so
``optimizer.state_dict()`` is unchanged in format and `torch.optim.Adam.step` can take over at any
step. W's ``.grad`` stays None (the dense gradient is never formed).

It applies on the CPU, to float32/float64 contiguous weights in an Adam group without weight
decay, amsgrad, maximize, capturable or differentiable; `applicable` says whether it does.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .._openmp import kernel_threads

_UNSUPPORTED_FLAGS = ("amsgrad", "maximize", "capturable", "differentiable", "decoupled_weight_decay")


def _extension():
    try:
        from .. import _C
    except ImportError:
        return None
    return getattr(_C, "lowrank_adam_step", None)


def _group_ok(group: dict) -> bool:
    if any(group.get(flag, False) for flag in _UNSUPPORTED_FLAGS):
        return False
    if group.get("weight_decay", 0) != 0:
        return False
    lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
    return all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (lr, b1, b2, eps))


def applicable(optimizer: torch.optim.Optimizer, weights: Sequence[Tensor]) -> bool:
    """Whether `lowrank_adam_step` can update these weights in place of ``optimizer.step``."""
    if type(optimizer) is not torch.optim.Adam or _extension() is None:
        return False
    groups = _groups_of(optimizer)
    for w in weights:
        g = groups.get(id(w))
        if g is None or not _group_ok(g):
            return False
        if w.device.type != "cpu" or w.dtype not in (torch.float32, torch.float64) or not w.is_contiguous():
            return False
        if w.grad is not None:                    # a dense gradient exists: let Adam use it
            return False
        state = optimizer.state.get(w)
        if state and not all(key in state and state[key].shape == w.shape and state[key].dtype == w.dtype
                             and state[key].is_contiguous() for key in ("exp_avg", "exp_avg_sq")):
            return False                          # e.g. a strided state loaded from elsewhere
    return True


def _groups_of(optimizer: torch.optim.Optimizer) -> dict[int, dict]:
    return {id(p): group for group in optimizer.param_groups for p in group["params"]}


def _state(optimizer: torch.optim.Adam, group: dict, w: Tensor) -> dict:
    """W's Adam state, created as torch.optim.Adam creates it on its first step."""
    from torch.optim.optimizer import _get_scalar_dtype

    state = optimizer.state[w]
    if len(state) == 0:
        if group.get("fused") or group.get("capturable"):
            state["step"] = torch.zeros((), dtype=_get_scalar_dtype(is_fused=bool(group.get("fused"))), device=w.device)
        else:
            state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
        state["exp_avg"] = torch.zeros_like(w, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(w, memory_format=torch.preserve_format)
    for key in ("exp_avg", "exp_avg_sq"):
        t = state[key]
        if t.shape != w.shape or t.dtype != w.dtype or not t.is_contiguous():
            raise RuntimeError(f"Adam state '{key}' of a WLinear weight has shape {tuple(t.shape)}, dtype {t.dtype}"
                               f"{'' if t.is_contiguous() else ', non-contiguous'}; expected {tuple(w.shape)}, "
                               f"{w.dtype}, contiguous")
    return state


def lowrank_adam_step(optimizer: torch.optim.Adam, layers: Sequence[nn.Module],
                      factors: Sequence[tuple[Tensor, Tensor]], num_threads: int | None = None) -> None:
    """Adam-update each layer's ``weight`` from its gradient A^T B, and add z's and b's gradients.

    layers: WLinear layers; factors: per layer (A (K, P), B (K, D)) with row 0 of A = dL/dtheta
    (also b's gradient) and row 0 of B = z. Adds W_old^T A[0] to ``z.grad`` and A[0] to ``bias.grad``
    (set when None); W's Adam state advances one step; W's ``.grad`` stays None. The caller checks
    `applicable` first and runs ``optimizer.step()`` afterwards for every other parameter.
    """
    step_fn = _extension()
    groups = _groups_of(optimizer)
    specs = []
    for layer, (a, b) in zip(layers, factors):
        w = layer.weight
        group = groups[id(w)]
        state = _state(optimizer, group, w)
        state["step"] += 1
        b1, b2 = group["betas"]
        specs.append((w.detach().numpy(), state["exp_avg"].numpy(), state["exp_avg_sq"].numpy(),
                      a.detach().contiguous().numpy(), b.detach().contiguous().numpy(),
                      float(group["lr"]), float(b1), float(b2), float(group["eps"]), float(state["step"])))
    threads = kernel_threads() if num_threads is None else num_threads
    z_grads = step_fn(specs, threads)
    with torch.no_grad():
        for layer, (a, _), gz in zip(layers, factors, z_grads):
            for p, g in ((layer.z, torch.from_numpy(gz)), (layer.bias, a[0].detach())):
                if p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.add_(g)
