"""Import the MACAW paper's published offline buffers (docs/algorithm.md §8) into a macaw-fast dataset.

The paper ships, per task ``i`` of a family, ``buffers_<env>_train_<i>_sub_task_0.hdf5`` (lzf
datasets ``obs``, ``actions``, ``rewards``, ``mc_rewards``, ``terminals``, ``terminal_obs``,
``terminal_discounts``, ``next_obs``; scalar columns stored as (N, 1); a scalar
``discount_factor``) and ``env_<env>_train_task<i>.pkl`` (a one-element list holding the task's
parameter dict). The Walker files use ``walker_param`` as ``<env>``.

The import keeps the data exactly as stored (the derived fields and terminal discounts are the
file's, not recomputed), applies the paper loader's ``buffer_skip`` subsampling (keep rows
``(N mod s) + s k`` for ``k = 0 .. N//s - 1``), and records the paper's train/test split. The
skipped rows no longer form trajectories, so the imported tasks have unknown episode lengths;
their trajectory returns are computed from the full file (see :func:`trajectory_returns`).
"""

from __future__ import annotations

import os
import pickle
import shutil
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .batch import FIELDS
from .store import DatasetWriter, install_dir, open_dataset, staging_dir, write_task_arrays

#: HDF5 dataset name -> our field name.
HDF5_FIELDS = {"obs": "obs", "actions": "action", "rewards": "reward", "next_obs": "next_obs",
               "terminals": "done", "mc_rewards": "mc_return", "terminal_obs": "terminal_obs",
               "terminal_discounts": "terminal_discount"}
DEFAULT_BUFFER_SKIP = 7


@dataclass(frozen=True)
class PaperFamily:
    """One of the paper's task families as its offline data names it."""

    name: str
    """Name in the paper's file names (``cheetah_vel``, ``walker_param``, ...)."""
    env_id: str
    """Our gymnasium id for the family (as registered by ``macaw_fast.envs``)."""
    obs_dim: int
    act_dim: int
    num_tasks: int
    test_tasks: tuple[int, ...]
    train_tasks: tuple[int, ...]


def _fam(name, env_id, obs_dim, act_dim, n, test, train=None):
    train = tuple(i for i in range(n) if i not in test) if train is None else tuple(train)
    return PaperFamily(name, env_id, obs_dim, act_dim, n, tuple(test), train)


#: The four families, with the paper's splits (its ``config/<env>/*tasks_offline.json``).
PAPER_FAMILIES: dict[str, PaperFamily] = {f.name: f for f in (
    _fam("cheetah_dir", "macaw_fast/CheetahDir-v0", 20, 6, 2, (0, 1), train=(0, 1)),
    _fam("cheetah_vel", "macaw_fast/CheetahVel-v0", 20, 6, 40, (2, 7, 15, 23, 26)),
    _fam("ant_dir", "macaw_fast/AntDir-v0", 27, 8, 50, (6, 17, 23, 30, 41)),
    _fam("walker_param", "macaw_fast/WalkerParams-v0", 17, 6, 50, (2, 12, 15, 39, 43)),
)}
_ALIASES = {"walker_params": "walker_param", "walker": "walker_param"}


def paper_family(name: str) -> PaperFamily:
    """Look up a family by the paper's name (``walker_params`` and ``walker`` are accepted too)."""
    key = _ALIASES.get(name, name)
    if key not in PAPER_FAMILIES:
        raise ValueError(f"unknown paper env {name!r}; expected one of {', '.join(PAPER_FAMILIES)}")
    return PAPER_FAMILIES[key]


def skip_rows(n: int, skip: int) -> np.ndarray:
    """Rows the paper's loader keeps of an N-row file with ``buffer_skip`` = skip.

    Exactly ``(N mod skip) + skip * k`` for ``k = 0 .. N // skip - 1`` (N = 23, skip = 7 keeps
    2, 9, 16); skip = 1 keeps every row.
    """
    if skip < 1:
        raise ValueError(f"buffer_skip: expected an int >= 1, got {skip}")
    return (n % skip) + skip * np.arange(n // skip, dtype=np.int64)


def buffer_path(src_dir: str, family: str, i: int) -> str:
    """Path of task i's HDF5 buffer in the paper's naming."""
    return os.path.join(src_dir, f"buffers_{paper_family(family).name}_train_{i}_sub_task_0.hdf5")


def task_path(src_dir: str, family: str, i: int) -> str:
    """Path of task i's parameter pickle in the paper's naming."""
    return os.path.join(src_dir, f"env_{paper_family(family).name}_train_task{i}.pkl")


class _TaskUnpickler(pickle.Unpickler):
    """Unpickles only plain containers, numbers and numpy arrays/scalars (no arbitrary code)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"), ("builtins", "float"), ("builtins", "int"),
        ("copyreg", "_reconstructor"), ("builtins", "object"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (only task parameter dicts are allowed)")


def load_task_params(path: str) -> dict[str, Any]:
    """Read one of the paper's task pickles: a one-element list holding the task's parameter dict."""
    try:
        with open(path, "rb") as f:
            obj = _TaskUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: task parameter file is missing") from None
    except Exception as e:
        raise ValueError(f"{path}: not a readable task pickle ({e})") from None
    if not (isinstance(obj, list) and len(obj) == 1 and isinstance(obj[0], dict)):
        raise ValueError(f"{path}: expected a one-element list holding a dict of task parameters, "
                         f"got {type(obj).__name__}{' of length ' + str(len(obj)) if isinstance(obj, list) else ''}")
    return obj[0]


def trajectory_returns(rewards: np.ndarray, terminal_discounts: np.ndarray, gamma: float) -> list[float]:
    """Undiscounted returns of the trajectories in a paper buffer (all rows, before subsampling).

    The last transition of a trajectory has ``terminal_discount == gamma`` (as float32). Rows are
    stored last-transition-first when the discounts mostly grow along the file (gamma, gamma^2, ...
    going down the rows means they shrink, so we look at the sign), so a trajectory is a marker row
    and the rows after it up to the next marker; otherwise the rows up to and including a marker.
    A partial trajectory at the start (last-first) or end (time order) of the file is left out.
    """
    r = np.asarray(rewards, dtype=np.float64).reshape(-1)
    td = np.asarray(terminal_discounts, dtype=np.float32).reshape(-1)
    if r.size == 0:
        return []
    marker = np.flatnonzero(td == np.float32(gamma))
    if marker.size == 0:
        return []
    d = np.diff(td.astype(np.float64))
    last_first = np.sum(d < 0) >= np.sum(d > 0)
    csum = np.concatenate([[0.0], np.cumsum(r)])
    if last_first:
        bounds = np.append(marker, r.size)
    else:
        bounds = np.concatenate([[0], marker + 1])
    return [float(csum[b] - csum[a]) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _read_buffer(path: str, fam: PaperFamily, skip: int, chunk: int = 1 << 16):
    """Open one HDF5 buffer, validate its layout, return (file, N, gamma, kept rows)."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: buffer file is missing") from None
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 file ({e})") from None
    try:
        missing = [k for k in (*HDF5_FIELDS, "discount_factor") if k not in f]
        if missing:
            raise ValueError(f"{path}: missing dataset(s) {', '.join(missing)} (not a MACAW paper buffer)")
        for key in (*HDF5_FIELDS, "discount_factor"):
            if not isinstance(f[key], h5py.Dataset):
                raise ValueError(f"{path}: {key!r} is an HDF5 {type(f[key]).__name__.lower()}, expected a dataset "
                                 f"(not a MACAW paper buffer)")
        n = f["obs"].shape[0] if f["obs"].ndim == 2 else -1
        for key, field in HDF5_FIELDS.items():
            ds = f[key]
            dim = {"obs": fam.obs_dim, "next_obs": fam.obs_dim, "terminal_obs": fam.obs_dim,
                   "action": fam.act_dim}.get(field, 1)
            if ds.shape != (n, dim) and not (dim == 1 and ds.shape == (n,)):
                raise ValueError(f"{path}: dataset {key!r} (field {field}) has shape {ds.shape}, expected "
                                 f"(N, {dim}) with N = {n} for {fam.name}"
                                 f"{' (scalars are stored as (N, 1))' if dim == 1 else ''}")
            if not (np.issubdtype(ds.dtype, np.floating) or ds.dtype == np.bool_ or np.issubdtype(ds.dtype, np.integer)):
                raise ValueError(f"{path}: dataset {key!r} has dtype {ds.dtype}, expected numbers")
        dfac = f["discount_factor"]
        if dfac.shape != ():
            raise ValueError(f"{path}: 'discount_factor' has shape {dfac.shape}, expected a scalar")
        gamma = float(dfac[()])
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"{path}: discount_factor {gamma} is not in (0, 1]")
        kept = skip_rows(n, skip)
        if kept.size == 0:
            raise ValueError(f"{path}: {n} row(s){f', none left after buffer_skip {skip}' if n else ''}; "
                             f"a task needs data (refusing to import an empty task)")
        return f, n, gamma, kept
    except BaseException:
        f.close()
        raise


class _Column:
    """A lazily read, subsampled HDF5 column that ``write_task_arrays`` can slice in blocks."""

    def __init__(self, ds, rows: np.ndarray, scalar: bool):
        self.ds, self.rows, self.scalar = ds, rows, scalar
        self.shape = (rows.size,) if scalar else (rows.size, ds.shape[1])

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, sl: slice) -> np.ndarray:
        r = self.rows[sl]
        if r.size == 0:
            return np.empty((0,) + self.shape[1:], dtype=np.float32)
        step = int(r[1] - r[0]) if r.size > 1 else 1
        block = np.asarray(self.ds[int(r[0]) : int(r[-1]) + 1 : step]).astype(np.float32)
        return block.reshape(r.size) if self.scalar else block


def import_paper(src_dir, family: str, out, buffer_skip: int = DEFAULT_BUFFER_SKIP,
                 tasks: Sequence[int] | None = None, overwrite: bool = False, progress: bool = True):
    """Import the paper's buffers of ``family`` from ``src_dir`` into a new dataset at ``out``.

    ``tasks`` restricts the import to some task indices (default: all of the family; the split is
    restricted to match). The dataset appears at ``out`` only once the whole import succeeded.
    Returns the opened dataset. Needs ``h5py`` (``pip install macaw-fast[hdf5]``).
    """
    try:
        import h5py  # noqa: F401
    except ImportError:
        raise ImportError("importing the paper's buffers needs h5py: pip install 'macaw-fast[hdf5]'") from None
    fam = paper_family(family)
    src_dir = os.fspath(src_dir)
    if not os.path.isdir(src_dir):
        raise FileNotFoundError(f"{src_dir}: no such directory")
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"{out}: already exists (use --overwrite to replace it)")
    idx = list(range(fam.num_tasks)) if tasks is None else [int(i) for i in tasks]
    bad = [i for i in idx if not 0 <= i < fam.num_tasks]
    if bad:
        raise ValueError(f"tasks {bad}: {fam.name} has tasks 0..{fam.num_tasks - 1}")
    missing = [p for i in idx for p in (buffer_path(src_dir, fam.name, i), task_path(src_dir, fam.name, i))
               if not os.path.exists(p)]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise FileNotFoundError(f"{src_dir}: missing {len(missing)} file(s) of {fam.name}: "
                                f"{', '.join(os.path.basename(p) for p in missing[:5])}{more}")
    params = {str(i): load_task_params(task_path(src_dir, fam.name, i)) for i in idx}
    # gamma: every file must agree
    gammas = {}
    for i in idx:
        f, n, g, _ = _read_buffer(buffer_path(src_dir, fam.name, i), fam, buffer_skip)
        f.close()
        gammas[i] = g
    if len(set(gammas.values())) != 1:
        raise ValueError(f"{src_dir}: the buffers disagree on discount_factor: {gammas}")
    gamma = next(iter(gammas.values()))
    split = {"train": [str(i) for i in fam.train_tasks if i in idx], "test": [str(i) for i in fam.test_tasks if i in idx]}
    source = {"format": "macaw-paper-hdf5", "family": fam.name, "buffer_skip": int(buffer_skip),
              "directory": os.path.abspath(src_dir)}
    tmp = staging_dir(out)
    try:
        w = DatasetWriter.create(os.path.join(tmp, "ds"), env_id=fam.env_id, tasks=params, split=split,
                                 obs_dim=fam.obs_dim, act_dim=fam.act_dim, gamma=gamma, source=source)
        it = idx
        if progress:
            from tqdm import tqdm

            it = tqdm(idx, desc=f"import {fam.name}", unit="task")
        with w:
            for i in it:
                path = buffer_path(src_dir, fam.name, i)
                f, n, g, rows = _read_buffer(path, fam, buffer_skip)
                with f:
                    cols = {field: _Column(f[key], rows, field not in ("obs", "action", "next_obs", "terminal_obs"))
                            for key, field in HDF5_FIELDS.items()}
                    returns = trajectory_returns(f["rewards"][()], f["terminal_discounts"][()], g)
                    try:
                        write_task_arrays(w, str(i), cols, episodes={"lengths": None, "returns": returns})
                    except ValueError as e:
                        raise ValueError(f"{path}: {e}") from None
                    st = w._state(str(i))
                    st.manifest = dict(st.manifest, source=dict(source, file=os.path.basename(path), rows_in_file=n))
            w.commit()
        install_dir(os.path.join(tmp, "ds"), out, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return open_dataset(out)


__all__ = ["PAPER_FAMILIES", "PaperFamily", "paper_family", "skip_rows", "buffer_path", "task_path",
           "load_task_params", "trajectory_returns", "import_paper", "DEFAULT_BUFFER_SKIP", "FIELDS"]
