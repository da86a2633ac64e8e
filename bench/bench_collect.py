"""Collection benchmarks (short): batched SAC update vs per-task updates, and env steps/s of the
batched collector vs a plain one-task-at-a-time SAC loop, for T = 2, 10, 40.

    pytest bench/bench_collect.py --benchmark-only --benchmark-group-by=group,param:T

Runs with one torch thread (the collector's default). Each collection-step benchmark reports, in
``extra_info``, env steps per second over all tasks and the fraction of the step spent outside
the SAC update (env stepping, action selection, buffer writes).
"""

import os
import time

import numpy as np
import pytest
import torch

from macaw_fast.collect import SAC, BatchedSAC, CollectConfig, Collector, SACConfig
from macaw_fast import envs

OBS, ACT = 20, 6
TS = [2, 10, 40]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _batch(T, B, g):
    return {"obs": torch.randn(T, B, OBS, generator=g), "action": torch.rand(T, B, ACT, generator=g) * 2 - 1,
            "reward": torch.randn(T, B, generator=g), "next_obs": torch.randn(T, B, OBS, generator=g),
            "done": torch.zeros(T, B)}


@pytest.mark.parametrize("width", [128, 256])
@pytest.mark.parametrize("impl", ["batched", "per_task"])
@pytest.mark.parametrize("T", TS)
def test_sac_update(benchmark, T, impl, width):
    """One SAC update of all T tasks (actor + twin critics + temperature + targets, batch 256)."""
    g = torch.Generator().manual_seed(0)
    cfg = SACConfig(width=width)
    bt = _batch(T, 256, g)
    if impl == "batched":
        agent = BatchedSAC(T, OBS, ACT, cfg, seed=0)
        fn = lambda: agent.update(bt, generator=g)  # noqa: E731
    else:
        agents = [SAC(OBS, ACT, cfg) for _ in range(T)]
        per = [{k: v[t] for k, v in bt.items()} for t in range(T)]
        fn = lambda: [a.update(b, generator=g) for a, b in zip(agents, per)]  # noqa: E731
    benchmark.group = f"sac-update width={width}"
    benchmark.extra_info.update(T=T, impl=impl, width=width, threads=torch.get_num_threads(), cpus=os.cpu_count())
    benchmark.pedantic(fn, rounds=3, warmup_rounds=1)
    benchmark.extra_info["ms_per_task"] = 1000 * benchmark.stats.stats.mean / T


@pytest.mark.parametrize("matmul", ["float32", "bfloat16"])
def test_sac_update_matmul(benchmark, matmul):
    """One batched SAC update of 50 tasks at Ant-Dir's sizes (obs 27, act 8, width 128) with the
    hidden-layer products in float32 or bfloat16 (collect --matmul); compare the two rows of the
    group (the ratio, measured in the same run, is what counts: bfloat16 pays only on CPUs with
    AVX512-BF16 or AMX)."""
    T, obs, act = 50, 27, 8
    g = torch.Generator().manual_seed(0)
    bt = {"obs": torch.randn(T, 256, obs, generator=g), "action": torch.rand(T, 256, act, generator=g) * 2 - 1,
          "reward": torch.randn(T, 256, generator=g), "next_obs": torch.randn(T, 256, obs, generator=g),
          "done": torch.zeros(T, 256)}
    agent = BatchedSAC(T, obs, act, SACConfig(width=128, matmul=matmul), seed=0)
    benchmark.group = "sac-update T=50 ant sizes, matmul"
    benchmark.extra_info.update(matmul=matmul, threads=torch.get_num_threads())
    benchmark.pedantic(lambda: agent.update(bt, generator=g), rounds=5, warmup_rounds=1)


class PlainLoop:
    """The straightforward baseline: T separate SAC agents, each stepping its own env and
    updating on its own buffer, one task after the other."""

    def __init__(self, T, width, seed=0):
        fam = envs.FAMILIES["cheetah_vel"]
        tasks = fam.paper_tasks()[:T]
        self.envs = [envs.make("cheetah_vel", t, disable_env_checker=True).unwrapped for t in tasks]
        self.obs = [e.reset(seed=seed + i)[0] for i, e in enumerate(self.envs)]
        self.agents = [SAC(OBS, ACT, SACConfig(width=width)) for _ in range(T)]
        self.cap = 4096
        self.buf = [{"obs": torch.zeros(self.cap, OBS), "action": torch.zeros(self.cap, ACT),
                     "reward": torch.zeros(self.cap), "next_obs": torch.zeros(self.cap, OBS),
                     "done": torch.zeros(self.cap)} for _ in range(T)]
        self.pos = 0
        self.g = torch.Generator().manual_seed(seed)

    def step(self):
        p = self.pos % self.cap
        for i, (env, agent, buf) in enumerate(zip(self.envs, self.agents, self.buf)):
            a = agent.act(torch.as_tensor(self.obs[i], dtype=torch.float32), generator=self.g).numpy()
            o2, r, term, _, _ = env.step(a.astype(np.float64))
            buf["obs"][p] = torch.from_numpy(self.obs[i])
            buf["action"][p] = torch.from_numpy(a)
            buf["reward"][p] = r
            buf["next_obs"][p] = torch.from_numpy(o2)
            buf["done"][p] = float(term)
            self.obs[i] = o2
            idx = torch.randint(0, p + 1, (256,), generator=self.g)
            agent.update({k: v[idx] for k, v in buf.items()}, generator=self.g)
        self.pos += 1


def _batched(T, width, tmp):
    cfg = CollectConfig(family="cheetah_vel", tasks=list(range(T)), steps_per_task=4096, warmup=0, width=width,
                        eval_interval=0, checkpoint_interval=10**6, progress=False, tensorboard=False)
    return Collector(cfg, tmp, overwrite=True)


@pytest.mark.parametrize("width", [256])
@pytest.mark.parametrize("impl", ["batched", "plain_loop"])
@pytest.mark.parametrize("T", TS)
def test_collection_step(benchmark, tmp_path, T, impl, width):
    """One collection step of all T tasks: T actions, T env steps, T buffer rows, T updates (utd 1)."""
    if impl == "batched":
        c = _batched(T, width, tmp_path / "run")
        step = c.step
    else:
        c = PlainLoop(T, width)
        step = c.step
    for _ in range(2):
        step()
    if impl == "batched":
        c.time_update = c.time_total = 0.0
    benchmark.group = f"collection-step width={width}"
    benchmark.extra_info.update(T=T, impl=impl, width=width, threads=torch.get_num_threads(), cpus=os.cpu_count())
    benchmark.pedantic(step, rounds=4, warmup_rounds=0)
    benchmark.extra_info["env_steps_per_s"] = T / benchmark.stats.stats.mean
    if impl == "batched":
        benchmark.extra_info["outside_update_fraction"] = 1 - c.time_update / c.time_total
        c.close()


def test_outside_update_fraction_T40(tmp_path):
    """Time outside the SAC update at T = 40 over 5 collection steps (printed; target <= 15%)."""
    c = _batched(40, 256, tmp_path / "run")
    c.step()
    c.time_update = c.time_total = 0.0
    t0 = time.perf_counter()
    for _ in range(5):
        c.step()
    wall = time.perf_counter() - t0
    frac = 1 - c.time_update / c.time_total
    print(f"\nT=40 width 256: {5 * 40 / wall:.1f} env steps/s, outside-update fraction {100 * frac:.1f}%")
    c.close()
    assert frac < 0.5


def _step_loop(env, n: int, seed: int = 0):
    """Reset, then n random-action steps (resetting at episode ends); the actions are drawn up front."""
    acts = np.random.default_rng(seed).uniform(-1, 1, (n, ACT))
    env.reset(seed=seed)
    for a in acts:
        _, _, term, trunc, _ = env.step(a)
        if term or trunc:
            env.reset()


@pytest.mark.parametrize("env_name", ["gymnasium HalfCheetah-v5", "macaw_fast CheetahVel", "macaw_fast CheetahDir"])
@pytest.mark.parametrize("layer", ["raw", "gym.make"])
def test_env_step(benchmark, env_name, layer):
    """1,000 env steps: our Cheetah envs against gymnasium's HalfCheetah-v5 (same model, frame skip).

    ``raw`` is ``env.unwrapped`` (what the collector steps); ``gym.make`` adds the wrappers
    gymnasium.make puts on (TimeLimit, OrderEnforcing; no passive checker). ``extra_info`` has
    µs per step (from the fastest round).
    """
    import gymnasium as gym

    if env_name.startswith("gymnasium"):
        env = gym.make("HalfCheetah-v5", ctrl_cost_weight=0.05, disable_env_checker=True, max_episode_steps=200)
    else:
        fam = "cheetah_vel" if env_name.endswith("Vel") else "cheetah_dir"
        env = envs.make(fam, envs.FAMILIES[fam].paper_tasks()[0], disable_env_checker=True)
    if layer == "raw":
        env = env.unwrapped
    benchmark.group = f"env-step {layer}"
    benchmark.extra_info.update(env=env_name, layer=layer)
    benchmark.pedantic(_step_loop, args=(env, 1000), rounds=5, warmup_rounds=1)
    benchmark.extra_info["us_per_step"] = 1000 * benchmark.stats.stats.min
    env.close()
