"""The on-disk dataset store: writer, derived fields, reader validation, verify, crash safety."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import time

import numpy as np
import pytest

from macaw_fast.data import DatasetError, DatasetWriter, open_dataset, verify_dataset
from macaw_fast.data import store
from macaw_fast.data.batch import FIELDS

OBS, ACT = 3, 2
TASKS = {"0": {"velocity": 0.5}, "1": {"velocity": 1.5}, "7": {"velocity": np.float64(2.0), "arr": np.arange(3)}}
SPLIT = {"train": ["0", "1"], "test": ["7"]}


def make(path, gamma=0.99, **kw):
    return DatasetWriter.create(path, env_id="macaw_fast/CheetahVel-v0", tasks=TASKS, split=SPLIT,
                                obs_dim=OBS, act_dim=ACT, gamma=gamma, **kw)


def traj(seed: int, T: int):
    """A deterministic random trajectory (float64) for seed."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(T, OBS)), rng.uniform(-1, 1, size=(T, ACT)), rng.normal(size=T),
            rng.normal(size=(T, OBS)))


def expected_rows(trajs, gamma):
    """float64 oracle for the stored fields of a list of (obs, act, rew, nxt, terminated)."""
    out = {f: [] for f in FIELDS}
    for obs, act, rew, nxt, term in trajs:
        T = len(rew)
        mc = np.array([sum(gamma ** (k - t) * rew[k] for k in range(t, T)) for t in range(T)])
        out["obs"].append(obs)
        out["action"].append(act)
        out["reward"].append(rew)
        out["next_obs"].append(nxt)
        out["done"].append(np.array([0.0] * (T - 1) + [1.0 if term else 0.0]))
        out["mc_return"].append(mc)
        out["terminal_obs"].append(np.repeat(nxt[-1:], T, axis=0))
        out["terminal_discount"].append(np.zeros(T) if term else np.array([gamma ** (T - t) for t in range(T)]))
    return {f: np.concatenate(v).astype(np.float32) for f, v in out.items()}


# ----------------------------------------------------------------------------- derived fields


def test_derived_fields_by_hand(tmp_path):
    g = 0.5
    w = make(tmp_path / "d", gamma=g)
    obs = np.arange(9, dtype=np.float64).reshape(3, 3)
    nxt = obs + 100
    act = np.zeros((3, 2))
    # truncated (time limit), T = 3, rewards 1, 2, 4
    w.append_trajectory("0", obs, act, np.array([1.0, 2.0, 4.0]), nxt, False)
    # terminated, T = 2, rewards 8, 16
    w.append_trajectory("0", obs[:2], act[:2], np.array([8.0, 16.0]), nxt[:2], True)
    # length 1, truncated, and length 1, terminated
    w.append_trajectory("1", obs[:1], act[:1], np.array([3.0]), nxt[:1], False)
    w.append_trajectory("1", obs[:1], act[:1], np.array([5.0]), nxt[:1], True)
    w.commit()
    w.close()
    ds = open_dataset(tmp_path / "d")
    t0, t1 = ds["0"], ds["1"]
    # mc: 1 + .5*2 + .25*4 = 3, 2 + .5*4 = 4, 4 ; then 8 + .5*16 = 16, 16
    np.testing.assert_array_equal(t0["mc_return"], [3.0, 4.0, 4.0, 16.0, 16.0])
    np.testing.assert_array_equal(t0["terminal_discount"], [0.125, 0.25, 0.5, 0.0, 0.0])
    np.testing.assert_array_equal(t0["done"], [0, 0, 0, 0, 1])
    np.testing.assert_array_equal(t0["terminal_obs"], [nxt[2], nxt[2], nxt[2], nxt[1], nxt[1]])
    np.testing.assert_array_equal(t1["mc_return"], [3.0, 5.0])
    np.testing.assert_array_equal(t1["terminal_discount"], [0.5, 0.0])
    np.testing.assert_array_equal(t1["done"], [0, 1])
    np.testing.assert_array_equal(t1["terminal_obs"], [nxt[0], nxt[0]])
    assert t0.episode_lengths == [3, 2] and t0.episode_returns == [7.0, 24.0]
    assert t1.episode_lengths == [1, 1]
    assert ds["7"].num_rows == 0 and ds["7"]["obs"].shape == (0, OBS) and ds["7"]["reward"].shape == (0,)


def test_roundtrip_and_layout(tmp_path):
    w = make(tmp_path / "d")
    trajs = [(*traj(s, T), term) for s, (T, term) in enumerate([(5, False), (7, True), (1, False)])]
    for t in trajs:
        w.append_trajectory("1", *t)
    w.commit()
    w.close()
    ds = open_dataset(tmp_path / "d")
    assert ds.tasks == ["0", "1", "7"]
    assert ds.split == SPLIT and ds.train_tasks == ["0", "1"] and ds.test_tasks == ["7"]
    assert ds["7"].params == {"velocity": 2.0, "arr": [0, 1, 2]}
    assert ds[1].num_rows == 13 and ds.obs_dim == OBS and ds.act_dim == ACT
    want = expected_rows(trajs, 0.99)
    for f in FIELDS:
        arr = ds["1"][f]
        assert arr.dtype == np.float32 and not arr.flags.writeable
        assert arr.shape == want[f].shape, f
        np.testing.assert_allclose(arr, want[f], rtol=1e-6, atol=1e-6, err_msg=f)
        # plain numpy can read the files too, and sees exactly the committed rows
        np.testing.assert_array_equal(np.load(tmp_path / "d" / "1" / f"{f}.npy", mmap_mode="r"), arr)
        info = ds["1"].file_info(f)
        raw = np.fromfile(info.path, dtype=np.float32, offset=info.offset)
        np.testing.assert_array_equal(raw, np.asarray(arr).ravel())
        assert info.offset % 64 == 0
    tm = ds["1"].manifest
    assert tm["created_by"]["numpy"] == np.__version__ and "macaw_fast" in tm["created_by"]
    assert "gymnasium" in tm["created_by"] and "mujoco" in tm["created_by"]
    assert tm["gamma"] == 0.99 and tm["env_id"] == "macaw_fast/CheetahVel-v0"
    verify_dataset(tmp_path / "d", progress=False)


def test_uncommitted_rows_invisible_and_resume(tmp_path):
    p = tmp_path / "d"
    w = make(p)
    w.append_trajectory("0", *traj(0, 4), False)
    assert open_dataset(p)["0"].num_rows == 0  # not committed yet
    assert w.commit() == 1
    w.append_trajectory("0", *traj(1, 3), False)
    assert open_dataset(p)["0"].num_rows == 4
    w.close()  # discards the 3 uncommitted rows
    assert os.path.getsize(p / "0" / "obs.npy") == 128 + 4 * OBS * 4
    with DatasetWriter.open(p) as w2:
        with pytest.raises(RuntimeError, match="another DatasetWriter"):
            DatasetWriter.open(p)
        w2.append_trajectory("0", *traj(2, 2), True)
        assert w2.num_rows("0") == 6 and w2.num_rows("0", pending=False) == 4
        assert w2.commit() == 2
    ds = verify_dataset(p, progress=False)
    want = expected_rows([(*traj(0, 4), False), (*traj(2, 2), True)], 0.99)
    for f in FIELDS:
        np.testing.assert_allclose(ds["0"][f], want[f], rtol=1e-6, atol=1e-6)
    # only the current manifest is left
    assert sorted(n for n in os.listdir(p / "0") if n.startswith("manifest")) == ["manifest-000002.json"]


def test_create_refuses_existing_and_overwrites(tmp_path):
    p = tmp_path / "d"
    w = make(p)
    w.append_trajectory("0", *traj(0, 4), False)
    w.commit()
    w.close()
    with pytest.raises(FileExistsError, match="already exists"):
        make(p)
    make(p, overwrite=True).close()
    assert open_dataset(p)["0"].num_rows == 0
    assert [n for n in os.listdir(tmp_path) if n != "d"] == []  # no temporaries left behind


@pytest.mark.parametrize("bad, match", [
    (dict(obs=np.zeros((4, OBS + 1))), r"obs: expected shape \(4, 3\)"),
    (dict(action=np.zeros((3, ACT))), r"action: expected shape \(4, 2\)"),
    (dict(reward=np.zeros((4, 2))), r"reward: expected shape \(T,\)"),
    (dict(next_obs=np.full((4, OBS), np.nan)), r"next_obs: contains NaN"),
    (dict(reward=np.array([0, np.inf, 0, 0])), r"reward: contains NaN or inf"),
])
def test_append_rejects_bad_input(tmp_path, bad, match):
    w = make(tmp_path / "d")
    obs, act, rew, nxt = traj(0, 4)
    args = dict(obs=obs, action=act, reward=rew, next_obs=nxt, terminated=False)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        w.append_trajectory("0", **args)
    with pytest.raises(KeyError, match="no task"):
        w.append_trajectory("9", obs, act, rew, nxt, False)
    with pytest.raises(TypeError, match="terminated"):
        w.append_trajectory("0", obs, act, rew, nxt, 1.0)


def test_create_rejects_bad_arguments(tmp_path):
    kw = dict(env_id="e/E-v0", tasks=TASKS, split=SPLIT, obs_dim=OBS, act_dim=ACT)
    with pytest.raises(ValueError, match="split\\['test'\\]: task '9' is not in tasks"):
        DatasetWriter.create(tmp_path / "a", **dict(kw, split={"train": ["0"], "test": ["9"]}))
    with pytest.raises(ValueError, match="task id '../x'"):
        DatasetWriter.create(tmp_path / "a", **dict(kw, tasks={"../x": {}}))
    with pytest.raises(ValueError, match="obs_dim"):
        DatasetWriter.create(tmp_path / "a", **dict(kw, obs_dim=0))
    with pytest.raises(ValueError, match="'train' and 'test'"):
        DatasetWriter.create(tmp_path / "a", **dict(kw, split={"train": ["0"]}))
    assert not os.path.exists(tmp_path / "a")


# ----------------------------------------------------------------------------- corruption


@pytest.fixture
def filled(tmp_path):
    p = tmp_path / "d"
    w = make(p)
    for s in range(3):
        w.append_trajectory("0", *traj(s, 6), s == 2)
        w.append_trajectory("1", *traj(10 + s, 5), False)
    w.commit()
    w.close()
    return p


def test_truncated_file_detected(filled):
    f = filled / "1" / "mc_return.npy"
    os.truncate(f, os.path.getsize(f) - 4)
    with pytest.raises(DatasetError, match=r"task 1, field 'mc_return', file .*mc_return.npy: file is truncated"):
        open_dataset(filled)


def test_flipped_byte_detected_by_verify(filled):
    f = filled / "0" / "action.npy"
    with open(f, "r+b") as fh:
        fh.seek(128 + 17)
        b = fh.read(1)
        fh.seek(128 + 17)
        fh.write(bytes([b[0] ^ 0x10]))
    open_dataset(filled)  # cheap checks cannot see a flipped byte...
    with pytest.raises(DatasetError, match=r"task 0, field 'action', file .*action.npy: SHA-256 mismatch"):
        verify_dataset(filled, progress=False)  # ...the checksum does
    with pytest.raises(DatasetError, match="SHA-256 mismatch"):
        DatasetWriter.open(filled)  # and the writer refuses to append to corrupt data


def test_deleted_file_detected(filled):
    os.unlink(filled / "0" / "terminal_obs.npy")
    with pytest.raises(DatasetError, match=r"task 0, field 'terminal_obs', file .*terminal_obs.npy: file is missing"):
        open_dataset(filled)


def test_missing_manifests_detected(filled, tmp_path):
    dm = json.loads((filled / "dataset.json").read_text())
    os.unlink(filled / "1" / dm["tasks"][1]["manifest"])
    with pytest.raises(DatasetError, match="task 1: manifest is missing"):
        open_dataset(filled)
    os.unlink(filled / "dataset.json")
    with pytest.raises(DatasetError, match="dataset manifest is missing"):
        open_dataset(filled)
    with pytest.raises(DatasetError, match="no such dataset directory"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="file: is a file, not a dataset directory"):
        open_dataset(tmp_path / "file")


def _edit_task_manifest(path, tid, fn):
    dm = json.loads((path / "dataset.json").read_text())
    entry = next(e for e in dm["tasks"] if e["id"] == tid)
    mp = path / tid / entry["manifest"]
    m = json.loads(mp.read_text())
    fn(m, entry)
    mp.write_text(json.dumps(m))
    (path / "dataset.json").write_text(json.dumps(dm))


def test_lying_row_count_detected(filled):
    def lie(m, entry):
        m["rows"] += 1000
        entry["rows"] += 1000
        for f in m["fields"].values():
            f["shape"][0] += 1000

    _edit_task_manifest(filled, "0", lie)
    with pytest.raises(DatasetError, match=r"task 0, field 'obs', .*header has 18 rows, manifest says 1018"):
        open_dataset(filled)


def test_manifest_disagreement_detected(filled):
    _edit_task_manifest(filled, "0", lambda m, e: e.update(rows=3))
    with pytest.raises(DatasetError, match="task 0: rows 18 but dataset.json says 3"):
        open_dataset(filled)


@pytest.mark.parametrize("bad_id", ["../victim", "/etc", "a/b", ".hidden", ""])
def test_task_ids_that_are_paths_are_refused_on_read(filled, tmp_path, bad_id):
    """A manifest naming a task '../victim' must not make the reader, verify or a resuming writer
    touch anything outside the dataset directory."""
    import shutil

    victim = tmp_path / "victim"
    shutil.copytree(filled / "0", victim)      # a plausible task directory right outside the dataset
    before = {p.name: p.read_bytes() for p in victim.iterdir()}
    dm = json.loads((filled / "dataset.json").read_text())
    old = dm["tasks"][0]["id"]
    dm["tasks"][0]["id"] = bad_id
    dm["split"] = {k: [bad_id if t == old else t for t in v] for k, v in dm["split"].items()}
    (filled / "dataset.json").write_text(json.dumps(dm))
    for fn in (open_dataset, lambda p: store.verify_dataset(p, progress=False), store.DatasetWriter.open):
        with pytest.raises(DatasetError, match="is not a valid task id"):
            fn(filled)
    assert {p.name: p.read_bytes() for p in victim.iterdir()} == before


def test_wrong_dims_detected(filled):
    dm = json.loads((filled / "dataset.json").read_text())
    dm["obs_dim"] = 4
    (filled / "dataset.json").write_text(json.dumps(dm))
    with pytest.raises(DatasetError, match=r"task 0, field 'obs', .*manifest shape \[18, 3\] but expected \[18, 4\]"):
        open_dataset(filled)


def test_wrong_file_shape_detected(filled):
    # a file whose header says (N, 4) where the manifest wants (N, 3)
    f = filled / "1" / "next_obs.npy"
    with open(f, "r+b") as fh:
        fh.write(store.npy_header(11, 4))
    with pytest.raises(DatasetError, match=r"task 1, field 'next_obs', .*file shape \(11, 4\), expected \(N, 3\)"):
        open_dataset(filled)


def test_nan_in_data_detected(filled):
    f = filled / "1" / "reward.npy"
    with open(f, "r+b") as fh:
        fh.seek(128 + 4 * 6)
        fh.write(np.float32(np.nan).tobytes())
    with pytest.raises(DatasetError, match=r"task 1, field 'reward', .*NaN or inf at row 6"):
        open_dataset(filled, check_finite=True)
    with pytest.raises(DatasetError, match=r"(?s)task 1, field 'reward'.*SHA-256 mismatch.*NaN or inf at row 6"):
        verify_dataset(filled, progress=False)


# ----------------------------------------------------------------------------- full disk


@pytest.mark.parametrize("fail_on", ["data", "manifest"])
def test_enospc_leaves_previous_state(filled, monkeypatch, fail_on):
    before = {f: np.array(open_dataset(filled)["0"][f]) for f in FIELDS}
    w = DatasetWriter.open(filled)
    real = store._write_bytes

    def full_disk(f, data):
        name = getattr(f, "name", "")
        is_json = isinstance(name, str) and ".json" in name or isinstance(name, int)
        if (fail_on == "data") != is_json and len(data) != store.HEADER_BYTES:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(f, data)

    if fail_on == "data":
        monkeypatch.setattr(store, "_write_bytes", full_disk)
        with pytest.raises(OSError, match=r"task 0, field 'obs': write failed \(no space left on device\).*unchanged") as ei:
            w.append_trajectory("0", *traj(99, 4), False)
    else:
        w.append_trajectory("0", *traj(99, 4), False)
        monkeypatch.setattr(store, "_write_bytes", full_disk)
        with pytest.raises(OSError, match=r"write failed \(no space left on device\).*unchanged at its last commit") as ei:
            w.commit()
    assert ei.value.errno == errno.ENOSPC
    monkeypatch.setattr(store, "_write_bytes", real)
    ds = verify_dataset(filled, progress=False)
    assert ds.generation == 1 and ds["0"].num_rows == 18
    for f in FIELDS:
        np.testing.assert_array_equal(ds["0"][f], before[f])
    # the writer recovered: it can append and commit again
    w.append_trajectory("0", *traj(5, 2), False)
    w.commit()
    w.close()
    ds = verify_dataset(filled, progress=False)
    assert ds["0"].num_rows == 20
    np.testing.assert_array_equal(ds["0"]["obs"][:18], before["obs"])
    assert not [n for root, _, names in os.walk(filled) for n in names if n.endswith(".tmp")]


# ----------------------------------------------------------------------------- kill -9


def _fork_writer(path, body, crash_at=None, pipe_w=None):
    """Run ``body(writer)`` in a forked child process; returns its pid."""
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 0
        try:
            if crash_at:
                os.environ["MACAW_FAST_STORE_CRASH_AT"] = crash_at
            w = DatasetWriter.open(path)
            body(w, pipe_w)
        except BaseException:
            code = 3
        finally:
            os._exit(code)
    return pid


def _check_state(path, trajs_by_task):
    """The dataset verifies and each task holds exactly a prefix of its expected trajectories."""
    ds = verify_dataset(path, progress=False)
    counts = {}
    for tid, trajs in trajs_by_task.items():
        lens = ds[tid].episode_lengths
        counts[tid] = len(lens)
        assert lens == [len(t[2]) for t in trajs[: len(lens)]]
        if lens:
            want = expected_rows(trajs[: len(lens)], 0.99)
            for f in FIELDS:
                np.testing.assert_allclose(ds[tid][f], want[f], rtol=1e-6, atol=1e-6)
    return ds, counts


def _plan(n):
    return {"0": [(*traj(100 + k, 3 + k % 4), k % 3 == 0) for k in range(n)],
            "1": [(*traj(200 + k, 2 + k % 5), False) for k in range(n)]}


@pytest.mark.parametrize("crash_at, committed", [("after_data", False), ("after_header", False),
                                                 ("after_task_manifest", False), ("after_commit", True)])
def test_kill9_at_commit_stages(filled, crash_at, committed):
    # the fixture committed 3 trajectories to tasks 0 and 1; rebuild that expectation
    base = {"0": [(*traj(s, 6), s == 2) for s in range(3)], "1": [(*traj(10 + s, 5), False) for s in range(3)]}
    extra = _plan(2)

    def body(w, _):
        for tid in ("0", "1"):
            for t in extra[tid]:
                w.append_trajectory(tid, *t)
        w.commit()

    pid = _fork_writer(filled, body, crash_at)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    expect = {tid: base[tid] + extra[tid] for tid in base}
    ds, counts = _check_state(filled, expect)
    assert counts == ({"0": 5, "1": 5} if committed else {"0": 3, "1": 3})  # all tasks or none
    assert ds.generation == (2 if committed else 1)
    # the writer resumes cleanly after the crash and its appends verify
    with DatasetWriter.open(filled) as w:
        w.append_trajectory("0", *traj(7, 3), False)
        w.commit()
    ds = verify_dataset(filled, progress=False)
    assert ds["0"].num_rows == sum(len(t[2]) for t in expect["0"][: counts["0"]]) + 3


def test_kill9_at_random_times(tmp_path):
    p = tmp_path / "d"
    make(p).close()
    plan = _plan(400)
    rng = random.Random(1234)

    def body(w, pipe_w):
        # continue from whatever is committed
        k = len(open_dataset(p)["0"].episode_lengths)
        while k < len(plan["0"]):
            w.append_trajectory("0", *plan["0"][k])
            w.append_trajectory("1", *plan["1"][k])
            w.commit()
            os.write(pipe_w, b"c")
            k += 1

    last = 0
    for trial in range(4):
        r, wfd = os.pipe()
        pid = _fork_writer(p, body, None, wfd)
        os.close(wfd)
        seen = 0
        while seen < 3:  # wait for three commits, then kill at a random moment of the next ones
            if not os.read(r, 1):
                break
            seen += 1
        time.sleep(rng.uniform(0, 0.02))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
        ds, counts = _check_state(p, plan)
        assert counts["0"] == counts["1"]  # both tasks advance in the same commits
        assert counts["0"] >= last + seen
        last = counts["0"]
    assert last > 0


def test_reader_during_commits(tmp_path):
    """Opening while a writer commits in another process always yields some complete commit."""
    p = tmp_path / "d"
    make(p).close()
    plan = _plan(300)

    def body(w, pipe_w):
        for k in range(len(plan["0"])):
            w.append_trajectory("0", *plan["0"][k])
            w.commit()

    pid = _fork_writer(p, body)
    seen = set()
    try:
        while len(seen) < 20:
            ds = open_dataset(p)
            lens = ds["0"].episode_lengths
            seen.add(len(lens))
            assert lens == [len(t[2]) for t in plan["0"][: len(lens)]]
            if lens:
                np.testing.assert_allclose(ds["0"]["reward"][-lens[-1]:], plan["0"][len(lens) - 1][2], rtol=1e-6)
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                pid = None
                break
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_import_is_light():
    """Importing macaw_fast.data pulls in none of the optional heavy packages."""
    import subprocess
    import sys

    code = ("import sys, macaw_fast.data; bad = [m for m in ('h5py', 'minari', 'matplotlib') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
