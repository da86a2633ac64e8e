"""Backward of a weight-transform layer's parameter generation theta = W z + b, in place.

`wlinear_theta_backward` adds dL/dW = dtheta z^T, dL/db = dtheta and dL/dz = W^T dtheta to the
``.grad`` of W, b and z. The fused meta-step makes each layer's theta once as a leaf; after the
backward passes it turns the leaf's gradient into the parameters' gradients with this op (one
Triton launch per layer instead of addmv's backward plus autograd's accumulation adds).
First-order only: it runs under ``no_grad`` and is not part of any graph.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import check_tensor, check_triton_mode, load_kernels, next_pow2, resolve_backend

_OP = "wlinear_theta_backward"


def theta_backward_launch_config(P: int, D: int, accumulate: bool = True) -> dict:
    """Grid, constexprs and warps of `theta_grad_kernel` for a layer with W of shape (P, D).

    Shared by the launcher and the ahead-of-time compile test.
    """
    block_p = 64
    block_d = min(next_pow2(D), 64)
    n_blocks = -(-P // block_p)
    per_prog = -(-n_blocks // 128)                 # at most ~128 row chunks
    p_chunk = per_prog * block_p
    return {"grid": (-(-P // p_chunk), -(-D // block_d)), "P_CHUNK": p_chunk, "num_warps": 4,
            "constexprs": {"BLOCK_P": block_p, "BLOCK_D": block_d, "ACCUMULATE": accumulate}}


def _grad_buffer(p: Tensor, name: str) -> Tensor | None:
    g = p.grad
    if g is None:
        return None
    if g.shape != p.shape or g.dtype != p.dtype or g.device != p.device or not g.is_contiguous():
        raise ValueError(f"{_OP}: {name}.grad must be a contiguous {p.dtype} tensor of shape "
                         f"{tuple(p.shape)} on {p.device}, got {g.dtype} {tuple(g.shape)} on {g.device}")
    return g


def wlinear_theta_backward(weight: Tensor, bias: Tensor, z: Tensor, dtheta: Tensor,
                           backend: str = "auto") -> None:
    """Add the gradients of theta = weight @ z + bias, given dL/dtheta, to the inputs' ``.grad``.

    Args:
        weight: W, (P, D). bias: b, (P,). z: (D,). All three of one float dtype and device.
        dtheta: dL/dtheta, (P,), or (R, P) for a theta used as R per-task copies (the rows are
            summed); same dtype and device.
        backend: 'auto' | 'triton' | 'torch' (see `macaw_fast.ops`).

    Each ``.grad`` that is None is created; an existing one is added to in place (it must be
    contiguous and match its tensor). Returns None. Not differentiable (runs without a graph).
    """
    check_tensor(_OP, "weight", weight, 2)
    P, D = weight.shape
    dt, dev = weight.dtype, weight.device
    check_tensor(_OP, "bias", bias, 1, dtype=dt, device=dev, shape=(P,))
    check_tensor(_OP, "z", z, 1, dtype=dt, device=dev, shape=(D,))
    if isinstance(dtheta, Tensor) and dtheta.dim() == 2:
        check_tensor(_OP, "dtheta", dtheta, 2, dtype=dt, device=dev, shape=(None, P))
    else:
        check_tensor(_OP, "dtheta", dtheta, 1, dtype=dt, device=dev, shape=(P,))
    gw, gb, gz = (_grad_buffer(p, n) for p, n in ((weight, "weight"), (bias, "bias"), (z, "z")))
    with torch.no_grad():
        if resolve_backend(backend, dev, _OP) == "torch":
            if dtheta.dim() == 2:
                dtheta = dtheta.sum(0)
            for p, g, new in ((weight, gw, lambda: torch.outer(dtheta, z)),
                              (bias, gb, lambda: dtheta.clone()),
                              (z, gz, lambda: weight.t() @ dtheta)):
                if g is None:
                    p.grad = new()
                elif p is weight:
                    g.addr_(dtheta, z)
                elif p is bias:
                    g.add_(dtheta)
                else:
                    g.addmv_(weight.t(), dtheta)
            return
        check_triton_mode(dev, _OP)
        K = load_kernels("_theta_grad_kernels")
        accumulate = gw is not None and gb is not None
        if not accumulate:          # gW and gb are written together: make both fresh, keep old values
            old_w, old_b = gw, gb
            gw, gb = torch.empty_like(weight), torch.empty_like(bias)
        if gz is None:              # gz is always accumulated (atomic adds of partial sums)
            gz = torch.zeros_like(z)
            z.grad = gz
        cfg = theta_backward_launch_config(P, D, accumulate)
        dth = dtheta.contiguous()
        R = dth.shape[0] if dth.dim() == 2 else 1
        K.theta_grad_kernel[cfg["grid"]](dth, weight, z.contiguous(), gw, gb, gz, R, P, D, cfg["P_CHUNK"],
                                         weight.stride(0), weight.stride(1),
                                         num_warps=cfg["num_warps"], **cfg["constexprs"])
        if not accumulate:
            for p, g, old in ((weight, gw, old_w), (bias, gb, old_b)):
                if old is not None:
                    old.add_(g)
                else:
                    p.grad = g
