"""Shared machinery of the MACAW task environments: task handling and a lean MuJoCo step.

Every family's env subclasses :class:`TaskMujocoEnv`, which adds to gymnasium's ``MujocoEnv``:

- a task (see :mod:`macaw_fast.envs.tasks`) given at construction (``task=``) or per episode
  through ``reset(options={"task": task})``; ``env.task`` returns a copy;
- pickling that keeps the current task (``EzPickle`` with the task argument kept up to date);
- a stepping path without the per-step overheads MACAW's envs do not need: one ``mj_step`` call
  for all frames, and ``mj_rnePostConstraint`` (which fills ``cfrc_ext``) only for envs whose
  reward reads contact forces (``_needs_contact_forces``).
"""

from __future__ import annotations

from typing import Any, Mapping

import mujoco
import numpy as np
from gymnasium import utils
from gymnasium.envs.mujoco import MujocoEnv
from gymnasium.spaces import Box

from . import tasks as _tasks


class TaskMujocoEnv(MujocoEnv, utils.EzPickle):
    """Base class of the four MACAW envs: a ``MujocoEnv`` with a task (see module docstring)."""

    #: The task family (a key of :data:`macaw_fast.envs.FAMILIES`); set by subclasses.
    family: str = ""
    #: Whether the reward needs ``data.cfrc_ext`` (then ``mj_rnePostConstraint`` runs after each step).
    _needs_contact_forces: bool = False

    metadata = {"render_modes": ["human", "rgb_array", "depth_array", "rgbd_tuple"]}

    def __init__(
        self,
        xml_file: str,
        frame_skip: int,
        obs_dim: int,
        task: Mapping[str, Any] | None,
        default_task: Mapping[str, Any],
        ezpickle_kwargs: dict[str, Any],
        default_camera_config: dict[str, float | int] | None = None,
        **kwargs: Any,
    ):
        utils.EzPickle.__init__(self, **ezpickle_kwargs)
        MujocoEnv.__init__(
            self,
            xml_file,
            frame_skip,
            observation_space=None,
            default_camera_config=default_camera_config,
            **kwargs,
        )
        self.metadata = {**type(self).metadata, "render_fps": int(np.round(1.0 / self.dt))}
        self.observation_space = Box(low=-np.inf, high=np.inf, shape=(obs_dim,), dtype=np.float64)
        self._nu = self.model.nu
        self._task: dict[str, Any] = {}
        self.set_task(default_task if task is None else task)

    # -- tasks ------------------------------------------------------------------------------------

    @property
    def task(self) -> dict[str, Any]:
        """The current task (a copy; also in every reset and step ``info`` as ``info["task"]``)."""
        return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in self._task.items()}

    def set_task(self, task: Mapping[str, Any]) -> None:
        """Validate and install ``task``; it takes effect immediately (call ``reset`` to start an episode in it)."""
        task = _tasks.validate_task(self.family, task)
        self._apply_task(task)
        self._task = task
        self._ezpickle_kwargs["task"] = self.task

    def _apply_task(self, task: dict[str, Any]) -> None:
        """Install a validated task into the simulator/reward; subclasses override."""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Reset as gymnasium's ``MujocoEnv``; ``options={"task": task}`` switches the task first."""
        if options:
            unknown = set(options) - {"task"}
            if unknown:
                raise ValueError(f"{type(self).__name__}.reset: unknown options {sorted(unknown)}; only 'task' is accepted")
            if options.get("task") is not None:
                self.set_task(options["task"])
        return super().reset(seed=seed, options=options)

    # -- full state (checkpoints) ------------------------------------------------------------------

    def get_full_state(self) -> dict:
        """Everything needed to continue this env bit-exactly: MuJoCo's full integration state
        (``mj_getState``) and the state of the env's numpy generator (reset noise)."""
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        st = np.empty(mujoco.mj_stateSize(self.model, spec), dtype=np.float64)
        mujoco.mj_getState(self.model, self.data, st, spec)
        return {"mj_state": st, "np_random": self.np_random.bit_generator.state}

    def set_full_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`get_full_state` (the env must have been reset once, so its generator exists)."""
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        mj = np.asarray(state["mj_state"], dtype=np.float64)
        if mj.shape != (mujoco.mj_stateSize(self.model, spec),):
            raise ValueError(f"{type(self).__name__}: state size {mj.shape} does not match the model")
        mujoco.mj_setState(self.model, self.data, mj, spec)
        self.np_random.bit_generator.state = state["np_random"]

    # -- stepping ---------------------------------------------------------------------------------

    def _simulate(self, action: np.ndarray) -> np.ndarray:
        """Apply ``action`` as the control for ``frame_skip`` MuJoCo steps; return it as float64."""
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (self._nu,):
            raise ValueError(f"{type(self).__name__}.step: action must have shape ({self._nu},), got {a.shape}")
        self.data.ctrl[:] = a
        mujoco.mj_step(self.model, self.data, nstep=self.frame_skip)
        if self._needs_contact_forces:
            # MuJoCo >= 2.0 fills cfrc_ext only here (gym issue 1541).
            mujoco.mj_rnePostConstraint(self.model, self.data)
        return a
