"""The execution-strategy seam (macaw_fast.backends): one public word, the same numbers from each."""

from __future__ import annotations

import pytest
import torch

from macaw_fast import MacawConfig, MetaLearner
from macaw_fast.backends import BACKEND_NAMES, TorchBackend, extension_built, resolve
from macaw_fast.backends.cpu import CpuBackend
from macaw_fast.backends.fused import FusedBackend
from macaw_fast.train.config import TrainConfig

from helpers import make_learner, random_batch, rel_err


def test_resolve_words_instances_and_errors():
    assert type(resolve("torch")) is TorchBackend
    assert type(resolve("cpu")) is CpuBackend
    fused = resolve("fused", ops_backend="torch")
    assert type(fused) is FusedBackend and fused.ops_backend == "torch"
    mine = CpuBackend(lowrank_adam=False)
    assert resolve(mine) is mine                                   # an instance is used as given
    assert type(resolve("auto", "cpu")) is (CpuBackend if extension_built() else TorchBackend)
    assert type(resolve("auto", "cuda")) is FusedBackend           # fused on CUDA (no device is touched)
    with pytest.raises(ValueError, match="backend: expected one of 'auto', 'torch', 'cpu', 'fused'"):
        resolve("gpu")
    with pytest.raises(ValueError, match="ops_backend"):
        FusedBackend("cuda")
    assert set(BACKEND_NAMES) == {"auto", "torch", "cpu", "fused"}


def test_learner_takes_the_word_and_the_old_flag():
    kw = dict(config=MacawConfig(net_width=6, net_depth=1, wlinear_dim=3, head_width=2), dtype=torch.float64)
    assert MetaLearner(4, 2, 3, backend="torch", **kw).backend.name == "torch"
    assert MetaLearner(4, 2, 3, fused=True, **kw).fused                    # the older spelling
    assert MetaLearner(4, 2, 3, fused=False, **kw).backend.name in ("cpu", "torch")
    with pytest.raises(ValueError, match="backend: expected one of"):
        MetaLearner(4, 2, 3, backend="triton", **kw)
    with pytest.raises(ValueError, match="train.backend: expected one of auto, torch, cpu, fused, got 'gpu'"):
        TrainConfig(backend="gpu").validate()


@pytest.mark.parametrize("chunk", ["auto", 2])
def test_every_backend_takes_the_same_steps(chunk):
    """Three float64 meta-steps (update included) with each backend: the same metrics and parameters
    to 1e-10, and adaptation and actions of the result agree too."""
    T, B, obs, act = 5, 9, 6, 2
    kw = dict(n_train=8, net_width=12, net_depth=2, wlinear_dim=5, head_width=4, ops_backend="torch")
    batches = [(random_batch(T, B, obs, act, seed=2 * k), random_batch(T, B, obs, act, seed=2 * k + 1))
               for k in range(3)]
    runs = {}
    for name in ("torch", "cpu", "fused"):
        learner = make_learner(obs, act, backend=name, **kw)
        metrics = [learner.meta_step(i, o, chunk_size=chunk) for i, o in batches]
        adapted = learner.adapt(batches[0][0])
        runs[name] = (learner, metrics, adapted, learner.act(batches[0][1].obs, adapted).detach())
    ref, ref_metrics, ref_adapted, ref_act = runs["torch"]
    for name in ("cpu", "fused"):
        learner, metrics, adapted, actions = runs[name]
        for a, b in zip(learner.parameters(), ref.parameters()):
            assert rel_err(a.detach(), b.detach()) <= 1e-10, name
        for m, r in zip(metrics, ref_metrics):
            for k, v in r.items():
                assert m[k] == pytest.approx(v, rel=1e-10, abs=1e-12), (name, k)
        for a, b in zip(adapted.policy + adapted.value, ref_adapted.policy + ref_adapted.value):
            assert rel_err(a.detach(), b.detach()) <= 1e-10, name
        assert rel_err(actions, ref_act) <= 1e-10, name
