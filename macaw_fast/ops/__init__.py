"""Fused MACAW ops with exact autograd of every order: Triton kernels plus torch twins.

Public ops. Each is a `torch.autograd.Function` (``setup_context`` and a ``vmap`` rule, so
``torch.func.grad``/``vmap`` work). Gradients of every order are exact: with the torch backend
the backward is written in differentiable torch operations; with the Triton backend the
first-order backward is itself a Function running Triton kernels, whose own backward (used when a
backward is differentiated again, as MACAW's meta-gradient does through the inner step) is the
vector-Jacobian product of that differentiable torch backward.

* `wlinear_adapt`: the inner SGD step of a weight-transform layer for all tasks (docs/algorithm.md §5);
  `wlinear_adapt_many`: the same for a net's layers at once (three launches per six layers).
* `batched_linear`, `concat_relu_linear`: one linear layer per task from generated parameters,
  with fused ReLUs.
* `awr_loss`: the advantage-weighted Gaussian log-likelihood loss per task (plus the head term).
* `value_mse`: the per-task value regression loss with its bootstrapped target (any order).
* `all_finite`: whether several tensors hold only finite values (one launch per eight tensors).

The fused meta-step's own micro-ops (objective, metrics, bootstrap advantage, parameter
generation and its backward) live with that strategy, in `macaw_fast.backends.fused_ops`.

Dispatch (every op takes ``backend='auto' | 'triton' | 'torch'``): CUDA tensors run the Triton
kernels; CPU tensors run them in Triton's interpreter when ``TRITON_INTERPRET=1`` is set
(before Triton's first import); otherwise the torch twin runs. Triton is imported only when a
kernel runs, so this package imports and works without it. `available()` says what runs where.
This package depends on torch (and optionally triton) only.
"""

from __future__ import annotations

import torch

from .awr_loss import awr_loss
from .batched_linear import batched_linear, concat_relu_linear
from .finite import all_finite
from .value_mse import value_mse
from .wlinear_adapt import wlinear_adapt, wlinear_adapt_many

__all__ = ["all_finite", "available", "awr_loss", "batched_linear", "concat_relu_linear", "value_mse",
           "wlinear_adapt", "wlinear_adapt_many"]


def _probe(device: torch.device, backend: str) -> None:
    """Run every op once on a tiny case and compare with the torch twin; raise on mismatch."""
    g = torch.Generator().manual_seed(0)
    kw = {"dtype": torch.float32}
    r = lambda *s: torch.randn(*s, generator=g, **kw).to(device)  # noqa: E731
    checks = []
    W, b, z, G, rates = r(6, 3), r(6), r(3), r(2, 6), r(3).abs()
    checks.append((wlinear_adapt, (W, b, z, G, rates, 0.9), {}))
    checks.append((batched_linear, (r(2, 5, 2), r(2, 6), 2), {"in_relu": True}))
    checks.append((concat_relu_linear, (r(2, 5, 2), r(2, 5, 1), r(2, 8), 2), {}))
    checks.append((awr_loss, (r(2, 5, 2), r(2, 5, 2), r(2, 5)), {"pred": r(2, 5), "head_weight": 0.1}))
    checks.append((awr_loss, (r(2, 5, 2), r(2, 5, 2), r(2, 5)), {"tanh": True}))
    checks.append((value_mse, (r(2, 5), r(2, 5), r(2, 5).abs(), r(2, 5)), {}))
    checks.append((wlinear_adapt_many, ([W, r(4, 3)], [b, r(4)], [z, r(3)], [G, r(2, 4)], r(2, 3).abs(), 0.9), {}))

    def flat(x):
        if isinstance(x, (tuple, list)):
            return [t for item in x for t in flat(item)]
        return [x]

    for fn, args, kwargs in checks:
        got = flat(fn(*args, backend=backend, **kwargs))
        want = flat(fn(*args, backend="torch", **kwargs))
        if len(got) != len(want):
            raise RuntimeError(f"{fn.__name__}: {backend} on {device} returns {len(got)} tensors, torch {len(want)}")
        for a, b_ in zip(got, want):
            if not torch.allclose(a, b_, rtol=1e-4, atol=1e-5):
                raise RuntimeError(f"{fn.__name__}: {backend} on {device} disagrees with the torch twin")


def available() -> dict:
    """What runs where, found by actually running a tiny case of every op.

    Returns a dict: ``"torch"`` (always True), ``"triton_cuda"`` and ``"triton_interpreter"``
    (True, or a string saying why not), and ``"auto_cpu"`` / ``"auto_cuda"``: the backend that
    ``backend='auto'`` picks for CPU / CUDA tensors right now.
    """
    from ._common import interpreter_requested, resolve_backend, triton_importable
    out: dict = {}
    try:
        _probe(torch.device("cpu"), "torch")
        out["torch"] = True
    except Exception as e:  # noqa: BLE001 - reported, not raised
        out["torch"] = f"failed: {e}"
    has_triton = triton_importable()
    if not has_triton:
        out["triton_cuda"] = out["triton_interpreter"] = "triton is not installed"
    else:
        if torch.cuda.is_available():
            try:
                _probe(torch.device("cuda"), "triton")
                out["triton_cuda"] = True
            except Exception as e:  # noqa: BLE001
                out["triton_cuda"] = f"failed: {e}"
        else:
            out["triton_cuda"] = "no CUDA device"
        if interpreter_requested():
            try:
                _probe(torch.device("cpu"), "triton")
                out["triton_interpreter"] = True
            except Exception as e:  # noqa: BLE001
                out["triton_interpreter"] = f"failed: {e}"
        else:
            out["triton_interpreter"] = "TRITON_INTERPRET=1 is not set"
    out["auto_cpu"] = resolve_backend("auto", torch.device("cpu"), "available")
    out["auto_cuda"] = resolve_backend("auto", torch.device("cuda"), "available") if has_triton else "torch"
    return out
