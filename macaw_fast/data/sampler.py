"""Deterministic meta-batch sampling (docs/algorithm.md §4): the C++ sampler, its numpy twin, and the wrapper.

One call samples a whole meta-batch: for each task of a task batch, an inner batch (a contiguous
window of B rows, or B distinct uniform rows) and an outer batch (B distinct uniform rows), every
field, written into preallocated (T, B, dim) / (T, B) float32 buffers.

Every index is a pure function of (seed, step, task id, slot in the task batch, stream) through a
counter-based RNG, so a resumed run draws exactly what an uninterrupted one draws. The definitions
(also written at the top of ``csrc/sampler.hpp``)::

    mix64(x)        SplitMix64's finaliser
    combine(k, v)   = mix64(k * GOLDEN + v + OFFSET)
    key             = combine(combine(combine(combine(mix64(seed), step), task), slot), stream)
    word(key, c)    = mix64(key + (c + 1) * GOLDEN)
    below(key,k,n)  uniform in [0, n): Lemire's multiply-shift on word(key, k + (a << 32)),
                    attempts a = 0, 1, ... with exact rejection (so exactly uniform)

- Inner window (``inner_mode="contiguous"``): start = below(key(stream 0), 0, S), rows
  start .. start + B - 1. With ``paper_window=True`` (default) S = N - B, i.e. the start is uniform in
  [0, N - B) exactly as the paper's ``np.random.randint(0, N - B)``, so the last row of a buffer is
  never in a window and N must exceed B; ``paper_window=False`` gives S = N - B + 1 (every window).
- Distinct rows (the outer batch; the inner batch with ``inner_mode="uniform"``): Floyd's algorithm
  (draw k picks from [0, N - B + k]; on a repeat take N - B + k) followed by a Fisher-Yates shuffle
  (draw k = B-1 .. 1 picks from [0, k]), so the batch is a uniformly random ordered sample without
  replacement, the distribution of the paper's ``random.sample``.

The C++ extension (``macaw_fast._C``) and the numpy functions here implement the same definitions
and give identical indices and identical data.

Because every draw is keyed by its slot in the task batch, any subset of the slots can be sampled
on its own (``slots=``): data-parallel ranks each sample their share of a step's task batch and
together get exactly the single-process meta-batch.
"""

from __future__ import annotations

import operator
import os
import warnings
from typing import Any, Sequence

import numpy as np
import torch

from .batch import FIELDS, SCALAR_FIELDS, VECTOR_FIELDS, Batch

__all__ = [
    "INNER_MODES",
    "MetaBatchSampler",
    "choose_tasks",
    "cpp_sampler_available",
    "sample_indices",
    "sample_indices_numpy",
    "sample_meta_batch_numpy",
    "stream_key",
    "uniform_below",
]

#: Inner-batch modes: a contiguous window of B rows (the paper's training), or B distinct uniform rows.
INNER_MODES = ("contiguous", "uniform")

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_OFFSET = 0x632BE59BD9B4E019
_MAX_ROWS = 1 << 32
# Stream ids (csrc/sampler.hpp, enum Stream).
_INNER_START, _INNER_ROWS, _INNER_SHUFFLE, _OUTER_ROWS, _OUTER_SHUFFLE, _TASK_CHOICE = range(6)
_VECTOR = frozenset(VECTOR_FIELDS)
_batch_fields = operator.attrgetter(*FIELDS)  # a Batch's 8 tensors, FIELDS order, in one C call


# ----------------------------------------------------------------------------------------------
# The counter-based RNG, in Python ints (keys) and numpy uint64 arrays (draws).


def _mix64_int(x: int) -> int:
    x &= _M64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _M64
    x ^= x >> 31
    return x


def _mix64(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _u64(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    value = int(value)
    if not 0 <= value <= _M64:
        raise ValueError(f"{name}: expected 0 <= {name} < 2^64, got {value}")
    return value


def stream_key(seed: int, step: int, task: int, slot: int, stream: int) -> int:
    """The RNG key of (seed, step, task, slot, stream): every draw of that stream derives from it."""
    for name, v in (("seed", seed), ("step", step), ("task", task), ("slot", slot), ("stream", stream)):
        _u64(name, v)
    return _key(int(seed), int(step), int(task), int(slot), int(stream))


def _key(seed: int, step: int, task: int, slot: int, stream: int) -> int:
    """``stream_key`` for arguments already known to be integers in [0, 2^64)."""
    key = _mix64_int(seed)
    key = _mix64_int(key * _GOLDEN + step + _OFFSET)
    key = _mix64_int(key * _GOLDEN + task + _OFFSET)
    key = _mix64_int(key * _GOLDEN + slot + _OFFSET)
    return _mix64_int(key * _GOLDEN + stream + _OFFSET)


def _below(key: int, ks: np.ndarray, ns: np.ndarray) -> np.ndarray:
    """Vectorised ``below``: draw ks[i] of stream key, uniform in [0, ns[i]) (1 <= ns < 2^32)."""
    ks = np.asarray(ks, dtype=np.uint64)
    ns = np.asarray(ns, dtype=np.uint64)
    key_u = np.uint64(key)
    golden = np.uint64(_GOLDEN)

    def draw(counters: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = _mix64(key_u + (counters + np.uint64(1)) * golden)
        lo = r * n  # low 64 bits of the 128-bit product (wraps)
        hi = ((r >> np.uint64(32)) * n + (((r & np.uint64(0xFFFFFFFF)) * n) >> np.uint64(32))) >> np.uint64(32)
        return lo, hi

    lo, out = draw(ks, ns)
    threshold = (np.uint64(0) - ns) % ns  # 2^64 mod n
    reject = lo < threshold
    attempt = 0
    while reject.any():
        attempt += 1
        idx = np.nonzero(reject)[0]
        lo_r, hi_r = draw(ks[idx] + np.uint64(attempt << 32), ns[idx])
        out[idx] = hi_r
        reject[idx] = lo_r < threshold[idx]
    return out.astype(np.int64)


def _below_int(key: int, k: int, n: int) -> int:
    """Scalar ``below`` with Python integers (faster than numpy for a handful of draws)."""
    threshold = (1 << 64) % n
    attempt = 0
    while True:
        m = _mix64_int(key + (k + (attempt << 32) + 1) * _GOLDEN) * n
        if (m & _M64) >= threshold:
            return m >> 64
        attempt += 1


def uniform_below(key: int, k: int, n: int) -> int:
    """Draw number k (< 2^32) of the stream ``key``: a uniform integer in [0, n), 1 <= n < 2^32."""
    if not 1 <= n < _MAX_ROWS:
        raise ValueError(f"n: expected 1 <= n < 2^32, got {n}")
    if not 0 <= k < _MAX_ROWS:
        raise ValueError(f"k: expected 0 <= k < 2^32, got {k}")
    return int(_below(_u64("key", key), np.array([k]), np.array([n]))[0])


def _distinct_rows(key_rows: int, key_shuffle: int, n: int, b: int) -> np.ndarray:
    """b distinct rows of [0, n) in uniformly random order (Floyd, then Fisher-Yates)."""
    small = b <= 16
    if small:
        t = [_below_int(key_rows, k, n - b + 1 + k) for k in range(b)]
    else:
        ks = np.arange(b, dtype=np.uint64)
        t = _below(key_rows, ks, ks + np.uint64(n - b + 1)).tolist()
    seen: set[int] = set()
    out = []
    j = n - b
    for tk in t:
        x = j if tk in seen else tk
        seen.add(x)
        out.append(x)
        j += 1
    if small:
        s = [_below_int(key_shuffle, k, k + 1) for k in range(1, b)]
    else:
        kk = np.arange(1, b, dtype=np.uint64)
        s = _below(key_shuffle, kk, kk + np.uint64(1)).tolist()
    if b > 1:
        for k in range(b - 1, 0, -1):
            sk = s[k - 1]
            out[k], out[sk] = out[sk], out[k]
    return np.asarray(out, dtype=np.int64)


def _min_rows(batch_size: int, inner_mode: str, paper_window: bool) -> int:
    return batch_size + 1 if (inner_mode == "contiguous" and paper_window) else batch_size


def _check_common(batch_size: int, inner_mode: str) -> None:
    if inner_mode not in INNER_MODES:
        raise ValueError(f"inner_mode: expected 'contiguous' or 'uniform', got {inner_mode!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or not 1 <= batch_size < _MAX_ROWS:
        raise ValueError(f"batch_size: expected an integer 1 <= batch_size < 2^32, got {batch_size!r}")


def _check_slots(slots: Sequence[int] | None, num_slots: int) -> list[int]:
    """The slots to sample: all of a task batch's ``num_slots``, or the given ones (each in range)."""
    if slots is None:
        return list(range(num_slots))
    if isinstance(slots, (str, bytes)) or not isinstance(slots, (Sequence, range, np.ndarray)):
        raise TypeError(f"slots: expected a sequence of slot numbers or None, got {type(slots).__name__}")
    out = list(slots)
    if not out:
        raise ValueError("slots: expected at least one slot (or None for all)")
    for j, s in enumerate(out):
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise TypeError(f"slots[{j}]: expected an integer slot, got {type(s).__name__}")
        if not 0 <= s < num_slots:
            raise IndexError(f"slots[{j}]: slot {s} out of range for {num_slots} task ids")
    return [int(s) for s in out]


def _check_task_ids(task_ids: Sequence[int], num_tasks: int) -> list[int]:
    ids = list(task_ids)
    if not ids:
        raise ValueError("task_ids: expected at least one task id")
    for i, t in enumerate(ids):
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
            raise TypeError(f"task_ids[{i}]: expected an integer task id, got {type(t).__name__}")
        if not 0 <= t < num_tasks:
            raise IndexError(f"task_ids[{i}]: task {t} out of range for {num_tasks} tasks")
    return [int(t) for t in ids]


def sample_indices_numpy(
    n_rows: Sequence[int],
    task_ids: Sequence[int],
    batch_size: int,
    seed: int,
    step: int,
    inner_mode: str = "contiguous",
    paper_window: bool = True,
    slots: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of one meta-batch, pure numpy: (inner, outer), each (rows, B) int64.

    ``n_rows[t]`` is task t's row count; ``task_ids`` are the tasks of the batch (slots 0..T-1).
    ``slots``: only these slots of the batch (row j of the result is slot ``slots[j]``, drawn with
    that slot's keys, so it equals row ``slots[j]`` of the full batch); None: all T slots.
    """
    _check_common(batch_size, inner_mode)
    ids = _check_task_ids(task_ids, len(n_rows))
    seed, step = _u64("seed", seed), _u64("step", step)
    chosen = _check_slots(slots, len(ids))
    B = int(batch_size)
    need = _min_rows(B, inner_mode, paper_window)
    inner = np.empty((len(chosen), B), dtype=np.int64)
    outer = np.empty((len(chosen), B), dtype=np.int64)
    for row, slot in enumerate(chosen):
        task = ids[slot]
        n = int(n_rows[task])
        if not need <= n < _MAX_ROWS:
            raise ValueError(f"task {task}: has {n} rows; expected {need} <= N < 2^32 for batch size {B}")
        if inner_mode == "contiguous":
            starts = n - B if paper_window else n - B + 1
            start = _below_int(_key(seed, step, task, slot, _INNER_START), 0, starts)
            inner[row] = np.arange(start, start + B)
        else:
            inner[row] = _distinct_rows(
                _key(seed, step, task, slot, _INNER_ROWS), _key(seed, step, task, slot, _INNER_SHUFFLE), n, B
            )
        outer[row] = _distinct_rows(
            _key(seed, step, task, slot, _OUTER_ROWS), _key(seed, step, task, slot, _OUTER_SHUFFLE), n, B
        )
    return inner, outer


# ----------------------------------------------------------------------------------------------
# Argument checks shared by the numpy twin and the wrapper (the C++ side repeats them itself).


def _shape(a: np.ndarray) -> str:
    return str(tuple(a.shape))


def _check_array(a: Any, where: str) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{where}: expected a numpy array, got {type(a).__name__}")
    if a.dtype != np.float32:
        raise TypeError(f"{where}: expected dtype float32, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{where}: expected a C-contiguous array")
    return a


def _check_outputs(outs: Sequence[np.ndarray], which: str, T: int, B: int, dims: dict) -> list[np.ndarray]:
    if len(outs) != len(FIELDS):
        raise ValueError(f"{which}: expected {len(FIELDS)} output arrays ({', '.join(FIELDS)}), got {len(outs)}")
    checked = []
    for name, a in zip(FIELDS, outs):
        where = f"{which} output '{name}'"
        a = _check_array(a, where)
        if not a.flags.writeable:
            raise ValueError(f"{where}: expected a writeable array")
        if name in _VECTOR:
            if a.ndim != 3 or a.shape[:2] != (T, B):
                raise ValueError(f"{where}: expected shape ({T}, {B}, dim), got {_shape(a)}")
            key = "act_dim" if name == "action" else "obs_dim"
            dims.setdefault(key, a.shape[2])
            if a.shape[2] != dims[key]:
                raise ValueError(f"{where}: expected last dim {dims[key]} ({key}), got {_shape(a)}")
        elif a.shape != (T, B):
            raise ValueError(f"{where}: expected shape ({T}, {B}), got {_shape(a)}")
        checked.append(a)
    return checked


def _check_task(arrays: Sequence[np.ndarray], task: int, dims: dict, need: int, batch_size: int) -> list[np.ndarray]:
    """Checks one task's 8 field arrays (FIELDS order); returns them as 2-D (N, width) views."""
    tname = f"task {task}"
    if isinstance(arrays, (str, bytes)) or not isinstance(arrays, Sequence):
        raise TypeError(f"{tname}: expected a sequence of {len(FIELDS)} field arrays")
    if len(arrays) != len(FIELDS):
        raise ValueError(f"{tname}: expected {len(FIELDS)} field arrays, got {len(arrays)}")
    n, n_field, out = None, None, []
    for name, a in zip(FIELDS, arrays):
        where = f"{tname}: field '{name}'"
        a = _check_array(a, where)
        if name in _VECTOR:
            key = "act_dim" if name == "action" else "obs_dim"
            if a.ndim != 2 or (key in dims and a.shape[1] != dims[key]):
                want = dims.get(key, key)
                raise ValueError(f"{where}: expected shape (N, {want}) ({key}), got {_shape(a)}")
            dims.setdefault(key, a.shape[1])
            view = a
        else:
            if not (a.ndim == 1 or (a.ndim == 2 and a.shape[1] == 1)):
                raise ValueError(f"{where}: expected shape (N,) or (N, 1), got {_shape(a)}")
            view = a.reshape(a.shape[0], 1)
        if n is None:
            n, n_field = a.shape[0], name
        elif a.shape[0] != n:
            raise ValueError(f"{where}: has {a.shape[0]} rows but field '{n_field}' has {n}")
        out.append(view)
    if n >= _MAX_ROWS:
        raise ValueError(f"{tname}: {n} rows; at most 2^32 - 1 are supported")
    if n < need:
        why = " (the paper's window start is uniform in [0, N - B))" if need > batch_size else ""
        raise ValueError(f"{tname}: has {n} rows, fewer than the {need} needed for batch size {batch_size}{why}")
    return out


def sample_meta_batch_numpy(
    tasks: Sequence[Sequence[np.ndarray]],
    task_ids: Sequence[int],
    batch_size: int,
    seed: int,
    step: int,
    inner_mode: str,
    paper_window: bool,
    inner_out: Sequence[np.ndarray],
    outer_out: Sequence[np.ndarray] | None,
    num_threads: int = 1,
    slots: Sequence[int] | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The numpy twin of ``macaw_fast._C.sample_meta_batch`` (same arguments, same output).

    ``tasks[t]`` holds task t's 8 float32 arrays in ``FIELDS`` order (vectors (N, dim), scalars
    (N,) or (N, 1)); the outputs are 8 preallocated float32 arrays per batch, (rows, B, dim) or
    (rows, B), where rows = T, or len(slots) when ``slots`` picks some slots of the task batch
    (output row j = slot ``slots[j]``). ``inner_out`` or ``outer_out`` None: that batch is not
    sampled. Returns (inner_idx, outer_idx), each (rows, B) int64 (None for a batch not sampled).
    ``num_threads`` is accepted and ignored.
    """
    _check_common(batch_size, inner_mode)
    ids = _check_task_ids(task_ids, len(tasks))
    chosen = _check_slots(slots, len(ids))
    if inner_out is None and outer_out is None:
        raise ValueError("inner_out, outer_out: both are None")
    rows, B = len(chosen), int(batch_size)
    dims: dict = {}
    if inner_out is not None:
        inner_out = _check_outputs(inner_out, "inner", rows, B, dims)
    if outer_out is not None:
        outer_out = _check_outputs(outer_out, "outer", rows, B, dims)
    need = _min_rows(B, inner_mode, paper_window)
    views = [_check_task(tasks[ids[s]], ids[s], dims, need, B) for s in chosen]
    n_rows = dict(zip((ids[s] for s in chosen), (len(v[0]) for v in views)))
    inner_idx, outer_idx = sample_indices_numpy(
        [n_rows.get(t, 0) for t in range(max(ids) + 1)], ids, B, seed, step, inner_mode, paper_window, chosen
    )
    for row, fields in enumerate(views):
        start = int(inner_idx[row, 0])
        for f, src in enumerate(fields):
            if inner_out is not None:
                dst_in = inner_out[f][row].reshape(B, -1)
                if inner_mode == "contiguous":
                    dst_in[...] = src[start : start + B]
                else:
                    np.take(src, inner_idx[row], axis=0, out=dst_in)
            if outer_out is not None:
                np.take(src, outer_idx[row], axis=0, out=outer_out[f][row].reshape(B, -1))
    return (inner_idx if inner_out is not None else None), (outer_idx if outer_out is not None else None)



# ----------------------------------------------------------------------------------------------
# Backend choice, the task batch, and the wrapper returning torch Batches.

_CPP_STATUS: tuple[bool, str] | None = None


def _cpp_module():
    from .. import _C  # noqa: PLC0415  (optional compiled extension)

    return _C


def cpp_sampler_available() -> bool:
    """True when ``macaw_fast._C`` has the sampler and it runs (checked once, on a tiny input)."""
    global _CPP_STATUS
    if _CPP_STATUS is None:
        try:
            C = _cpp_module()
            got = C.sample_indices([7], [0], 3, 1, 2, "contiguous", True, 1)
            want = sample_indices_numpy([7], [0], 3, 1, 2, "contiguous", True)
            if not all(np.array_equal(g, w) for g, w in zip(got, want)):
                raise RuntimeError("its indices differ from the numpy twin's")
            _CPP_STATUS = (True, "")
        except Exception as e:  # ImportError, AttributeError, a stale build, ...
            _CPP_STATUS = (False, f"{type(e).__name__}: {e}")
    return _CPP_STATUS[0]


def _resolve_backend(backend: str) -> str:
    if backend not in ("auto", "cpp", "numpy"):
        raise ValueError(f"backend: expected 'auto', 'cpp' or 'numpy', got {backend!r}")
    if backend == "numpy":
        return backend
    if cpp_sampler_available():
        return "cpp"
    if backend == "cpp":
        raise RuntimeError(f"backend='cpp': the C++ sampler is unavailable ({_CPP_STATUS[1]})")
    warnings.warn(
        f"macaw_fast._C has no working sampler ({_CPP_STATUS[1]}); using the numpy twin "
        "(identical output, slower). Rebuild with `pip install -e .` to get the C++ sampler.",
        RuntimeWarning,
        stacklevel=3,
    )
    return "numpy"


def sample_indices(
    n_rows: Sequence[int],
    task_ids: Sequence[int],
    batch_size: int,
    seed: int,
    step: int,
    inner_mode: str = "contiguous",
    paper_window: bool = True,
    backend: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (inner, outer), each (T, B) int64, of one meta-batch, from either backend."""
    if _resolve_backend(backend) == "cpp":
        _check_common(batch_size, inner_mode)
        return _cpp_module().sample_indices(
            [int(n) for n in n_rows], list(task_ids), int(batch_size), seed, step, inner_mode, bool(paper_window), 1
        )
    return sample_indices_numpy(n_rows, task_ids, batch_size, seed, step, inner_mode, paper_window)


def choose_tasks(task_ids: Sequence[int], k: int, seed: int, step: int) -> list[int]:
    """The task batch of a step (docs/algorithm.md §4): k of ``task_ids`` without replacement, all when <= k.

    A pure function of (seed, step): uniformly random order, stream 5 of the counter-based RNG.
    """
    ids = list(task_ids)
    if k < 1:
        raise ValueError(f"tasks per step: expected >= 1, got {k}")
    if not ids:
        raise ValueError("task_ids: expected at least one task")
    if len(ids) <= k:
        return ids
    seed, step = _u64("seed", seed), _u64("step", step)
    if cpp_sampler_available():  # one call: the keys in Python ints cost more than the draws
        return [ids[p] for p in _cpp_module().choose_positions(seed, step, len(ids), k)]
    keys = _key(seed, step, 0, 0, _TASK_CHOICE), _key(seed, step, 0, 1, _TASK_CHOICE)
    return [ids[p] for p in _distinct_rows(*keys, len(ids), k).tolist()]


def _task_arrays(task: Any, index: int) -> list:
    if isinstance(task, Sequence) and not isinstance(task, (str, bytes)):
        return list(task)
    out = []
    for name in FIELDS:
        try:
            out.append(task[name])
        except (KeyError, IndexError, TypeError) as e:
            raise ValueError(f"task {index}: field '{name}' is missing ({type(e).__name__}: {e})") from None
    return out


class MetaBatchSampler:
    """Samples meta-batches (inner, outer) of torch tensors from per-task numpy arrays.

    ``tasks[t]`` is task t's data: a mapping ``field -> array`` (a dict, or a store task
    ``open_dataset(path)[task_id]``) or a sequence of 8 arrays in ``FIELDS`` order. Arrays are float32,
    C-contiguous, in memory or memory-mapped; vectors (N, dim), scalars (N,) or (N, 1). They are
    checked once here and never copied. Task ids passed to :meth:`sample` index ``tasks``.

    ``inner_mode``: ``"contiguous"`` (a window of B consecutive rows, the paper's training) or
    ``"uniform"`` (B distinct uniform rows). ``paper_window``: the window start is uniform in
    [0, N - B) like the paper's code (True) or in [0, N - B] (False). ``seed``: with the step and the
    task ids it fixes every index. ``num_threads``: C++ threads per call, the caller's included
    (default: min(4, CPUs)); they come from a persistent pool, which runs calls on one thread while
    extra threads do not make them faster (a machine with no idle CPU). The output never depends on it.
    ``pin_memory``: allocate page-locked buffers for fast host-to-GPU copies (only when CUDA is
    available; otherwise a warning and ordinary memory). ``backend``: ``"auto"`` (C++ when built,
    else the numpy twin with a warning), ``"cpp"`` or ``"numpy"``.
    """

    def __init__(
        self,
        tasks: Sequence[Any],
        batch_size: int = 256,
        *,
        inner_mode: str = "contiguous",
        paper_window: bool = True,
        seed: int = 0,
        num_threads: int | None = None,
        pin_memory: bool = False,
        backend: str = "auto",
    ) -> None:
        _check_common(batch_size, inner_mode)
        self.batch_size = int(batch_size)
        self.inner_mode = inner_mode
        self.paper_window = bool(paper_window)
        self.seed = _u64("seed", seed)
        self.num_threads = min(4, os.cpu_count() or 1) if num_threads is None else int(num_threads)
        if self.num_threads < 1:
            raise ValueError(f"num_threads: expected >= 1, got {num_threads}")
        if pin_memory and not torch.cuda.is_available():
            warnings.warn("pin_memory=True but CUDA is not available; using ordinary memory", RuntimeWarning, stacklevel=2)
            pin_memory = False
        self.pin_memory = bool(pin_memory)
        if len(tasks) == 0:
            raise ValueError("tasks: expected at least one task")
        need = _min_rows(self.batch_size, inner_mode, self.paper_window)
        dims: dict = {}
        self._tasks = []
        for i, task in enumerate(tasks):
            arrays = _task_arrays(task, i)
            _check_task(arrays, i, dims, need, self.batch_size)
            self._tasks.append(arrays)
        self.obs_dim, self.act_dim = int(dims["obs_dim"]), int(dims["act_dim"])
        #: Rows per task.
        self.n_rows = [len(a[0]) for a in self._tasks]
        self.backend = _resolve_backend(backend)
        # The C++ sampler keeps its own validated pointer table of the tasks (and a reference to them).
        self._core = (
            _cpp_module().Sampler(self._tasks, self.batch_size, inner_mode, self.paper_window, self.seed)
            if self.backend == "cpp" else None
        )
        self._buffers: dict[int, tuple[Batch, Batch]] = {}
        self._views: dict[int, tuple] = {}  # id(batch) -> (its 8 tensors, their numpy views)

    @property
    def num_tasks(self) -> int:
        """Number of tasks the sampler holds."""
        return len(self._tasks)

    def allocate(self, num_tasks: int) -> tuple[Batch, Batch]:
        """A fresh (inner, outer) pair of zeroed float32 buffers for ``num_tasks`` tasks."""
        T, B = int(num_tasks), self.batch_size

        def make() -> Batch:
            def t(*shape: int) -> torch.Tensor:
                return torch.zeros(shape, dtype=torch.float32, pin_memory=self.pin_memory)

            vec = {k: t(T, B, self.act_dim if k == "action" else self.obs_dim) for k in VECTOR_FIELDS}
            return Batch(**vec, **{k: t(T, B) for k in SCALAR_FIELDS})

        return make(), make()

    def _numpy_views(self, batch: Batch) -> list[np.ndarray]:
        """numpy views of a Batch's 8 tensors (FIELDS order), checked once and cached per Batch."""
        cached = self._views.get(id(batch))
        if cached is not None and all(map(operator.is_, cached[0], _batch_fields(batch))):
            return cached[1]
        tensors = [getattr(batch, k) for k in FIELDS]
        if not isinstance(batch, Batch):
            raise TypeError(f"out: expected Batch objects (see MetaBatchSampler.allocate), got {type(batch).__name__}")
        for t in tensors:
            if t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous():
                raise ValueError("out: expected contiguous float32 CPU tensors (see MetaBatchSampler.allocate)")
        views = [t.numpy() for t in tensors]
        if len(self._views) > 32:
            self._views.clear()
        self._views[id(batch)] = (tensors, views)  # holds the tensors, so their ids cannot be reused meanwhile
        return views

    def sample(
        self,
        step: int,
        task_ids: Sequence[int],
        out: tuple[Batch | None, Batch | None] | None = None,
        return_indices: bool = False,
        *,
        slots: Sequence[int] | None = None,
        batches: str = "both",
    ):
        """Sample step ``step``'s meta-batch for ``task_ids``; returns (inner, outer) Batches.

        The tensors are written in place: into ``out`` when given (from :meth:`allocate`), else
        into a buffer pair the sampler keeps per task-batch size and overwrites at the next call.
        With ``return_indices`` the row indices (inner_idx, outer_idx), (rows, B) int64, follow.

        ``slots``: sample only these slots (positions in ``task_ids``) of the task batch; ``task_ids``
        stays the WHOLE batch, because every draw is keyed by (task id, slot). Row j of the result
        equals row ``slots[j]`` of the full meta-batch, so ranks of a data-parallel run that split
        the slots together sample exactly what one process samples. The buffers then have
        ``len(slots)`` rows. None: all slots.

        ``batches``: ``"both"``, ``"inner"`` or ``"outer"``; a batch not sampled is returned as None
        (its buffer in ``out`` may be None, and its index array is None).
        """
        if out is None:
            rows = len(task_ids) if slots is None else len(slots)
            out = self._buffers.get(rows)
            if out is None:
                out = self._buffers[rows] = self.allocate(rows)
        inner, outer = out
        if batches != "both":
            if batches == "inner":
                outer = None
            elif batches == "outer":
                inner = None
            else:
                raise ValueError(f"batches: expected 'both', 'inner' or 'outer', got {batches!r}")
        if (batches != "outer" and inner is None) or (batches != "inner" and outer is None):
            raise ValueError(f"out: a buffer is None but batches={batches!r} samples it")
        v_in = None if inner is None else self._numpy_views(inner)
        v_out = None if outer is None else self._numpy_views(outer)
        if type(step) is not int or not 0 <= step <= _M64:  # noqa: E721  (a plain int: checked fast)
            step = _u64("step", step)
        if type(task_ids) is not list:  # noqa: E721
            task_ids = list(task_ids)
        if self._core is not None:
            try:
                idx = self._core.sample(step, task_ids, v_in, v_out, slots, self.num_threads, return_indices)
            except TypeError:
                # pybind11's message would list every argument, buffers included (kilobytes): name
                # the bad one instead (the fast path above skips these checks).
                _check_task_ids(task_ids, self.num_tasks)
                if slots is not None:
                    _check_slots(slots, len(task_ids))
                raise TypeError("MetaBatchSampler.sample: expected step: int, task_ids: a list of ints, "
                                "slots: a list of ints or None") from None
        else:
            idx = sample_meta_batch_numpy(
                self._tasks, task_ids, self.batch_size, self.seed, step, self.inner_mode, self.paper_window,
                v_in, v_out, self.num_threads, slots,
            )
        return (inner, outer, *idx) if return_indices else (inner, outer)
