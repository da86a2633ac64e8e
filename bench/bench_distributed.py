"""Data-parallel scaling on this machine: ms per meta-step with 1 process vs 2 ranks (gloo, CPU).

Run: ``python bench/bench_distributed.py [--tasks 35] [--steps 5] [--json out.json]``.
Paper config, fp32: width 100, depth 3, D 100, batch 256, obs 20, act 6, N_train 35, T tasks a step.
Each configuration runs in fresh processes; the time of one step covers sampling this rank's share,
the host-to-device copy (none on CPU), loss, backward, the all-reduce and Adam, measured on rank 0
after ``--warmup`` steps, median of ``--steps``. Configurations:

- ``1 proc x 1 thread`` / ``1 proc x 2 threads``: :func:`macaw_fast.train.distributed.distributed_meta_step`
  without a group (identical to ``MetaLearner.meta_step``);
- ``2 ranks x 1 thread``: two gloo ranks on loopback, each with half the task batch.

The all-reduce alone (one bucket of every gradient) is timed separately on the 2-rank run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

OBS, ACT, N_TRAIN, B, ROWS = 20, 6, 35, 256, 4000


def _tasks(n: int):
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        t = {f: rng.standard_normal((ROWS, ACT if f == "action" else OBS)).astype(np.float32)
             for f in ("obs", "action", "next_obs", "terminal_obs")}
        t.update({f: rng.standard_normal(ROWS).astype(np.float32) for f in ("reward", "mc_return")})
        t["action"] = np.tanh(t["action"])
        t["done"] = np.zeros(ROWS, np.float32)
        t["terminal_discount"] = rng.random(ROWS).astype(np.float32)
        out.append(t)
    return out


def worker(tasks_per_step: int, steps: int, warmup: int, out: str) -> None:
    """One rank (or the only process): time ``steps`` meta-steps after ``warmup``; rank 0 writes JSON."""
    import torch
    import torch.distributed as dist

    from macaw_fast import MetaLearner
    from macaw_fast.data.sampler import MetaBatchSampler
    from macaw_fast.train.distributed import ShardedMetaBatchSampler, allreduce_grads, distributed_meta_step, init_distributed

    rank, world = init_distributed(timeout_s=600)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    sampler = MetaBatchSampler(_tasks(N_TRAIN), B, seed=0, num_threads=1)
    sh = ShardedMetaBatchSampler(sampler, sampler, range(N_TRAIN), tasks_per_step, rank, world)
    torch.manual_seed(0)
    learner = MetaLearner(OBS, ACT, N_TRAIN)
    times, comm = [], []
    for step in range(warmup + steps):
        if world > 1:
            dist.barrier()
        t0 = time.perf_counter()
        _, mine, inner, outer = sh.sample(step)
        distributed_meta_step(learner, inner if mine else None, outer if mine else None, max_metrics=False)
        times.append(time.perf_counter() - t0)
        if world > 1:  # the all-reduce alone, on the gradients just computed (both ranks arrive together)
            dist.barrier()
            t0 = time.perf_counter()
            allreduce_grads(learner)
            comm.append(time.perf_counter() - t0)
    if rank == 0:
        n_params = sum(p.numel() for p in learner.parameters())
        res = {"world": world, "threads": torch.get_num_threads(), "tasks_per_step": tasks_per_step,
               "ms_per_step": 1000 * statistics.median(times[warmup:]),
               "ms_per_step_all": [1000 * t for t in times[warmup:]],
               "allreduce_ms": 1000 * statistics.median(comm[warmup:]) if comm else None,
               "params": n_params, "bucket_bytes": 4 * n_params}
        with open(out, "w") as f:
            json.dump(res, f)
    if world > 1:
        dist.destroy_process_group()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(world: int, threads: int, args) -> dict:
    """Launch ``world`` processes with ``threads`` torch threads each; rank 0's result."""
    out = os.path.join(args.tmp, f"w{world}_t{threads}.json")
    port = str(_port())
    procs = []
    for r in range(world):
        env = {**os.environ, "BENCH_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
        if world > 1:
            env.update(RANK=str(r), WORLD_SIZE=str(world), LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        else:
            for k in ("RANK", "WORLD_SIZE"):
                env.pop(k, None)
        procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", "--tasks",
                                       str(args.tasks), "--steps", str(args.steps), "--warmup", str(args.warmup),
                                       "--out", out], env=env))
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"a rank of the world={world} run failed (exit {p.returncode})")
    with open(out) as f:
        return json.load(f)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=35, help="tasks per meta-step (T)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--json", help="write all results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--tmp", default="/tmp", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.tasks, args.steps, args.warmup, args.out)
        return
    results = [run(1, 1, args), run(1, 2, args), run(2, 1, args)]
    base = results[0]["ms_per_step"]
    print(f"T={args.tasks}, batch {B}, paper network ({results[0]['params']:,} parameters, fp32), "
          f"median of {args.steps} steps")
    for r in results:
        comm = f", all-reduce {r['allreduce_ms']:.1f} ms" if r["allreduce_ms"] is not None else ""
        print(f"  {r['world']} proc x {r['threads']} thread(s): {r['ms_per_step']:8.1f} ms/step "
              f"(speed-up vs 1x1: {base / r['ms_per_step']:.2f}){comm}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
