"""The sampler reads the on-disk store's memory-mapped task data directly (integration)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from macaw_fast.data import FIELDS
from macaw_fast.data.sampler import MetaBatchSampler, cpp_sampler_available

store = pytest.importorskip("macaw_fast.data.store")


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
def test_sampler_on_store_dataset(tmp_path, backend):
    if backend == "cpp" and not cpp_sampler_available():
        pytest.skip("C++ sampler not built")
    rng = np.random.default_rng(0)
    obs_dim, act_dim = 4, 2
    path = tmp_path / "ds"
    with store.DatasetWriter.create(path, "test/Env-v0", {"a": {"v": 1.0}, "b": {"v": 2.0}},
                                    {"train": ["a"], "test": ["b"]}, obs_dim, act_dim) as w:
        for task in ("a", "b"):
            for length in (20, 17, 30):
                obs = rng.standard_normal((length, obs_dim)).astype(np.float32)
                w.append_trajectory(task, obs, rng.standard_normal((length, act_dim)).astype(np.float32),
                                    rng.standard_normal(length).astype(np.float32),
                                    rng.standard_normal((length, obs_dim)).astype(np.float32), terminated=False)
        w.commit()
    ds = store.open_dataset(path)
    tasks = [ds[t] for t in ds.tasks]
    s = MetaBatchSampler(tasks, 16, seed=3, backend=backend, inner_mode="uniform")
    inner, outer, ii, oi = s.sample(7, [1, 0], return_indices=True)
    for slot, t in enumerate([1, 0]):
        for f in FIELDS:
            src = np.asarray(tasks[t][f]).reshape(len(tasks[t][f]), -1)
            got_in = getattr(inner, f)[slot].reshape(16, -1)
            got_out = getattr(outer, f)[slot].reshape(16, -1)
            assert torch.equal(got_in, torch.from_numpy(src[ii[slot]])), f
            assert torch.equal(got_out, torch.from_numpy(src[oi[slot]])), f
