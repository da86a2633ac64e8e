"""`bootstrap_advantage`: MACAW's advantages A = R + gamma^k V(s_k) - V(s) in one launch (no graph).

As torch ops that is a mul, an add and a sub (three launches) per batch; the kernel reads the four
(T, N) inputs once (any strides: e.g. the two halves of one value pass over [terminal_obs, obs]).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...ops._common import check_tensor, check_triton_mode, load_kernels, resolve_backend

_OP = "bootstrap_advantage"


def advantage_launch_config(T: int, N: int) -> dict:
    """Grid, constexprs and warps of `advantage_kernel` (shared with the compile test)."""
    block = 256
    return {"grid": (T, -(-N // block)), "num_warps": 4, "constexprs": {"BLOCK_N": block}}


def bootstrap_advantage(ret: Tensor, disc: Tensor, v_next: Tensor, v: Tensor, *, backend: str = "auto") -> Tensor:
    """ret + disc * v_next - v, elementwise, without a graph.

    Args:
        ret: (T, N) Monte-Carlo returns (float32/float64, any strides).
        disc: (T, N) discounts of the bootstrap (0 after a termination).
        v_next: (T, N) values of the bootstrap states. v: (T, N) values of the states.
        backend: 'auto' | 'triton' | 'torch' (see `macaw_fast.ops`).

    Returns:
        (T, N) contiguous advantages; the torch backend computes exactly ``ret + disc * v_next - v``.
    """
    ret = check_tensor(_OP, "ret", ret, 2)
    T, N = ret.shape
    kw = {"dtype": ret.dtype, "device": ret.device}
    disc = check_tensor(_OP, "disc", disc, 2, shape=(T, N), **kw)
    v_next = check_tensor(_OP, "v_next", v_next, 2, shape=(T, N), **kw)
    v = check_tensor(_OP, "v", v, 2, shape=(T, N), **kw)
    with torch.no_grad():
        if resolve_backend(backend, ret.device, _OP) == "torch" or ret.numel() == 0:
            return ret + disc * v_next - v
        check_triton_mode(ret.device, _OP)
        K = load_kernels("_advantage_kernels", __package__)
        out = torch.empty((T, N), **kw)
        cfg = advantage_launch_config(T, N)
        K.advantage_kernel[cfg["grid"]](ret, disc, v_next, v, out, N, *ret.stride(), *disc.stride(), *v_next.stride(),
                                        *v.stride(), num_warps=cfg["num_warps"], **cfg["constexprs"])
        return out
