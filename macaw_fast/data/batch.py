"""The meta-batch type: one batch of transitions per task, stacked on a leading task axis."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterator

import torch

#: Fields holding a vector per transition: (T, B, dim).
VECTOR_FIELDS = ("obs", "action", "next_obs", "terminal_obs")
#: Fields holding a scalar per transition: (T, B).
SCALAR_FIELDS = ("reward", "done", "mc_return", "terminal_discount")
#: Every field, in storage order.
FIELDS = ("obs", "action", "reward", "next_obs", "done", "mc_return", "terminal_obs", "terminal_discount")


@dataclass
class Batch:
    """Transitions for T tasks, B per task (docs/algorithm.md §3).

    Vector fields are (T, B, dim): ``obs``, ``next_obs``, ``terminal_obs`` (dim = obs_dim) and
    ``action`` (dim = act_dim). Scalar fields are (T, B): ``reward``, ``done``, ``mc_return``,
    ``terminal_discount``. The bootstrapped return of row t is
    ``mc_return + terminal_discount * V(terminal_obs)``.
    """

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    done: torch.Tensor
    mc_return: torch.Tensor
    terminal_obs: torch.Tensor
    terminal_discount: torch.Tensor

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for f in fields(self):
            yield f.name, getattr(self, f.name)

    @property
    def num_tasks(self) -> int:
        return self.obs.shape[0]

    @property
    def batch_size(self) -> int:
        return self.obs.shape[1]

    def to(self, *args, **kwargs) -> "Batch":
        """Move/cast every field (same arguments as ``torch.Tensor.to``)."""
        return Batch(**{k: v.to(*args, **kwargs) for k, v in self})

    def task(self, i: int) -> "Batch":
        """Task i's rows as a Batch with T = 1."""
        return Batch(**{k: v[i : i + 1] for k, v in self})

    def validate(self, obs_dim: int, act_dim: int, name: str = "batch", check_finite: bool = True) -> None:
        """Raise ValueError naming the field if any shape, dim or value is not as expected."""
        for k, v in self:
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"{name}.{k}: expected a torch.Tensor, got {type(v).__name__}")
            if not v.is_floating_point():
                raise TypeError(f"{name}.{k}: expected a floating-point tensor, got dtype {v.dtype}")
        if self.obs.dim() != 3:
            raise ValueError(f"{name}.obs: expected shape (T, B, obs_dim), got {tuple(self.obs.shape)}")
        T, B = self.obs.shape[:2]
        for k in VECTOR_FIELDS:
            v = getattr(self, k)
            dim = act_dim if k == "action" else obs_dim
            if tuple(v.shape) != (T, B, dim):
                raise ValueError(f"{name}.{k}: expected shape {(T, B, dim)} (T, B, {'act_dim' if k == 'action' else 'obs_dim'}), got {tuple(v.shape)}")
        for k in SCALAR_FIELDS:
            v = getattr(self, k)
            if tuple(v.shape) != (T, B):
                raise ValueError(f"{name}.{k}: expected shape {(T, B)} (T, B), got {tuple(v.shape)}")
        dtypes = {v.dtype for _, v in self}
        if len(dtypes) != 1:
            raise TypeError(f"{name}: all fields must share one dtype, got {sorted(map(str, dtypes))}")
        if check_finite:
            # One check of all fields (`macaw_fast.ops.all_finite`: one Triton launch on a GPU, or
            # fused norms and a sum with torch), one host sync; only on failure look for the field.
            from ..ops.finite import all_finite
            names, tensors = zip(*self)
            if not all_finite(tensors):
                for k, v in zip(names, tensors):
                    if not bool(torch.isfinite(v).all()):
                        raise ValueError(f"{name}.{k}: contains NaN or inf")
