"""The fused meta-step (macaw_fast.ops) against the per-task reference and the unfused step."""

from __future__ import annotations

import copy

import pytest
import torch

from macaw_fast import MetaLearner
from macaw_fast.ops._common import interpreter_requested, triton_importable
from helpers import compare_with_reference, make_learner, param_names, random_batch, rel_err

TOL = 1e-10


def test_paper_config_torch_twins_float64():
    """Fused (torch twins) at the paper's sizes: width 100, depth 3, D 100, B 256, obs 20, act 6, T 5."""
    learner = make_learner(20, 6, n_train=35, fused=True, ops_backend="torch")
    compare_with_reference(learner, random_batch(5, 256, 20, 6, seed=11), random_batch(5, 256, 20, 6, seed=12))


@pytest.mark.triton
@pytest.mark.skipif(not (interpreter_requested() and triton_importable()),
                    reason="needs TRITON_INTERPRET=1 (set before triton is imported) and triton")
@pytest.mark.parametrize("wlinear,head", [(True, True), (True, False), (False, True)])
def test_triton_interpreted_float64(wlinear, head):
    """Every kernel of the step, run by Triton's interpreter, on small odd shapes."""
    learner = make_learner(5, 2, n_train=4, net_width=6, net_depth=2, wlinear_dim=3, head_width=3,
                           wlinear=wlinear, advantage_head=head, fused=True, ops_backend="triton")
    compare_with_reference(learner, random_batch(2, 7, 5, 2, seed=1), random_batch(2, 7, 5, 2, seed=2))


def test_fp32_steps_fused_vs_unfused():
    """K float32 meta-steps, fused (torch twins) vs unfused, from the same start, same batches.

    The two differ only by float32 rounding (other summation orders): ~1e-7 relative per op, so the
    first meta-gradients agree to ~1e-5 relative. Adam's update is sign/size-normalised: rounding
    can change the update of an element only where its gradient is within rounding of zero, a
    tiny fraction of elements. So the runs' parameter difference stays a small fraction of how far
    the parameters moved: measured ~1.4e-5 here; bound 1e-3. A wrong op changes the gradients of
    most elements: even a mild error (the value target mix at alpha 0.85 instead of 0.9, which
    touches only the value net's targets) gives ~4e-2.
    """
    K = 5
    base = make_learner(8, 3, n_train=6, dtype=torch.float32, net_width=32, net_depth=2, wlinear_dim=16,
                        head_width=8)
    start = [p.detach().clone() for p in base.parameters()]
    fused = MetaLearner.from_state_dict(copy.deepcopy(base.state_dict()), fused=True, ops_backend="torch")
    batches = [(random_batch(4, 64, 8, 3, seed=2 * k, dtype=torch.float32),
                random_batch(4, 64, 8, 3, seed=2 * k + 1, dtype=torch.float32)) for k in range(K)]
    la, _ = base.meta_loss(*batches[0])
    lb, _ = fused.meta_loss(*batches[0])
    ga = torch.autograd.grad(la, base.parameters())
    gb = torch.autograd.grad(lb, fused.parameters())
    for name, a, b in zip(param_names(base), ga, gb):
        assert rel_err(b, a) < 1e-4, name
    for inner, outer in batches:
        base.meta_step(inner, outer)
        fused.meta_step(inner, outer)
    for name, a, b, a0 in zip(param_names(base), base.parameters(), fused.parameters(), start):
        moved = (a - a0).norm().item()
        assert moved > 0, name
        ratio = (a - b).norm().item() / moved
        assert ratio < 1e-3, f"{name}: fused differs by {ratio:.3e} of the displacement"


@pytest.mark.parametrize("ops_backend", ["torch", pytest.param("triton", marks=pytest.mark.triton)])
@pytest.mark.parametrize("chunk_size", [3, 2])
def test_meta_step_fused_vs_unfused_float64(ops_backend, chunk_size):
    """One float64 meta_step, fused vs unfused, in one chunk and in two: the metrics (the fused
    step's come from `fused_ops.step_metrics`, the chunks' losses summed in it) and the updated
    parameters agree to rounding."""
    if ops_backend == "triton" and not (interpreter_requested() and triton_importable()):
        pytest.skip("needs TRITON_INTERPRET=1 (set before triton is imported) and triton")
    kw = dict(n_train=4, net_width=6, net_depth=2, wlinear_dim=3, head_width=3)
    base = make_learner(5, 2, **kw)
    fused = make_learner(5, 2, fused=True, ops_backend=ops_backend, **kw)
    inner, outer = random_batch(3, 7, 5, 2, seed=3), random_batch(3, 7, 5, 2, seed=4)
    want = base.meta_step(inner, outer, chunk_size=chunk_size)
    got = fused.meta_step(inner, outer, chunk_size=chunk_size)
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert abs(got[k] - v) <= 1e-10 * max(abs(v), 1e-12), (k, got[k], v)
    for name, a, b in zip(param_names(base), fused.parameters(), base.parameters()):
        assert rel_err(a, b) <= 1e-10, name


@pytest.mark.triton
@pytest.mark.skipif(not (interpreter_requested() and triton_importable()),
                    reason="needs TRITON_INTERPRET=1 (set before triton is imported) and triton")
def test_fused_triton_step_stays_within_the_launch_budget():
    """Issue 6's budget: at most 150 device launches (Triton kernels + non-view torch ops) per fused
    meta-step at T=5, counted as bench/count_launches.py counts them; well under the batched step."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "bench"))
    from count_launches import launches_per_step

    fused = launches_per_step(True, "triton")
    assert fused["triton"] > 0
    assert fused["total"] <= 150, fused["ops"].most_common(20)
    assert fused["total"] * 4 < launches_per_step(False)["total"]
