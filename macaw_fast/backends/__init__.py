"""Execution strategies of the meta-step: the handful of operations whose implementation differs.

MACAW itself (`macaw_fast.macaw.MetaLearner`) is written once, in the order of the paper; every
operation that can run more than one way goes through its learner's backend:

========  ==================================================================================
torch     `TorchBackend`: plain torch autograd (create_graph inner gradients). Any device.
cpu       `CpuBackend`: hand-written Hessian-vector products for the inner gradients, low-rank
          W gradients with a one-pass Adam update, the compiled kernels of ``macaw_fast._C``.
fused     `FusedBackend`: the fused ops of `macaw_fast.ops` (Triton on CUDA, their torch twins
          elsewhere); nothing reads back to the host, so a step can be captured in a CUDA graph.
========  ==================================================================================

All three give the same meta-gradient (float64: relative error <= 1e-10 against the per-task
reference loop, tests/test_meta_step.py, tests/test_fused_meta_step.py). `resolve` turns the
public word (``MetaLearner(backend=...)``, ``macaw-fast train --backend``) into an instance;
'auto' picks fused on CUDA, cpu on the CPU when the compiled extension is built, torch otherwise.
The interface is `TorchBackend`'s methods (docs/algorithm.md §4, "Where each piece runs").
"""

from __future__ import annotations

#: The words `resolve` accepts.
BACKEND_NAMES = ("auto", "torch", "cpu", "fused")


def extension_built() -> bool:
    """Whether the compiled extension ``macaw_fast._C`` imports (the cpu strategy's kernels)."""
    try:
        from .. import _C  # noqa: F401
    except ImportError:
        return False
    return True


def resolve(backend, device=None, ops_backend: str = "auto"):
    """A backend instance from its word ('auto', 'torch', 'cpu', 'fused') or an instance (returned
    as is). ``device``: where the learner lives (for 'auto'); ``ops_backend``: the fused ops'
    backend ('auto', 'triton', 'torch') for 'fused'."""
    import torch

    from .plain import TorchBackend

    if isinstance(backend, TorchBackend):
        return backend
    if backend not in BACKEND_NAMES:
        raise ValueError(f"backend: expected one of {', '.join(map(repr, BACKEND_NAMES))} or a "
                         f"macaw_fast.backends.TorchBackend instance, got {backend!r}")
    if backend == "auto":
        dev = torch.device(device) if device is not None else torch.empty(0).device
        backend = "fused" if dev.type == "cuda" else "cpu" if extension_built() else "torch"
    if backend == "fused":
        from .fused import FusedBackend
        return FusedBackend(ops_backend)
    if backend == "cpu":
        from .cpu import CpuBackend
        return CpuBackend()
    return TorchBackend()


def __getattr__(name: str):
    # PEP 562: the word list and `resolve` import without torch (the CLI's --help stays fast)
    if name == "TorchBackend":
        from .plain import TorchBackend
        return TorchBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BACKEND_NAMES", "TorchBackend", "extension_built", "resolve"]
