"""theta = W z + b of every WLinear layer in one compiled pass (`macaw_fast._C.wlinear_generate`,
used by the cpu backend's `step_leaves`) against torch.addmv; run under ASan by .ci/asan.sh."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from macaw_fast.backends.cpu import CpuBackend
from macaw_fast.backends.lowrank import generate_thetas
from macaw_fast.nets import WLinear

C = pytest.importorskip("macaw_fast._C")

# (in, out, D): P = in*out + out from 2 to 10100 rows (several 1024-row blocks), D with and without
# a remainder after the 4 x 32-byte vectors (float32: 32 per step, float64: 16)
LAYERS = [(1, 1, 1), (20, 100, 100), (100, 100, 100), (9, 1, 37), (3, 5, 7), (106, 32, 100)]


def _layers(dtype, seed=0):
    torch.manual_seed(seed)
    return [WLinear(i, o, d, dtype=dtype) for i, o, d in LAYERS]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("threads", [1, 2, 5])
def test_matches_addmv_for_any_thread_count(dtype, threads):
    layers = _layers(dtype)
    specs, outs = [], []
    for m in layers:
        out = torch.full_like(m.bias, float("nan"))
        specs.append((m.weight.detach().numpy(), m.z.detach().numpy(), m.bias.detach().numpy(), out.numpy()))
        outs.append(out)
    C.wlinear_generate(specs, threads)
    tol = 1e-14 if dtype == torch.float64 else 1e-6
    for m, out in zip(layers, outs):
        ref = torch.addmv(m.bias.double(), m.weight.double(), m.z.double())
        assert ((out.double() - ref).norm() / ref.norm()).item() <= tol
    again = [torch.empty_like(o) for o in outs]
    C.wlinear_generate([(w, z, b, o.numpy()) for (w, z, b, _), o in zip(specs, again)], 1)
    for a, b in zip(outs, again):
        assert torch.equal(a, b)          # the same sums whatever the thread count


def test_theta_leaves_use_it_and_equal_theta():
    layers = _layers(torch.float64, seed=1)
    backend = CpuBackend()
    leaves = backend.step_leaves(layers, 3, one_chunk=True)
    for m, leaf in zip(layers, leaves):
        assert leaf.requires_grad and leaf.is_leaf and backend._gatherers.get(leaf) is not None
        assert torch.allclose(leaf.detach(), m.theta().detach(), rtol=1e-13, atol=1e-13)
    # a layer that is not contiguous (or on another dtype) falls back to addmv for all of them
    odd = _layers(torch.float64, seed=2)
    odd[1].weight.data = odd[1].weight.data.t().contiguous().t()
    for m, th in zip(odd, generate_thetas(odd)):
        assert torch.allclose(th, m.theta().detach(), rtol=1e-13, atol=1e-13)


def test_bad_input_names_the_layer_and_field():
    w, z, b = np.zeros((6, 4), np.float32), np.zeros(4, np.float32), np.zeros(6, np.float32)
    C.wlinear_generate([(w, z, b, np.zeros(6, np.float32))], 1)          # the valid case runs
    with pytest.raises(ValueError, match=r"layer 1: expected W \(P, D\), z \(D,\), b \(P,\), out \(P,\)"):
        C.wlinear_generate([(w, z, b, np.zeros(6, np.float32)), (w, z, b, np.zeros(5, np.float32))], 1)
    with pytest.raises(ValueError, match="layer 0: z has dtype float64, expected float32"):
        C.wlinear_generate([(w, z.astype(np.float64), b, np.zeros(6, np.float32))], 1)
    with pytest.raises(ValueError, match="layer 0: W must be C-contiguous"):
        C.wlinear_generate([(np.zeros((4, 6), np.float32).T, z, b, np.zeros(6, np.float32))], 1)
    with pytest.raises(ValueError, match="layer 0: out must be writeable"):
        out = np.zeros(6, np.float32)
        out.flags.writeable = False
        C.wlinear_generate([(w, z, b, out)], 1)
    with pytest.raises(ValueError, match="float32 or float64"):
        C.wlinear_generate([(w.astype(np.int32), z, b, b)], 1)
    assert C.wlinear_generate([], 1) is None
