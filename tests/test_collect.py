"""The collector: the whole replay buffer lands in the store, terminations are kept apart from
time limits, and a killed run resumes without losing or duplicating anything."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from macaw_fast import envs
from macaw_fast.collect import CollectConfig, Collector, collect
from macaw_fast.data.store import open_dataset, verify_dataset

# tiny agents so that a few hundred updates take a second or two
TINY = dict(warmup=100, utd=0.25, width=16, batch_size=16, eval_interval=150, checkpoint_interval=150, progress=False,
            tensorboard=False)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _arrays(path):
    ds = open_dataset(path)
    return {t: {k: np.array(v) for k, v in ds[t].arrays().items()} for t in ds.tasks}


def test_collect_writes_whole_buffer_with_tasks_and_split(tmp_path):
    path = collect("cheetah_vel", tmp_path / "run", steps_per_task=450, seed=1, tasks=[2, 5, 7], **TINY)
    ds = open_dataset(path)
    assert ds.tasks == ["2", "5", "7"]
    assert ds.split == {"train": ["5"], "test": ["2", "7"]}  # the paper's split restricted to these tasks
    vgoal = np.linspace(0.075, 3.0, 40)
    for t in ds.tasks:
        td = ds[t]
        assert td.num_rows == 450  # every env step, the final partial episode included
        assert td.episode_lengths == [200, 200, 50]
        assert td.params["velocity"] == pytest.approx(vgoal[int(t)])
        # transitions chain inside an episode; episodes are truncations (discount gamma^(T-t), done 0)
        obs, nxt = td["obs"], td["next_obs"]
        assert np.array_equal(obs[1:200], nxt[:199])
        assert not np.array_equal(obs[200], nxt[199])  # reset between episodes
        assert float(td["done"].max()) == 0.0
        assert td["terminal_discount"][199] == pytest.approx(0.99)
        assert np.abs(td["action"]).max() <= 1.0
    verify_dataset(path)
    logs = [json.loads(ln) for ln in open(tmp_path / "run" / "log.jsonl")]
    assert [r["step"] for r in logs] == [150, 300, 450] and logs[-1]["final"]
    assert len(logs[-1]["velocity_error"]) == 3 and logs[-1]["rows"] == [450, 450, 450]
    assert os.path.getsize(tmp_path / "run" / "collect_report.png") > 1000
    # a finished run is returned at once; a different budget is refused without --resume
    t0 = time.perf_counter()
    assert collect("cheetah_vel", tmp_path / "run", steps_per_task=450, seed=1, tasks=[2, 5, 7], **TINY) == path
    assert time.perf_counter() - t0 < 5
    with pytest.raises(FileExistsError):
        collect("cheetah_vel", tmp_path / "run", steps_per_task=450, seed=1, tasks=[2, 5, 7], resume=False, **TINY)
    with pytest.raises(ValueError, match="width=16"):  # a finished run with other settings is not reused
        collect("cheetah_vel", tmp_path / "run", steps_per_task=450, seed=1, tasks=[2, 5, 7], **{**TINY, "width": 8})


def test_rewards_match_env_and_terminations_are_stored(tmp_path):
    """Walker falls under random actions: terminated trajectories get done=1 and discount 0;
    rewards in the store are the env's rewards for the stored (obs, action)."""
    path = collect("walker_param", tmp_path / "w", steps_per_task=300, seed=0, tasks=[0, 1], warmup=300,
                   width=8, batch_size=8, eval_interval=0, checkpoint_interval=100, progress=False, tensorboard=False)
    ds = open_dataset(path)
    for t in ds.tasks:
        td = ds[t]
        lengths = td.episode_lengths
        assert sum(lengths) == 300 and len(lengths) >= 2
        ends = np.cumsum(lengths) - 1
        done = np.asarray(td["done"])
        assert set(np.flatnonzero(done)) <= set(ends)
        assert done[ends[:-1]].all()  # random walkers fall long before 200 steps
        disc = np.asarray(td["terminal_discount"])
        starts = np.concatenate(([0], ends[:-1] + 1))
        for s, e in zip(starts, ends):  # discount 0 on the whole of a terminated trajectory, gamma^(T-t) else
            if done[e]:
                assert (disc[s:e + 1] == 0).all()
            else:  # only the last one can be cut by the end of the run (a truncation)
                assert e == ends[-1] and disc[e] == pytest.approx(0.99)
    # replay the first episode of task 0 in a fresh env from the same state: same rewards
    td = ds["0"]
    env = envs.make("walker_param", envs.FAMILIES["walker_param"].paper_tasks()[0], disable_env_checker=True).unwrapped
    from macaw_fast.collect.collector import _env_seed

    obs, _ = env.reset(seed=_env_seed(0, 0))
    assert np.allclose(obs, td["obs"][0], atol=1e-6)
    for k in range(td.episode_lengths[0]):
        obs, r, term, _, _ = env.step(np.asarray(td["action"][k], dtype=np.float64))
        assert r == pytest.approx(float(td["reward"][k]), rel=1e-5, abs=1e-4)
    assert term


def _run_collector(out, stop_at=None, **kw):
    cfg = CollectConfig(family="cheetah_dir", steps_per_task=600, seed=3, **{**TINY, **kw})
    c = Collector(cfg, out, resume=True)
    c.run(stop_at=stop_at)
    c.close()  # an abandoned run: uncommitted rows are discarded like after a crash


def test_resume_after_interruption_gives_identical_data(tmp_path):
    _run_collector(tmp_path / "a")
    _run_collector(tmp_path / "b", stop_at=380)  # last checkpoint at 300, mid-episode
    assert open_dataset(tmp_path / "b" / "dataset").num_rows == 2 * 200  # committed at 300: one episode each
    _run_collector(tmp_path / "b")
    a, b = _arrays(tmp_path / "a" / "dataset"), _arrays(tmp_path / "b" / "dataset")
    for t in a:
        for k in a[t]:
            assert np.array_equal(a[t][k], b[t][k]), (t, k)
    la = [json.loads(x) for x in open(tmp_path / "a" / "log.jsonl")]
    lb = [json.loads(x) for x in open(tmp_path / "b" / "log.jsonl")]
    assert [r["step"] for r in la] == [r["step"] for r in lb]
    assert la[-1]["eval_return"] == lb[-1]["eval_return"]


def test_bfloat16_collection_resumes_to_identical_data(tmp_path):
    """matmul='bfloat16' is deterministic too: interrupted and resumed, the same rows as in one go;
    and its data differ from float32's (the products really changed)."""
    _run_collector(tmp_path / "a", matmul="bfloat16")
    _run_collector(tmp_path / "b", stop_at=380, matmul="bfloat16")
    with pytest.raises(ValueError, match="matmul='bfloat16', now 'float32'"):
        Collector(CollectConfig(family="cheetah_dir", steps_per_task=600, seed=3, **TINY), tmp_path / "b", resume=True)
    _run_collector(tmp_path / "b", matmul="bfloat16")
    a, b = _arrays(tmp_path / "a" / "dataset"), _arrays(tmp_path / "b" / "dataset")
    for t in a:
        for k in a[t]:
            assert np.array_equal(a[t][k], b[t][k]), (t, k)
    _run_collector(tmp_path / "f32")
    f = _arrays(tmp_path / "f32" / "dataset")
    assert not all(np.array_equal(a[t]["action"], f[t]["action"]) for t in a)


def test_a_run_recorded_before_the_matmul_field_resumes_as_float32(tmp_path):
    """Collections made before CollectConfig.matmul existed record no such field: they resume, and
    count as finished, as the float32 runs they were."""
    out = tmp_path / "old"
    _run_collector(out, stop_at=380)
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    del ck["config"]["matmul"]
    torch.save(ck, out / "checkpoint.pt")
    cfg = json.loads((out / "config.json").read_text())
    del cfg["matmul"]
    (out / "config.json").write_text(json.dumps(cfg))
    _run_collector(out)
    _run_collector(tmp_path / "new")
    a, b = _arrays(out / "dataset"), _arrays(tmp_path / "new" / "dataset")
    assert all(np.array_equal(a[t][k], b[t][k]) for t in a for k in a[t])
    cfg = json.loads((out / "config.json").read_text())
    cfg.pop("matmul", None)
    (out / "config.json").write_text(json.dumps(cfg))
    from macaw_fast.collect.collector import _finished

    assert _finished(out, CollectConfig(family="cheetah_dir", steps_per_task=600, seed=3, **TINY)) is not None


def test_resume_when_killed_between_checkpoint_and_commit(tmp_path, monkeypatch):
    _run_collector(tmp_path / "a")
    from macaw_fast.data import store

    real = store.DatasetWriter.commit
    calls = {"n": 0}

    def dying_commit(self):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint (pos 300) is written, its commit never happens
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(store.DatasetWriter, "commit", dying_commit)
    with pytest.raises(KeyboardInterrupt):
        _run_collector(tmp_path / "b")
    monkeypatch.setattr(store.DatasetWriter, "commit", real)
    assert open_dataset(tmp_path / "b" / "dataset").num_rows == 0  # the first checkpoint (150) had no full episode
    _run_collector(tmp_path / "b")
    a, b = _arrays(tmp_path / "a" / "dataset"), _arrays(tmp_path / "b" / "dataset")
    assert all(np.array_equal(a[t][k], b[t][k]) for t in a for k in a[t])


def test_kill_9_then_resume_loses_nothing(tmp_path):
    """kill -9 of a CLI collection at a random moment after its first checkpoint, then resume:
    every task ends with all its rows, and they are those of an uninterrupted run."""
    out = tmp_path / "k"
    # 1,500 steps per task: on a quiet machine the run lasts several seconds past its first
    # checkpoint, so the kill (at most 0.5 s after it) always lands mid-run.
    opts = dict(steps_per_task=1500, seed=4, warmup=100, width=16, batch_size=16, utd=0.25, eval_interval=0,
                eval_episodes=1, checkpoint_interval=100)
    args = [sys.executable, "-m", "macaw_fast", "collect", "--env", "cheetah_dir", "--out", str(out), "--no-progress",
            "--no-tensorboard"]
    for k, v in opts.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    ckpt = out / "checkpoint.pt"
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(np.random.default_rng().uniform(0.0, 0.5))  # somewhere after the first checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), proc.stderr.read().decode()[-2000:]
    assert proc.returncode == -signal.SIGKILL  # killed, not finished
    assert open_dataset(out / "dataset").num_rows < 3000
    path = collect("cheetah_dir", out, progress=False, tensorboard=False, **opts)  # resumes
    ds = open_dataset(path)
    assert [ds[t].num_rows for t in ds.tasks] == [1500, 1500]
    assert [ds[t].episode_lengths for t in ds.tasks] == [[200] * 7 + [100]] * 2
    verify_dataset(path)
    ref = collect("cheetah_dir", tmp_path / "ref", progress=False, tensorboard=False, **opts)
    a, b = _arrays(path), _arrays(ref)
    assert all(np.array_equal(a[t][k], b[t][k]) for t in a for k in a[t])


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="family"):
        collect("cheetah", tmp_path / "x")
    with pytest.raises(ValueError, match="tasks"):
        collect("cheetah_vel", tmp_path / "x", tasks=[40])
    with pytest.raises(ValueError, match="utd"):
        collect("cheetah_dir", tmp_path / "x", utd=0)
    with pytest.raises(ValueError, match="steps_per_task"):
        collect("cheetah_dir", tmp_path / "x", steps_per_task=0)
    _run_collector(tmp_path / "r", stop_at=150)
    cfg = CollectConfig(family="cheetah_dir", steps_per_task=600, seed=4, **TINY)
    with pytest.raises(ValueError, match="seed"):
        Collector(cfg, tmp_path / "r", resume=True)
    r = subprocess.run([sys.executable, "-m", "macaw_fast", "collect", "--env", "cheetah_dir", "--out", str(tmp_path / "y"),
                        "--width", "-3"], capture_output=True, text=True)
    assert r.returncode == 2 and "--width" in r.stderr and "expected an integer >= 1" in r.stderr


def test_tensorboard_and_jsonl_logging(tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "tb"
    collect("cheetah_dir", out, steps_per_task=200, tasks=[1], warmup=200, width=8, batch_size=8, eval_interval=100,
            eval_episodes=1, checkpoint_interval=100, progress=False, tensorboard=True)
    events = [f for f in os.listdir(out / "tb") if f.startswith("events.out.tfevents")]
    assert events and os.path.getsize(out / "tb" / events[0]) > 100
    recs = [json.loads(x) for x in open(out / "log.jsonl")]
    assert [r["step"] for r in recs] == [100, 200]
    assert len(recs[-1]["eval_return"]) == 1 and recs[-1]["train_return"][0] is not None


def test_collection_with_two_threads_is_complete(tmp_path):
    """threads=2 (two torch threads for the updates): the run finishes and the data verifies."""
    path = collect("walker_param", tmp_path / "w", steps_per_task=300, tasks=[0, 1, 2], warmup=100, width=16,
                   batch_size=16, eval_interval=0, checkpoint_interval=150, threads=2, progress=False,
                   tensorboard=False)
    ds = verify_dataset(path, progress=False)
    assert [ds[t].num_rows for t in ds.tasks] == [300, 300, 300]
