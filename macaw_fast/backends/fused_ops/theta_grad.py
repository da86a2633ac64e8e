"""Backward of a weight-transform layer's parameter generation theta = W z + b, in place.

`wlinear_theta_backward` adds dL/dW = dtheta z^T, dL/db = dtheta and dL/dz = W^T dtheta to the
``.grad`` of W, b and z. The fused meta-step makes each layer's theta once as a leaf; after the
backward passes it turns the leaf's gradient into the parameters' gradients with this op (one
Triton launch per layer instead of addmv's backward plus autograd's accumulation adds).
First-order only: it runs under ``no_grad`` and is not part of any graph.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ...ops._common import check_tensor, check_triton_mode, load_kernels, next_pow2, resolve_backend

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
        K = load_kernels("_theta_grad_kernels", __package__)
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


MAX_GROUP_LAYERS = 10    # = _theta_grad_kernels.MAX_LAYERS (that module needs triton)


def theta_backward_group_launch_config(Ps: Sequence[int], D: int) -> dict:
    """Grid, constexprs, warps and per-layer row chunks of `theta_grad_group_kernel` for layers
    with W of shapes (P_l, D) (shared by the launcher and the compile test)."""
    cfgs = [theta_backward_launch_config(P, D) for P in Ps]
    c0 = cfgs[0]
    return {"grid": (max(c["grid"][0] for c in cfgs), c0["grid"][1], len(Ps)), "num_warps": 4,
            "P_CHUNKS": [c["P_CHUNK"] for c in cfgs],
            "constexprs": {"NL": len(Ps), "BLOCK_P": c0["constexprs"]["BLOCK_P"],
                           "BLOCK_D": c0["constexprs"]["BLOCK_D"]}}


def wlinear_theta_backward_many(weights: Sequence[Tensor], biases: Sequence[Tensor], zs: Sequence[Tensor],
                                dthetas: Sequence[Tensor | None], backend: str = "auto") -> None:
    """`wlinear_theta_backward` for many layers: on Triton one launch per ten layers of equal D.

    Args:
        weights, biases, zs: per layer W (P_l, D_l), b (P_l,), z (D_l,); one dtype and device.
        dthetas: per layer dL/dtheta, (P_l,) or (R, P_l) (rows summed), or None to skip the layer.
        backend: 'auto' | 'triton' | 'torch' (see `macaw_fast.ops`).

    Same result as calling `wlinear_theta_backward` per layer (the ``.grad`` of each W, b, z is
    created or added to in place). Returns None. Not differentiable.
    """
    weights, biases, zs, dthetas = list(weights), list(biases), list(zs), list(dthetas)
    if not (len(weights) == len(biases) == len(zs) == len(dthetas)):
        raise ValueError(f"{_OP}: weights, biases, zs and dthetas must have one entry per layer, got "
                         f"{len(weights)}, {len(biases)}, {len(zs)} and {len(dthetas)}")
    idx = [i for i, d in enumerate(dthetas) if d is not None]
    if not idx:
        return
    dev = weights[idx[0]].device
    for i in idx:               # the same checks as the one-layer op
        check_tensor(_OP, f"weights[{i}]", weights[i], 2)
        P, D = weights[i].shape
        dt = weights[i].dtype
        check_tensor(_OP, f"biases[{i}]", biases[i], 1, dtype=dt, device=dev, shape=(P,))
        check_tensor(_OP, f"zs[{i}]", zs[i], 1, dtype=dt, device=dev, shape=(D,))
        if dt != weights[idx[0]].dtype or weights[i].device != dev:
            raise TypeError(f"{_OP}: weights[{i}] is {dt} on {weights[i].device}, expected "
                            f"{weights[idx[0]].dtype} on {dev} like the other layers")
        d = dthetas[i]
        if isinstance(d, Tensor) and d.dim() == 2:
            check_tensor(_OP, f"dthetas[{i}]", d, 2, dtype=dt, device=dev, shape=(None, P))
        else:
            check_tensor(_OP, f"dthetas[{i}]", d, 1, dtype=dt, device=dev, shape=(P,))
    if resolve_backend(backend, dev, _OP) == "torch":
        for i in idx:
            wlinear_theta_backward(weights[i], biases[i], zs[i], dthetas[i], backend="torch")
        return
    check_triton_mode(dev, _OP)
    K = load_kernels("_theta_grad_kernels", __package__)
    with torch.no_grad():
        # z's gradient is always accumulated (atomics): missing ones start from one zeroed buffer
        need_z = [i for i in idx if _grad_buffer(zs[i], f"zs[{i}]") is None]
        if need_z:
            flat = torch.zeros((sum(zs[i].numel() for i in need_z),), dtype=zs[need_z[0]].dtype, device=dev)
            for i, buf in zip(need_z, flat.split([zs[i].numel() for i in need_z])):
                zs[i].grad = buf
        slots, fixups = [], []
        for i in idx:
            W, b, z = weights[i], biases[i], zs[i]
            gw, gb = _grad_buffer(W, f"weights[{i}]"), _grad_buffer(b, f"biases[{i}]")
            acc = gw is not None and gb is not None
            if not acc:            # gW and gb are written together: fresh buffers, old values added after
                fixups.append((W, b, gw, gb))
                gw, gb = torch.empty_like(W), torch.empty_like(b)
                fixups[-1] += (gw, gb)
            dth = dthetas[i].contiguous()
            R = dth.shape[0] if dth.dim() == 2 else 1
            slots.append((dth, W.contiguous(), z.contiguous(), gw, gb, z.grad, R, W.shape[0], int(acc)))
        start = 0
        while start < len(slots):
            D = slots[start][1].shape[1]
            stop = start + 1
            while stop < len(slots) and stop - start < MAX_GROUP_LAYERS and slots[stop][1].shape[1] == D:
                stop += 1
            group = slots[start:stop]
            cfg = theta_backward_group_launch_config([s[7] for s in group], D)
            pad = MAX_GROUP_LAYERS - len(group)
            ptrs = [t for s in group for t in s[:6]] + [group[0][0]] * (6 * pad)
            ints = [v for s, pc in zip(group, cfg["P_CHUNKS"]) for v in (s[6], s[7], pc, s[8])] + [0] * (4 * pad)
            K.theta_grad_group_kernel[cfg["grid"]](*ptrs, *ints, D, num_warps=cfg["num_warps"], **cfg["constexprs"])
            start = stop
        for W, b, old_w, old_b, gw, gb in fixups:
            for p, g, old in ((W, gw, old_w), (b, gb, old_b)):
                if old is not None:
                    old.add_(g)
                else:
                    p.grad = g
