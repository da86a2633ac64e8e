"""`all_finite`: whether every value of several tensors is finite, in one launch and one sync.

The meta-step checks its two batches (eight fields each) for NaN/inf before every step. As torch
ops that is a norm per field, a stack and an isfinite/all chain (~7 launches a batch); the Triton
kernel checks up to eight tensors in one launch and writes a flag only when it finds a bad value,
so the flag (cached per device and dtype) stays zero and needs no clearing launch.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from ._common import check_triton_mode, load_kernels, resolve_backend

_OP = "all_finite"
_MAX_TENSORS = 8
_FLAGS: dict = {}


def finite_launch_config(n_tensors: int, max_numel: int = 1) -> dict:
    """Grid, constexprs and warps of `nonfinite_kernel` (shared with the compile test)."""
    block = 1024
    return {"grid": (max(1, -(-max_numel // block)),), "num_warps": 4,
            "constexprs": {"NT": n_tensors, "BLOCK": block}}


def _flag(dtype: torch.dtype, device: torch.device) -> Tensor:
    key = (dtype, str(device))
    f = _FLAGS.get(key)
    if f is None:
        f = _FLAGS[key] = torch.zeros((1,), dtype=dtype, device=device)
    return f


def _all_finite_torch(tensors: Sequence[Tensor]) -> bool:
    # one fused norm per tensor, one sum: a NaN/inf anywhere makes the sum non-finite (so may an
    # overflow of finite values: then every tensor is checked on its own)
    total = torch.stack(torch._foreach_norm(list(tensors))).sum()
    if math.isfinite(float(total)):
        return True
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def all_finite(tensors: Sequence[Tensor], *, backend: str = "auto") -> bool:
    """True when no tensor of ``tensors`` holds a NaN or an infinity.

    Args:
        tensors: floating-point tensors of one dtype on one device, any shapes (empty ones allowed).
        backend: 'auto' | 'triton' | 'torch' (see `macaw_fast.ops`). Triton runs one launch per
            eight contiguous tensors; non-contiguous ones, or mixed dtypes/devices, use the torch
            path (norms, a sum, and per-tensor checks only when that sum is not finite).

    Returns a Python bool (one device-to-host read).
    """
    tensors = list(tensors)
    if not tensors:
        return True
    for i, t in enumerate(tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"{_OP}: tensors[{i}] must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{_OP}: tensors[{i}] must be floating-point, got {t.dtype}")
    dtype, device = tensors[0].dtype, tensors[0].device
    uniform = all(t.dtype == dtype and t.device == device and t.is_contiguous() for t in tensors)
    with torch.no_grad():
        be = resolve_backend(backend, device, _OP)
        if be == "triton" and backend == "auto":
            try:                # 'auto' never fails a data check over how Triton was imported
                check_triton_mode(device, _OP)
            except RuntimeError:
                be = "torch"
        if not uniform or dtype not in (torch.float32, torch.float64) or be == "torch":
            return _all_finite_torch(tensors)
        check_triton_mode(device, _OP)
        K = load_kernels("_finite_kernels")
        flag = _flag(dtype, device)
        for s in range(0, len(tensors), _MAX_TENSORS):
            group = [t.reshape(-1) for t in tensors[s:s + _MAX_TENSORS]]
            n = [t.numel() for t in group]
            cfg = finite_launch_config(len(group), max(n))
            ptrs = group + [flag] * (_MAX_TENSORS - len(group))
            K.nonfinite_kernel[cfg["grid"]](*ptrs, flag, *n, *([0] * (_MAX_TENSORS - len(group))),
                                           num_warps=cfg["num_warps"], **cfg["constexprs"])
        if float(flag.item()) == 0.0:
            return True
        flag.zero_()        # the failure path only: the cached flag is zero again for the next call
        return False
