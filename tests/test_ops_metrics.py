"""fused_ops.step_metrics: the meta-step's metrics in one launch vs the float64 torch composition."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import macaw_fast.backends.fused_ops as ops

F64 = torch.float64


def _inputs(T, B, seed, dtype=F64, nv=(4, 3), np_=(6, 3)):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64).to(dtype)  # noqa: E731
    # rates span softplus's branches: very negative (series), moderate, and > 20 (identity)
    vrho = r(*nv) * 3.0
    vrho.view(-1)[0] = -30.0
    vrho.view(-1)[-1] = 25.0
    return [r(T), r(T), r(T), r(T), r(T, B), r(T, B).exp(), vrho, r(*np_), r(())]


def _want(lv_in, lv_out, lp_in, lp_out, adv, w, vrho, prho, kappa, losses=None):
    d = lambda t: t.to(F64)  # noqa: E731
    vals = [d(lv_in).mean(), d(lv_out).mean(), d(lp_in).mean(), d(lp_out).mean(), d(adv).mean(), d(adv).std(),
            d(w).mean(), d(w).max(), F.softplus(d(vrho)).mean(), F.softplus(d(prho)).mean(), F.softplus(d(kappa))]
    if losses is not None:
        vals.append(sum(d(l_) for l_ in losses))
    return torch.stack(vals)


# T=1, odd sizes, more values than one block (1024) in adv/w
@pytest.mark.parametrize("T,B", [(1, 2), (3, 7), (5, 300)])
@pytest.mark.parametrize("n_losses", [None, 1, 3])
def test_matches_float64_composition(backend, T, B, n_losses):
    args = _inputs(T, B, seed=T * 10 + B)
    losses = None if n_losses is None else [torch.tensor(float(i) + 0.25, dtype=F64) for i in range(n_losses)]
    got = ops.step_metrics(*args, losses, backend=backend)
    want = _want(*args, losses)
    assert got.shape == ((11,) if losses is None else (12,))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_float32_and_strided_inputs(backend):
    """float32 (result in float32, close to the float64 values) and non-contiguous adv / w."""
    args = _inputs(4, 9, seed=3, dtype=torch.float32)
    args[4] = args[4].t().contiguous().t()        # (T, B) view of a (B, T) tensor
    args[5] = torch.randn(9, 4).exp().t()
    got = ops.step_metrics(*args, backend=backend)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), _want(*args), rtol=1e-5, atol=1e-6)


def test_torch_backend_is_the_composition_exactly():
    """The torch twin is the plain composition (bitwise), as the CUDA-graph body computes it."""
    lv_in, lv_out, lp_in, lp_out, adv, w, vrho, prho, kappa = _inputs(3, 5, seed=1)
    got = ops.step_metrics(lv_in, lv_out, lp_in, lp_out, adv, w, vrho, prho, kappa, [kappa * 2], backend="torch")
    want = torch.stack([lv_in.mean(), lv_out.mean(), lp_in.mean(), lp_out.mean(), adv.mean(), adv.std(), w.mean(),
                        w.max(), F.softplus(vrho).mean(), F.softplus(prho).mean(), F.softplus(kappa),
                        torch.stack([kappa * 2]).sum()])
    assert torch.equal(got, want)


def test_no_graph(backend):
    args = _inputs(2, 4, seed=2)
    args[6].requires_grad_(True)
    assert not ops.step_metrics(*args, backend=backend).requires_grad


def test_bad_input(backend):
    args = _inputs(3, 4, seed=5)
    with pytest.raises(ValueError, match="lv_out must have shape"):
        ops.step_metrics(args[0], args[1][:2], *args[2:], backend=backend)
    with pytest.raises(ValueError, match="w must have adv's shape"):
        ops.step_metrics(*args[:5], args[5][:, :3], *args[6:], backend=backend)
    with pytest.raises(TypeError, match="float32 or float64"):
        ops.step_metrics(*args[:4], args[4].to(torch.int64), *args[5:], backend=backend)
    with pytest.raises(TypeError, match="dtype"):
        ops.step_metrics(*args[:8], args[8].float(), backend=backend)
    with pytest.raises(ValueError, match="kappa must hold one number"):
        ops.step_metrics(*args[:8], torch.zeros(2, dtype=F64), backend=backend)
    with pytest.raises(ValueError, match="losses is empty"):
        ops.step_metrics(*args, [], backend=backend)
    with pytest.raises(ValueError, match="losses\\[1\\] must hold one number"):
        ops.step_metrics(*args, [args[8], args[0]], backend=backend)
    with pytest.raises(ValueError, match=">= 2 advantages"):
        ops.step_metrics(*args[:4], args[4][:1, :1], args[5][:1, :1], *args[6:], backend=backend)
