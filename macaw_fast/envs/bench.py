"""Env stepping speed: steps/s of each MACAW family and our HalfCheetah vs gymnasium's HalfCheetah-v5.

Run ``python -m macaw_fast.envs.bench [--steps N] [--repeats R]``. Each measurement steps one env
with pre-drawn uniform random actions (resetting on episode end, resets included in the time)
and keeps the best of R repeats of this process's CPU time (``time.process_time``: on a shared
machine wall time mostly measures the neighbours). "raw" is ``env.unwrapped``; "made" is what
``gymnasium.make`` returns (TimeLimit, OrderEnforcing and the passive env checker).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

import numpy as np


def steps_per_second(env, n_steps: int, repeats: int, seed: int = 0) -> float:
    """Best-of-``repeats`` env steps per second over ``n_steps`` random-action steps of ``env``."""
    act_dim = env.action_space.shape[0]
    actions = np.random.RandomState(seed).uniform(-1.0, 1.0, size=(n_steps, act_dim)).astype(np.float32)
    best = float("inf")
    for r in range(repeats):
        env.reset(seed=seed + r)
        t0 = time.process_time()
        for a in actions:
            _, _, terminated, truncated, _ = env.step(a)
            if terminated or truncated:
                env.reset()
        best = min(best, time.process_time() - t0)
    return n_steps / best


def main(argv: list[str] | None = None) -> int:
    """Print steps/s per family and the HalfCheetah overhead relative to HalfCheetah-v5."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20000, help="env steps per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per env (best is kept)")
    args = parser.parse_args(argv)

    import gymnasium as gym
    import mujoco

    from . import FAMILIES, make

    print(f"mujoco {mujoco.__version__}, gymnasium {gym.__version__}; {args.steps} steps, best of {args.repeats}")
    print(f"{'env':32s} {'raw steps/s':>12s} {'made steps/s':>13s}")
    for fam in FAMILIES.values():
        task = fam.paper_tasks()[fam.test_indices[0]]
        raw = steps_per_second(make(fam.name, task).unwrapped, args.steps, args.repeats)
        made = steps_per_second(make(fam.name, task), args.steps, args.repeats)
        print(f"{fam.env_id:32s} {raw:12.0f} {made:13.0f}")

    cwd = os.getcwd()
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")
        os.chdir(tmp)  # MuJoCo logs the v5 XML's settotalmass warning to ./MUJOCO_LOG.TXT
        try:
            ref = gym.make("HalfCheetah-v5", max_episode_steps=200)
        finally:
            os.chdir(cwd)
    ours = make("cheetah_vel", {"velocity": 1.0})
    # Interleave the two so that load from other processes hits both alike.
    best = {"ref_raw": 0.0, "ref_made": 0.0, "ours_raw": 0.0, "ours_made": 0.0}
    for r in range(args.repeats):
        for key, env in (("ref_raw", ref.unwrapped), ("ours_raw", ours.unwrapped), ("ref_made", ref), ("ours_made", ours)):
            best[key] = max(best[key], steps_per_second(env, args.steps, 1, seed=r))
    print(f"{'HalfCheetah-v5 (gymnasium)':32s} {best['ref_raw']:12.0f} {best['ref_made']:13.0f}")
    print(f"{'CheetahVel (same run)':32s} {best['ours_raw']:12.0f} {best['ours_made']:13.0f}")
    print(
        f"CheetahVel time per step vs HalfCheetah-v5: raw {100 * (best['ref_raw'] / best['ours_raw'] - 1):+.1f}%, "
        f"made {100 * (best['ref_made'] / best['ours_made'] - 1):+.1f}% (negative = ours is faster)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
