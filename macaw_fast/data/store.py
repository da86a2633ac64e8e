"""The on-disk offline dataset: one directory per dataset, one sub-directory per task.

Layout (schema version 1)::

    DATASET/
      dataset.json                  dataset manifest: env id, dims, gamma, split, and for every task
                                    the name of its current manifest and its committed row count
      <task_id>/
        manifest-<generation>.json  task manifest: params, gamma, rows, episodes, per field
                                    file/dtype/shape/offset/SHA-256, versions that made it
        obs.npy action.npy reward.npy next_obs.npy done.npy
        mc_return.npy terminal_obs.npy terminal_discount.npy

Every field is a little-endian float32 ``.npy`` file with a fixed 128-byte header, so row r of a
field starts at byte ``128 + r * row_bytes`` (64-byte aligned) and ``np.load(..., mmap_mode="r")``
works. Vector fields are (N, dim); scalar fields are (N,).

Crash safety. Data files are append-only. A commit (1) appends the new rows to every field file
and fsyncs it, (2) rewrites the ``.npy`` header's row count in place, (3) writes a new task manifest
``manifest-<g+1>.json`` for each changed task, and (4) atomically replaces ``dataset.json`` (write to
a temporary name, fsync, ``os.replace``, fsync the directory). Step (4) is the single commit point
for all tasks at once. Readers take the row count from the manifest that ``dataset.json`` names and
never look at bytes past it, so a process killed at any moment leaves the previous commit readable
and its checksums valid. ``DatasetWriter.open`` truncates any uncommitted tail and removes
manifests no longer referenced. The SHA-256 of a field covers exactly its committed row bytes
(from the data offset to ``offset + rows * row_bytes``), which never change once committed.

Derived fields (docs/algorithm.md §3) are computed by the writer per trajectory in float64 and stored as
float32: ``mc_return[t] = sum_k gamma^k r[t+k]``, ``terminal_obs[t] = next_obs[T-1]``,
``terminal_discount[t] = gamma^(T-t)``, or 0 for every row of a trajectory that ended in a
termination (not a time limit), and ``done`` is 1 on the last row of a terminated trajectory.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import struct
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .._io import atomic_write_bytes, fsync_dir
from .batch import FIELDS, SCALAR_FIELDS

SCHEMA_VERSION = 1
DATASET_MANIFEST = "dataset.json"
HEADER_BYTES = 128
DTYPE = np.dtype("<f4")
_TASK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MANIFEST_RE = re.compile(r"^manifest-(\d+)\.json$")
_LOCK_NAME = ".writer.lock"
_HASH_CHUNK = 8 << 20

__all__ = [
    "DatasetError", "Dataset", "TaskData", "FieldFile", "DatasetWriter", "open_dataset",
    "verify_dataset", "compute_derived", "SCHEMA_VERSION",
]


class DatasetError(ValueError):
    """A dataset on disk is missing, malformed, corrupt or inconsistent with its manifests."""


# --------------------------------------------------------------------------------------------
# small helpers


def _write_bytes(f, data) -> None:
    """Write all of ``data`` to the binary file ``f`` (every store write goes through here). A failed
    write (full disk, file-size limit) raises OSError naming the file."""
    try:
        f.write(data)
    except OSError as e:
        if e.filename is None and getattr(f, "name", None):
            raise OSError(e.errno, f"{e.strerror or e} (writing {f.name})", f.name) from None
        raise


def _atomic_write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` so that ``path`` holds either the old or the new text."""
    data = (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode()
    atomic_write_bytes(path, lambda f: _write_bytes(f, data))


def _versions() -> dict:
    """Versions of the software that wrote a manifest (None for packages not installed)."""
    from importlib import metadata

    out = {"python": sys.version.split()[0], "numpy": np.__version__}
    try:
        from .. import __version__ as mf_version
    except Exception:  # pragma: no cover - partial installs
        mf_version = None
    out["macaw_fast"] = mf_version
    for pkg in ("gymnasium", "mujoco"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _field_dim(field: str, obs_dim: int, act_dim: int) -> int | None:
    if field in SCALAR_FIELDS:
        return None
    return act_dim if field == "action" else obs_dim


def _row_bytes(dim: int | None) -> int:
    return DTYPE.itemsize * (1 if dim is None else dim)


def npy_header(rows: int, dim: int | None) -> bytes:
    """The fixed-size (128-byte) ``.npy`` v1.0 header of a float32 (rows,) or (rows, dim) array."""
    shape = (rows,) if dim is None else (rows, dim)
    text = "{'descr': '<f4', 'fortran_order': False, 'shape': %r, }" % (shape,)
    body = text.ljust(HEADER_BYTES - 10 - 1) + "\n"
    header = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode("latin1")
    assert len(header) == HEADER_BYTES
    return header


def _read_npy_header(path: str) -> tuple[np.dtype, bool, tuple, int]:
    """Parse a ``.npy`` header: (dtype, fortran_order, shape, data offset)."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except Exception as e:  # numpy raises ValueError/EOFError/SyntaxError on garbage
            raise DatasetError(f"{path}: not a readable .npy file ({e})") from None
        return dtype, fortran, tuple(shape), f.tell()


def _check_task_id(task_id) -> str:
    if isinstance(task_id, (int, np.integer)) and not isinstance(task_id, bool):
        task_id = str(int(task_id))
    if not isinstance(task_id, str) or not _TASK_ID_RE.match(task_id):
        raise ValueError(f"task id {task_id!r}: expected a string of letters, digits, '_', '.', '-' "
                         f"(1-64 characters, not starting with '.', '_' or '-')")
    return task_id


def _jsonable(x):
    """Task parameters as JSON: numpy arrays become (nested) lists, numpy scalars Python numbers."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    raise TypeError(f"task parameter of type {type(x).__name__} is not JSON-serialisable")


def compute_derived(reward: np.ndarray, next_obs: np.ndarray, terminated: bool, gamma: float):
    """The derived fields of one trajectory (docs/algorithm.md §3), in float64.

    Returns ``(done, mc_return, terminal_obs, terminal_discount)`` with shapes (T,), (T,),
    (T, obs_dim), (T,). ``terminal_discount[t] = gamma^(T-t)``, or 0 everywhere when the trajectory
    ended in a termination; ``done`` is 1 only on the last row of a terminated trajectory.
    """
    r = np.asarray(reward, dtype=np.float64)
    T = r.shape[0]
    mc = np.empty(T, dtype=np.float64)
    acc = 0.0
    for t in range(T - 1, -1, -1):
        acc = r[t] + gamma * acc
        mc[t] = acc
    nxt = np.asarray(next_obs, dtype=np.float64)
    term_obs = np.broadcast_to(nxt[T - 1], nxt.shape).copy()
    if terminated:
        disc = np.zeros(T, dtype=np.float64)
    else:
        disc = float(gamma) ** np.arange(T, 0, -1, dtype=np.float64)
    done = np.zeros(T, dtype=np.float64)
    if terminated:
        done[T - 1] = 1.0
    return done, mc, term_obs, disc


# --------------------------------------------------------------------------------------------
# reading


@dataclass(frozen=True)
class FieldFile:
    """Where one field's committed rows live: for readers that map the file themselves (the sampler)."""

    path: str
    offset: int
    rows: int
    dim: int | None
    dtype: str = "float32"

    @property
    def row_bytes(self) -> int:
        """Bytes per row."""
        return _row_bytes(self.dim)


class TaskData:
    """One task of an open dataset: ``td[field]`` is that field as a read-only float32 memmap."""

    def __init__(self, dataset: "Dataset", task_id: str, manifest: dict):
        self.dataset = dataset
        self.task_id = task_id
        self.manifest = manifest
        self.dir = os.path.join(dataset.path, task_id)
        self._cache: dict[str, np.ndarray] = {}

    @property
    def params(self) -> dict:
        """The task's parameters as stored (JSON types: numbers, strings, nested lists)."""
        return self.manifest["params"]

    @property
    def num_rows(self) -> int:
        """Committed transitions in this task."""
        return int(self.manifest["rows"])

    def __len__(self) -> int:
        return self.num_rows

    @property
    def gamma(self) -> float:
        """Discount factor the derived fields were computed with."""
        return float(self.manifest["gamma"])

    @property
    def episode_lengths(self) -> list[int] | None:
        """Lengths of the stored trajectories in row order, or None when unknown (subsampled data)."""
        ep = self.manifest.get("episodes")
        return None if ep is None or ep.get("lengths") is None else list(ep["lengths"])

    @property
    def episode_returns(self) -> list[float] | None:
        """Undiscounted return of each trajectory, or None when unknown."""
        ep = self.manifest.get("episodes")
        return None if ep is None or ep.get("returns") is None else list(ep["returns"])

    def file_info(self, field: str) -> FieldFile:
        """Path, byte offset, rows and dim of a field's file (rows past ``rows`` must not be read)."""
        self._check_field(field)
        spec = self.manifest["fields"][field]
        dim = _field_dim(field, self.dataset.obs_dim, self.dataset.act_dim)
        return FieldFile(os.path.join(self.dir, spec["file"]), int(spec["offset"]), self.num_rows, dim)

    def _check_field(self, field: str) -> None:
        if field not in FIELDS:
            raise KeyError(f"task {self.task_id}: unknown field {field!r}; fields are {', '.join(FIELDS)}")

    def __getitem__(self, field: str) -> np.ndarray:
        self._check_field(field)
        arr = self._cache.get(field)
        if arr is None:
            info = self.file_info(field)
            shape = (info.rows,) if info.dim is None else (info.rows, info.dim)
            if info.rows == 0:
                arr = np.empty(shape, dtype=np.float32)
                arr.flags.writeable = False
            else:
                arr = np.memmap(info.path, dtype=DTYPE, mode="r", offset=info.offset, shape=shape)
            self._cache[field] = arr
        return arr

    def arrays(self) -> dict[str, np.ndarray]:
        """Every field, as a dict of read-only memmaps."""
        return {f: self[f] for f in FIELDS}

    def __repr__(self) -> str:
        return f"TaskData({self.task_id!r}, rows={self.num_rows}, params={self.params!r})"


class Dataset:
    """An open dataset (see :func:`open_dataset`). Index it by task id."""

    def __init__(self, path: str, manifest: dict, task_manifests: dict[str, dict]):
        self.path = path
        self.manifest = manifest
        self._tasks = {tid: TaskData(self, tid, m) for tid, m in task_manifests.items()}

    @property
    def env_id(self) -> str:
        """Gymnasium id of the environment family the data came from."""
        return self.manifest["env_id"]

    @property
    def obs_dim(self) -> int:
        """Observation size."""
        return int(self.manifest["obs_dim"])

    @property
    def act_dim(self) -> int:
        """Action size."""
        return int(self.manifest["act_dim"])

    @property
    def gamma(self) -> float:
        """Discount factor of the derived fields."""
        return float(self.manifest["gamma"])

    @property
    def generation(self) -> int:
        """Commit counter: how many commits made the state now on disk."""
        return int(self.manifest["generation"])

    @property
    def tasks(self) -> list[str]:
        """Task ids, in dataset order."""
        return list(self._tasks)

    @property
    def split(self) -> dict[str, list[str]]:
        """Task ids per split (at least ``train`` and ``test``; they may overlap)."""
        return {k: list(v) for k, v in self.manifest["split"].items()}

    @property
    def train_tasks(self) -> list[str]:
        """Training task ids."""
        return list(self.manifest["split"]["train"])

    @property
    def test_tasks(self) -> list[str]:
        """Test task ids."""
        return list(self.manifest["split"]["test"])

    @property
    def num_rows(self) -> int:
        """Total committed transitions over all tasks."""
        return sum(t.num_rows for t in self._tasks.values())

    def __getitem__(self, task_id) -> TaskData:
        key = str(task_id) if isinstance(task_id, (int, np.integer)) else task_id
        try:
            return self._tasks[key]
        except KeyError:
            raise KeyError(f"{self.path}: no task {task_id!r}; tasks are {self.tasks}") from None

    def __contains__(self, task_id) -> bool:
        return str(task_id) in self._tasks

    def __iter__(self) -> Iterator[str]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    def __repr__(self) -> str:
        return (f"Dataset({self.path!r}, env_id={self.env_id!r}, tasks={len(self)}, rows={self.num_rows}, "
                f"obs_dim={self.obs_dim}, act_dim={self.act_dim})")


def _load_json(path: str, what: str) -> dict:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode())
    except FileNotFoundError:
        raise DatasetError(f"{path}: {what} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: {what} is not valid JSON ({e})") from None


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise DatasetError(msg)


def _check_dataset_manifest(path: str, m: dict) -> None:
    where = os.path.join(path, DATASET_MANIFEST)
    _require(isinstance(m, dict), f"{where}: expected a JSON object")
    _require(m.get("schema") == "macaw-fast/dataset",
             f"{where}: not a macaw-fast dataset manifest (schema {m.get('schema')!r})")
    _require(m.get("schema_version") == SCHEMA_VERSION,
             f"{where}: schema_version {m.get('schema_version')!r}, this macaw-fast reads {SCHEMA_VERSION}")
    for key, typ in (("env_id", str), ("obs_dim", int), ("act_dim", int), ("gamma", (int, float)),
                     ("generation", int), ("tasks", list), ("split", dict)):
        _require(isinstance(m.get(key), typ), f"{where}: field {key!r} missing or of the wrong type")
    _require(m["obs_dim"] > 0 and m["act_dim"] > 0, f"{where}: obs_dim and act_dim must be positive")
    ids = []
    for entry in m["tasks"]:
        _require(isinstance(entry, dict) and isinstance(entry.get("id"), str)
                 and isinstance(entry.get("manifest"), str) and isinstance(entry.get("rows"), int),
                 f"{where}: each entry of 'tasks' needs 'id', 'manifest' and 'rows'")
        # task ids name directories: never a path ('../x', '/x', 'a/b') that leaves the dataset
        _require(_TASK_ID_RE.match(entry["id"]) is not None,
                 f"{where}: task id {entry['id']!r} is not a valid task id (letters, digits, '_', '.', '-'; "
                 f"1-64 characters, not starting with '.', '_' or '-'); refusing to read outside {path}")
        ids.append(entry["id"])
    _require(len(set(ids)) == len(ids), f"{where}: duplicate task ids")
    for k in ("train", "test"):
        _require(k in m["split"], f"{where}: split has no {k!r} list")
    for k, v in m["split"].items():
        _require(isinstance(v, list), f"{where}: split[{k!r}] must be a list of task ids")
        for t in v:
            _require(t in ids, f"{where}: split[{k!r}] names task {t!r}, which the dataset does not have")


def _check_task(path: str, ds_manifest: dict, entry: dict) -> dict:
    """Load a task manifest and check it and its files cheaply (headers and sizes, no hashing)."""
    tid = entry["id"]
    tdir = os.path.join(path, tid)
    mpath = os.path.join(tdir, entry["manifest"])
    _require(_MANIFEST_RE.match(entry["manifest"]) is not None, f"task {tid}: bad manifest name {entry['manifest']!r}")
    m = _load_json(mpath, f"task {tid}: manifest")
    _require(isinstance(m, dict) and m.get("schema") == "macaw-fast/task",
             f"{mpath}: task {tid}: not a macaw-fast task manifest")
    _require(m.get("schema_version") == SCHEMA_VERSION,
             f"{mpath}: task {tid}: schema_version {m.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    _require(m.get("task_id") == tid, f"{mpath}: manifest is for task {m.get('task_id')!r}, expected {tid!r}")
    _require(m.get("env_id") == ds_manifest["env_id"],
             f"{mpath}: task {tid}: env id {m.get('env_id')!r} differs from the dataset's {ds_manifest['env_id']!r}")
    _require(isinstance(m.get("rows"), int) and m["rows"] >= 0, f"{mpath}: task {tid}: 'rows' must be an int >= 0")
    _require(m["rows"] == entry["rows"],
             f"{mpath}: task {tid}: rows {m['rows']} but dataset.json says {entry['rows']}")
    _require(isinstance(m.get("params"), dict), f"{mpath}: task {tid}: 'params' must be an object")
    _require(isinstance(m.get("gamma"), (int, float)), f"{mpath}: task {tid}: 'gamma' missing")
    fields = m.get("fields")
    _require(isinstance(fields, dict), f"{mpath}: task {tid}: 'fields' missing")
    rows = m["rows"]
    for field in FIELDS:
        spec = fields.get(field)
        _require(isinstance(spec, dict), f"{mpath}: task {tid}: field {field!r} is not in the manifest")
        dim = _field_dim(field, ds_manifest["obs_dim"], ds_manifest["act_dim"])
        want_shape = [rows] if dim is None else [rows, dim]
        fname = spec.get("file")
        _require(isinstance(fname, str) and "/" not in fname and not fname.startswith("."),
                 f"{mpath}: task {tid}: field {field!r} has a bad file name {fname!r}")
        fpath = os.path.join(tdir, fname)
        what = f"task {tid}, field {field!r}, file {fpath}"
        _require(spec.get("dtype") == "float32", f"{what}: manifest dtype {spec.get('dtype')!r}, expected 'float32'")
        _require(spec.get("shape") == want_shape,
                 f"{what}: manifest shape {spec.get('shape')} but expected {want_shape} "
                 f"(rows={rows}, {'scalar' if dim is None else f'dim={dim}'})")
        _require(isinstance(spec.get("sha256"), str) and len(spec["sha256"]) == 64,
                 f"{what}: manifest has no sha256")
        if not os.path.exists(fpath):
            raise DatasetError(f"{what}: file is missing")
        dtype, fortran, shape, offset = _read_npy_header(fpath)
        _require(dtype == DTYPE, f"{what}: file dtype {dtype}, expected float32 ('<f4')")
        _require(not fortran, f"{what}: file is Fortran-ordered, expected C order")
        _require(offset == spec.get("offset"), f"{what}: data offset {offset}, manifest says {spec.get('offset')}")
        want_tail = () if dim is None else (dim,)
        _require(len(shape) == len(want_shape) and tuple(shape[1:]) == want_tail,
                 f"{what}: file shape {shape}, expected (N{', ' + str(dim) if dim is not None else ''}) "
                 f"({'scalar field' if dim is None else 'dim ' + str(dim)})")
        _require(shape[0] >= rows, f"{what}: file header has {shape[0]} rows, manifest says {rows} (truncated file)")
        need = offset + rows * _row_bytes(dim)
        size = os.path.getsize(fpath)
        _require(size >= need, f"{what}: file is truncated: {size} bytes, {rows} rows need {need}")
    return m


def open_dataset(path: str | os.PathLike, check_finite: bool = False) -> Dataset:
    """Open a dataset directory for reading.

    Checks every manifest against its files cheaply (existence, ``.npy`` headers, dtypes, shapes,
    sizes) and raises :class:`DatasetError` naming the task, field and file on any mismatch. With
    ``check_finite`` it also scans every value for NaN/inf (reads all data). Use
    :func:`verify_dataset` for the SHA-256 check.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise DatasetError(f"{path}: is a file, not a dataset directory" if os.path.exists(path)
                           else f"{path}: no such dataset directory")
    for attempt in range(10):
        m = _load_json(os.path.join(path, DATASET_MANIFEST), "dataset manifest")
        _check_dataset_manifest(path, m)
        try:
            task_manifests = {e["id"]: _check_task(path, m, e) for e in m["tasks"]}
            break
        except DatasetError:
            # a writer may have committed (and removed the manifests we were reading) meanwhile
            again = _load_json(os.path.join(path, DATASET_MANIFEST), "dataset manifest")
            if attempt == 9 or again.get("generation") == m["generation"]:
                raise
    ds = Dataset(path, m, task_manifests)
    if check_finite:
        for tid in ds.tasks:
            _check_finite(ds[tid])
    return ds


def _check_finite(td: TaskData, chunk_rows: int = 1 << 16) -> None:
    for field in FIELDS:
        arr = td[field]
        for s in range(0, arr.shape[0], chunk_rows):
            block = np.asarray(arr[s : s + chunk_rows])
            if not np.isfinite(block).all():
                finite_rows = np.isfinite(block.reshape(block.shape[0], -1)).all(axis=1)
                bad = s + int(np.flatnonzero(~finite_rows)[0])
                raise DatasetError(f"task {td.task_id}, field {field!r}, file {td.file_info(field).path}: "
                                   f"NaN or inf at row {bad}")
    done = np.asarray(td["done"])
    if done.size and not np.isin(done, (0.0, 1.0)).all():
        raise DatasetError(f"task {td.task_id}, field 'done', file {td.file_info('done').path}: values other than 0 and 1")


def _hash_prefix(path: str, offset: int, nbytes: int, hasher=None, progress=None):
    h = hasher if hasher is not None else hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        left = nbytes
        while left > 0:
            block = f.read(min(_HASH_CHUNK, left))
            if not block:
                break
            h.update(block)
            left -= len(block)
            if progress is not None:
                progress.update(len(block))
    return h, nbytes - left


def verify_dataset(path: str | os.PathLike, progress: bool = True) -> Dataset:
    """Fully verify a dataset: manifests and files (as :func:`open_dataset`), every SHA-256, no
    NaN/inf, ``done`` in {0, 1}. Returns the open dataset, or raises :class:`DatasetError` listing
    every problem found (task, field, file)."""
    ds = open_dataset(path)
    problems: list[str] = []
    total = sum(t.file_info(f).rows * t.file_info(f).row_bytes for t in ds._tasks.values() for f in FIELDS)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"verify {os.path.basename(ds.path)}", leave=False)
    try:
        for tid in ds.tasks:
            td = ds[tid]
            for field in FIELDS:
                info = td.file_info(field)
                h, got = _hash_prefix(info.path, info.offset, info.rows * info.row_bytes, progress=bar)
                if h.hexdigest() != td.manifest["fields"][field]["sha256"]:
                    problems.append(f"task {tid}, field {field!r}, file {info.path}: SHA-256 mismatch "
                                    f"(corrupt data; manifest {td.manifest['fields'][field]['sha256'][:12]}..., "
                                    f"file {h.hexdigest()[:12]}...)")
            try:
                _check_finite(td)
            except DatasetError as e:
                problems.append(str(e))
    finally:
        if bar is not None:
            bar.close()
    if problems:
        raise DatasetError(f"{ds.path}: verification failed:\n  " + "\n  ".join(problems))
    return ds


# --------------------------------------------------------------------------------------------
# writing


def _crash_point(name: str) -> None:
    """Test hook: ``MACAW_FAST_STORE_CRASH_AT=<name>`` kills this process with SIGKILL right here."""
    if os.environ.get("MACAW_FAST_STORE_CRASH_AT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


class _TaskState:
    """Writer-side bookkeeping for one task: committed and pending rows, running hashes, episodes."""

    def __init__(self, task_id: str, manifest: dict, hashers: dict):
        self.task_id = task_id
        self.manifest = manifest
        self.rows = int(manifest["rows"])
        self.pending = 0
        self.hashers = hashers  # committed state
        self.pending_hashers: dict | None = None
        self.pending_lengths: list[int] = []
        self.pending_returns: list[float] = []


class DatasetWriter:
    """Appends whole trajectories to a dataset; :meth:`commit` makes them durable atomically.

    Create a new dataset with :meth:`create`, or resume one with :meth:`open`. Only one writer may
    hold a dataset at a time (an advisory lock). Use as a context manager to release it; leaving
    the block without committing discards (truncates away) uncommitted rows.
    """

    def __init__(self, path: str, manifest: dict, states: dict[str, _TaskState], lock_fd: int):
        self.path = path
        self._manifest = manifest
        self._states = states
        self._lock_fd = lock_fd
        self._versions = _versions()

    # ---- construction

    @classmethod
    def create(cls, path, env_id: str, tasks: Mapping[str, Mapping], split: Mapping[str, Sequence],
               obs_dim: int, act_dim: int, gamma: float = 0.99, overwrite: bool = False,
               source: Mapping | None = None) -> "DatasetWriter":
        """Create an empty dataset at ``path`` (atomically) and return a writer for it.

        ``tasks`` maps task id -> parameters (JSON-serialisable; numpy arrays become lists);
        ``split`` maps split name -> task ids and needs ``train`` and ``test``. ``source`` is free
        JSON stored in every task manifest (where the data came from). With ``overwrite`` an
        existing dataset at ``path`` is replaced; without it, an existing path is an error.
        """
        path = os.fspath(path)
        if not isinstance(env_id, str) or not env_id:
            raise ValueError(f"env_id: expected a non-empty string, got {env_id!r}")
        for name, v in (("obs_dim", obs_dim), ("act_dim", act_dim)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        gamma = float(gamma)
        if not (0.0 < gamma <= 1.0):
            raise ValueError(f"gamma: expected 0 < gamma <= 1, got {gamma}")
        if not isinstance(tasks, Mapping) or not tasks:
            raise ValueError("tasks: expected a non-empty mapping task id -> parameters")
        params = {}
        for tid, p in tasks.items():
            tid = _check_task_id(tid)
            if tid in params:
                raise ValueError(f"tasks: task id {tid!r} appears twice")
            if not isinstance(p, Mapping):
                raise ValueError(f"tasks[{tid!r}]: expected a mapping of parameters, got {type(p).__name__}")
            params[tid] = _jsonable(p)
        if not isinstance(split, Mapping) or "train" not in split or "test" not in split:
            raise ValueError("split: expected a mapping with 'train' and 'test' lists of task ids")
        split_ = {}
        for k, ids in split.items():
            lst = [_check_task_id(t) for t in ids]
            for t in lst:
                if t not in params:
                    raise ValueError(f"split[{k!r}]: task {t!r} is not in tasks")
            split_[str(k)] = lst
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f"{path}: already exists (pass overwrite=True to replace it)")
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix="." + os.path.basename(os.path.abspath(path)) + ".", suffix=".new", dir=parent)
        versions = _versions()
        try:
            os.chmod(tmp, 0o755)
            entries = []
            for tid, p in params.items():
                tdir = os.path.join(tmp, tid)
                os.mkdir(tdir)
                for field in FIELDS:
                    dim = _field_dim(field, obs_dim, act_dim)
                    with open(os.path.join(tdir, field + ".npy"), "wb") as f:
                        _write_bytes(f, npy_header(0, dim))
                        f.flush()
                        os.fsync(f.fileno())
                tm = _task_manifest(tid, env_id, p, gamma, 0, obs_dim, act_dim,
                                    {f: hashlib.sha256().hexdigest() for f in FIELDS}, {"lengths": [], "returns": []},
                                    versions, _jsonable(dict(source)) if source else None)
                name = "manifest-%06d.json" % 0
                _atomic_write_json(os.path.join(tdir, name), tm)
                entries.append({"id": tid, "manifest": name, "rows": 0})
            dm = {"schema": "macaw-fast/dataset", "schema_version": SCHEMA_VERSION, "env_id": env_id,
                  "obs_dim": int(obs_dim), "act_dim": int(act_dim), "gamma": gamma, "generation": 0,
                  "tasks": entries, "split": split_, "created_by": versions}
            _atomic_write_json(os.path.join(tmp, DATASET_MANIFEST), dm)
            install_dir(tmp, path, overwrite)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls.open(path)

    @classmethod
    def open(cls, path) -> "DatasetWriter":
        """Open an existing dataset to append to it (resume). Discards anything uncommitted left by
        an interrupted writer and re-hashes the committed rows (once)."""
        path = os.fspath(path)
        ds = open_dataset(path)
        lock_fd = os.open(os.path.join(path, _LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise RuntimeError(f"{path}: another DatasetWriter holds this dataset") from None
        try:
            ds = open_dataset(path)  # re-read under the lock
            states = {}
            for tid in ds.tasks:
                td = ds[tid]
                hashers = {}
                for field in FIELDS:
                    info = td.file_info(field)
                    nbytes = info.offset + info.rows * info.row_bytes
                    if os.path.getsize(info.path) != nbytes or _read_npy_header(info.path)[2][0] != info.rows:
                        with open(info.path, "r+b") as f:
                            f.truncate(nbytes)
                            f.seek(0)
                            _write_bytes(f, npy_header(info.rows, info.dim))
                            f.flush()
                            os.fsync(f.fileno())
                    h, _ = _hash_prefix(info.path, info.offset, info.rows * info.row_bytes)
                    if h.hexdigest() != td.manifest["fields"][field]["sha256"]:
                        raise DatasetError(f"task {tid}, field {field!r}, file {info.path}: SHA-256 mismatch; "
                                           f"refusing to append to corrupt data")
                    hashers[field] = h
                states[tid] = _TaskState(tid, td.manifest, hashers)
                # stale manifests and temporaries from interrupted commits
                current = ds.manifest["tasks"][ds.tasks.index(tid)]["manifest"]
                for name in os.listdir(td.dir):
                    if (_MANIFEST_RE.match(name) and name != current) or name.endswith(".tmp"):
                        os.unlink(os.path.join(td.dir, name))
            for name in os.listdir(path):
                if name.startswith("." + DATASET_MANIFEST) and name.endswith(".tmp"):
                    os.unlink(os.path.join(path, name))
            return cls(path, ds.manifest, states, lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise

    # ---- properties

    @property
    def tasks(self) -> list[str]:
        """Task ids."""
        return list(self._states)

    @property
    def gamma(self) -> float:
        """Discount factor used for the derived fields."""
        return float(self._manifest["gamma"])

    @property
    def obs_dim(self) -> int:
        """Observation size."""
        return int(self._manifest["obs_dim"])

    @property
    def act_dim(self) -> int:
        """Action size."""
        return int(self._manifest["act_dim"])

    def num_rows(self, task_id, pending: bool = True) -> int:
        """Rows of a task, including (default) or excluding uncommitted ones."""
        st = self._state(task_id)
        return st.rows + (st.pending if pending else 0)

    def _state(self, task_id) -> _TaskState:
        if self._lock_fd is None:
            raise RuntimeError(f"{self.path}: writer is closed")
        tid = task_id if isinstance(task_id, str) else str(task_id)
        try:
            return self._states[tid]
        except KeyError:
            raise KeyError(f"{self.path}: no task {task_id!r}; tasks are {self.tasks}") from None

    # ---- appending

    def append_trajectory(self, task_id, obs, action, reward, next_obs, terminated: bool) -> None:
        """Append one whole trajectory (T >= 1 transitions, in time order) to a task.

        ``obs``/``next_obs`` are (T, obs_dim), ``action`` (T, act_dim), ``reward`` (T,) (a (T, 1)
        column is accepted); ``terminated`` says whether it ended in a true termination (False for
        a time limit). Rows become visible to readers only at the next :meth:`commit`.
        """
        st = self._state(task_id)
        obs = np.asarray(obs)
        action = np.asarray(action)
        reward = np.asarray(reward)
        next_obs = np.asarray(next_obs)
        if reward.ndim == 2 and reward.shape[1] == 1:
            reward = reward[:, 0]
        if reward.ndim != 1 or reward.shape[0] < 1:
            raise ValueError(f"task {st.task_id}: reward: expected shape (T,) with T >= 1, got {reward.shape}")
        T = reward.shape[0]
        for name, arr, dim in (("obs", obs, self.obs_dim), ("action", action, self.act_dim),
                               ("next_obs", next_obs, self.obs_dim)):
            if arr.shape != (T, dim):
                raise ValueError(f"task {st.task_id}: {name}: expected shape {(T, dim)} (T, "
                                 f"{'act_dim' if name == 'action' else 'obs_dim'}), got {arr.shape}")
        for name, arr in (("obs", obs), ("action", action), ("reward", reward), ("next_obs", next_obs)):
            if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
                raise TypeError(f"task {st.task_id}: {name}: expected real numbers, got dtype {arr.dtype}")
            if not np.isfinite(arr).all():
                raise ValueError(f"task {st.task_id}: {name}: contains NaN or inf")
        if not isinstance(terminated, (bool, np.bool_)):
            raise TypeError(f"task {st.task_id}: terminated: expected a bool, got {type(terminated).__name__}")
        done, mc, term_obs, disc = compute_derived(reward, next_obs, bool(terminated), self.gamma)
        cols = {"obs": obs, "action": action, "reward": reward, "next_obs": next_obs, "done": done,
                "mc_return": mc, "terminal_obs": term_obs, "terminal_discount": disc}
        if st.pending_hashers is None:
            st.pending_hashers = {f: h.copy() for f, h in st.hashers.items()}
        tdir = os.path.join(self.path, st.task_id)
        start_row = st.rows + st.pending
        field = None
        try:
            for field in FIELDS:
                data = np.ascontiguousarray(cols[field], dtype=DTYPE).tobytes()
                dim = _field_dim(field, self.obs_dim, self.act_dim)
                with open(os.path.join(tdir, field + ".npy"), "r+b") as f:
                    f.seek(HEADER_BYTES + start_row * _row_bytes(dim))
                    _write_bytes(f, data)
                st.pending_hashers[field].update(data)
        except OSError as e:
            self.rollback()
            raise self._write_error(e, f"task {st.task_id}, field {field!r}") from e
        st.pending += T
        if st.pending_lengths is not None:
            st.pending_lengths.append(T)
        if st.pending_returns is not None:
            st.pending_returns.append(float(np.sum(reward, dtype=np.float64)))

    def _write_error(self, e: OSError, where: str) -> OSError:
        reason = "no space left on device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        return OSError(e.errno, f"{self.path}: {where}: write failed ({reason}); uncommitted rows were "
                                f"discarded and the dataset is unchanged at its last commit "
                                f"(generation {self._manifest['generation']})")

    def rollback(self) -> None:
        """Discard every uncommitted row (truncate the files back to the last commit)."""
        for st in self._states.values():
            if st.pending == 0 and st.pending_hashers is None:
                continue
            tdir = os.path.join(self.path, st.task_id)
            for field in FIELDS:
                dim = _field_dim(field, self.obs_dim, self.act_dim)
                fpath = os.path.join(tdir, field + ".npy")
                try:
                    with open(fpath, "r+b") as f:
                        f.truncate(HEADER_BYTES + st.rows * _row_bytes(dim))
                        f.seek(0)
                        f.write(npy_header(st.rows, dim))
                except OSError:
                    pass  # readers ignore the tail anyway; the next open() truncates again
            st.pending = 0
            st.pending_hashers = None
            st.pending_lengths = []
            st.pending_returns = []

    # ---- committing

    def commit(self) -> int:
        """Make everything appended so far durable and visible, atomically for all tasks.

        Returns the new generation. On failure (e.g. a full disk) raises OSError, discards the
        uncommitted rows and leaves the dataset at its previous commit.
        """
        if self._lock_fd is None:
            raise RuntimeError(f"{self.path}: writer is closed")
        dirty = [st for st in self._states.values() if st.pending > 0]
        if not dirty:
            return int(self._manifest["generation"])
        gen = int(self._manifest["generation"]) + 1
        new_manifests: dict[str, dict] = {}
        where = "commit"
        try:
            for st in dirty:
                tdir = os.path.join(self.path, st.task_id)
                rows = st.rows + st.pending
                for field in FIELDS:
                    where = f"task {st.task_id}, field {field!r}"
                    dim = _field_dim(field, self.obs_dim, self.act_dim)
                    with open(os.path.join(tdir, field + ".npy"), "r+b") as f:
                        os.fsync(f.fileno())
                        _crash_point("after_data")
                        _write_bytes(f, npy_header(rows, dim))
                        f.flush()
                        os.fsync(f.fileno())
                _crash_point("after_header")
            for st in dirty:
                where = f"task {st.task_id}, manifest"
                ep = st.manifest.get("episodes") or {}
                lengths, returns = ep.get("lengths"), ep.get("returns")
                episodes = {"lengths": None if lengths is None or st.pending_lengths is None
                            else lengths + st.pending_lengths,
                            "returns": None if returns is None or st.pending_returns is None
                            else returns + st.pending_returns}
                tm = _task_manifest(st.task_id, self._manifest["env_id"], st.manifest["params"], self.gamma,
                                    st.rows + st.pending, self.obs_dim, self.act_dim,
                                    {f: h.hexdigest() for f, h in st.pending_hashers.items()}, episodes,
                                    self._versions, st.manifest.get("source"))
                name = "manifest-%06d.json" % gen
                _atomic_write_json(os.path.join(self.path, st.task_id, name), tm)
                new_manifests[st.task_id] = tm
                _crash_point("after_task_manifest")
            dm = dict(self._manifest)
            dm["generation"] = gen
            dm["tasks"] = [dict(e, manifest="manifest-%06d.json" % gen, rows=new_manifests[e["id"]]["rows"])
                           if e["id"] in new_manifests else dict(e) for e in self._manifest["tasks"]]
            where = "dataset manifest"
            _atomic_write_json(os.path.join(self.path, DATASET_MANIFEST), dm)
        except OSError as e:
            for tid in new_manifests:
                try:
                    os.unlink(os.path.join(self.path, tid, "manifest-%06d.json" % gen))
                except OSError:
                    pass
            self.rollback()
            raise self._write_error(e, where) from e
        _crash_point("after_commit")
        # the commit is durable: update in-memory state, then remove superseded manifests
        old = {e["id"]: e["manifest"] for e in self._manifest["tasks"]}
        self._manifest = dm
        for st in dirty:
            st.manifest = new_manifests[st.task_id]
            st.rows += st.pending
            st.pending = 0
            st.hashers = st.pending_hashers
            st.pending_hashers = None
            st.pending_lengths = []
            st.pending_returns = []
            try:
                os.unlink(os.path.join(self.path, st.task_id, old[st.task_id]))
            except OSError:
                pass
        return gen

    def close(self) -> None:
        """Discard uncommitted rows and release the writer lock."""
        if self._lock_fd is None:
            return
        self.rollback()
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)
        self._lock_fd = None

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
        except Exception:
            pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(parent: str, base: str) -> list[str]:
    """Delete the staging directories ``.<base>.<pid>.*.new`` in ``parent`` whose writing process is
    gone (a killed import, subsample or export); returns their names. A live writer's is kept."""
    removed = []
    if not os.path.isdir(parent):
        return removed
    pat = re.compile(r"^\." + re.escape(base) + r"\.(\d+)\..*\.new$")
    for name in os.listdir(parent):
        m = pat.match(name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
            removed.append(name)
    return removed


def staging_dir(path) -> str:
    """A new empty directory beside ``path`` to build a dataset in before :func:`install_dir`.
    Staging directories that killed writers left for the same ``path`` are removed first."""
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(path)
    remove_stale_staging(parent, base)
    tmp = tempfile.mkdtemp(prefix=f".{base}.{os.getpid()}.", suffix=".new", dir=parent)
    os.chmod(tmp, 0o755)
    return tmp


def install_dir(tmp: str, path, overwrite: bool) -> None:
    """Move the finished directory ``tmp`` to ``path`` by rename (replacing ``path`` if ``overwrite``)."""
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    if os.path.exists(path):
        if not overwrite:
            raise FileExistsError(f"{path}: already exists (pass overwrite=True to replace it)")
        old = tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".", suffix=".old", dir=parent)
        os.rmdir(old)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    fsync_dir(parent)


def _task_manifest(tid, env_id, params, gamma, rows, obs_dim, act_dim, sha, episodes, versions, source) -> dict:
    fields = {}
    for field in FIELDS:
        dim = _field_dim(field, obs_dim, act_dim)
        fields[field] = {"file": field + ".npy", "dtype": "float32",
                         "shape": [rows] if dim is None else [rows, dim], "offset": HEADER_BYTES,
                         "sha256": sha[field]}
    m = {"schema": "macaw-fast/task", "schema_version": SCHEMA_VERSION, "task_id": tid, "env_id": env_id,
         "params": params, "gamma": gamma, "rows": rows, "episodes": episodes, "fields": fields,
         "created_by": versions}
    if source is not None:
        m["source"] = source
    return m


def write_task_arrays(writer: DatasetWriter, task_id, arrays: Mapping[str, np.ndarray],
                      episodes: Mapping | None = None, chunk_rows: int = 1 << 16) -> None:
    """Append rows whose derived fields are already known (imports), all 8 fields given as-is.

    Used for data that must be stored exactly as it came (the paper's buffers, Minari round trips).
    ``episodes`` is ``{"lengths": [...] or None, "returns": [...] or None}`` for the new rows; None
    marks trajectory boundaries as unknown for this task from now on.
    """
    st = writer._state(task_id)
    n = None
    for field in FIELDS:
        if field not in arrays:
            raise ValueError(f"task {st.task_id}: field {field!r} missing")
        a = arrays[field]
        shape = tuple(a.shape) if hasattr(a, "shape") else np.asarray(a).shape  # no read for lazy columns
        dim = _field_dim(field, writer.obs_dim, writer.act_dim)
        want = (shape[0],) if dim is None else (shape[0], dim)
        if shape != want:
            raise ValueError(f"task {st.task_id}: {field}: expected shape (N{', ' + str(dim) if dim else ''}), got {shape}")
        if n is None:
            n = shape[0]
        elif shape[0] != n:
            raise ValueError(f"task {st.task_id}: {field}: {shape[0]} rows, other fields have {n}")
    if st.pending_hashers is None:
        st.pending_hashers = {f: h.copy() for f, h in st.hashers.items()}
    tdir = os.path.join(writer.path, st.task_id)
    field = None
    try:
        for field in FIELDS:
            dim = _field_dim(field, writer.obs_dim, writer.act_dim)
            src = arrays[field]
            with open(os.path.join(tdir, field + ".npy"), "r+b") as f:
                f.seek(HEADER_BYTES + (st.rows + st.pending) * _row_bytes(dim))
                for s in range(0, n, chunk_rows):
                    block = np.ascontiguousarray(np.asarray(src[s : s + chunk_rows]), dtype=DTYPE)
                    if not np.isfinite(block).all():
                        raise ValueError(f"task {st.task_id}: {field}: contains NaN or inf")
                    data = block.tobytes()
                    _write_bytes(f, data)
                    st.pending_hashers[field].update(data)
    except OSError as e:
        writer.rollback()
        raise writer._write_error(e, f"task {st.task_id}, field {field!r}") from e
    except ValueError:
        writer.rollback()
        raise
    st.pending += n
    eps = episodes or {}
    lengths, returns = eps.get("lengths"), eps.get("returns")
    if lengths is None or st.pending_lengths is None:
        st.pending_lengths = None
    else:
        st.pending_lengths.extend(int(x) for x in lengths)
    if returns is None or st.pending_returns is None:
        st.pending_returns = None
    else:
        st.pending_returns.extend(float(x) for x in returns)


def iter_episodes(td: TaskData) -> Iterable[tuple[int, int]]:
    """(start, stop) row ranges of a task's stored trajectories (needs known episode lengths)."""
    lengths = td.episode_lengths
    if lengths is None:
        raise DatasetError(f"task {td.task_id}: trajectory boundaries are not known for this data")
    s = 0
    for n in lengths:
        yield s, s + n
        s += n
