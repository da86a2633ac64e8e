"""Ant-Dir: MACAW's Ant task family (docs/algorithm.md §7)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .base import TaskMujocoEnv

DEFAULT_CAMERA_CONFIG = {"distance": 4.0}


class AntDirEnv(TaskMujocoEnv):
    r"""
    ## Description
    Ant-Dir (MACAW, docs/algorithm.md §7): gymnasium's Ant model (the same bodies, joints, gears and
    RK4 integrator as the paper's `ant.xml`, without its two invisible marker sites), rewarded
    for moving its torso in the task's direction theta in the xy-plane.
    Registered as `macaw_fast/AntDir-v0` (200-step episodes). Family name `ant_dir`.

    ## Action Space
    `Box(-1, 1, (8,), float32)`: torques (gear 150) on the eight hinges.

    | Num | Action                         | Min | Max | Joint (XML name) |
    | --- | ------------------------------ | --- | --- | ---------------- |
    | 0   | hip of the right back leg      | -1  | 1   | hip_4            |
    | 1   | ankle of the right back leg    | -1  | 1   | ankle_4          |
    | 2   | hip of the front left leg      | -1  | 1   | hip_1            |
    | 3   | ankle of the front left leg    | -1  | 1   | ankle_1          |
    | 4   | hip of the front right leg     | -1  | 1   | hip_2            |
    | 5   | ankle of the front right leg   | -1  | 1   | ankle_2          |
    | 6   | hip of the back leg            | -1  | 1   | hip_3            |
    | 7   | ankle of the back leg          | -1  | 1   | ankle_3          |

    Actions are not clipped by the env (MuJoCo clamps the control; the cost uses the action
    as given).

    ## Observation Space
    `Box(-inf, inf, (27,), float64)`: `qpos[2:]` (13) then `qvel` (14); no contact forces.

    | Num   | Observation                                              | Source      |
    | ----- | -------------------------------------------------------- | ----------- |
    | 0     | z of the torso                                           | qpos[2]     |
    | 1-4   | torso orientation quaternion (w, x, y, z)                | qpos[3:7]   |
    | 5-12  | hip/ankle angles, legs 1-4 (hip_1, ankle_1, ..., ankle_4) | qpos[7:15]  |
    | 13-15 | torso linear velocity (x, y, z)                          | qvel[0:3]   |
    | 16-18 | torso angular velocity                                   | qvel[3:6]   |
    | 19-26 | hip/ankle angular velocities                             | qvel[6:14]  |

    ## Rewards
    `reward = reward_forward + reward_ctrl + reward_contact + reward_survive`, all in `info`:

    - `reward_forward = v_xy . (cos theta, sin theta)`, v_xy = change of the torso body
      position (`data.body("torso").xpos[:2]`) over the step / dt, dt = 0.05;
    - `reward_ctrl = -ctrl_cost_weight * ||a||^2` (0.5);
    - `reward_contact = -contact_cost_weight * ||clip(cfrc_ext, -1, 1)||^2` over all bodies
      (0.5e-3). The paper's stack (mujoco-py on MuJoCo >= 2) most likely never filled
      `cfrc_ext`, so its effective contact cost was 0: pass `contact_cost_weight=0` to
      reproduce that. Here `cfrc_ext` is filled after every step (`mj_rnePostConstraint`);
    - `reward_survive = healthy_reward` (1), paid on every step, the terminal one included.

    `info` also holds `x_position`, `y_position`, `x_velocity`, `y_velocity`, and `goal_velocity`
    (= `reward_forward`, the velocity along the goal direction: the task's progress measure).

    ## Starting State
    `qpos = init_qpos + U(-s, s)`, `qvel = init_qvel + s * N(0, 1)`, s = `reset_noise_scale`
    (0.1). The torso starts at z = 0.75.

    ## Episode End
    Terminates when the state is not finite or the torso z leaves `healthy_z_range`
    ([0.2, 1.0], inclusive), i.e. the Ant flipped, fell or jumped. Truncated after 200 steps by
    the `TimeLimit` of the registered id.

    ## Tasks
    `{"goal": theta}` (radians); default `{"goal": 0.0}` (+x). Paper set: 50 angles
    U[0, 2 pi) from a fixed seed, test tasks 6, 17, 23, 30, 41. Given as `task=` or
    `reset(options={"task": ...})`.

    ## Arguments
    | Parameter             | Type      | Default        | Description                                |
    | --------------------- | --------- | -------------- | ------------------------------------------ |
    | `task`                | **dict**  | `{"goal": 0}`  | the task                                   |
    | `xml_file`            | **str**   | `"ant.xml"`    | MuJoCo model (gymnasium's asset)           |
    | `frame_skip`          | **int**   | `5`            | MuJoCo steps per env step (timestep 0.01)  |
    | `ctrl_cost_weight`    | **float** | `0.5`          | w_ctrl                                     |
    | `contact_cost_weight` | **float** | `5e-4`         | w_contact (0: the paper's effective reward) |
    | `healthy_reward`      | **float** | `1.0`          | survive bonus per step                     |
    | `healthy_z_range`     | **tuple** | `(0.2, 1.0)`   | torso z outside it terminates              |
    | `reset_noise_scale`   | **float** | `0.1`          | s in the starting state                    |

    ## Version History
    * v0: initial version (gymnasium 1.x, mujoco >= 3), matching the paper's env on mujoco-py.
    """

    family = "ant_dir"
    _needs_contact_forces = True

    def __init__(
        self,
        task: Mapping[str, Any] | None = None,
        xml_file: str = "ant.xml",
        frame_skip: int = 5,
        ctrl_cost_weight: float = 0.5,
        contact_cost_weight: float = 5e-4,
        healthy_reward: float = 1.0,
        healthy_z_range: tuple[float, float] = (0.2, 1.0),
        reset_noise_scale: float = 0.1,
        default_camera_config: dict[str, float | int] = DEFAULT_CAMERA_CONFIG,
        **kwargs: Any,
    ):
        self._ctrl_cost_weight = float(ctrl_cost_weight)
        self._contact_cost_weight = float(contact_cost_weight)
        self._healthy_reward = float(healthy_reward)
        self._healthy_z_range = (float(healthy_z_range[0]), float(healthy_z_range[1]))
        self._reset_noise_scale = float(reset_noise_scale)
        # cfrc_ext is only needed for a non-zero contact cost.
        self._needs_contact_forces = self._contact_cost_weight != 0.0
        super().__init__(
            xml_file,
            frame_skip,
            obs_dim=27,
            task=task,
            default_task={"goal": 0.0},
            ezpickle_kwargs=dict(
                task=task,
                xml_file=xml_file,
                frame_skip=frame_skip,
                ctrl_cost_weight=ctrl_cost_weight,
                contact_cost_weight=contact_cost_weight,
                healthy_reward=healthy_reward,
                healthy_z_range=healthy_z_range,
                reset_noise_scale=reset_noise_scale,
                default_camera_config=default_camera_config,
                **kwargs,
            ),
            default_camera_config=default_camera_config,
            **kwargs,
        )
        self._torso = self.model.body("torso").id
        self.observation_structure = {"skipped_qpos": 2, "qpos": self.model.nq - 2, "qvel": self.model.nv}

    def _apply_task(self, task: dict[str, Any]) -> None:
        self._goal = task["goal"]
        self._direction = np.array([np.cos(self._goal), np.sin(self._goal)])

    def _get_obs(self) -> np.ndarray:
        return np.concatenate((self.data.qpos[2:], self.data.qvel))

    def contact_cost(self) -> float:
        """Return ``contact_cost_weight * ||clip(cfrc_ext, -1, 1)||^2`` for the current ``data.cfrc_ext``."""
        f = np.clip(self.data.cfrc_ext, -1.0, 1.0)
        return self._contact_cost_weight * float(np.sum(f * f))

    def is_healthy(self) -> bool:
        """Whether the state is finite and the torso z is inside ``healthy_z_range`` (inclusive)."""
        z = self.data.qpos[2]
        lo, hi = self._healthy_z_range
        return bool(lo <= z <= hi and np.isfinite(self.data.qpos).all() and np.isfinite(self.data.qvel).all())

    def step(self, action):
        """Advance one env step (``frame_skip`` MuJoCo steps); see the class docstring for the reward."""
        xy_before = self.data.xpos[self._torso, :2].copy()
        a = self._simulate(action)
        xy_after = self.data.xpos[self._torso, :2]
        velocity = (xy_after - xy_before) / self.dt
        reward_forward = float(np.dot(velocity, self._direction))
        reward_ctrl = -self._ctrl_cost_weight * float(np.dot(a, a))
        reward_contact = -self.contact_cost() if self._contact_cost_weight else 0.0
        reward_survive = self._healthy_reward
        terminated = not self.is_healthy()
        info = {
            "x_position": xy_after[0],
            "y_position": xy_after[1],
            "x_velocity": velocity[0],
            "y_velocity": velocity[1],
            "reward_forward": reward_forward,
            "goal_velocity": reward_forward,
            "reward_ctrl": reward_ctrl,
            "reward_contact": reward_contact,
            "reward_survive": reward_survive,
            "task": self.task,
        }
        if self.render_mode == "human":
            self.render()
        reward = reward_forward + reward_ctrl + reward_contact + reward_survive
        return self._get_obs(), reward, terminated, False, info

    def reset_model(self) -> np.ndarray:
        """Set the starting state (uniform qpos noise, Gaussian qvel noise) and return the observation."""
        s = self._reset_noise_scale
        qpos = self.init_qpos + self.np_random.uniform(low=-s, high=s, size=self.model.nq)
        qvel = self.init_qvel + s * self.np_random.standard_normal(self.model.nv)
        self.set_state(qpos, qvel)
        return self._get_obs()

    def _get_reset_info(self) -> dict[str, float]:
        return {"x_position": self.data.qpos[0], "y_position": self.data.qpos[1], "task": self.task}
