"""fused_ops.wlinear_generate: theta = W z + b of many layers in one launch vs float64 addmv."""

from __future__ import annotations

import pytest
import torch

import macaw_fast.backends.fused_ops as ops

F64 = torch.float64


def _layers(shapes, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64).to(dtype)  # noqa: E731
    return [r(P, D) for P, D in shapes], [r(P) for P, _ in shapes], [r(D) for _, D in shapes]


CASES = {
    "one": [(1, 1)],
    "odd": [(7, 3), (65, 3), (130, 3)],
    "ten": [(P, 5) for P in (1, 64, 65, 200, 3, 10, 11, 129, 2, 70)],     # one full launch
    "eleven": [(P, 4) for P in range(1, 12)],                              # two launches
    "mixed_d": [(9, 4), (9, 4), (5, 300), (17, 4)],                        # groups by D; D > BLOCK_D
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_addmv(backend, case):
    W, b, z = _layers(CASES[case], seed=len(case))
    got = ops.wlinear_generate(W, b, z, backend=backend)
    assert len(got) == len(W)
    for i, (t, w_, b_, z_) in enumerate(zip(got, W, b, z)):
        assert t.shape == b_.shape
        torch.testing.assert_close(t, torch.addmv(b_, w_, z_), rtol=1e-13, atol=1e-13, msg=f"layer {i}")


def test_float32_non_contiguous_and_no_graph(backend):
    W, b, z = _layers([(33, 6), (8, 6)], seed=3, dtype=torch.float32)
    W[0] = torch.randn(6, 33).t()                 # non-contiguous W: copied first
    W[1].requires_grad_(True)
    got = ops.wlinear_generate(W, b, z, backend=backend)
    assert not any(t.requires_grad for t in got)
    for t, w_, b_, z_ in zip(got, W, b, z):
        assert t.dtype == torch.float32
        torch.testing.assert_close(t.double(), torch.addmv(b_.double(), w_.detach().double(), z_.double()),
                                   rtol=1e-5, atol=1e-5)


def test_empty_and_bad_input(backend):
    assert ops.wlinear_generate([], [], [], backend=backend) == []
    W, b, z = _layers([(5, 3), (4, 3)], seed=4)
    with pytest.raises(ValueError, match="one entry per layer"):
        ops.wlinear_generate(W, b[:1], z, backend=backend)
    with pytest.raises(ValueError, match="biases\\[1\\] must have shape"):
        ops.wlinear_generate(W, [b[0], b[0]], z, backend=backend)
    with pytest.raises(ValueError, match="zs\\[0\\] must have shape"):
        ops.wlinear_generate(W, b, [torch.zeros(2, dtype=F64), z[1]], backend=backend)
    with pytest.raises(TypeError, match="dtype"):
        ops.wlinear_generate([W[0], W[1].float()], b, z, backend=backend)
    with pytest.raises(ValueError, match="must have 2 dimensions"):
        ops.wlinear_generate([b[0]], [b[0]], [z[0]], backend=backend)
