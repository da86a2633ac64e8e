"""MACAW's four task families as gymnasium environments on the official ``mujoco`` bindings.

======================  ============================  ====  ====  =====  ===========================
family                  gymnasium id                  obs   act   tasks  test tasks
======================  ============================  ====  ====  =====  ===========================
``cheetah_dir``         ``macaw_fast/CheetahDir-v0``  20    6     2      0, 1 (= train)
``cheetah_vel``         ``macaw_fast/CheetahVel-v0``  20    6     40     2, 7, 15, 23, 26
``ant_dir``             ``macaw_fast/AntDir-v0``      27    8     50     6, 17, 23, 30, 41
``walker_param``        ``macaw_fast/WalkerParams-v0`` 17   6     50     2, 12, 15, 39, 43
======================  ============================  ====  ====  =====  ===========================

All ids have 200-step episodes. A collector or evaluator needs only this module::

    from macaw_fast import envs
    fam = envs.FAMILIES["cheetah_vel"]
    tasks = fam.paper_tasks()
    env = envs.make("cheetah_vel", tasks[fam.test_indices[0]])
    obs, info = env.reset(seed=0)
    obs, info = env.reset(options={"task": tasks[3]})     # switch task between episodes

Importing this module registers the ids with gymnasium (when gymnasium is installed) using
string entry points, so neither ``mujoco`` nor the env classes are imported until an env is
made; ``gymnasium.make("macaw_fast.envs:macaw_fast/CheetahVel-v0")`` works without a prior
import. The env classes are importable from here lazily (``macaw_fast.envs.AntDirEnv``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .tasks import (
    FAMILY_NAMES,
    load_paper_task,
    paper_split,
    paper_tasks,
    sample_tasks,
    task_family,
    task_label,
    task_to_jsonable,
    validate_task,
)

__all__ = [
    "FAMILIES",
    "FAMILY_NAMES",
    "Family",
    "make",
    "register_envs",
    "load_paper_task",
    "paper_split",
    "paper_tasks",
    "sample_tasks",
    "task_family",
    "task_label",
    "task_to_jsonable",
    "validate_task",
    "HalfCheetahDirEnv",
    "HalfCheetahVelEnv",
    "AntDirEnv",
    "WalkerParamsEnv",
]

#: Episode length of every MACAW family.
MAX_EPISODE_STEPS = 200


@dataclass(frozen=True)
class Family:
    """One task family: its gymnasium id, dimensions and the paper's task set and split."""

    name: str
    """Family name (``cheetah_dir``, ``cheetah_vel``, ``ant_dir``, ``walker_param``)."""
    env_id: str
    """Registered gymnasium id."""
    entry_point: str
    """``module:Class`` of the env."""
    obs_dim: int
    """Observation size."""
    act_dim: int
    """Action size (actions lie in [-1, 1])."""
    train_indices: tuple[int, ...] = field(repr=False)
    """Indices of the paper's training tasks in :meth:`paper_tasks`."""
    test_indices: tuple[int, ...] = field(repr=False)
    """Indices of the paper's test tasks in :meth:`paper_tasks`."""
    max_episode_steps: int = MAX_EPISODE_STEPS
    """Episode length (time limit)."""

    def paper_tasks(self) -> list[dict[str, Any]]:
        """The paper's task set (see :func:`macaw_fast.envs.tasks.paper_tasks`)."""
        return paper_tasks(self.name)

    def train_tasks(self) -> list[dict[str, Any]]:
        """The paper's training tasks, in index order."""
        tasks = self.paper_tasks()
        return [tasks[i] for i in self.train_indices]

    def test_tasks(self) -> list[dict[str, Any]]:
        """The paper's test tasks, in index order."""
        tasks = self.paper_tasks()
        return [tasks[i] for i in self.test_indices]

    def sample_tasks(self, n: int, seed: int) -> list[dict[str, Any]]:
        """``n`` fresh tasks from the family's distribution (see :func:`macaw_fast.envs.tasks.sample_tasks`)."""
        return sample_tasks(self.name, n, seed)

    def make(self, task: Mapping[str, Any] | None = None, **kwargs: Any):
        """Make this family's env for ``task`` (see :func:`macaw_fast.envs.make`)."""
        return make(self.name, task, **kwargs)


def _family(name: str, env_id: str, entry_point: str, obs_dim: int, act_dim: int) -> Family:
    train, test = paper_split(name)
    return Family(name, env_id, entry_point, obs_dim, act_dim, train, test)


#: The four families by name.
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        _family("cheetah_dir", "macaw_fast/CheetahDir-v0", "macaw_fast.envs.half_cheetah:HalfCheetahDirEnv", 20, 6),
        _family("cheetah_vel", "macaw_fast/CheetahVel-v0", "macaw_fast.envs.half_cheetah:HalfCheetahVelEnv", 20, 6),
        _family("ant_dir", "macaw_fast/AntDir-v0", "macaw_fast.envs.ant:AntDirEnv", 27, 8),
        _family("walker_param", "macaw_fast/WalkerParams-v0", "macaw_fast.envs.walker:WalkerParamsEnv", 17, 6),
    )
}


def register_envs() -> None:
    """Register the four ids with gymnasium (idempotent; called on import when gymnasium is present)."""
    import gymnasium

    for fam in FAMILIES.values():
        if fam.env_id not in gymnasium.registry:
            gymnasium.register(id=fam.env_id, entry_point=fam.entry_point, max_episode_steps=fam.max_episode_steps)


def make(family: str, task: Mapping[str, Any] | None = None, **kwargs: Any):
    """Make the env of ``family`` for ``task`` through ``gymnasium.make`` (200-step ``TimeLimit``).

    ``kwargs`` go to ``gymnasium.make`` and on to the env (e.g. ``contact_cost_weight=0`` for
    Ant-Dir, ``disable_env_checker=True`` to skip gymnasium's passive checker in a collector,
    ``max_episode_steps``). ``env.unwrapped`` is the raw env.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown task family {family!r}; expected one of {', '.join(FAMILIES)}")
    import gymnasium

    register_envs()
    return gymnasium.make(FAMILIES[family].env_id, task=task, **kwargs)


_LAZY_CLASSES = {
    "HalfCheetahDirEnv": "half_cheetah",
    "HalfCheetahVelEnv": "half_cheetah",
    "AntDirEnv": "ant",
    "WalkerParamsEnv": "walker",
}


def __getattr__(name: str):
    if name in _LAZY_CLASSES:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY_CLASSES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


try:  # register on import; the ids are string entry points, so this does not import mujoco
    register_envs()
except ImportError:  # gymnasium not installed: FAMILIES and the task functions still work
    pass
