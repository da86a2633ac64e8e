"""Making offline data: batched per-task SAC on all tasks of a family (docs/algorithm.md §10).

``collect(family, out_dir, steps_per_task=..., seed=..., tasks=None)`` trains one SAC agent per
task from scratch, all tasks in one process with one batched agent, and stores each task's whole
replay buffer as its offline data; it returns the dataset path. See :mod:`.collector` for the run
directory, checkpoints and resume, :mod:`.sac` for the batched SAC, ``docs/collect.md`` for the
measured defaults.
"""

from __future__ import annotations

from .collector import CollectConfig, Collector, collect
from .sac import SAC, BatchedSAC, SACConfig

__all__ = ["collect", "CollectConfig", "Collector", "BatchedSAC", "SAC", "SACConfig"]
