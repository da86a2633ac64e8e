"""The compiled skinny products with a WLinear W (`macaw_fast._C.wlinear_left` / `wlinear_right`,
used through `macaw_fast.backends.lowrank.w_left` / `w_right` by the adapt node) against float64 torch; run
under ASan by .ci/asan.sh."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from macaw_fast.backends import lowrank

C = pytest.importorskip("macaw_fast._C")

# (T, P, D): T across the register tiles (left: 8 tasks, right: 6; both kernels' task-vector
# tiles of 16 float32 / 8 float64 tasks, exactly or with others left over) and their remainders;
# P over one or many 256-row blocks and not a multiple of the 32-row L1 sweeps or of the 16-row
# tiles; D a multiple of the 16 float32 lanes, with a remainder (left's task-vector tiles take it
# in column chunks of 8, 4, 2 and 1: 30, 19 and 37 cover each), and the smallest allowed.
SHAPES = [(1, 1, 16), (2, 300, 16), (5, 2100, 100), (7, 1031, 37), (9, 10100, 100), (16, 1031, 100),
          (17, 600, 30), (18, 517, 48), (20, 300, 19), (32, 300, 37), (35, 777, 21)]


def _tol(dtype):
    return 1e-13 if dtype == torch.float64 else 2e-6


def _rel(a, b):
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-300)).item()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T,P,D", SHAPES)
def test_left_matches_torch_for_any_thread_count(dtype, T, P, D):
    g = torch.Generator().manual_seed(T * 1000 + P)
    x = torch.randn(T, P, generator=g, dtype=dtype)
    W = torch.randn(P, D, generator=g, dtype=dtype)
    outs = []
    for threads in (1, 2, 5):
        out = torch.full((T, D), float("nan"), dtype=dtype)
        C.wlinear_left(x.numpy(), W.numpy(), out.numpy(), threads)
        outs.append(out)
    assert _rel(outs[0], x.double() @ W.double()) <= _tol(dtype)
    for other in outs[1:]:
        assert torch.equal(outs[0], other)      # blocks summed in block order: same bits


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T,P,D", SHAPES)
@pytest.mark.parametrize("add", [None, "row", "full"])
def test_right_matches_torch_for_any_thread_count(dtype, T, P, D, add):
    g = torch.Generator().manual_seed(T * 1000 + P + 7)
    z = torch.randn(T, D, generator=g, dtype=dtype)
    W = torch.randn(P, D, generator=g, dtype=dtype)
    a = None if add is None else torch.randn(P if add == "row" else (T, P), generator=g, dtype=dtype)
    alpha = -0.75
    ref = alpha * (z.double() @ W.double().t())
    if a is not None:
        ref = ref + a.double()
    outs = []
    for threads in (1, 3):
        out = torch.full((T, P), float("nan"), dtype=dtype)
        C.wlinear_right(z.numpy(), W.numpy(), out.numpy(), None if a is None else a.numpy(), alpha, threads)
        outs.append(out)
    assert _rel(outs[0], ref) <= _tol(dtype)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lowrank_helpers_use_the_kernels_and_fall_back(dtype, monkeypatch):
    g = torch.Generator().manual_seed(3)
    W = torch.randn(2100, 100, generator=g, dtype=dtype)
    x, z = torch.randn(5, 2100, generator=g, dtype=dtype), torch.randn(5, 100, generator=g, dtype=dtype)
    add = torch.randn(5, 2100, generator=g, dtype=dtype)
    calls = []
    left, right = lowrank._skinny_extension()
    monkeypatch.setattr(lowrank, "_skinny_extension",
                        lambda: (lambda *a: calls.append("l") or left(*a), lambda *a: calls.append("r") or right(*a)))
    assert _rel(lowrank.w_left(x, W), x.double() @ W.double()) <= _tol(dtype)
    assert _rel(lowrank.w_right(z, W), z.double() @ W.double().t()) <= _tol(dtype)
    assert _rel(lowrank.w_right(z, W, add), add.double() + z.double() @ W.double().t()) <= _tol(dtype)
    assert calls == ["l", "r", "r"]
    # a W too short, a non-contiguous operand, one task: torch's product, same values
    short_w = W[:1000].contiguous()
    for xx, WW in ((x[:, :1000].contiguous(), short_w), (x.t().contiguous().t(), W), (x[:1], W)):
        assert _rel(lowrank.w_left(xx, WW), xx.double() @ WW.double()) <= _tol(dtype)
    other = torch.float32 if dtype == torch.float64 else torch.float64
    assert not lowrank._skinny_ok(x.to(other), W)                       # mixed dtypes are not sent
    with pytest.raises(RuntimeError, match="dtype"):                  # torch's own error, as without us
        lowrank.w_right(z, W, add.to(other))
    assert calls == ["l", "r", "r"]


def test_bad_input_names_the_array():
    x, w, out = np.zeros((3, 40), np.float32), np.zeros((40, 16), np.float32), np.zeros((3, 16), np.float32)
    C.wlinear_left(x, w, out, 1)                                            # the valid case runs
    with pytest.raises(ValueError, match=r"expected X \(T, P\), W \(P, D\) with D >= 16"):
        C.wlinear_left(x, np.zeros((41, 16), np.float32), out, 1)
    with pytest.raises(ValueError, match=r"wlinear_left: X has dtype float32, expected float64 \(W's dtype\)"):
        C.wlinear_left(x, w.astype(np.float64), out, 1)
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        C.wlinear_left(x, w, np.zeros((16, 3), np.float32).T, 1)
    with pytest.raises(ValueError, match=r"D >= 16"):
        C.wlinear_left(np.zeros((3, 40), np.float32), np.zeros((40, 8), np.float32), np.zeros((3, 8), np.float32), 1)
    z, outr = np.zeros((3, 16), np.float32), np.zeros((3, 40), np.float32)
    C.wlinear_right(z, w, outr, None, 1.0, 1)
    with pytest.raises(ValueError, match=r"add must have shape \(P,\) or \(T, P\)"):
        C.wlinear_right(z, w, outr, np.zeros(39, np.float32), 1.0, 1)
    with pytest.raises(ValueError, match="out must be writeable"):
        ro = np.zeros((3, 40), np.float32)
        ro.setflags(write=False)
        C.wlinear_right(z, w, ro, None, 1.0, 1)
    with pytest.raises(ValueError, match="W must be float32 or float64"):
        C.wlinear_right(z, w.astype(np.int32), outr, None, 1.0, 1)
