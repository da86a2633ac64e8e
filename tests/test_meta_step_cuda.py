"""The meta-step on a CUDA GPU: fused (compiled Triton kernels) and batched against the per-task
reference loop, in float64 to 1e-10 relative, and float32 steps fused vs batched. Skipped cleanly
without a GPU (the same checks run on the CPU in test_meta_step.py / test_fused_meta_step.py).
"""

from __future__ import annotations

import pytest
import torch

from macaw_fast.ops._common import interpreter_requested, triton_importable
from helpers import compare_with_reference, grads_of, make_learner, param_names, random_batch, rel_err

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.skipif(interpreter_requested(), reason="TRITON_INTERPRET=1 cannot launch on CUDA")]
TOL = 1e-10


def _batches(T, B, obs, act, seed, dtype=torch.float64):
    return (random_batch(T, B, obs, act, seed=seed, dtype=dtype).to("cuda"),
            random_batch(T, B, obs, act, seed=seed + 1, dtype=dtype).to("cuda"))


def _check_against_reference(learner, inner, outer):
    got = compare_with_reference(learner, inner, outer, TOL)
    assert all(g.is_cuda for g in got)
    return got


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "batched"])
@pytest.mark.parametrize("T", [1, 5, 35])
def test_paper_config_float64_matches_reference(fused, T):
    if fused and not triton_importable():
        pytest.skip("the fused step on CUDA runs Triton kernels: needs triton")
    learner = make_learner(20, 6, n_train=35, fused=fused, device="cuda")
    inner, outer = _batches(T, 256, 20, 6, seed=10 + T)
    got = _check_against_reference(learner, inner, outer)
    # and the same numbers as the CPU batched step (different kernels, same math)
    cpu = make_learner(20, 6, n_train=35)
    loss, _ = cpu.meta_loss(inner.to("cpu"), outer.to("cpu"))
    loss.backward()
    for name, a, b in zip(param_names(cpu), got, grads_of(cpu)):
        assert rel_err(a.cpu(), b) <= TOL, f"{name} vs CPU: {rel_err(a.cpu(), b):.3e}"


@pytest.mark.skipif(not triton_importable(), reason="needs triton")
@pytest.mark.parametrize("wlinear,head", [(True, True), (True, False), (False, True)])
def test_odd_shapes_float64(wlinear, head):
    learner = make_learner(5, 2, n_train=4, net_width=6, net_depth=2, wlinear_dim=3, head_width=3, wlinear=wlinear,
                           advantage_head=head, fused=True, device="cuda")
    _check_against_reference(learner, *_batches(2, 7, 5, 2, seed=1))


@pytest.mark.skipif(not triton_importable(), reason="needs triton")
@pytest.mark.parametrize("chunk_size", [5, 2])
def test_meta_step_fused_vs_batched(chunk_size):
    """One float64 meta_step (Adam included) on CUDA, fused vs batched, one chunk and several."""
    base = make_learner(20, 6, n_train=35, device="cuda")
    fused = make_learner(20, 6, n_train=35, fused=True, device="cuda")
    inner, outer = _batches(5, 64, 20, 6, seed=3)
    want = base.meta_step(inner, outer, chunk_size=chunk_size)
    got = fused.meta_step(inner, outer, chunk_size=chunk_size)
    for k, v in want.items():
        assert abs(got[k] - v) <= 1e-10 * max(abs(v), 1e-12), (k, got[k], v)
    for name, a, b in zip(param_names(base), fused.parameters(), base.parameters()):
        assert rel_err(a, b) <= 1e-10, name


@pytest.mark.skipif(not triton_importable(), reason="needs triton")
def test_float32_steps_fused_vs_batched():
    """K float32 steps at the paper config; tolerance as in test_fused_meta_step's CPU version
    (differences are float32 rounding amplified only where a gradient is within rounding of 0)."""
    K = 5
    base = make_learner(20, 6, n_train=35, dtype=torch.float32, device="cuda")
    fused = make_learner(20, 6, n_train=35, dtype=torch.float32, fused=True, device="cuda")
    start = [p.detach().clone() for p in base.parameters()]
    for k in range(K):
        inner, outer = _batches(5, 256, 20, 6, seed=100 + 2 * k, dtype=torch.float32)
        base.meta_step(inner, outer)
        fused.meta_step(inner, outer)
    for name, a, b, a0 in zip(param_names(base), base.parameters(), fused.parameters(), start):
        moved = (a - a0).norm().item()
        assert moved > 0, name
        assert (a - b).norm().item() / moved < 1e-3, name
