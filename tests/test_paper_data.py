"""Import of the paper's HDF5 buffers (docs/algorithm.md §8), on small files built here in the paper's exact layout."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from macaw_fast.data import verify_dataset  # noqa: E402
from macaw_fast.data.paper import (PAPER_FAMILIES, import_paper, load_task_params, paper_family,  # noqa: E402
                                   skip_rows, trajectory_returns)

GAMMA = 0.99


def paper_trajectories(rng, lengths, obs_dim, act_dim):
    """Rows as the paper's ReplayBuffer.add_trajectory stores them: each trajectory
    last-transition-first, terminal_discount gamma, gamma^2, ... (float32), terminals bool."""
    cols = {k: [] for k in ("obs", "actions", "rewards", "mc_rewards", "terminals", "terminal_obs",
                            "terminal_discounts", "next_obs")}
    returns = []
    for T in lengths:
        obs = rng.normal(size=(T + 1, obs_dim)).astype(np.float32)
        act = rng.uniform(-1, 1, size=(T, act_dim)).astype(np.float32)
        rew = rng.normal(size=T).astype(np.float32)
        returns.append(float(np.sum(rew.astype(np.float64))))
        mc, factor = 0.0, 1.0
        for t in reversed(range(T)):
            factor *= GAMMA
            mc = float(rew[t]) + GAMMA * mc
            cols["obs"].append(obs[t])
            cols["actions"].append(act[t])
            cols["rewards"].append([rew[t]])
            cols["mc_rewards"].append([mc])
            cols["terminals"].append([t == T - 1])
            cols["terminal_obs"].append(obs[T])
            cols["terminal_discounts"].append([factor])
            cols["next_obs"].append(obs[t + 1])
    out = {k: np.asarray(v, dtype=np.bool_ if k == "terminals" else np.float32) for k, v in cols.items()}
    return out, returns


def write_paper_task(d, env, i, cols, params):
    with h5py.File(os.path.join(d, f"buffers_{env}_train_{i}_sub_task_0.hdf5"), "w") as f:
        for k, v in cols.items():
            f.create_dataset(k, data=v, compression="lzf")
        f.create_dataset("discount_factor", data=GAMMA)
    with open(os.path.join(d, f"env_{env}_train_task{i}.pkl"), "wb") as f:
        pickle.dump([params], f)


@pytest.fixture
def cheetah_dir(tmp_path):
    d = tmp_path / "paper"
    d.mkdir()
    rng = np.random.default_rng(0)
    files = {}
    for i, (lengths, direction) in enumerate([([5, 8, 10], 1.0), ([4, 9, 6, 11], -1.0)]):  # N = 23, 30
        cols, returns = paper_trajectories(rng, lengths, 20, 6)
        write_paper_task(d, "cheetah_dir", i, cols, {"direction": direction})
        files[i] = (cols, returns)
    return d, files


def test_skip_rule():
    np.testing.assert_array_equal(skip_rows(23, 7), [2, 9, 16])
    np.testing.assert_array_equal(skip_rows(30, 7), [2, 9, 16, 23])
    np.testing.assert_array_equal(skip_rows(14, 7), [0, 7])
    np.testing.assert_array_equal(skip_rows(6, 7), [])
    np.testing.assert_array_equal(skip_rows(5, 1), [0, 1, 2, 3, 4])
    for n in range(40):  # same rows as the paper loader's f[x][-(n//7*7):][::7]
        ref = np.arange(n)[n - n // 7 * 7 :][::7] if n // 7 else np.arange(0)
        np.testing.assert_array_equal(skip_rows(n, 7), ref)


def test_import_cheetah_dir(cheetah_dir, tmp_path):
    src, files = cheetah_dir
    ds = import_paper(src, "cheetah_dir", tmp_path / "out", progress=False)
    assert ds.env_id == "macaw_fast/CheetahDir-v0" and ds.obs_dim == 20 and ds.act_dim == 6
    assert ds.tasks == ["0", "1"] and ds.split == {"train": ["0", "1"], "test": ["0", "1"]}
    assert ds.gamma == pytest.approx(GAMMA)
    assert ds["0"].params == {"direction": 1.0} and ds["1"].params == {"direction": -1.0}
    names = {"obs": "obs", "action": "actions", "reward": "rewards", "next_obs": "next_obs", "done": "terminals",
             "mc_return": "mc_rewards", "terminal_obs": "terminal_obs", "terminal_discount": "terminal_discounts"}
    for i, keep in ((0, [2, 9, 16]), (1, [2, 9, 16, 23])):
        td = ds[str(i)]
        cols, returns = files[i]
        assert td.num_rows == len(keep)
        for field, key in names.items():
            arr = td[field]
            assert arr.dtype == np.float32
            want = cols[key][keep].astype(np.float32)
            if want.shape[1:] == (1,):  # (N, 1) in the file -> (N,) in the store
                want = want[:, 0]
            assert arr.shape == want.shape, field
            np.testing.assert_array_equal(arr, want, err_msg=field)  # used exactly as stored
        assert td.episode_lengths is None  # subsampled rows are not trajectories
        np.testing.assert_allclose(td.episode_returns, returns, rtol=1e-12)
        assert td.manifest["source"]["rows_in_file"] == len(cols["obs"])
        assert td.manifest["source"]["buffer_skip"] == 7
    verify_dataset(tmp_path / "out", progress=False)


def test_import_without_skip_and_subset(cheetah_dir, tmp_path):
    src, files = cheetah_dir
    ds = import_paper(src, "cheetah_dir", tmp_path / "out", buffer_skip=1, tasks=[1], progress=False)
    assert ds.tasks == ["1"] and ds.split == {"train": ["1"], "test": ["1"]}
    np.testing.assert_array_equal(ds["1"]["obs"], files[1][0]["obs"])
    np.testing.assert_array_equal(ds["1"]["done"], files[1][0]["terminals"][:, 0].astype(np.float32))
    with pytest.raises(FileExistsError, match="already exists"):
        import_paper(src, "cheetah_dir", tmp_path / "out", progress=False)


def test_paper_splits():
    assert PAPER_FAMILIES["cheetah_vel"].test_tasks == (2, 7, 15, 23, 26)
    assert len(PAPER_FAMILIES["cheetah_vel"].train_tasks) == 35
    assert PAPER_FAMILIES["ant_dir"].test_tasks == (6, 17, 23, 30, 41)
    assert len(PAPER_FAMILIES["ant_dir"].train_tasks) == 45
    assert paper_family("walker_params").test_tasks == (2, 12, 15, 39, 43)
    for f in PAPER_FAMILIES.values():
        if f.name != "cheetah_dir":
            assert not set(f.train_tasks) & set(f.test_tasks)
            assert sorted(f.train_tasks + f.test_tasks) == list(range(f.num_tasks))
    with pytest.raises(ValueError, match="unknown paper env 'hopper'"):
        paper_family("hopper")


def test_walker_split_and_array_params(tmp_path):
    d = tmp_path / "paper"
    d.mkdir()
    rng = np.random.default_rng(1)
    idx = [2, 3]
    for i in idx:
        cols, _ = paper_trajectories(rng, [9, 7], 17, 6)
        write_paper_task(d, "walker_param", i, cols, {"body_mass": rng.uniform(size=8), "dof_damping": np.ones(9)})
    ds = import_paper(d, "walker_params", tmp_path / "out", tasks=idx, progress=False)
    assert ds.split == {"train": ["3"], "test": ["2"]}
    assert ds.env_id == "macaw_fast/WalkerParams-v0"
    assert len(ds["2"].params["body_mass"]) == 8 and ds["2"].params["dof_damping"] == [1.0] * 9
    assert ds["2"].num_rows == 16 // 7


def test_trajectory_returns_both_orders():
    rng = np.random.default_rng(2)
    cols, returns = paper_trajectories(rng, [3, 1, 4], 2, 1)
    np.testing.assert_allclose(trajectory_returns(cols["rewards"], cols["terminal_discounts"], GAMMA), returns)
    # the same rows in time order (each trajectory reversed back)
    r, td = cols["rewards"][:, 0], cols["terminal_discounts"][:, 0]
    fwd = np.concatenate([r[0:3][::-1], r[3:4], r[4:8][::-1]])
    fwd_td = np.concatenate([td[0:3][::-1], td[3:4], td[4:8][::-1]])
    np.testing.assert_allclose(trajectory_returns(fwd, fwd_td, GAMMA), returns)


def test_bad_files_give_clear_errors(cheetah_dir, tmp_path):
    src, files = cheetah_dir
    # a scalar column not in the (N, 1) layout
    p = os.path.join(src, "buffers_cheetah_dir_train_1_sub_task_0.hdf5")
    with h5py.File(p, "r+") as f:
        del f["rewards"]
        f.create_dataset("rewards", data=np.zeros((30, 2), np.float32), compression="lzf")
    with pytest.raises(ValueError, match=r"buffers_cheetah_dir_train_1_sub_task_0.hdf5: dataset 'rewards' .* shape \(30, 2\), expected \(N, 1\)"):
        import_paper(src, "cheetah_dir", tmp_path / "out", progress=False)
    assert not os.path.exists(tmp_path / "out")
    assert [n for n in os.listdir(tmp_path) if n.startswith(".out")] == []  # staging cleaned up
    # wrong observation size for the family: cheetah files under Ant-Dir's names
    os.rename(os.path.join(src, "buffers_cheetah_dir_train_0_sub_task_0.hdf5"),
              os.path.join(src, "buffers_ant_dir_train_0_sub_task_0.hdf5"))
    os.rename(os.path.join(src, "env_cheetah_dir_train_task0.pkl"), os.path.join(src, "env_ant_dir_train_task0.pkl"))
    with pytest.raises(ValueError, match=r"dataset 'obs' \(field obs\) has shape \(23, 20\), expected \(N, 27\)"):
        import_paper(src, "ant_dir", tmp_path / "out", tasks=[0], progress=False)
    # missing files are listed
    with pytest.raises(FileNotFoundError, match=r"missing 2 file\(s\) of cheetah_dir: "
                                                r"buffers_cheetah_dir_train_0_sub_task_0.hdf5, env_cheetah_dir_train_task0.pkl"):
        import_paper(src, "cheetah_dir", tmp_path / "out", progress=False)
    # a pickle that is not a one-element list of a dict
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"direction": 1.0}))
    with pytest.raises(ValueError, match="expected a one-element list holding a dict"):
        load_task_params(str(bad))
    # pickles that would run code are refused
    bad.write_bytes(pickle.dumps([{"x": os.getcwd}]))
    with pytest.raises(ValueError, match="refusing to unpickle posix.getcwd"):
        load_task_params(str(bad))


def test_empty_task_and_group_fields_are_refused(cheetah_dir, tmp_path):
    src, files = cheetah_dir
    p = os.path.join(src, "buffers_cheetah_dir_train_1_sub_task_0.hdf5")
    with h5py.File(p, "r+") as f:          # a field that is a group, not a dataset
        del f["rewards"]
        f.create_group("rewards")
    with pytest.raises(ValueError, match=r"train_1_sub_task_0.hdf5: 'rewards' is an HDF5 group, expected a dataset"):
        import_paper(src, "cheetah_dir", tmp_path / "out", progress=False)
    cols, _ = paper_trajectories(np.random.default_rng(1), [3], 20, 6)
    write_paper_task(src, "cheetah_dir", 1, {k: v[:0] for k, v in cols.items()}, {"direction": -1.0})   # 0 rows
    with pytest.raises(ValueError, match=r"train_1_sub_task_0.hdf5: 0 row\(s\); a task needs data"):
        import_paper(src, "cheetah_dir", tmp_path / "out", progress=False)
    write_paper_task(src, "cheetah_dir", 1, {k: v[:3] for k, v in cols.items()}, {"direction": -1.0})   # 3 < skip 7
    with pytest.raises(ValueError, match=r"3 row\(s\), none left after buffer_skip 7"):
        import_paper(src, "cheetah_dir", tmp_path / "out", buffer_skip=7, progress=False)
    assert not os.path.exists(tmp_path / "out")
