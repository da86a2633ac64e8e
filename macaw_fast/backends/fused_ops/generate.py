"""`wlinear_generate`: theta = W z + b of many weight-transform layers in one launch (no graph).

The fused meta-step makes every WLinear layer's generated parameters once per step, as leaves
(`macaw_fast.backends.fused.FusedBackend.step_leaves`); with torch that is one addmv per layer. The Triton kernel
serves up to ten layers sharing the latent size D per launch (MACAW's value net and policy with
its head at depth 3: ten layers, one launch), writing all thetas into one buffer.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ...ops._common import check_tensor, check_triton_mode, load_kernels, next_pow2, resolve_backend

_OP = "wlinear_generate"
MAX_LAYERS = 10          # = _generate_kernels.MAX_LAYERS (that module needs triton)


def generate_launch_config(max_p: int, n_layers: int, D: int) -> dict:
    """Grid, constexprs and warps of `wlinear_generate_kernel` (shared with the compile test)."""
    block_p = 64
    return {"grid": (max(1, -(-max_p // block_p)), n_layers), "num_warps": 4,
            "constexprs": {"NL": n_layers, "BLOCK_P": block_p, "BLOCK_D": min(128, next_pow2(D))}}


def wlinear_generate(weights: Sequence[Tensor], biases: Sequence[Tensor], zs: Sequence[Tensor], *,
                     backend: str = "auto") -> list[Tensor]:
    """theta_l = weights[l] @ zs[l] + biases[l] for every layer l, without a graph.

    Args:
        weights: W_l, (P_l, D_l) each. biases: b_l, (P_l,). zs: z_l, (D_l,). One float dtype and
            device for all.
        backend: 'auto' | 'triton' | 'torch' (see `macaw_fast.ops`). Triton: one launch per
            `MAX_LAYERS` consecutive layers of equal D (non-contiguous inputs are copied first).

    Returns:
        A list of (P_l,) tensors (Triton: views of one buffer). Not differentiable.
    """
    weights, biases, zs = list(weights), list(biases), list(zs)
    if not (len(weights) == len(biases) == len(zs)):
        raise ValueError(f"{_OP}: weights, biases and zs must have one entry per layer, got "
                         f"{len(weights)}, {len(biases)} and {len(zs)}")
    if not weights:
        return []
    check_tensor(_OP, "weights[0]", weights[0], 2)
    kw = {"dtype": weights[0].dtype, "device": weights[0].device}
    for i, (W, b, z) in enumerate(zip(weights, biases, zs)):
        check_tensor(_OP, f"weights[{i}]", W, 2, **kw)
        P, D = W.shape
        check_tensor(_OP, f"biases[{i}]", b, 1, shape=(P,), **kw)
        check_tensor(_OP, f"zs[{i}]", z, 1, shape=(D,), **kw)
        if P < 1 or D < 1:
            raise ValueError(f"{_OP}: weights[{i}] is empty, shape {tuple(W.shape)}")
    with torch.no_grad():
        if resolve_backend(backend, kw["device"], _OP) == "torch":
            return [torch.addmv(b, W, z) for W, b, z in zip(weights, biases, zs)]
        check_triton_mode(kw["device"], _OP)
        K = load_kernels("_generate_kernels", __package__)
        sizes = [W.shape[0] for W in weights]
        flat = torch.empty((sum(sizes),), **kw)
        outs = list(flat.split(sizes))
        start = 0
        while start < len(weights):           # groups of consecutive layers with one D
            D = weights[start].shape[1]
            stop = start + 1
            while stop < len(weights) and stop - start < MAX_LAYERS and weights[stop].shape[1] == D:
                stop += 1
            idx = range(start, stop)
            n = stop - start
            cfg = generate_launch_config(max(sizes[i] for i in idx), n, D)
            ptrs = []
            for i in idx:
                ptrs += [weights[i].contiguous(), biases[i].contiguous(), zs[i].contiguous(), outs[i]]
            ptrs += [outs[start]] * (4 * (MAX_LAYERS - n))
            ps = [sizes[i] for i in idx] + [0] * (MAX_LAYERS - n)
            K.wlinear_generate_kernel[cfg["grid"]](*ptrs, *ps, D, num_warps=cfg["num_warps"], **cfg["constexprs"])
            start = stop
        return outs
