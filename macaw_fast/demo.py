"""`macaw-fast demo`: the README's first command.

Until the end-to-end demo (collect -> train --fused -> eval -> plot) lands, this runs a short
built-in smoke job: the paper-config meta-step on synthetic batches, and reports its speed.
"""

from __future__ import annotations

import argparse
import time

import torch


def synthetic_batch(T: int, B: int, obs_dim: int, act_dim: int, generator: torch.Generator,
                    dtype=torch.float32):
    """A random but well-formed Batch (for smoke tests and benchmarks)."""
    from .data.batch import Batch

    def r(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype)

    return Batch(obs=r(T, B, obs_dim), action=torch.rand(T, B, act_dim, generator=generator, dtype=dtype) * 2 - 1,
                 reward=r(T, B), next_obs=r(T, B, obs_dim), done=torch.zeros(T, B, dtype=dtype),
                 mc_return=r(T, B) * 10, terminal_obs=r(T, B, obs_dim),
                 terminal_discount=torch.rand(T, B, generator=generator, dtype=dtype))


def run(args: argparse.Namespace) -> int:
    from .macaw import MetaLearner

    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    learner = MetaLearner(20, 6, n_train_tasks=args.tasks)
    inner = synthetic_batch(args.tasks, 256, 20, 6, g)
    outer = synthetic_batch(args.tasks, 256, 20, 6, g)
    print(f"macaw-fast demo (smoke job): paper-config meta-steps on synthetic data, T={args.tasks}")
    t0 = time.perf_counter()
    first = None
    for step in range(args.steps):
        m = learner.meta_step(inner, outer)
        first = m["loss/meta"] if first is None else first
    dt = time.perf_counter() - t0
    print(f"  {args.steps} meta-steps in {dt:.2f} s ({1000 * dt / args.steps:.1f} ms/step); "
          f"meta-loss {first:.4f} -> {m['loss/meta']:.4f}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the built-in demo job")
    p.add_argument("--steps", type=int, default=50, help="meta-steps to run")
    p.add_argument("--tasks", type=int, default=5, help="tasks per meta-batch")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)
