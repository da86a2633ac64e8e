"""Tasks of the four MACAW families: validation, sampling, the paper's task sets, paper pickles.

A task is a small dict:

=================  ====================================================================
family             task
=================  ====================================================================
``cheetah_dir``    ``{"direction": d}``, d = +1.0 (run forward) or -1.0 (run backward)
``cheetah_vel``    ``{"velocity": v}``, target forward velocity in m/s
``ant_dir``        ``{"goal": theta}``, target direction of motion in the xy-plane (rad)
``walker_param``   ``{"body_mass": (nbody,), "body_inertia": (nbody, 3),
                   "dof_damping": (nv,), "geom_friction": (ngeom, 3)}``, ABSOLUTE model
                   values (float64 arrays), the same representation as the paper's pickles
=================  ====================================================================

Walker tasks hold absolute values rather than multipliers so that a stored task fixes the
physics on its own (it does not depend on the base model of whatever MuJoCo build reads it) and
so that the paper's pickles load unchanged; :func:`walker_multipliers` recovers the factors.

Only numpy is needed here, except for Walker tasks, which need the Walker model's base values
(loaded lazily through ``mujoco``). Task sampling uses ``numpy.random.RandomState``, whose
streams numpy keeps frozen across versions, so the fixed task sets never change.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import math
import os
import pickle
from functools import lru_cache
from typing import Any, Mapping

import numpy as np

#: The four family names, in the order the paper lists them.
FAMILY_NAMES = ("cheetah_dir", "cheetah_vel", "ant_dir", "walker_param")

#: Walker-Params: the randomised model fields and the base of each field's multiplier b^u.
WALKER_PARAM_BASES = {
    "body_mass": 1.5,
    "body_inertia": 1.5,
    "dof_damping": 1.3,
    "geom_friction": 1.5,
}
#: Walker-Params: u ~ U[-WALKER_LOG_SCALE_LIMIT, WALKER_LOG_SCALE_LIMIT] per element.
WALKER_LOG_SCALE_LIMIT = 3.0

#: Seed of the fixed 50-task sets of Ant-Dir and Walker-Params (our own; the paper's values
#: came from an unseeded global numpy RNG and live only in its pickles).
PAPER_TASK_SEED = 1337

#: Test-task indices of the paper's splits (docs/algorithm.md §7); the other tasks train.
PAPER_TEST_INDICES = {
    "cheetah_dir": (0, 1),
    "cheetah_vel": (2, 7, 15, 23, 26),
    "ant_dir": (6, 17, 23, 30, 41),
    "walker_param": (2, 12, 15, 39, 43),
}
#: Number of tasks in each paper task set.
PAPER_NUM_TASKS = {"cheetah_dir": 2, "cheetah_vel": 40, "ant_dir": 50, "walker_param": 50}

#: The key(s) that identify each family's task dict.
_TASK_KEYS = {
    "cheetah_dir": ("direction",),
    "cheetah_vel": ("velocity",),
    "ant_dir": ("goal",),
    "walker_param": tuple(WALKER_PARAM_BASES),
}


def _check_family(family: str) -> str:
    if family not in FAMILY_NAMES:
        raise ValueError(f"unknown task family {family!r}; expected one of {', '.join(FAMILY_NAMES)}")
    return family


def _finite_float(value: Any, what: str) -> float:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be a real number, got {value!r}") from e
    if arr.size != 1:
        raise ValueError(f"{what} must be a single number, got an array of shape {arr.shape}")
    x = float(arr.reshape(()))
    if not math.isfinite(x):
        raise ValueError(f"{what} must be finite, got {x}")
    return x


# ----------------------------------------------------------------------------------------------
# Walker base model
# ----------------------------------------------------------------------------------------------


#: gymnasium's original Walker2d model (feet friction 0.9 right / 1.9 left, as old gym's);
#: Walker2d-v5's `walker2d_v5.xml` sets both feet to 1.9 and is NOT the paper's model.
WALKER_XML = "walker2d.xml"


def walker_model_path(xml_file: str = WALKER_XML) -> str:
    """Return the full path of the Walker model XML (a bare name resolves to gymnasium's assets)."""
    from gymnasium.envs.mujoco.mujoco_env import expand_model_path

    return expand_model_path(xml_file)


@lru_cache(maxsize=1)
def _walker_base_params_cached() -> tuple[tuple[str, np.ndarray], ...]:
    import mujoco  # lazy: only Walker tasks need the model

    model = mujoco.MjModel.from_xml_path(walker_model_path())
    out = []
    for name in WALKER_PARAM_BASES:
        arr = np.array(getattr(model, name), dtype=np.float64)
        arr.setflags(write=False)
        out.append((name, arr))
    return tuple(out)


def walker_base_params() -> dict[str, np.ndarray]:
    """Return the Walker model's unmodified ``body_mass``, ``body_inertia``, ``dof_damping``, ``geom_friction`` (copies)."""
    return {name: arr.copy() for name, arr in _walker_base_params_cached()}


def walker_multipliers(task: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Return a Walker task's element-wise factors relative to the base model (1 where the base value is 0)."""
    task = validate_task("walker_param", task)
    base = walker_base_params()
    out = {}
    for name, val in task.items():
        b = base[name]
        out[name] = np.divide(val, b, out=np.ones_like(val), where=b != 0)
    return out


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def task_family(task: Mapping[str, Any]) -> str:
    """Return the family whose task dict has exactly the keys of ``task``."""
    if not isinstance(task, Mapping):
        raise TypeError(f"a task must be a dict, got {type(task).__name__}")
    keys = set(task)
    for family, want in _TASK_KEYS.items():
        if keys == set(want):
            return family
    raise ValueError(
        f"task keys {sorted(map(str, keys))} match no family; expected one of: "
        + "; ".join(f"{f}: {list(k)}" for f, k in _TASK_KEYS.items())
    )


def validate_task(family: str, task: Mapping[str, Any]) -> dict[str, Any]:
    """Check a task for ``family`` and return a normalised copy (floats, float64 arrays).

    Raises ``ValueError``/``TypeError`` naming the offending key and what was expected. Walker
    arrays may carry a trailing singleton axis (old ``mujoco_py`` stored ``body_mass`` as
    ``(nbody, 1)``); it is dropped. Lists (e.g. from JSON) are accepted for Walker arrays.
    """
    _check_family(family)
    if not isinstance(task, Mapping):
        raise TypeError(f"a {family} task must be a dict, got {type(task).__name__}")
    want = _TASK_KEYS[family]
    if set(task) != set(want):
        raise ValueError(f"a {family} task must have exactly the keys {list(want)}, got {sorted(map(str, task))}")
    if family == "cheetah_dir":
        d = _finite_float(task["direction"], "cheetah_dir task['direction']")
        if d not in (1.0, -1.0):
            raise ValueError(f"cheetah_dir task['direction'] must be +1 or -1, got {d}")
        return {"direction": d}
    if family == "cheetah_vel":
        return {"velocity": _finite_float(task["velocity"], "cheetah_vel task['velocity']")}
    if family == "ant_dir":
        return {"goal": _finite_float(task["goal"], "ant_dir task['goal']")}
    base = walker_base_params()
    out = {}
    for name in want:
        try:
            arr = np.array(task[name], dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"walker_param task[{name!r}] must be a numeric array") from e
        shape = base[name].shape
        if arr.shape == shape + (1,):
            arr = arr[..., 0]
        if arr.shape != shape:
            raise ValueError(f"walker_param task[{name!r}] must have shape {shape} (the Walker model's), got {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"walker_param task[{name!r}] must be finite")
        if np.any(arr < 0):
            raise ValueError(f"walker_param task[{name!r}] must be non-negative, got min {arr.min()}")
        out[name] = arr
    return out


def task_to_jsonable(task: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``task`` with arrays turned into nested lists (for JSON manifests); :func:`validate_task` reverses it."""
    return {k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v) for k, v in task.items()}


# ----------------------------------------------------------------------------------------------
# Sampling and the paper's task sets
# ----------------------------------------------------------------------------------------------


def sample_tasks(family: str, n: int, seed: int) -> list[dict[str, Any]]:
    """Draw ``n`` tasks of ``family`` from its task distribution with ``RandomState(seed)``.

    Cheetah-Dir: d = +-1 with probability 1/2 each. Cheetah-Vel: v ~ U[0.075, 3.0] (the range of
    the paper's task grid). Ant-Dir: theta ~ U[0, 2 pi). Walker-Params: each element of the four
    fields multiplied by b^u, u ~ U[-3, 3] (b = 1.5, damping 1.3), fields drawn in the order
    body_mass, body_inertia, dof_damping, geom_friction for each task in turn.
    """
    _check_family(family)
    if int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    n = int(n)
    rng = np.random.RandomState(seed)
    if family == "cheetah_dir":
        return [{"direction": float(2 * b - 1)} for b in rng.randint(0, 2, size=n)]
    if family == "cheetah_vel":
        return [{"velocity": float(v)} for v in rng.uniform(0.075, 3.0, size=n)]
    if family == "ant_dir":
        return [{"goal": float(g)} for g in rng.uniform(0.0, 2.0 * np.pi, size=n)]
    base = walker_base_params()
    lim = WALKER_LOG_SCALE_LIMIT
    tasks = []
    for _ in range(n):
        task = {}
        for name, b in WALKER_PARAM_BASES.items():
            u = rng.uniform(-lim, lim, size=base[name].shape)
            task[name] = base[name] * np.power(b, u)
        tasks.append(task)
    return tasks


def paper_tasks(family: str) -> list[dict[str, Any]]:
    """Return the paper's task set of ``family`` (docs/algorithm.md §7), index = task id.

    Cheetah-Dir: [+1, -1]. Cheetah-Vel: linspace(0.075, 3.0, 40). Ant-Dir and Walker-Params: 50
    tasks from :data:`PAPER_TASK_SEED` (same distribution as the paper, not its exact values:
    load the paper's pickles with :func:`load_paper_task` for those).
    """
    _check_family(family)
    if family == "cheetah_dir":
        return [{"direction": 1.0}, {"direction": -1.0}]
    if family == "cheetah_vel":
        return [{"velocity": float(v)} for v in np.linspace(0.075, 3.0, 40)]
    return sample_tasks(family, PAPER_NUM_TASKS[family], PAPER_TASK_SEED)


def paper_split(family: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Return ``(train_indices, test_indices)`` into :func:`paper_tasks` (Cheetah-Dir: both are (0, 1))."""
    _check_family(family)
    test = PAPER_TEST_INDICES[family]
    if family == "cheetah_dir":
        return test, test
    train = tuple(i for i in range(PAPER_NUM_TASKS[family]) if i not in test)
    return train, test


# ----------------------------------------------------------------------------------------------
# Paper pickles
# ----------------------------------------------------------------------------------------------

# What a paper task pickle may reference: numpy arrays and scalars, nothing else.
_NUMPY_CORE = "numpy._core" if importlib.util.find_spec("numpy._core") is not None else "numpy.core"
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): (f"{_NUMPY_CORE}.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): (f"{_NUMPY_CORE}.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"): (f"{_NUMPY_CORE}.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"): (f"{_NUMPY_CORE}.multiarray", "scalar"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("_codecs", "encode"): ("_codecs", "encode"),  # bytes in protocol-2 pickles (Python 2 era)
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy array/scalar constructors (a task pickle needs no more)."""

    def find_class(self, module: str, name: str) -> Any:
        target = _ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a task pickle holds only numbers and numpy arrays")
        return getattr(importlib.import_module(target[0]), target[1])


def load_paper_task(path: str | os.PathLike, family: str | None = None) -> dict[str, Any]:
    """Load a paper task pickle (``env_*_task<i>.pkl``: a one-element list holding the task dict).

    The family is inferred from the dict's keys unless given (then the keys must match it).
    Only numpy arrays and scalars are unpickled; anything else is refused. Returns the
    validated task (see :func:`validate_task`).
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise ValueError(f"{path}: not a readable task pickle ({e})") from e
    if isinstance(obj, (list, tuple)):
        if len(obj) != 1:
            raise ValueError(f"{path}: expected a one-element list holding the task dict, got a list of {len(obj)}")
        obj = obj[0]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a task dict (in a one-element list), got {type(obj).__name__}")
    obj = {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}
    try:
        fam = task_family(obj) if family is None else _check_family(family)
        return validate_task(fam, obj)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from e


def task_label(family: str, params: Mapping[str, Any]) -> str:
    """A task as people name it: 'forward', 'v = 1.20 m/s', 'goal 2.20 rad'; '' for Walker-Params
    (its tasks are arrays of physics multipliers) or unknown parameters."""
    try:
        if family == "cheetah_dir":
            return "forward" if float(params["direction"]) > 0 else "backward"
        if family == "cheetah_vel":
            return f"v = {float(params['velocity']):.2f} m/s"
        if family == "ant_dir":
            return f"goal {float(params['goal']):.2f} rad"
    except (KeyError, TypeError, ValueError):
        pass
    return ""
