"""Minari export/import: one Minari dataset per task, exact round trips. Skipped without minari."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("minari")

from macaw_fast.data import DatasetWriter, open_dataset, verify_dataset  # noqa: E402
from macaw_fast.data.batch import FIELDS  # noqa: E402
from macaw_fast.data.minari_io import export_minari, import_minari, minari_dataset_id  # noqa: E402
from macaw_fast.data.store import write_task_arrays  # noqa: E402

OBS, ACT = 4, 2


def rollout(rng, T):
    o = rng.normal(size=(T + 1, OBS))
    return o[:-1], rng.uniform(-1, 1, size=(T, ACT)), rng.normal(size=T), o[1:]


@pytest.fixture
def collected(tmp_path):
    p = tmp_path / "ds"
    w = DatasetWriter.create(p, env_id="macaw_fast/AntDir-v0", tasks={"3": {"goal": 1.25}, "10": {"goal": 4.5}},
                             split={"train": ["10"], "test": ["3"]}, obs_dim=OBS, act_dim=ACT)
    rng = np.random.default_rng(0)
    for tid in ("3", "10"):
        for k, T in enumerate((5, 1, 7)):
            w.append_trajectory(tid, *rollout(rng, T), terminated=(k == 2))
    w.commit()
    w.close()
    return p


def assert_same(a, b):
    da, db = open_dataset(a), open_dataset(b)
    assert da.tasks == db.tasks and da.split == db.split and da.env_id == db.env_id
    assert (da.obs_dim, da.act_dim, da.gamma) == (db.obs_dim, db.act_dim, db.gamma)
    for t in da.tasks:
        assert da[t].params == db[t].params
        assert da[t].episode_lengths == db[t].episode_lengths
        assert da[t].episode_returns == db[t].episode_returns
        for f in FIELDS:
            np.testing.assert_array_equal(da[t][f], db[t][f], err_msg=f"task {t} {f}")


def test_round_trip_exact(collected, tmp_path):
    root = tmp_path / "minari"
    ids = export_minari(collected, "macaw/antdir", root=root, progress=False)
    assert ids == ["macaw/antdir/task-3-v0", "macaw/antdir/task-10-v0"]
    # a plain Minari user sees standard datasets with the task in the metadata
    import minari

    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        m = minari.load_dataset(minari_dataset_id("macaw/antdir", "10"))
        assert m.total_episodes == 3 and m.total_steps == 13
        assert m.storage.metadata["macaw_fast"]["params"] == {"goal": 4.5}
        ep = next(m.iterate_episodes())
        assert ep.observations.shape == (6, OBS) and ep.truncations[-1] and not ep.terminations[-1]
        ep3 = list(m.iterate_episodes())[2]
        assert ep3.terminations[-1] and not ep3.truncations[-1]
    finally:
        del os.environ["MINARI_DATASETS_PATH"]
    import_minari("macaw/antdir", tmp_path / "back", root=root, progress=False)
    assert_same(collected, tmp_path / "back")
    verify_dataset(tmp_path / "back", progress=False)
    with pytest.raises(FileExistsError, match="already exists"):
        export_minari(collected, "macaw/antdir", root=root, progress=False)


def test_round_trip_without_trajectories(tmp_path):
    """Subsampled data (the paper's, unknown boundaries, arbitrary derived fields) survives exactly."""
    p = tmp_path / "ds"
    w = DatasetWriter.create(p, env_id="macaw_fast/CheetahVel-v0", tasks={"0": {"velocity": 0.075}},
                             split={"train": ["0"], "test": []}, obs_dim=OBS, act_dim=ACT)
    rng = np.random.default_rng(1)
    n = 9
    arrays = {f: rng.normal(size=(n,) if f in ("reward", "mc_return") else (n, ACT if f == "action" else OBS))
              for f in FIELDS if f not in ("done", "terminal_discount")}
    arrays["done"] = (rng.uniform(size=n) < 0.3).astype(np.float32)
    arrays["terminal_discount"] = rng.uniform(size=n)
    arrays["action"] = arrays["action"] * 3  # outside [-1, 1]: exported with an unbounded Box
    write_task_arrays(w, "0", arrays, episodes={"lengths": None, "returns": [1.5, -2.0]})
    w.commit()
    w.close()
    root = tmp_path / "minari"
    with pytest.warns(UserWarning, match="one-step Minari episode"):
        export_minari(p, "vel", root=root, progress=False)
    import_minari("vel", tmp_path / "back", root=root, progress=False)
    assert_same(p, tmp_path / "back")
    assert open_dataset(tmp_path / "back")["0"].episode_lengths is None


def test_foreign_minari_dataset_recomputes_derived(collected, tmp_path):
    root = tmp_path / "minari"
    export_minari(collected, "foreign", root=root, progress=False)
    # strip our metadata and infos, as a dataset made by other tooling would lack them
    import h5py

    ns_meta = root / "foreign" / "namespace_metadata.json"
    ns_meta.write_text(json.dumps({}))
    for t in ("3", "10"):
        d = root / "foreign" / f"task-{t}-v0" / "data"
        meta = json.loads((d / "metadata.json").read_text())
        del meta["macaw_fast"]
        (d / "metadata.json").write_text(json.dumps(meta))
        with h5py.File(d / "main_data.hdf5", "r+") as f:
            for ep in f.values():
                del ep["infos"]
    import_minari("foreign", tmp_path / "back", root=root, progress=False)
    a, b = open_dataset(collected), open_dataset(tmp_path / "back")
    assert sorted(b.tasks) == ["10", "3"]
    for t in ("3", "10"):
        assert b[t].params == {}
        for f in FIELDS:
            np.testing.assert_allclose(b[t][f], a[t][f], rtol=1e-6, atol=1e-6, err_msg=f)


def test_failed_export_leaves_nothing_half_written(collected, tmp_path, monkeypatch):
    """The second task fails mid-export: the Minari root holds neither namespace nor staging files,
    and an existing namespace that was being overwritten is left as it was."""
    import macaw_fast.data.minari_io as mio

    root = tmp_path / "minari"
    export_minari(collected, "keep", root=root, progress=False)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    real = mio.np.array_equal
    calls = {"n": 0}

    def fail_later(a, b):
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("disk full")
        return real(a, b)

    monkeypatch.setattr(mio.np, "array_equal", fail_later)
    for ns, overwrite in (("new", False), ("keep", True)):
        calls["n"] = 0
        with pytest.raises(RuntimeError, match="disk full"):
            export_minari(collected, ns, root=root, overwrite=overwrite, progress=False)
        assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_exported_datasets_recover_their_env_and_normalise_like_us(tmp_path):
    """env_spec -> recover_environment() gives the task's env; ref min/max -> get_normalized_score
    is (R - random) / (best in the data - random), as macaw-fast normalises; an ordinary Minari
    dataset (no macaw_fast metadata) is imported with its env spec's env id and task."""
    pytest.importorskip("gymnasium")
    pytest.importorskip("mujoco")
    import minari

    from macaw_fast.train.scripted import make_scripted_dataset

    data = make_scripted_dataset(tmp_path / "vel", "cheetah_vel", episodes_per_task=2, episode_steps=50, seed=0,
                                 task_indices=[2, 5])
    root = tmp_path / "minari"
    export_minari(data, "vel", root=root, progress=False)
    ds = open_dataset(data)
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        m = minari.load_dataset(minari_dataset_id("vel", "5"))
        env = m.recover_environment()
        assert env.spec.id == "macaw_fast/CheetahVel-v0"
        assert env.unwrapped.task == ds["5"].params
        _, info = env.reset(seed=0)
        assert info["task"] == ds["5"].params
        md = m.storage.metadata
        assert md["ref_max_score"] == max(ds["5"].episode_returns)
        lo, hi = md["ref_min_score"], md["ref_max_score"]
        assert lo < hi
        r = 0.5 * (lo + hi)
        assert float(minari.get_normalized_score(m, np.array([r]))[0]) == pytest.approx(0.5)
    finally:
        del os.environ["MINARI_DATASETS_PATH"]
    # strip our metadata: the env spec alone tells the importer the env id and each task
    (root / "vel" / "namespace_metadata.json").write_text(json.dumps({}))
    for t in ("2", "5"):
        d = root / "vel" / f"task-{t}-v0" / "data"
        meta = json.loads((d / "metadata.json").read_text())
        del meta["macaw_fast"]
        (d / "metadata.json").write_text(json.dumps(meta))
    back = import_minari("vel", tmp_path / "back", root=root, progress=False)
    assert back.env_id == "macaw_fast/CheetahVel-v0"
    assert {t: back[t].params for t in back.tasks} == {"2": ds["2"].params, "5": ds["5"].params}
