"""The compiled value-net forward without a graph (`macaw_fast._C.value_forward`, used by
`ValueNet.forward_thetas` outside grad mode for the advantages and the bootstrapped target) against
float64 torch; run under ASan by .ci/asan.sh."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from macaw_fast import nets
from macaw_fast.backends import lowrank
from macaw_fast.backends.cpu import CpuBackend

C = pytest.importorskip("macaw_fast._C")

# (T, B, dims): rows per task across the 32-row blocks and the 6-row register tiles (and their
# remainders); hidden widths a whole number of vectors, with a remainder, past 4- and 2-vector
# column chunks, and the narrowest allowed (16 float32 / 8 float64 lanes; 17 and 40 cover both);
# one hidden layer or several; the paper's value net (20 -> 100 x 3 -> 1).
SHAPES = [(1, 1, [3, 40, 1]), (2, 5, [7, 16, 17, 1]), (3, 37, [20, 100, 100, 100, 1]), (4, 64, [6, 96, 1]),
          (2, 70, [5, 50, 33, 1]), (5, 768, [20, 100, 100, 100, 1])]


def _tol(dtype):
    return 1e-13 if dtype == torch.float64 else 2e-6


def _make(T, B, dims, dtype, seed=0):
    g = torch.Generator().manual_seed(seed + T * 100 + B)
    x = torch.randn(T, B, dims[0], generator=g, dtype=dtype)
    thetas = [torch.randn(T, i * o + o, generator=g, dtype=dtype) / i ** 0.5 for i, o in zip(dims[:-1], dims[1:])]
    return x, thetas


def _reference(x, thetas, dims):
    return nets.mlp_forward([t.double() for t in thetas], dims, x.double()).squeeze(-1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T,B,dims", SHAPES)
def test_matches_torch_for_any_thread_count(dtype, T, B, dims):
    x, thetas = _make(T, B, dims, dtype)
    ref = _reference(x, thetas, dims)
    outs = []
    for threads in (1, 2, 5):
        out = torch.full((T, B), float("nan"), dtype=dtype)
        C.value_forward(x.numpy(), [t.numpy() for t in thetas], out.numpy(), threads)
        outs.append(out)
    assert ((outs[0].double() - ref).norm() / ref.norm()).item() <= _tol(dtype)
    for other in outs[1:]:
        assert torch.equal(outs[0], other)      # one thread per output, fixed order: same bits


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpu_backend_value_nograd_uses_the_kernel(dtype, monkeypatch):
    dims = [20, 100, 100, 100, 1]
    vf = nets.ValueNet(20, 100, 3, dtype=dtype)
    assert list(vf.dims) == dims
    x, thetas = _make(3, 40, dims, dtype, seed=5)
    calls = []
    real = lowrank._compiled("value_forward")
    monkeypatch.setattr(lowrank, "_compiled", lambda name: (lambda *a: calls.append(1) or real(*a))
                        if name == "value_forward" else None)
    fast = CpuBackend().value_nograd(vf, thetas, x)
    assert calls == [1]
    slow = vf.forward_thetas(thetas, x)                           # the network itself: torch's layers
    assert calls == [1]
    ref = _reference(x, thetas, dims)
    for out in (fast, slow):
        assert out.shape == (3, 40) and out.dtype == dtype
        assert ((out.double() - ref).norm() / ref.norm()).item() <= _tol(dtype)


def test_cases_it_does_not_take():
    dims = [20, 100, 100, 100, 1]
    x, thetas = _make(2, 8, dims, torch.float32)
    assert lowrank.value_forward(thetas, dims, x) is not None
    shared = [t[0] for t in thetas]                               # one theta for all tasks
    narrow_dims = [20, 8, 1]
    narrow_x, narrow = _make(2, 8, narrow_dims, torch.float32)
    for args in ((shared, dims, x),
                 (narrow, narrow_dims, narrow_x),                 # a hidden layer under 16 lanes
                 ([t.t().contiguous().t() for t in thetas], dims, x),   # non-contiguous thetas
                 (thetas, dims, x.transpose(0, 1).contiguous().transpose(0, 1)),
                 ([t.double() for t in thetas], dims, x),         # mixed dtypes
                 ([t.half() for t in thetas], dims, x.half())):
        assert lowrank.value_forward(*args) is None


def test_nan_propagates():
    dims = [4, 16, 1]
    x, thetas = _make(2, 3, dims, torch.float32)
    thetas[0][1, 5] = float("nan")          # task 1's first-layer W: its every output is NaN
    out = torch.empty(2, 3)
    C.value_forward(x.numpy(), [t.numpy() for t in thetas], out.numpy(), 1)
    assert torch.isfinite(out[0]).all() and torch.isnan(out[1]).all()


def test_bad_input_names_the_array():
    x = np.zeros((2, 3, 4), np.float32)
    th = [np.zeros((2, 4 * 16 + 16), np.float32), np.zeros((2, 17), np.float32)]
    out = np.zeros((2, 3), np.float32)
    C.value_forward(x, th, out, 1)                                   # the valid case runs
    with pytest.raises(ValueError, match=r"thetas\[1\] has shape \(2, 18\), expected \(2, in \* out \+ out\) "
                                         r"with in = 16 and out 1 \(the output layer\)"):
        C.value_forward(x, [th[0], np.zeros((2, 18), np.float32)], out, 1)
    with pytest.raises(ValueError, match=r"thetas\[0\] .* out >= 16"):
        C.value_forward(x, [np.zeros((2, 4 * 8 + 8), np.float32), np.zeros((2, 9), np.float32)], out, 1)
    with pytest.raises(ValueError, match=r"thetas\[0\] has dtype float64, expected float32 \(x's dtype\)"):
        C.value_forward(x, [th[0].astype(np.float64), th[1]], out, 1)
    with pytest.raises(ValueError, match=r"out must have shape \(2, 3\)"):
        C.value_forward(x, th, np.zeros((2, 4), np.float32), 1)
    with pytest.raises(ValueError, match="x must be 3-D"):
        C.value_forward(x[0], th, out, 1)
    with pytest.raises(ValueError, match=r"thetas\[0\] must be C-contiguous"):
        C.value_forward(x, [np.asfortranarray(th[0]), th[1]], out, 1)
    with pytest.raises(ValueError, match="x must be float32 or float64"):
        C.value_forward(x.astype(np.int32), th, out, 1)
    with pytest.raises(ValueError, match="at least one layer"):
        C.value_forward(x, [], out, 1)
    ro = np.zeros((2, 3), np.float32)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="out must be writeable"):
        C.value_forward(x, th, ro, 1)
