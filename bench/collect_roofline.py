"""Where a batched collection step at T = 40-50 spends its time, and how close the SAC update's
GEMMs come to what the same shapes reach on their own (``python bench/collect_roofline.py``).

Prints, per thread count: the batched SAC update's time and FLOPs (torch's FlopCounterMode), its
achieved GFLOP/s, the time its GEMMs would take at the rates the same shapes reach standalone
(hot, in this process), a large square GEMM's rate for scale, the env step of each family, the
batched action selection, and the model of a whole collection's wall-clock time:
``(steps - warmup) * utd * t_update + steps * (t_envs + t_act)``, where t_envs is one step of all T envs
(one after another, as the collector steps them). Run it on idle cores. The model is optimistic:
in a real collection loop the update ran at ~100 ms against ~83 ms alone (BENCHMARKS.md Session 8).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from macaw_fast.collect.sac import BatchedSAC, SACConfig


def _best(fn, n: int = 10) -> float:
    fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def _batch(T, B, obs, act, g):
    return {"obs": torch.randn(T, B, obs, generator=g), "action": torch.rand(T, B, act, generator=g) * 2 - 1,
            "reward": torch.randn(T, B, generator=g), "next_obs": torch.randn(T, B, obs, generator=g),
            "done": torch.zeros(T, B)}


def gemm_shapes(sac, bt, g) -> list[tuple[int, int, int, int]]:
    """(b, m, k, n) of every batched GEMM in one update (forward and backward), via the profiler."""
    with torch.profiler.profile(record_shapes=True) as p:
        sac.update(bt, generator=g)
    shapes = []
    for ev in p.events():
        if ev.name in ("aten::bmm", "aten::baddbmm"):
            s = ev.input_shapes
            a, b_ = (s[0], s[1]) if ev.name == "aten::bmm" else (s[1], s[2])
            if len(a) == 3 and len(b_) == 3:
                shapes.append((a[0], a[1], a[2], b_[2]))
    return shapes


def standalone_gemm_seconds(shapes) -> tuple[float, dict]:
    """Seconds the listed GEMMs take run alone (hot), and the rate per distinct shape."""
    rates, total = {}, 0.0
    for shp in sorted(set(shapes)):
        b, m, k, n = shp
        x, w = torch.randn(b, m, k), torch.randn(b, k, n)
        t = _best(lambda: torch.bmm(x, w), 8)
        rates[shp] = 2 * b * m * k * n / t / 1e9
    for shp in shapes:
        b, m, k, n = shp
        total += 2 * b * m * k * n / (rates[shp] * 1e9)
    return total, rates


def env_step_seconds(family: str, T: int, n: int = 100) -> float:
    """Seconds per collection step of T envs of ``family``, stepped one after another as the collector does."""
    from macaw_fast.collect.collector import _Envs
    from macaw_fast.envs import FAMILIES

    fam = FAMILIES[family]
    tasks = [fam.paper_tasks()[i % len(fam.paper_tasks())] for i in range(T)]
    envs = _Envs(family, tasks, 200)
    envs.reset_all(list(range(T)))
    rng = np.random.default_rng(0)
    acts = rng.uniform(-1, 1, (n, T, fam.act_dim))
    t = time.perf_counter()
    for i in range(n):
        for k, e in enumerate(envs.envs):
            if e.step(acts[i, k])[2]:
                e.reset()
    return (time.perf_counter() - t) / n


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--tasks", type=int, nargs="+", default=[40, 50])
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    from macaw_fast._malloc import tune_malloc

    tune_malloc()     # as `macaw-fast collect` does: freed activations stay in the process
    obs, act = 27, 8   # Ant's sizes (the largest of the 50-task families)
    for threads in args.threads:
        torch.set_num_threads(threads)
        a = torch.randn(2000, 2000)
        big = 2 * 2000**3 / _best(lambda: a @ a, 3) / 1e9
        for T in args.tasks:
            g = torch.Generator().manual_seed(0)
            sac = BatchedSAC(T, obs, act, SACConfig(width=args.width), seed=0)
            bt = _batch(T, 256, obs, act, g)
            for _ in range(2):
                sac.update(bt, generator=g)
            with FlopCounterMode(display=False) as fc:
                sac.update(bt, generator=g)
            flop = fc.get_total_flops()
            t_upd = _best(lambda: sac.update(bt, generator=g), 8)
            shapes = gemm_shapes(sac, bt, g)
            gemm_s, rates = standalone_gemm_seconds(shapes)
            gemm_flop = sum(2 * b * m * k * n for b, m, k, n in shapes)
            env_s = {f: env_step_seconds(f, T) for f in ("cheetah_vel", "ant_dir", "walker_param")}
            o = torch.randn(T, 1, obs)
            t_act = _best(lambda: sac.act(o, generator=g), 50)
            print(f"\nthreads {threads}, T = {T}, width {args.width}: update {1e3 * t_upd:.1f} ms, "
                  f"{flop / 1e9:.2f} GFLOP ({gemm_flop / 1e9:.2f} in {len(shapes)} batched GEMMs) -> "
                  f"{flop / t_upd / 1e9:.1f} GFLOP/s; the same GEMMs alone: {1e3 * gemm_s:.1f} ms "
                  f"({gemm_flop / gemm_s / 1e9:.1f} GFLOP/s); 2000^3 GEMM {big:.0f} GFLOP/s; act {1e3 * t_act:.2f} ms")
            print("  standalone GFLOP/s per GEMM shape (b, m, k, n): " +
                  ", ".join(f"{s}: {r:.0f}" for s, r in sorted(rates.items(), key=lambda kv: -kv[1])))
            print(f"  one step of {T} envs: " +
                  ", ".join(f"{f} {1e3 * s:.2f} ms" for f, s in env_s.items()))
            for fam in ("cheetah_vel", "ant_dir", "walker_param"):
                steps, warm, utd = 60_000, 5_000, 0.5
                upd = (steps - warm) * utd * t_upd
                env = steps * (env_s[fam] + t_act)
                print(f"  {fam}: model of a {T}-task collection at 60k steps, utd 0.5: updates {upd / 60:.1f} min "
                      f"+ envs and actions {env / 60:.1f} min = {(upd + env) / 60:.1f} min")


if __name__ == "__main__":
    main()
