"""Type stubs for the compiled extension macaw_fast._C (csrc/)."""

from typing import Sequence

import numpy as np
import numpy.typing as npt

__version__: str
_asan: bool

def sample_meta_batch(
    tasks: Sequence[Sequence[npt.NDArray[np.float32]]],
    task_ids: Sequence[int],
    batch_size: int,
    seed: int,
    step: int,
    inner_mode: str,
    paper_window: bool,
    inner_out: Sequence[npt.NDArray[np.float32]],
    outer_out: Sequence[npt.NDArray[np.float32]],
    num_threads: int = 1,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Sample one meta-batch into preallocated float32 arrays; returns (inner_idx, outer_idx), each (T, B) int64."""

def sample_indices(
    n_rows: Sequence[int],
    task_ids: Sequence[int],
    batch_size: int,
    seed: int,
    step: int,
    inner_mode: str,
    paper_window: bool,
    num_threads: int = 1,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Row indices of one meta-batch: (inner_idx, outer_idx), each (T, B) int64, for tasks with n_rows rows."""

def stream_key(seed: int, step: int, task: int, slot: int, stream: int) -> int:
    """The counter-based RNG's key for (seed, step, task, slot, stream)."""

def uniform_below(key: int, k: int, n: int) -> int:
    """Draw k of stream `key`: a uniform integer in [0, n)."""

def distinct_rows(key_rows: int, key_shuffle: int, n: int, b: int) -> npt.NDArray[np.int64]:
    """b distinct rows of [0, n) in uniformly random order (Floyd's algorithm, then a Fisher-Yates shuffle)."""
