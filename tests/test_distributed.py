"""Data-parallel meta-training (macaw_fast.train.distributed): sharding, exactness against one process,
fail-fast on a dead or hung rank, checkpoints that move between 1-process and 2-rank runs.

Multi-process tests launch real ranks as subprocesses with torchrun's environment variables
(gloo, loopback, a free port picked at run time). This file is also the worker script:
``python tests/test_distributed.py exact OUT K`` runs one rank of the exactness test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from macaw_fast import MacawConfig, MetaLearner
from macaw_fast.backends.cpu import CpuBackend
from macaw_fast.data.batch import FIELDS
from macaw_fast.data.sampler import MetaBatchSampler, choose_tasks
from macaw_fast.train.distributed import ShardedMetaBatchSampler, shard_slots, shard_tasks

HERE = os.path.abspath(__file__)
OBS, ACT, N_TASKS, PER_STEP, B = 7, 3, 6, 5, 16
CFG = dict(net_width=16, wlinear_dim=8, head_width=8)


# ------------------------------------------------------------------------------------------------
# helpers shared by the tests and the worker


def synthetic_tasks(seed: int = 3, rows=(50, 41, 63, 47, 55, 44)) -> list[dict]:
    """Per-task float32 arrays (uneven row counts) in the store's field layout."""
    rng = np.random.default_rng(seed)
    tasks = []
    for n in rows:
        done = (rng.random(n) < 0.1).astype(np.float32)
        tasks.append({
            "obs": rng.standard_normal((n, OBS)).astype(np.float32),
            "action": rng.uniform(-1, 1, (n, ACT)).astype(np.float32),
            "reward": rng.standard_normal(n).astype(np.float32),
            "next_obs": rng.standard_normal((n, OBS)).astype(np.float32),
            "done": done,
            "mc_return": (5 * rng.standard_normal(n)).astype(np.float32),
            "terminal_obs": rng.standard_normal((n, OBS)).astype(np.float32),
            "terminal_discount": (rng.random(n) * (1 - done)).astype(np.float32).reshape(n, 1),
        })
    return tasks


def new_learner() -> MetaLearner:
    torch.manual_seed(0)
    return MetaLearner(OBS, ACT, N_TASKS, MacawConfig(**CFG), dtype=torch.float64)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cmd_tail: list[str], world: int = 2, port: int | None = None) -> list[subprocess.Popen]:
    """Start ``world`` ranks of ``python CMD_TAIL`` with torchrun's environment (loopback, gloo)."""
    port = port or free_port()
    procs = []
    for r in range(world):
        env = {**os.environ, "RANK": str(r), "WORLD_SIZE": str(world), "LOCAL_RANK": str(r),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        procs.append(subprocess.Popen([sys.executable, *cmd_tail], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE))
    return procs


def finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[tuple[int, str]]:
    """(exit code, stderr) of every rank; kills all of them if one overruns."""
    out = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=timeout)
            out.append((p.returncode, err.decode(errors="replace")))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


# ------------------------------------------------------------------------------------------------
# sharding (in process)


@pytest.mark.parametrize("T,world", [(5, 2), (35, 2), (5, 3), (2, 3), (1, 1), (0, 2)])
def test_shard_slots_partition_the_batch_in_order(T, world):
    parts = [list(shard_slots(T, r, world)) for r in range(world)]
    assert sum(parts, []) == list(range(T))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    slots, ids = shard_tasks([10, 11, 12, 13, 14][:T], world - 1, world)
    assert ids == [[10, 11, 12, 13, 14][s] for s in slots]


def test_shard_slots_rejects_bad_rank():
    with pytest.raises(ValueError, match="rank"):
        shard_slots(5, 2, 2)


def test_sampler_keys_depend_on_the_slot():
    # Why the sharded sampler exists: the same task in another slot draws other rows, so a rank may
    # not simply sample its own tasks as a smaller batch.
    s = MetaBatchSampler(synthetic_tasks(), B, seed=4, backend="numpy")
    _, _, _, a = s.sample(2, [0, 1], return_indices=True)
    _, _, _, b = s.sample(2, [1, 0], return_indices=True)
    assert not np.array_equal(a[0], b[1])


@pytest.mark.parametrize("inner_mode", ["contiguous", "uniform"])
@pytest.mark.parametrize("world", [2, 3])
def test_union_of_shards_is_the_single_process_batch(inner_mode, world):
    tasks = synthetic_tasks()
    full = MetaBatchSampler(tasks, B, inner_mode=inner_mode, seed=11)
    # Restricted inner rows (the inner-data ablation): a second sampler over the first 30 rows.
    inner_only = MetaBatchSampler([{k: v[:30] for k, v in t.items()} for t in tasks], B, inner_mode=inner_mode,
                                  seed=11)
    train_ids = [0, 1, 2, 3, 4, 5]
    for inner_s in (full, inner_only):
        shards = [ShardedMetaBatchSampler(inner_s, full, train_ids, PER_STEP, r, world) for r in range(world)]
        for step in (0, 1, 7):
            ids = choose_tasks(train_ids, PER_STEP, 11, step)
            want_in = {f: getattr(inner_s.sample(step, ids)[0], f).clone() for f in FIELDS}
            want_out = {f: getattr(full.sample(step, ids)[1], f).clone() for f in FIELDS}
            got = [sh.sample(step) for sh in shards]
            assert sum((g[1] for g in got), []) == ids
            for f in FIELDS:
                cat_in = torch.cat([getattr(g[2], f) for g in got])
                cat_out = torch.cat([getattr(g[3], f) for g in got])
                assert torch.equal(cat_in, want_in[f]), (f, step)
                assert torch.equal(cat_out, want_out[f]), (f, step)


def test_single_process_step_without_group_equals_meta_step():
    s = MetaBatchSampler(synthetic_tasks(), B, seed=5)
    for dense in (False, True):
        a, b = new_learner(), new_learner()
        if dense:   # dense W gradients and torch's Adam; default: the low-rank one-pass Adam
            a.backend, b.backend = CpuBackend(lowrank_adam=False), CpuBackend(lowrank_adam=False)
        _same_steps(s, a, b)


def _same_steps(s, a, b):
    from macaw_fast.train.distributed import distributed_meta_step

    for step in range(2):
        inner, outer = s.sample(step, choose_tasks(range(N_TASKS), PER_STEP, 5, step))
        inner, outer = inner.to(dtype=torch.float64), outer.to(dtype=torch.float64)
        ma = a.meta_step(inner, outer)
        mb = distributed_meta_step(b, inner, outer)
        for k in ma:
            assert mb[k] == pytest.approx(ma[k], rel=1e-12), k
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


# ------------------------------------------------------------------------------------------------
# exactness across processes


def worker_exact(out: str, K: int, mode: str = "dense") -> None:
    """One rank: K distributed float64 meta-steps on the synthetic tasks; saves grads of step 0 and params.
    ``mode``: 'dense' (W's gradients formed and summed) or 'lowrank' (the cpu backend's default:
    W's gradient factors gathered, the one-pass low-rank Adam on every rank)."""
    from macaw_fast.train.distributed import distributed_meta_step, init_distributed

    rank, world = init_distributed(timeout_s=60)
    torch.set_num_threads(1)
    s = MetaBatchSampler(synthetic_tasks(), B, seed=5)
    sh = ShardedMetaBatchSampler(s, s, range(N_TASKS), PER_STEP, rank, world)
    learner = new_learner()
    if mode == "dense":
        learner.backend = CpuBackend(lowrank_adam=False)
    grads0, metrics, local = None, [], []
    for step in range(K):
        _, mine, inner, outer = sh.sample(step)
        local.append(len(mine))
        m = distributed_meta_step(learner, inner.to(dtype=torch.float64), outer.to(dtype=torch.float64))
        metrics.append(m)
        if step == 0:
            grads0 = [p.grad.clone() if p.grad is not None else None for p in learner.parameters()]
    torch.save({"grads0": grads0, "params": [p.detach().clone() for p in learner.parameters()],
                "optimizer": learner.optimizer.state_dict(), "metrics": metrics, "local_tasks": local},
               os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("mode", ["dense", "lowrank"])
def test_two_ranks_equal_one_process_float64(tmp_path, mode):
    K = 3
    res = finish(launch([HERE, "exact", str(tmp_path), str(K), mode]))
    for r, (rc, err) in enumerate(res):
        assert rc == 0, f"rank {r}: {err}"
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert r0["local_tasks"] == [3] * K and r1["local_tasks"] == [2] * K  # T=5 split 3/2

    # The single-process run on the same tasks and batches.
    s = MetaBatchSampler(synthetic_tasks(), B, seed=5)
    ref = new_learner()
    ref.backend = CpuBackend(lowrank_adam=False)   # keeps W's dense .grad, compared below
    ref_metrics = []
    wl = {i for i, p in enumerate(ref.parameters()) if any(p is m.weight for m in ref._layers())}
    for step in range(K):
        inner, outer = s.sample(step, choose_tasks(range(N_TASKS), PER_STEP, 5, step))
        ref_metrics.append(ref.meta_step(inner.to(dtype=torch.float64), outer.to(dtype=torch.float64)))
        if step == 0:
            ref_grads0 = [p.grad.clone() for p in ref.parameters()]
    for i, (g, want) in enumerate(zip(r0["grads0"], ref_grads0)):
        if mode == "lowrank" and i in wl:
            assert g is None, i           # W updated from its gathered factors: checked through the parameters
            continue
        assert rel(g, want) <= 1e-10, f"meta-gradient {i}: {rel(g, want):.2e}"
    for i, (p, want) in enumerate(zip(r0["params"], ref.parameters())):
        assert rel(p, want.detach()) <= 1e-10, f"parameter {i} after {K} steps: {rel(p, want.detach()):.2e}"
    # Every rank holds bit-identical parameters and Adam moments.
    for p, q in zip(r0["params"], r1["params"]):
        assert torch.equal(p, q)
    for k, st in r0["optimizer"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(st[name], r1["optimizer"]["state"][k][name])
    # Metrics reduced across ranks are the single-process metrics.
    for got, want in zip(r0["metrics"], ref_metrics):
        for k, v in want.items():
            assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k


# ------------------------------------------------------------------------------------------------
# end to end through the entry point: fail fast, checkpoints both ways


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from macaw_fast.train.scripted import make_scripted_dataset

    return make_scripted_dataset(tmp_path_factory.mktemp("data") / "ds", "cheetah_vel", episodes_per_task=1,
                                 episode_steps=40, seed=2, task_indices=range(7),
                                 split={"train": [str(i) for i in range(6)], "test": ["6"]})


TINY = ["--preset", "cheetah_vel", "--net-width", "16", "--wlinear-dim", "8", "--head-width", "8",
        "--batch-size", "8", "--tasks-per-step", "5", "--threads", "1", "--progress", "false",
        "--tensorboard", "false", "--eval-interval", "0", "--dtype", "float64"]


def _dist_cmd(*args: str) -> list[str]:
    return ["-m", "macaw_fast", "train", *args]      # under torchrun's environment: data-parallel


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill", "stop"])
def test_dead_or_hung_rank_makes_the_other_fail_within_the_timeout(dataset, tmp_path, how):
    timeout = 10
    run = tmp_path / "run"
    procs = launch(_dist_cmd("--data", dataset, "--out", str(run), "--steps", "1000000", "--log-interval", "1",
                             "--latest-interval", "1000000", "--timeout", str(timeout), *TINY))
    log = run / "metrics.jsonl"
    try:
        deadline = time.time() + 120
        while not (log.exists() and log.read_text().count('"train"') >= 2):
            assert time.time() < deadline, "no training records within 120 s"
            assert all(p.poll() is None for p in procs), procs[0].stderr.read().decode()
            time.sleep(0.1)
        os.kill(procs[1].pid, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        t0 = time.time()
        _, err = procs[0].communicate(timeout=timeout + 30)
        elapsed = time.time() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    err = err.decode(errors="replace")
    print(f"[{how}] rank 0 exited {elapsed:.1f} s after the signal (timeout {timeout} s)")
    assert procs[0].returncode != 0
    assert "another rank died, hung past the timeout" in err, err
    assert elapsed <= timeout + 10, f"rank 0 took {elapsed:.1f} s to fail (timeout {timeout} s)"


def _learner_state(path):
    from macaw_fast.train.loop import load_checkpoint

    ck = load_checkpoint(path)
    return ck["step"], ck["learner"]


def _assert_close(a, b, where=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor) and a.is_floating_point():
        assert rel(a, b) <= 1e-10, f"{where}: {rel(a, b):.2e}"
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


@pytest.mark.slow
def test_checkpoints_move_between_one_process_and_two_ranks(dataset, tmp_path):
    from macaw_fast.cli import main as cli_main

    common = ["--data", dataset, *TINY, "--latest-interval", "4", "--numbered-interval", "4", "--log-interval", "1"]
    # Reference: one process, 8 steps, checkpoints at 4 and 8.
    assert cli_main(["train", "--out", str(tmp_path / "ref"), "--steps", "8", *common]) == 0
    ref4 = _learner_state(tmp_path / "ref" / "checkpoints" / "step_0000004.pt")
    ref8 = _learner_state(tmp_path / "ref" / "checkpoints" / "latest.pt")

    # Two ranks for 4 steps, then one process continues to 8.
    res = finish(launch(_dist_cmd("--out", str(tmp_path / "a"), "--steps", "4", *common)))
    assert [rc for rc, _ in res] == [0, 0], res
    _assert_close(_learner_state(tmp_path / "a" / "checkpoints" / "latest.pt"), ref4, "2-rank step 4")
    assert cli_main(["train", "--resume", str(tmp_path / "a"), "--steps", "8"]) == 0
    _assert_close(_learner_state(tmp_path / "a" / "checkpoints" / "latest.pt"), ref8, "2 ranks then 1 process")

    # One process for 4 steps, then two ranks continue to 8 (through `macaw-fast train` under
    # torchrun's environment: the CLI switches to the data-parallel loop by itself).
    assert cli_main(["train", "--out", str(tmp_path / "b"), "--steps", "4", *common]) == 0
    res = finish(launch(["-m", "macaw_fast", "train", "--resume", str(tmp_path / "b"), "--steps", "8"]))
    assert [rc for rc, _ in res] == [0, 0], res
    _assert_close(_learner_state(tmp_path / "b" / "checkpoints" / "latest.pt"), ref8, "1 process then 2 ranks")
    # Only rank 0 wrote: one training record per step.
    from macaw_fast.train.loop import read_jsonl

    steps = [r["step"] for r in read_jsonl(tmp_path / "b" / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == list(range(8))


@pytest.mark.slow
def test_existing_run_is_refused_on_every_rank(dataset, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "checkpoints" / "latest.pt").write_bytes(b"not touched")
    res = finish(launch(_dist_cmd("--data", dataset, "--out", str(run), "--steps", "2", "--timeout", "20", *TINY)))
    (rc0, err0), (rc1, err1) = res
    assert rc0 == 1 and "a run already exists here" in err0, err0       # rank 0 checks the run directory
    assert rc1 == 1 and "another rank failed during setup" in err1, err1
    assert (run / "config.json").read_text() == "{}"
    assert (run / "checkpoints" / "latest.pt").read_bytes() == b"not touched"


if __name__ == "__main__":
    if sys.argv[1] == "exact":
        worker_exact(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        raise SystemExit(f"unknown worker mode {sys.argv[1]!r}")
