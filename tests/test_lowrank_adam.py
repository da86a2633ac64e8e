"""The low-rank Adam step (macaw_fast.backends.lowrank_adam, csrc/lowrank_adam.cpp) against torch.optim.Adam
given the dense gradient A^T B: weights, moments, step counts, z's and b's gradients; determinism
across thread counts; when it declines; its errors; and the meta-step with it on vs off."""

from __future__ import annotations

import pytest
import torch

from macaw_fast.backends import lowrank_adam
from macaw_fast.backends.cpu import CpuBackend
from macaw_fast.nets import WLinear

from helpers import make_learner, random_batch, rel_err

C = pytest.importorskip("macaw_fast._C")


def _layers(shapes, dtype, seed=0):
    torch.manual_seed(seed)
    return [WLinear(i, o, d, dtype=dtype) for i, o, d in shapes]


def _factors(layer, K, g):
    P, D = layer.weight.shape
    a = torch.randn(K, P, generator=g, dtype=torch.float64).to(layer.weight.dtype)
    b = torch.randn(K, D, generator=g, dtype=torch.float64).to(layer.weight.dtype)
    b[0] = layer.z.detach()            # row 0 of B is z, as the meta-step gathers it
    return a, b


def _adam(layers, **kw):
    params = [p for layer in layers for p in (layer.z, layer.weight, layer.bias)]
    return torch.optim.Adam(params, lr=1e-2, **kw)


SHAPES = [[(1, 1, 1)], [(3, 5, 7), (20, 13, 2)], [(30, 9, 17), (9, 1, 100)],   # P = in*out + out: 2, 20, 273, 279, 18
          # D past whole 3-vector tiles by 1, 2 and 3 vectors (float32: 8 lanes, float64: 4)
          [(4, 50, 40), (3, 90, 44), (5, 60, 22), (2, 70, 20)]]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shapes", SHAPES, ids=lambda s: "+".join(f"{i}x{o}d{d}" for i, o, d in s))
@pytest.mark.parametrize("K", [1, 11, 71])
@pytest.mark.parametrize("fused", [True, False, None], ids=["fused", "foreach-off", "default"])
def test_matches_torch_adam_with_dense_gradient(dtype, shapes, K, fused):
    mine, ref = _layers(shapes, dtype), _layers(shapes, dtype)
    kw = {} if fused is None else ({"fused": True} if fused else {"foreach": False})
    opt_m, opt_r = _adam(mine, **kw), _adam(ref, **kw)
    assert lowrank_adam.applicable(opt_m, [layer.weight for layer in mine])
    g = torch.Generator().manual_seed(1)
    tol = 1e-13 if dtype == torch.float64 else 2e-6
    for _ in range(3):                                   # moments and bias correction evolve
        factors = [_factors(layer, K, g) for layer in mine]
        for opt in (opt_m, opt_r):
            opt.zero_grad(set_to_none=True)
        lowrank_adam.lowrank_adam_step(opt_m, mine, factors)
        for layer, (a, b) in zip(ref, factors):
            layer.weight.grad = a.t() @ b
            layer.z.grad = layer.weight.detach().t() @ a[0]
            layer.bias.grad = a[0].clone()
        for lm, lr_ in zip(mine, ref):
            assert lm.weight.grad is None
            assert rel_err(lm.z.grad, lr_.z.grad) <= tol
            assert torch.equal(lm.bias.grad, lr_.bias.grad)
        opt_m.step()
        opt_r.step()
        for lm, lr_ in zip(mine, ref):
            for name in ("weight", "z", "bias"):
                a, b = getattr(lm, name), getattr(lr_, name)
                assert rel_err(a.detach(), b.detach()) <= tol, name
            sm, sr = opt_m.state[lm.weight], opt_r.state[lr_.weight]
            assert float(sm["step"]) == float(sr["step"])
            assert sm["step"].dtype == sr["step"].dtype and sm["step"].device == sr["step"].device
            for key in ("exp_avg", "exp_avg_sq"):
                assert rel_err(sm[key], sr[key]) <= tol, key


def test_same_result_for_any_thread_count():
    results = []
    for threads in (1, 2, 3, 8):
        # P = 4040 (16 row blocks of 256: up to 4 threads get work) and 24
        layers = _layers([(100, 40, 9), (7, 3, 4)], torch.float32)
        opt = _adam(layers)
        g = torch.Generator().manual_seed(3)
        factors = [_factors(layer, 5, g) for layer in layers]
        lowrank_adam.lowrank_adam_step(opt, layers, factors, num_threads=threads)
        results.append([t.detach().clone() for layer in layers for t in (layer.weight, layer.z.grad)])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_declines_what_it_does_not_implement():
    layers = _layers([(4, 3, 5)], torch.float64)
    w = [layers[0].weight]
    assert lowrank_adam.applicable(_adam(layers), w)
    for kw in ({"weight_decay": 0.1}, {"amsgrad": True}, {"maximize": True}, {"decoupled_weight_decay": True}):
        assert not lowrank_adam.applicable(_adam(layers, **kw), w), kw
    assert not lowrank_adam.applicable(torch.optim.SGD(layers[0].parameters(), lr=0.1), w)
    assert not lowrank_adam.applicable(torch.optim.AdamW(layers[0].parameters()), w)
    assert not lowrank_adam.applicable(torch.optim.Adam([layers[0].z]), w)      # W not in the optimizer
    layers[0].weight.grad = torch.zeros_like(layers[0].weight)                    # a dense gradient exists
    assert not lowrank_adam.applicable(_adam(layers), w)
    fresh = _layers([(4, 3, 5)], torch.float64)
    opt = _adam(fresh)
    w = fresh[0].weight
    opt.state[w].update(step=torch.tensor(1.0), exp_avg=torch.zeros(w.shape[::-1], dtype=w.dtype).t(),
                        exp_avg_sq=torch.zeros_like(w))
    assert not lowrank_adam.applicable(opt, [w])                                 # strided moments
    half = _layers([(4, 3, 5)], torch.float16)
    assert not lowrank_adam.applicable(_adam(half), [half[0].weight])


def _spec(P=6, D=4, K=2, dtype="float64", **over):
    import numpy as np

    arrs = {"W": np.zeros((P, D), dtype), "m": np.zeros((P, D), dtype), "v": np.zeros((P, D), dtype),
            "A": np.ones((K, P), dtype), "B": np.ones((K, D), dtype)}
    arrs.update(over.pop("arrays", {}))
    args = dict(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, step=1.0)
    args.update(over)
    return (arrs["W"], arrs["m"], arrs["v"], arrs["A"], arrs["B"], *args.values())


def test_extension_rejects_bad_arrays_with_clear_errors():
    import numpy as np

    C.lowrank_adam_step([_spec()], 2)                              # the valid case runs
    cases = [
        ({"arrays": {"A": np.ones((2, 6), "float32")}}, "A has dtype float32, expected float64"),
        ({"arrays": {"B": np.ones((3, 4))}}, r"B has shape \(3, 4\), expected \(2, 4\)"),
        ({"arrays": {"A": np.ones((2, 5))}}, r"A has shape \(2, 5\), expected \(K >= 1, 6\)"),
        ({"arrays": {"m": np.zeros((4, 6)).T}}, "exp_avg must be C-contiguous"),
        ({"arrays": {"v": np.zeros((6, 3))}}, r"exp_avg_sq has shape \(6, 3\), expected W's \(6, 4\)"),
        ({"arrays": {"W": np.zeros(24)}}, "W must be 2-D"),
        ({"step": 0.0}, "step must be >= 1"),
    ]
    for over, msg in cases:
        with pytest.raises(ValueError, match=msg):
            C.lowrank_adam_step([_spec(), _spec(**over)], 1)
    frozen = np.zeros((6, 4))
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="W must be writeable"):
        C.lowrank_adam_step([_spec(arrays={"W": frozen})], 1)
    with pytest.raises(ValueError, match="float32 or float64"):
        C.lowrank_adam_step([_spec(dtype="int64")], 1)
    assert C.lowrank_adam_step([], 1) == []


@pytest.mark.parametrize("chunk", [5, 2])
def test_meta_step_low_rank_equals_dense_and_hands_over(chunk):
    """Three float64 meta-steps with the low-rank Adam == with dense gradients (parameters and Adam
    state), and a learner may switch paths between steps (the state is torch.optim.Adam's)."""
    T, B, obs, act = 5, 8, 6, 2
    kw = dict(n_train=7, net_width=10, net_depth=2, wlinear_dim=6, head_width=4)
    batches = [(random_batch(T, B, obs, act, seed=2 * k), random_batch(T, B, obs, act, seed=2 * k + 1))
               for k in range(3)]
    dense = make_learner(obs, act, **kw, backend=CpuBackend(lowrank_adam=False))
    low, mixed = (make_learner(obs, act, **kw, backend=CpuBackend()) for _ in range(2))
    for k, (inner, outer) in enumerate(batches):
        mixed.backend = CpuBackend(lowrank_adam=k != 1)      # low-rank, dense, low-rank
        metrics = [learner.meta_step(inner, outer, chunk_size=chunk) for learner in (dense, low, mixed)]
        assert metrics[1] == pytest.approx(metrics[0], rel=1e-12)
    for learner in (low, mixed):
        for a, b in zip(learner.parameters(), dense.parameters()):
            assert rel_err(a.detach(), b.detach()) <= 1e-12
        sd, sl = dense.optimizer.state_dict()["state"], learner.optimizer.state_dict()["state"]
        assert sd.keys() == sl.keys()
        for key in sd:
            assert float(sd[key]["step"]) == float(sl[key]["step"]) == 3.0
            for name in ("exp_avg", "exp_avg_sq"):
                assert rel_err(sl[key][name], sd[key][name]) <= 1e-12, (key, name)
