"""`GraphedMetaStep`: K graph replays equal K eager fused meta-steps (needs a CUDA GPU).

Skipped cleanly without CUDA (and without triton, which the fused step uses on CUDA). The graph
replays the very kernels the eager step launches, in the same order, so in float64 the two agree to
rounding (1e-10 relative); the one systematic difference is Adam's ``capturable`` variant (step
counters on the GPU), which changes the bias-correction arithmetic at the last bit. In float32 the
same steps agree within 1e-5 relative after K = 3 steps (the meta-gradient is a sum of a few
thousand terms: fp32 rounding differences of ~1e-7 relative, amplified by Adam's normalisation in
the first steps where |m| / sqrt(v) is ~1 for every parameter).
"""

import pytest
import torch

from macaw_fast import MacawConfig, MetaLearner
from macaw_fast.data.synthetic import synthetic_batch

def test_graph_body_is_the_eager_step_without_host_reads(monkeypatch):
    """What the graph captures (`GraphedMetaStep._body`: `meta_gradient` then `apply_update`) is the
    eager `meta_step` exactly, and `meta_gradient` of the fused backend reads nothing back to the
    host (every Tensor-to-Python conversion is forbidden while it runs). Runs without a GPU."""
    from macaw_fast.macaw import METRIC_NAMES

    def make():
        torch.manual_seed(0)
        return MetaLearner(20, 6, 35, MacawConfig(net_width=8, wlinear_dim=4, head_width=4),
                           dtype=torch.float64, backend="fused", ops_backend="torch")

    g = torch.Generator().manual_seed(1)
    inner, outer = synthetic_batch(3, 16, 20, 6, g).to(torch.float64), synthetic_batch(3, 16, 20, 6, g).to(torch.float64)
    eager, body = make(), make()
    metrics = eager.meta_step(inner, outer)

    def forbidden(*args, **kw):
        raise AssertionError("a host read inside meta_gradient")

    with monkeypatch.context() as m:
        for name in ("item", "tolist", "__bool__", "__float__", "__int__", "numpy"):
            m.setattr(torch.Tensor, name, forbidden)
        grad = body.meta_gradient(inner, outer, check_inputs=False)
    body.apply_update(grad)
    assert grad.metrics.tolist() == [metrics[k] for k in METRIC_NAMES] + [metrics["loss/meta"]]
    for a, b in zip(eager.parameters(), body.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="already applied"):
        body.apply_update(grad)


def _learner(dtype):
    torch.manual_seed(0)
    cfg = MacawConfig(net_width=32, wlinear_dim=8, head_width=16)
    return MetaLearner(20, 6, 35, cfg, device="cuda", dtype=dtype, fused=True)


def _batches(K, T, B, dtype):
    g = torch.Generator().manual_seed(1)
    return [(synthetic_batch(T, B, 20, 6, g).to("cuda", dtype), synthetic_batch(T, B, 20, 6, g).to("cuda", dtype))
            for _ in range(K)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_graphed_steps_match_eager_fused_steps(dtype, rtol):
    pytest.importorskip("triton")
    from macaw_fast.train.cuda_graph import GraphedMetaStep
    K, T, B = 3, 5, 64
    data = _batches(K, T, B, dtype)
    eager, graphed = _learner(dtype), _learner(dtype)
    for a, b in zip(eager.parameters(), graphed.parameters()):
        assert torch.equal(a, b)
    step = GraphedMetaStep(graphed, T, B)
    for a, b in zip(eager.parameters(), graphed.parameters()):      # capture + warm-up changed nothing
        assert torch.equal(a, b)
    for inner, outer in data:
        m_e = eager.meta_step(inner, outer)
        m_g = step.step(inner, outer)
        assert m_e.keys() == m_g.keys()
        for k in m_e:
            assert m_g[k] == pytest.approx(m_e[k], rel=rtol * 10, abs=1e-12), k
    for a, b in zip(eager.parameters(), graphed.parameters()):
        torch.testing.assert_close(b, a, rtol=rtol, atol=rtol * 1e-2)
    assert any(not torch.equal(a, b) for a, b in zip(_learner(dtype).parameters(), graphed.parameters()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_rejects_wrong_shapes_and_unfused_learner():
    pytest.importorskip("triton")
    from macaw_fast.train.cuda_graph import GraphedMetaStep
    with pytest.raises(RuntimeError, match="fused=True"):
        GraphedMetaStep(MetaLearner(20, 6, 35, MacawConfig(net_width=8, wlinear_dim=4, head_width=4),
                                    device="cuda"), 2, 8)
    learner = _learner(torch.float32)
    step = GraphedMetaStep(learner, 2, 8)
    (inner, outer), = _batches(1, 2, 16, torch.float32)
    with pytest.raises(ValueError, match="T=2, B=8"):
        step.step(inner, outer)
