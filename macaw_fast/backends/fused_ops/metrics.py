"""`step_metrics`: the scalar metrics of one MACAW meta-step in one launch (no autograd).

The meta-step reports eleven numbers (`macaw_fast.macaw.METRIC_NAMES`): means of the per-task
inner/outer value and policy losses, mean and unbiased std of the outer advantages, mean and max
of the outer weights, the mean inner rates softplus(rho) of the value net and the policy,
softplus(kappa), plus optionally the meta-loss summed over task chunks. As torch ops that is
~16 small launches; the Triton kernel computes all of them in one program.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ...ops._common import check_tensor, check_triton_mode, load_kernels, resolve_backend

_OP = "step_metrics"


def metrics_launch_config(has_loss: bool = True) -> dict:
    """Grid, block size and warps of `step_metrics_kernel` (shared with the compile test)."""
    return {"grid": (1,), "num_warps": 4, "constexprs": {"BLOCK": 1024, "HAS_LOSS": has_loss}}


def _torch(lv_in, lv_out, lp_in, lp_out, adv, w, value_rho, policy_rho, kappa, losses):
    vals = [lv_in.mean(), lv_out.mean(), lp_in.mean(), lp_out.mean(), adv.mean(), adv.std(), w.mean(), w.max(),
            F.softplus(value_rho).mean(), F.softplus(policy_rho).mean(), F.softplus(kappa)]
    if losses is not None:
        vals.append(losses.sum())
    return torch.stack(vals)


def step_metrics(lv_in: Tensor, lv_out: Tensor, lp_in: Tensor, lp_out: Tensor, adv: Tensor, w: Tensor,
                 value_rho: Tensor, policy_rho: Tensor, kappa: Tensor, losses: Sequence[Tensor] | Tensor | None = None,
                 *, backend: str = "auto") -> Tensor:
    """MACAW's meta-step metrics as one tensor, without a graph.

    Args:
        lv_in, lv_out, lp_in, lp_out: per-task inner/outer value and policy losses, (T,) each.
        adv, w: the outer advantages and weights, (T, B) (any shape: all entries are used).
        value_rho, policy_rho: the raw inner rates (rates are softplus(rho)), any shape.
        kappa: the raw head coefficient (head weight softplus(kappa)), one number.
        losses: optional meta-losses of the task chunks (a sequence of 0-d tensors or a 1-D tensor),
            whose sum is appended.
        backend: 'auto' | 'triton' | 'torch' (see `macaw_fast.ops`).

    Returns:
        (11,) (or (12,) with ``losses``): mean(lv_in), mean(lv_out), mean(lp_in), mean(lp_out),
        mean(adv), std(adv) (unbiased), mean(w), max(w), mean(softplus(value_rho)),
        mean(softplus(policy_rho)), softplus(kappa)[, sum(losses)]. All tensors share one float
        dtype and device. The torch backend is exactly the torch composition written above.
    """
    lv_in = check_tensor(_OP, "lv_in", lv_in, 1)
    T = lv_in.shape[0]
    kw = {"dtype": lv_in.dtype, "device": lv_in.device}
    lv_out = check_tensor(_OP, "lv_out", lv_out, 1, shape=(T,), **kw)
    lp_in = check_tensor(_OP, "lp_in", lp_in, 1, shape=(T,), **kw)
    lp_out = check_tensor(_OP, "lp_out", lp_out, 1, shape=(T,), **kw)
    adv = check_tensor(_OP, "adv", adv, **kw)
    w = check_tensor(_OP, "w", w, **kw)
    if w.shape != adv.shape:
        raise ValueError(f"{_OP}: w must have adv's shape {tuple(adv.shape)}, got {tuple(w.shape)}")
    value_rho = check_tensor(_OP, "value_rho", value_rho, **kw)
    policy_rho = check_tensor(_OP, "policy_rho", policy_rho, **kw)
    kappa = check_tensor(_OP, "kappa", kappa, **kw)
    if T < 1 or adv.numel() < 2 or value_rho.numel() < 1 or policy_rho.numel() < 1:
        raise ValueError(f"{_OP}: needs T >= 1 tasks, >= 2 advantages and non-empty rates; got T={T}, "
                         f"{adv.numel()} advantages, {value_rho.numel()} and {policy_rho.numel()} rates")
    if kappa.numel() != 1:
        raise ValueError(f"{_OP}: kappa must hold one number, got shape {tuple(kappa.shape)}")
    if losses is not None:
        if not isinstance(losses, Tensor):
            losses = list(losses)
            for i, l_ in enumerate(losses):
                check_tensor(_OP, f"losses[{i}]", l_, **kw)
                if l_.numel() != 1:
                    raise ValueError(f"{_OP}: losses[{i}] must hold one number, got shape {tuple(l_.shape)}")
            if not losses:
                raise ValueError(f"{_OP}: losses is empty (pass None for no meta-loss)")
            losses = losses[0].reshape(1) if len(losses) == 1 else torch.stack([l_.reshape(()) for l_ in losses])
        else:
            losses = check_tensor(_OP, "losses", losses, **kw).reshape(-1)
    with torch.no_grad():
        if resolve_backend(backend, lv_in.device, _OP) == "torch":
            return _torch(lv_in, lv_out, lp_in, lp_out, adv, w, value_rho, policy_rho, kappa.reshape(()), losses)
        check_triton_mode(lv_in.device, _OP)
        K = load_kernels("_metrics_kernels", __package__)
        c = lambda t: t.contiguous().reshape(-1)  # noqa: E731 - views for contiguous inputs, no copy
        has_loss = losses is not None
        out = torch.empty((12 if has_loss else 11,), **kw)
        cfg = metrics_launch_config(has_loss)
        K.step_metrics_kernel[cfg["grid"]](
            c(lv_in), c(lv_out), c(lp_in), c(lp_out), c(adv), c(w), c(value_rho), c(policy_rho), c(kappa),
            c(losses) if has_loss else out, out, T, adv.numel(), value_rho.numel(), policy_rho.numel(),
            losses.numel() if has_loss else 0, num_warps=cfg["num_warps"], **cfg["constexprs"])
        return out
