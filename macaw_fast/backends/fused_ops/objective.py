"""`meta_objective`: MACAW's meta-loss (sum of the outer value and policy losses) / N_train.

As torch ops that is two sums, an add and a div (four launches); the kernel is one. The
backward is one op (``g / n``, shared by both inputs' expanded gradients) in differentiable
torch, so gradients of every order are exact and equal autograd's of the composition.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...ops._common import check_tensor, check_triton_mode, load_kernels, loop_vmap, resolve_backend

_OP = "meta_objective"


def objective_launch_config() -> dict:
    """Grid, constexprs and warps of `objective_kernel` (shared with the compile test)."""
    return {"grid": (1,), "num_warps": 4, "constexprs": {"BLOCK": 128}}


class MetaObjective(torch.autograd.Function):
    """Autograd Function of `meta_objective`: (a, b, n, backend) -> 0-d loss."""

    @staticmethod
    def forward(a, b, n, backend):
        if backend != "triton":
            return (a.sum() + b.sum()) / n
        K = load_kernels("_objective_kernels", __package__)
        check_triton_mode(a.device, _OP)
        out = torch.empty((), dtype=a.dtype, device=a.device)
        cfg = objective_launch_config()
        K.objective_kernel[cfg["grid"]](a.contiguous(), b.contiguous(), out, a.shape[0], n,
                                        num_warps=cfg["num_warps"], **cfg["constexprs"])
        return out

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, b, n, backend = inputs
        ctx.n, ctx.T = n, a.shape[0]

    @staticmethod
    def backward(ctx, g):
        gt = (g / ctx.n).expand(ctx.T)
        nd = ctx.needs_input_grad
        return gt if nd[0] else None, gt if nd[1] else None, None, None

    @staticmethod
    def vmap(info, in_dims, a, b, n, backend):
        return loop_vmap(lambda *x: MetaObjective.apply(*x), info, in_dims, a, b, n, backend)


def meta_objective(a: Tensor, b: Tensor, n: int, *, backend: str = "auto") -> Tensor:
    """(a.sum() + b.sum()) / n as one op.

    Args:
        a, b: (T,) per-task losses (e.g. outer value and policy losses), one float dtype/device.
        n: positive int divisor (N_train, the number of training tasks).
        backend: 'auto' | 'triton' | 'torch' (see `macaw_fast.ops`).

    Returns:
        0-d tensor; differentiable (any order) w.r.t. a and b. The torch backend computes exactly
        ``(a.sum() + b.sum()) / n`` and its autograd's gradients.
    """
    a = check_tensor(_OP, "a", a, 1)
    b = check_tensor(_OP, "b", b, 1, shape=(a.shape[0],), dtype=a.dtype, device=a.device)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{_OP}: n must be a positive int, got {n!r}")
    if a.shape[0] < 1:
        raise ValueError(f"{_OP}: empty inputs")
    return MetaObjective.apply(a, b, n, resolve_backend(backend, a.device, _OP))
