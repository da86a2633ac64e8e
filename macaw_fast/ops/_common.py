"""Shared plumbing of `macaw_fast.ops`: backend choice, lazy Triton import, input checks, vmap.

Backends. Every op has two implementations behind one `torch.autograd.Function`:

* ``"triton"``: a Triton kernel. Runs on CUDA tensors, or on CPU tensors when the environment
  variable ``TRITON_INTERPRET=1`` was set before Triton was first imported (Triton's interpreter).
* ``"torch"``: the torch twin, the same math written with torch operations.

``backend="auto"`` picks Triton for CUDA tensors (when Triton imports), Triton's interpreter for
CPU tensors when ``TRITON_INTERPRET=1`` is set at call time, and the torch twin otherwise. The
environment is read at call time, never at import, and Triton is imported only when a kernel is
about to run, so the package works where Triton is not installed.
"""

from __future__ import annotations

import importlib
import os
from typing import Callable, Sequence

import torch
from torch import Tensor

BACKENDS = ("auto", "triton", "torch")
_FLOAT_DTYPES = (torch.float32, torch.float64)


def interpreter_requested() -> bool:
    """True when ``TRITON_INTERPRET`` is set to a true value in the environment right now."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def triton_importable() -> bool:
    """True when ``import triton`` succeeds (imports it)."""
    try:
        importlib.import_module("triton")
    except Exception:  # noqa: BLE001 - any failure means "not usable"
        return False
    return True


def load_kernels(module: str, package: str = "macaw_fast.ops"):
    """Import ``<package>.<module>`` (kernels decorated with ``triton.jit``) on first use.

    Raises RuntimeError with a clear message when Triton is missing or when the kernels were
    compiled for a different mode (interpreter vs GPU) than the one asked for now.
    """
    if not triton_importable():
        raise RuntimeError("macaw_fast.ops: backend 'triton' needs the triton package "
                           "(pip install 'macaw-fast[triton]'); use backend='torch' instead")
    mod = importlib.import_module(f"{package}.{module}")
    return mod


def kernels_interpreted() -> bool:
    """Whether ``triton.jit`` currently produces interpreted kernels (Triton's own switch)."""
    from triton import knobs
    return bool(knobs.runtime.interpret)


def resolve_backend(backend: str, device: torch.device, op: str) -> str:
    """Turn ``backend`` ('auto' | 'triton' | 'torch') into 'triton' or 'torch' for ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    if device.type == "cuda":
        if backend == "triton" or triton_importable():
            return "triton"
        return "torch"
    if device.type == "cpu" and interpreter_requested():
        if backend == "triton" or triton_importable():
            return "triton"
        return "torch"
    if backend == "triton":
        raise RuntimeError(f"{op}: backend='triton' on {device.type} tensors needs CUDA, or "
                           "TRITON_INTERPRET=1 set before Triton is imported (the interpreter)")
    return "torch"


def check_triton_mode(device: torch.device, op: str) -> None:
    """Raise if the loaded Triton kernels cannot run on ``device`` (interpreter vs GPU mismatch)."""
    interp = kernels_interpreted()
    if device.type == "cpu" and not interp:
        raise RuntimeError(f"{op}: CPU tensors need Triton's interpreter, but Triton was imported "
                           "without TRITON_INTERPRET=1; set it before the first import of triton")
    if device.type == "cuda" and interp:
        raise RuntimeError(f"{op}: Triton is in interpreter mode (TRITON_INTERPRET=1) and cannot "
                           "launch on CUDA tensors; unset it or move the tensors to the CPU")


def check_tensor(op: str, name: str, t, ndim: int | None = None, *, dtype=None, device=None,
                 shape: Sequence[int | None] | None = None) -> Tensor:
    """Validate one tensor argument; raise TypeError/ValueError naming ``op`` and ``name``."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be float32 or float64, got {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{op}: {name} has dtype {t.dtype}, expected {dtype} (like the other inputs)")
    if device is not None and t.device != device:
        raise ValueError(f"{op}: {name} is on {t.device}, expected {device} (like the other inputs)")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{op}: {name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if shape is not None:
        for i, s in enumerate(shape):
            if s is not None and t.shape[i] != s:
                want = "(" + ", ".join("?" if x is None else str(x) for x in shape) + ("," if len(shape) == 1 else "") + ")"
                raise ValueError(f"{op}: {name} must have shape {want}, got {tuple(t.shape)}")
    return t


def next_pow2(n: int) -> int:
    """Smallest power of two >= max(n, 1)."""
    n = max(int(n), 1)
    return 1 << (n - 1).bit_length()


def loop_vmap(apply: Callable, info, in_dims, *args):
    """A generic ``vmap`` rule: run ``apply`` once per batch entry and stack the outputs on dim 0.

    Correct for every op (each call is the op itself, so its autograd stays intact); used because
    the kernels have no batch dimension of their own. ``in_dims`` has one entry per argument.
    """
    n = info.batch_size
    outs = []
    for i in range(n):
        sl = [a.select(d, i) if (d is not None and isinstance(a, Tensor)) else a
              for a, d in zip(args, in_dims)]
        outs.append(apply(*sl))
    if isinstance(outs[0], tuple):
        # outputs that are absent (None) in every call stay None, with no batch dimension
        stacked = tuple(None if outs[0][k] is None else torch.stack([o[k] for o in outs])
                        for k in range(len(outs[0])))
        return stacked, tuple(None if s is None else 0 for s in stacked)
    return torch.stack(outs), 0


_SCALARS: dict = {}


def scalar_params(values: Sequence[float], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A cached 1-D tensor holding float constants for a kernel, in the kernel's own dtype.

    Triton passes Python floats as fp32 scalars, which would round float64 constants (alpha,
    sigma, ...); kernels read them from this tensor instead. Cached per (values, dtype, device) so a
    repeated call (or a CUDA-graph capture) does no host-to-device copy.
    """
    key = (tuple(float(v) for v in values), dtype, str(device))
    t = _SCALARS.get(key)
    if t is None:
        if len(_SCALARS) > 256:
            _SCALARS.clear()
        t = torch.tensor(key[0], dtype=dtype, device=device)
        _SCALARS[key] = t
    return t


_FULL: dict = {}


def cached_full(shape: Sequence[int], value: float, dtype: torch.dtype, device: torch.device,
                divisor: int | None = None) -> Tensor:
    """A cached constant tensor of ``shape`` holding ``value`` (divided by ``divisor`` in ``dtype``,
    so it rounds like ``torch.ones(()) * value / divisor``), made once per key: no launch later.

    For autograd seeds (``grad_outputs``) of the fused meta-step; callers must not write to it.
    """
    key = (tuple(int(s) for s in shape), float(value), divisor, dtype, str(device))
    t = _FULL.get(key)
    if t is None:
        if len(_FULL) > 256:
            _FULL.clear()
        t = torch.full(key[0], float(value), dtype=dtype, device=device)
        if divisor is not None:
            t = t / divisor
        _FULL[key] = t
    return t
