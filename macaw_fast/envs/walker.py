"""Walker-Params: MACAW's Walker2d family with per-task physics (docs/algorithm.md §7)."""

from __future__ import annotations

from typing import Any, Mapping

import mujoco
import numpy as np

from . import tasks as _tasks
from .tasks import WALKER_XML
from .base import TaskMujocoEnv

DEFAULT_CAMERA_CONFIG = {"trackbodyid": 2, "distance": 4.0, "lookat": np.array((0.0, 0.0, 1.15)), "elevation": -20.0}

#: MACAW's Walker timestep (the XML says 0.002); with frame_skip 4, dt = 0.016.
WALKER_TIMESTEP = 0.004


class WalkerParamsEnv(TaskMujocoEnv):
    r"""
    ## Description
    Walker-Params (MACAW, docs/algorithm.md §7): a 2-D biped (gymnasium's original `walker2d.xml`,
    foot friction 0.9 / 1.9 like old gym's, run at timestep 0.004 with frame skip 4) whose
    physics differ per task: `body_mass`, `body_inertia`, `geom_friction` and `dof_damping`
    of the model are set per element to the task's values (the paper's generator multiplies
    each base element by 1.5^u, damping by 1.3^u, u ~ U[-3, 3]), followed by
    `mujoco.mj_setConst` so that derived constants (subtree masses, inverse weights, actuator
    acc0) match. Registered as `macaw_fast/WalkerParams-v0` (200-step episodes). Family name
    `walker_param`.

    The paper's Walker ran on MuJoCo 1.31 through an old gym fork: the rules here are the same,
    the dynamics cannot be bit-identical.

    ## Action Space
    `Box(-1, 1, (6,), float32)`: torques (gear 100) on the six hinges.

    | Num | Action                     | Min | Max | Joint (XML name)  |
    | --- | -------------------------- | --- | --- | ----------------- |
    | 0   | right thigh                | -1  | 1   | thigh_joint       |
    | 1   | right leg (knee)           | -1  | 1   | leg_joint         |
    | 2   | right foot                 | -1  | 1   | foot_joint        |
    | 3   | left thigh                 | -1  | 1   | thigh_left_joint  |
    | 4   | left leg (knee)            | -1  | 1   | leg_left_joint    |
    | 5   | left foot                  | -1  | 1   | foot_left_joint   |

    ## Observation Space
    `Box(-inf, inf, (17,), float64)`: `qpos[1:]` (8) then `clip(qvel, -10, 10)` (9).

    | Num   | Observation                                   | Source                 |
    | ----- | --------------------------------------------- | ---------------------- |
    | 0     | height of the torso (rootz)                   | qpos[1]                |
    | 1     | angle of the torso (rooty)                    | qpos[2]                |
    | 2-7   | angles of the six joints (right, then left)   | qpos[3:9]              |
    | 8-10  | velocities of rootx, rootz, rooty (clipped)   | clip(qvel[0:3], +-10)  |
    | 11-16 | angular velocities of the six joints (clipped) | clip(qvel[3:9], +-10) |

    ## Rewards
    `reward = reward_forward + reward_survive + reward_ctrl`, all in `info`:

    - `reward_forward = (x_after - x_before) / dt` of the root (qpos[0]), dt = 0.016;
    - `reward_survive = healthy_reward` (1), every step;
    - `reward_ctrl = -ctrl_cost_weight * ||a||^2` (1e-3).

    `info` also holds `x_position`, `x_velocity`, `height`, `angle`.

    ## Starting State
    `qpos = init_qpos + U(-s, s)`, `qvel = init_qvel + U(-s, s)`, s = `reset_noise_scale`
    (0.005).

    ## Episode End
    Terminates unless `0.8 < height < 2.0` and `-1 < angle < 1` (strict; height = qpos[1],
    angle = qpos[2]) after the step. Truncated after 200 steps by the `TimeLimit`.

    ## Tasks
    A dict of absolute model values: `{"body_mass": (8,), "body_inertia": (8, 3),
    "dof_damping": (9,), "geom_friction": (8, 3)}` (float64; the paper's pickles hold the same
    and load with `macaw_fast.envs.load_paper_task`). Default: the unmodified model.
    `macaw_fast.envs.tasks.walker_multipliers(task)` gives the factors relative to the base.
    Paper set: 50 tasks from a fixed seed, test tasks 2, 12, 15, 39, 43.

    ## Arguments
    | Parameter             | Type      | Default           | Description                          |
    | --------------------- | --------- | ----------------- | ------------------------------------ |
    | `task`                | **dict**  | base model        | the task                             |
    | `xml_file`            | **str**   | `"walker2d.xml"`  | MuJoCo model (gymnasium's asset)     |
    | `frame_skip`          | **int**   | `4`               | MuJoCo steps per env step            |
    | `timestep`            | **float** | `0.004`           | MuJoCo timestep (overrides the XML)  |
    | `ctrl_cost_weight`    | **float** | `1e-3`            | w_ctrl                               |
    | `healthy_reward`      | **float** | `1.0`             | survive bonus per step               |
    | `healthy_z_range`     | **tuple** | `(0.8, 2.0)`      | open interval for the height         |
    | `healthy_angle_range` | **tuple** | `(-1.0, 1.0)`     | open interval for the torso angle    |
    | `reset_noise_scale`   | **float** | `0.005`           | s in the starting state              |

    A `task` for a non-default `xml_file` must match that model's shapes; task validation
    uses the default model's shapes.

    ## Version History
    * v0: initial version (gymnasium 1.x, mujoco >= 3).
    """

    family = "walker_param"

    def __init__(
        self,
        task: Mapping[str, Any] | None = None,
        xml_file: str = WALKER_XML,
        frame_skip: int = 4,
        timestep: float = WALKER_TIMESTEP,
        ctrl_cost_weight: float = 1e-3,
        healthy_reward: float = 1.0,
        healthy_z_range: tuple[float, float] = (0.8, 2.0),
        healthy_angle_range: tuple[float, float] = (-1.0, 1.0),
        reset_noise_scale: float = 5e-3,
        default_camera_config: dict[str, float | int] = DEFAULT_CAMERA_CONFIG,
        **kwargs: Any,
    ):
        self._timestep = float(timestep)
        self._ctrl_cost_weight = float(ctrl_cost_weight)
        self._healthy_reward = float(healthy_reward)
        self._healthy_z_range = (float(healthy_z_range[0]), float(healthy_z_range[1]))
        self._healthy_angle_range = (float(healthy_angle_range[0]), float(healthy_angle_range[1]))
        self._reset_noise_scale = float(reset_noise_scale)
        super().__init__(
            xml_file,
            frame_skip,
            obs_dim=17,
            task=task,
            default_task=_tasks.walker_base_params(),
            ezpickle_kwargs=dict(
                task=task,
                xml_file=xml_file,
                frame_skip=frame_skip,
                timestep=timestep,
                ctrl_cost_weight=ctrl_cost_weight,
                healthy_reward=healthy_reward,
                healthy_z_range=healthy_z_range,
                healthy_angle_range=healthy_angle_range,
                reset_noise_scale=reset_noise_scale,
                default_camera_config=default_camera_config,
                **kwargs,
            ),
            default_camera_config=default_camera_config,
            **kwargs,
        )
        self.observation_structure = {"skipped_qpos": 1, "qpos": self.model.nq - 1, "qvel": self.model.nv}

    def _initialize_simulation(self):
        model, data = super()._initialize_simulation()
        model.opt.timestep = self._timestep
        return model, data

    def _apply_task(self, task: dict[str, Any]) -> None:
        for name in _tasks.WALKER_PARAM_BASES:
            field = getattr(self.model, name)
            if field.shape != task[name].shape:
                raise ValueError(f"walker_param task[{name!r}] has shape {task[name].shape}, the loaded model needs {field.shape}")
            field[...] = task[name]
        # Recompute what MuJoCo derives from masses/inertias (subtree mass, invweight0, acc0, ...).
        mujoco.mj_setConst(self.model, self.data)

    def _get_obs(self) -> np.ndarray:
        return np.concatenate((self.data.qpos[1:], np.clip(self.data.qvel, -10.0, 10.0)))

    def is_healthy(self) -> bool:
        """Whether ``height`` and ``angle`` lie strictly inside their healthy ranges."""
        height, angle = self.data.qpos[1], self.data.qpos[2]
        zlo, zhi = self._healthy_z_range
        alo, ahi = self._healthy_angle_range
        return bool(zlo < height < zhi and alo < angle < ahi)

    def step(self, action):
        """Advance one env step (``frame_skip`` MuJoCo steps); see the class docstring for the reward."""
        x_before = self.data.qpos[0]
        a = self._simulate(action)
        x_after = self.data.qpos[0]
        x_velocity = (x_after - x_before) / self.dt
        reward_ctrl = -self._ctrl_cost_weight * float(np.dot(a, a))
        terminated = not self.is_healthy()
        info = {
            "x_position": x_after,
            "x_velocity": x_velocity,
            "height": self.data.qpos[1],
            "angle": self.data.qpos[2],
            "reward_forward": x_velocity,
            "reward_survive": self._healthy_reward,
            "reward_ctrl": reward_ctrl,
            "task": self.task,
        }
        if self.render_mode == "human":
            self.render()
        reward = x_velocity + self._healthy_reward + reward_ctrl
        return self._get_obs(), reward, terminated, False, info

    def reset_model(self) -> np.ndarray:
        """Set the starting state (uniform noise on qpos and qvel) and return the observation."""
        s = self._reset_noise_scale
        qpos = self.init_qpos + self.np_random.uniform(low=-s, high=s, size=self.model.nq)
        qvel = self.init_qvel + self.np_random.uniform(low=-s, high=s, size=self.model.nv)
        self.set_state(qpos, qvel)
        return self._get_obs()

    def _get_reset_info(self) -> dict[str, float]:
        return {"x_position": self.data.qpos[0], "task": self.task}
