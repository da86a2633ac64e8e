"""Random but well-formed meta-batches, for smoke tests and benchmarks of the meta-step."""

from __future__ import annotations

import torch

from .batch import Batch


def synthetic_batch(T: int, B: int, obs_dim: int, act_dim: int, generator: torch.Generator | None = None,
                    dtype: torch.dtype = torch.float32) -> Batch:
    """A Batch of T tasks x B rows with Gaussian observations/returns, actions in [-1, 1],
    terminal discounts in [0, 1) and no terminations."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    return Batch(obs=r(T, B, obs_dim), action=torch.rand(T, B, act_dim, generator=g, dtype=dtype) * 2 - 1,
                 reward=r(T, B), next_obs=r(T, B, obs_dim), done=torch.zeros(T, B, dtype=dtype),
                 mc_return=r(T, B) * 10, terminal_obs=r(T, B, obs_dim),
                 terminal_discount=torch.rand(T, B, generator=g, dtype=dtype))
