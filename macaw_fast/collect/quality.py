"""How good is a collection's data? Per task: the collection's final evaluation, the task's own
progress measure in the stored rows, falls, and the spread of the stored trajectories' returns.

This is what docs/collect.md tabulates for every family (``macaw-fast quality RUN``). The progress
measure is a velocity read from the stored observations, so it needs no env:

- Cheetah-Dir: forward velocity times the task's direction (m/s towards the goal direction);
- Cheetah-Vel: forward velocity, and its distance to the task's target velocity;
- Ant-Dir: torso velocity projected on the goal direction (cos g, sin g);
- Walker-Params: forward velocity.

A *fall* is a stored trajectory that ended in a termination (``done`` = 1 on its last row), not
at the time limit; only the Ant and the Walker can fall.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import numpy as np

from .._io import read_jsonl

__all__ = ["progress_velocity", "collection_quality", "format_quality"]

#: Where each family's observation holds the root's velocity: (x index, y index or None). HalfCheetah
#: and Walker observe qpos[1:] (8 entries) then qvel, so qvel[0] is entry 8; the Ant observes
#: qpos[2:] (13 entries) then qvel, so qvel[0:2] are entries 13 and 14.
_VELOCITY_INDEX = {"cheetah_dir": (8, None), "cheetah_vel": (8, None), "ant_dir": (13, 14), "walker_param": (8, None)}


def progress_velocity(family: str, params: Mapping[str, Any], obs: np.ndarray) -> np.ndarray:
    """The task's progress velocity (m/s) of each observation row ``obs`` (..., obs_dim): forward
    velocity, times the direction for Cheetah-Dir, projected on the goal direction for Ant-Dir."""
    if family not in _VELOCITY_INDEX:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(_VELOCITY_INDEX)}")
    ix, iy = _VELOCITY_INDEX[family]
    obs = np.asarray(obs, dtype=np.float64)
    if family == "ant_dir":
        g = float(params["goal"])
        return obs[..., ix] * math.cos(g) + obs[..., iy] * math.sin(g)
    v = obs[..., ix]
    return v * float(params["direction"]) if family == "cheetah_dir" else v


def _final_evaluation(log_path: str) -> dict | None:
    """The last record of a collection log that holds an evaluation (None without one)."""
    evals = [r for r in read_jsonl(log_path) if isinstance(r, dict) and r.get("eval_return") is not None]
    return evals[-1] if evals else None


def collection_quality(run: str, last_rows: int = 10_000) -> dict:
    """Per-task quality of the collection in directory ``run`` (``collect --out``).

    Returns ``{"family", "step", "last_rows", "tasks": [{task, label, splits, eval_return,
    eval_velocity, eval_length, velocity_last, velocity_error_last (Cheetah-Vel), trajectories,
    falls, return_min/mean/max}]}``; ``step`` is the env step of the final evaluation used.
    """
    from ..data.store import open_dataset
    from ..envs import FAMILIES, task_label

    run = os.path.abspath(os.fspath(run))
    cfg_path = os.path.join(run, "config.json")
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
        family = cfg["family"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{cfg_path}: not found; expected a `macaw-fast collect --out` directory") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ValueError(f"{cfg_path}: not a collection config (expected a JSON object with 'family')") from None
    if family not in FAMILIES:
        raise ValueError(f"{cfg_path}: family {family!r} is not one of {', '.join(FAMILIES)}")
    if not isinstance(last_rows, int) or last_rows < 1:
        raise ValueError(f"last_rows: expected a positive integer, got {last_rows!r}")
    ds = open_dataset(os.path.join(run, "dataset"))
    ev = _final_evaluation(os.path.join(run, "log.jsonl"))
    splits = {t: [name for name, ids in ds.split.items() if t in ids] for t in ds.tasks}   # Cheetah-Dir: both
    rows = []
    for k, tid in enumerate(ds.tasks):
        td = ds[tid]
        params = td.params
        a = td.arrays()
        n = td.num_rows
        v = progress_velocity(family, params, a["obs"][max(0, n - last_rows):]) if n else np.zeros(0)
        rets = list(td.episode_returns or [])
        row = {"task": tid, "label": task_label(family, params), "splits": splits[tid],
               "velocity_last": float(v.mean()) if v.size else None,
               "trajectories": len(td.episode_lengths) if td.episode_lengths is not None else None,
               "falls": int(np.asarray(a["done"]).sum()),
               "return_min": min(rets) if rets else None, "return_mean": sum(rets) / len(rets) if rets else None,
               "return_max": max(rets) if rets else None}
        if family == "cheetah_vel":
            row["velocity_error_last"] = float(np.abs(v - float(params["velocity"])).mean()) if v.size else None
        for key in ("eval_return", "eval_velocity", "eval_length"):
            vals = ev.get(key) if ev else None
            row[key] = float(vals[k]) if isinstance(vals, list) and k < len(vals) and vals[k] is not None else None
        if family == "cheetah_dir" and row["eval_velocity"] is not None:
            row["eval_velocity"] *= float(params["direction"])     # the log holds x-velocity; make it directional
        rows.append(row)
    return {"family": family, "run": run, "step": ev.get("step") if ev else None, "last_rows": last_rows, "tasks": rows}


def format_quality(q: dict, only: str | None = None) -> str:
    """A markdown table of :func:`collection_quality` (``only``: a split name, e.g. 'test'), then
    the means over the tasks shown."""
    tasks = [r for r in q["tasks"] if only is None or only in r["splits"]]
    vel = q["family"] == "cheetah_vel"

    def f(x, d=1):
        return "n/a" if x is None else f"{x:.{d}f}".replace("-", "−")

    head = ["task", "", "final eval return", "eval v", "eval length", f"v, last {q['last_rows']} rows"]
    head += ["|v − v_goal|, last rows"] if vel else []
    head += ["falls / trajectories", "stored returns min / mean / max"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in tasks:
        cells = [r["task"], r["label"], f(r["eval_return"]), f(r["eval_velocity"], 2), f(r["eval_length"], 0),
                 f(r["velocity_last"], 2)]
        cells += [f(r["velocity_error_last"], 2)] if vel else []
        cells += [f"{r['falls']} / {r['trajectories'] if r['trajectories'] is not None else '?'}",
                  f"{f(r['return_min'], 0)} / {f(r['return_mean'], 0)} / {f(r['return_max'], 0)}"]
        lines.append("| " + " | ".join(cells) + " |")

    def mean(key):
        xs = [r[key] for r in tasks if r.get(key) is not None]
        return sum(xs) / len(xs) if xs else None

    summary = (f"{len(tasks)} tasks (final evaluation at env step {q['step']}): mean eval return "
               f"{f(mean('eval_return'))}, mean v over the last {q['last_rows']} rows {f(mean('velocity_last'), 2)} m/s")
    if vel:
        summary += f", mean |v − v_goal| {f(mean('velocity_error_last'), 2)} m/s"
    falls, trajs = sum(r["falls"] for r in tasks), sum(r["trajectories"] or 0 for r in tasks)
    summary += f"; {falls} of {trajs} stored trajectories end in a fall; best stored trajectory mean {f(mean('return_max'))}"
    return "\n".join(lines) + "\n\n" + summary
