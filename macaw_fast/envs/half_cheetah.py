"""Cheetah-Dir and Cheetah-Vel: MACAW's HalfCheetah task families (docs/algorithm.md §7)."""

from __future__ import annotations

import re
from typing import Any, Mapping

import mujoco
import numpy as np

from .base import TaskMujocoEnv

DEFAULT_CAMERA_CONFIG = {"distance": 4.0}
_SETTOTALMASS = re.compile(r'\s+settotalmass\s*=\s*"([^"]*)"')

_SHARED_DOC = r"""
    ## Action Space
    `Box(-1, 1, (6,), float32)`: torques on the six hinge joints, as in gymnasium's HalfCheetah.

    | Num | Action                       | Min | Max | Joint (XML name) |
    | --- | ---------------------------- | --- | --- | ---------------- |
    | 0   | torque on the back thigh     | -1  | 1   | bthigh           |
    | 1   | torque on the back shin      | -1  | 1   | bshin            |
    | 2   | torque on the back foot      | -1  | 1   | bfoot            |
    | 3   | torque on the front thigh    | -1  | 1   | fthigh           |
    | 4   | torque on the front shin     | -1  | 1   | fshin            |
    | 5   | torque on the front foot     | -1  | 1   | ffoot            |

    The env does not clip actions: MuJoCo clamps the control to the range, but the control cost
    is computed from the action as given (as in the paper's code). Collectors clip.

    ## Observation Space
    `Box(-inf, inf, (20,), float64)`: `qpos[1:]` (8), `qvel` (9), torso position (3).

    | Num   | Observation                                          | Source                     |
    | ----- | ---------------------------------------------------- | -------------------------- |
    | 0     | z of the torso (rootz)                               | qpos[1]                    |
    | 1     | angle of the torso (rooty)                           | qpos[2]                    |
    | 2-7   | angles of bthigh, bshin, bfoot, fthigh, fshin, ffoot | qpos[3:9]                  |
    | 8-10  | velocities of rootx, rootz, rooty                    | qvel[0:3]                  |
    | 11-16 | angular velocities of the six leg joints             | qvel[3:9]                  |
    | 17-19 | x, y, z of the torso body frame                      | data.body("torso").xpos    |

    The torso position is `data.xpos` as left by `mj_step`, i.e. computed at the start of the
    last of the `frame_skip` substeps (the paper's `get_body_com("torso")` behaves the same).
    `observation_structure` gives the sizes of the parts.

    ## Starting State
    `qpos = init_qpos + U(-s, s)`, `qvel = init_qvel + s * N(0, 1)`, with s =
    `reset_noise_scale` (0.1).

    ## Episode End
    Never terminates. Truncated after 200 steps by the `TimeLimit` of the registered id.

    ## Tasks
    Given as `task=` at construction or `reset(options={"task": ...})`; `env.task` is the
    current one. `macaw_fast.envs.paper_tasks` / `sample_tasks` make task sets.
"""

_SHARED_ARGS = r"""
    | Parameter           | Type      | Default              | Description                                  |
    | ------------------- | --------- | -------------------- | -------------------------------------------- |
    | `xml_file`          | **str**   | `"half_cheetah.xml"` | MuJoCo model (gymnasium's asset by default)  |
    | `frame_skip`        | **int**   | `5`                  | MuJoCo steps per env step (timestep 0.01)    |
    | `ctrl_cost_weight`  | **float** | `0.05`               | w_ctrl in the reward                         |
    | `reset_noise_scale` | **float** | `0.1`                | s in the starting state                      |
"""


class _HalfCheetahTaskEnv(TaskMujocoEnv):
    """HalfCheetah with MACAW's 20-dim observation; subclasses define the forward reward."""

    def __init__(
        self,
        task: Mapping[str, Any] | None = None,
        xml_file: str = "half_cheetah.xml",
        frame_skip: int = 5,
        ctrl_cost_weight: float = 0.05,
        reset_noise_scale: float = 0.1,
        default_camera_config: dict[str, float | int] = DEFAULT_CAMERA_CONFIG,
        **kwargs: Any,
    ):
        self._ctrl_cost_weight = float(ctrl_cost_weight)
        self._reset_noise_scale = float(reset_noise_scale)
        super().__init__(
            xml_file,
            frame_skip,
            obs_dim=20,
            task=task,
            default_task=self._default_task(),
            ezpickle_kwargs=dict(
                task=task,
                xml_file=xml_file,
                frame_skip=frame_skip,
                ctrl_cost_weight=ctrl_cost_weight,
                reset_noise_scale=reset_noise_scale,
                default_camera_config=default_camera_config,
                **kwargs,
            ),
            default_camera_config=default_camera_config,
            **kwargs,
        )
        self._torso = self.model.body("torso").id
        self.observation_structure = {"skipped_qpos": 1, "qpos": self.model.nq - 1, "qvel": self.model.nv, "torso_xpos": 3}

    def _initialize_simulation(self):
        # gymnasium's half_cheetah.xml uses the compiler attribute settotalmass="14", which
        # MuJoCo >= 3.3 deprecates (with a warning on every load) and will remove. Compile without
        # it and scale the masses after compiling instead: mj_setTotalmass + mj_setConst give a
        # bit-identical model (checked against the XML path in tests/test_envs.py).
        with open(self.fullpath) as f:
            xml = f.read()
        match = _SETTOTALMASS.search(xml)
        if match is None:
            return super()._initialize_simulation()
        model = mujoco.MjModel.from_xml_string(_SETTOTALMASS.sub("", xml, count=1))
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
        mujoco.mj_setTotalmass(model, float(match.group(1)))
        data = mujoco.MjData(model)
        mujoco.mj_setConst(model, data)
        return model, data

    def _default_task(self) -> dict[str, Any]:
        raise NotImplementedError

    def _forward_reward(self, x_velocity: float) -> float:
        raise NotImplementedError

    def _get_obs(self) -> np.ndarray:
        d = self.data
        return np.concatenate((d.qpos[1:], d.qvel, d.xpos[self._torso]))

    def step(self, action):
        """Advance one env step (``frame_skip`` MuJoCo steps); see the class docstring for the reward."""
        x_before = self.data.qpos[0]
        a = self._simulate(action)
        x_after = self.data.qpos[0]
        x_velocity = (x_after - x_before) / self.dt
        reward_forward = self._forward_reward(x_velocity)
        reward_ctrl = -self._ctrl_cost_weight * float(np.dot(a, a))
        info = {
            "x_position": x_after,
            "x_velocity": x_velocity,
            "reward_forward": reward_forward,
            "reward_ctrl": reward_ctrl,
            "task": self.task,
        }
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), reward_forward + reward_ctrl, False, False, info

    def reset_model(self) -> np.ndarray:
        """Set the starting state (uniform qpos noise, Gaussian qvel noise) and return the observation."""
        s = self._reset_noise_scale
        qpos = self.init_qpos + self.np_random.uniform(low=-s, high=s, size=self.model.nq)
        qvel = self.init_qvel + s * self.np_random.standard_normal(self.model.nv)
        self.set_state(qpos, qvel)
        return self._get_obs()

    def _get_reset_info(self) -> dict[str, float]:
        return {"x_position": self.data.qpos[0], "task": self.task}


class HalfCheetahDirEnv(_HalfCheetahTaskEnv):
    __doc__ = (
        r"""
    ## Description
    Cheetah-Dir (MACAW, docs/algorithm.md §7): gymnasium's HalfCheetah model with MACAW's 20-dim
    observation, rewarded for running in the task's direction d (+1 forward, -1 backward).
    Registered as `macaw_fast/CheetahDir-v0` (200-step episodes). Family name `cheetah_dir`.

    ## Rewards
    `reward = reward_forward + reward_ctrl`, both in `info`:

    - `reward_forward = d * v_x`, v_x = (x_after - x_before) / dt of the root (qpos[0]),
      dt = frame_skip * timestep = 0.05;
    - `reward_ctrl = -ctrl_cost_weight * ||a||^2` (0.05, half of gymnasium's default).

    `info` also holds `x_position` and `x_velocity`.

    Task: `{"direction": d}`, d in {+1, -1}; default `{"direction": 1.0}`. Paper set: [+1, -1],
    both used for training and testing.
"""
        + _SHARED_DOC
        + r"""
    ## Arguments
    `task` (dict or None, default forward) and:
"""
        + _SHARED_ARGS
        + r"""
    ## Version History
    * v0: initial version (gymnasium 1.x, mujoco >= 3), matching the paper's env on mujoco-py.
"""
    )

    family = "cheetah_dir"

    def _default_task(self) -> dict[str, Any]:
        return {"direction": 1.0}

    def _apply_task(self, task: dict[str, Any]) -> None:
        self._direction = task["direction"]

    def _forward_reward(self, x_velocity: float) -> float:
        return self._direction * x_velocity


class HalfCheetahVelEnv(_HalfCheetahTaskEnv):
    __doc__ = (
        r"""
    ## Description
    Cheetah-Vel (MACAW, docs/algorithm.md §7): gymnasium's HalfCheetah model with MACAW's 20-dim
    observation, rewarded for running forward at the task's target velocity.
    Registered as `macaw_fast/CheetahVel-v0` (200-step episodes). Family name `cheetah_vel`.

    ## Rewards
    `reward = reward_forward + reward_ctrl`, both in `info`:

    - `reward_forward = -|v_x - v_goal|`, v_x = (x_after - x_before) / dt of the root
      (qpos[0]), dt = frame_skip * timestep = 0.05;
    - `reward_ctrl = -ctrl_cost_weight * ||a||^2` (0.05).

    `info` also holds `x_position` and `x_velocity`.

    Task: `{"velocity": v_goal}`; default: the first paper task, `{"velocity": 0.075}`. Paper
    set: linspace(0.075, 3.0, 40), test tasks 2, 7, 15, 23, 26, the other 35 train.
"""
        + _SHARED_DOC
        + r"""
    ## Arguments
    `task` (dict or None, default v_goal = 0.075) and:
"""
        + _SHARED_ARGS
        + r"""
    ## Version History
    * v0: initial version (gymnasium 1.x, mujoco >= 3), matching the paper's env on mujoco-py.
"""
    )

    family = "cheetah_vel"

    def _default_task(self) -> dict[str, Any]:
        return {"velocity": 0.075}

    def _apply_task(self, task: dict[str, Any]) -> None:
        self._goal_velocity = task["velocity"]

    def _forward_reward(self, x_velocity: float) -> float:
        return -abs(x_velocity - self._goal_velocity)
