"""Small datasets from scripted behaviour, for tests and for the demo's fallback without a collector.

Each episode follows an open-loop sinusoidal gait with a random amplitude, frequency and phase per
joint plus Gaussian noise, mixed with uniformly random episodes, so a task's data spans poor to
somewhat purposeful behaviour. This is NOT the paper's recipe (a SAC replay buffer per task, see
``macaw_fast.collect``); it only makes well-formed data quickly.
"""

from __future__ import annotations

import os

import numpy as np


def make_scripted_dataset(path: str | os.PathLike, family: str = "cheetah_dir", *, episodes_per_task: int = 4,
                          episode_steps: int = 200, seed: int = 0, task_indices=None, split=None,
                          overwrite: bool = False) -> str:
    """Write a dataset of scripted rollouts for the family's paper tasks (or ``task_indices``).

    ``split``: {"train": [...], "test": [...]} of task ids (strings of the indices); default: the
    paper's split restricted to the chosen tasks (both lists non-empty). Returns the path.
    """
    from ..data.store import DatasetWriter
    from ..envs import FAMILIES, make, task_to_jsonable

    fam = FAMILIES[family]
    tasks = fam.paper_tasks()
    idx = list(range(len(tasks))) if task_indices is None else list(task_indices)
    ids = [str(i) for i in idx]
    if split is None:
        train = [str(i) for i in idx if i in fam.train_indices] or ids
        test = [str(i) for i in idx if i in fam.test_indices] or ids
        split = {"train": train, "test": test}
    rng = np.random.default_rng(seed)
    with DatasetWriter.create(path, fam.env_id, {str(i): task_to_jsonable(tasks[i]) for i in idx}, split,
                              fam.obs_dim, fam.act_dim, overwrite=overwrite,
                              source={"kind": "scripted", "seed": seed}) as w:
        for i in idx:
            env = make(family, tasks[i], disable_env_checker=True, max_episode_steps=episode_steps)
            for ep in range(episodes_per_task):
                o, _ = env.reset(seed=int(rng.integers(2**31)))
                amp = rng.uniform(0.2, 1.0, fam.act_dim)
                freq = rng.uniform(0.5, 3.0)
                phase = rng.uniform(0, 2 * np.pi, fam.act_dim)
                random_ep = ep % 3 == 2
                obs, act, rew, nxt = [], [], [], []
                term = False
                for t in range(episode_steps):
                    if random_ep:
                        a = rng.uniform(-1, 1, fam.act_dim)
                    else:
                        a = amp * np.sin(freq * t * 0.3 + phase) + 0.1 * rng.standard_normal(fam.act_dim)
                    a = np.clip(a, -1, 1)
                    o2, r, term, trunc, _ = env.step(a)
                    obs.append(o)
                    act.append(a)
                    rew.append(r)
                    nxt.append(o2)
                    o = o2
                    if term or trunc:
                        break
                w.append_trajectory(str(i), np.array(obs), np.array(act), np.array(rew), np.array(nxt), bool(term))
            env.close()
        w.commit()
    return os.fspath(path)
