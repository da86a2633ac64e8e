"""Subsample a dataset the way the paper's loader subsamples its buffers (``buffer_skip``).

The paper trained on every 7th row of each replay buffer (docs/algorithm.md §8): rows ``(N mod k) + k*j``.
A contiguous inner window of 256 rows then spans about 1,800 environment steps, i.e. several
trajectories from neighbouring stages of the SAC run, instead of one or two. Data made by
``macaw-fast collect`` stores every row, so training on it with the paper's recipe means
subsampling it first: ``macaw-fast data subsample SRC OUT --skip 7``.

Every stored field is per row and already final (``mc_return``, ``terminal_obs`` and
``terminal_discount`` were computed over whole trajectories when the data was written), so
keeping a subset of rows keeps each kept row exact. Trajectory boundaries are lost (the episode
lengths become unknown); the trajectory returns of the source are kept, so normalised scores
still know the data's best return.
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from .paper import skip_rows
from .store import FIELDS, DatasetWriter, install_dir, open_dataset, staging_dir, write_task_arrays


class _Rows:
    """Lazily gathered rows of one memory-mapped field, sliceable in blocks by the writer."""

    def __init__(self, arr: np.ndarray, rows: np.ndarray):
        self.arr, self.rows = arr, rows
        self.shape = (rows.size,) + tuple(arr.shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, sl: slice) -> np.ndarray:
        return np.asarray(self.arr[self.rows[sl]])


def subsample_dataset(src, out, skip: int = 7, overwrite: bool = False, progress: bool = True):
    """Write a new dataset at ``out`` holding every ``skip``-th row of each task of ``src``.

    Rows kept per task are the paper loader's, ``(N mod skip) + skip*j`` for ``j < N // skip``
    (:func:`macaw_fast.data.paper.skip_rows`). Tasks, parameters, split, γ and trajectory returns
    are carried over; the manifest's ``source`` records the source path and ``skip``. The new
    dataset appears at ``out`` only once complete. Returns it, opened.
    """
    if isinstance(skip, bool) or not isinstance(skip, (int, np.integer)) or skip < 1:
        raise ValueError(f"skip: expected an integer >= 1, got {skip!r}")
    ds = open_dataset(src)
    out = os.fspath(out)
    if os.path.abspath(out) == os.path.abspath(ds.path):
        raise ValueError(f"{out}: the output must differ from the source dataset")
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"{out}: already exists (use --overwrite to replace it)")
    short = [t for t in ds.tasks if ds[t].num_rows // skip < 1]
    if short:
        raise ValueError(f"{ds.path}: task(s) {short} have fewer than skip={skip} rows; nothing would be kept")
    first = ds[ds.tasks[0]].manifest.get("source")
    source = {"format": "macaw-fast-subsample", "from": os.path.abspath(ds.path), "buffer_skip": int(skip)}
    if first is not None:
        source["from_source"] = first
    tmp = staging_dir(out)
    try:
        w = DatasetWriter.create(os.path.join(tmp, "ds"), env_id=ds.env_id,
                                 tasks={t: ds[t].params for t in ds.tasks}, split=ds.split,
                                 obs_dim=ds.obs_dim, act_dim=ds.act_dim, gamma=ds.gamma, source=source)
        it = ds.tasks
        if progress:
            from tqdm import tqdm

            it = tqdm(it, desc=f"subsample (skip {skip})", unit="task")
        with w:
            for t in it:
                td = ds[t]
                rows = skip_rows(td.num_rows, skip)
                cols = {f: _Rows(td[f], rows) for f in FIELDS}
                write_task_arrays(w, t, cols, episodes={"lengths": None, "returns": td.episode_returns})
            w.commit()
        install_dir(os.path.join(tmp, "ds"), out, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return open_dataset(out)


__all__ = ["subsample_dataset"]
