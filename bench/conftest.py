"""Shared benchmark fixtures: Cheetah-sized per-task datasets as memory-mapped .npy files."""

from __future__ import annotations

import numpy as np
import pytest

from macaw_fast.data import FIELDS, VECTOR_FIELDS

#: Cheetah's sizes: 20-dim observations, 6-dim actions.
OBS_DIM, ACT_DIM = 20, 6
#: 40 tasks (Cheetah-Vel) of 24,000 rows, 280 bytes a row: 269 MB in all, ~8x a 32 MiB L3 cache.
NUM_TASKS, ROWS = 40, 24_000


@pytest.fixture(scope="session")
def cheetah_memmaps(tmp_path_factory) -> list[dict[str, np.ndarray]]:
    """NUM_TASKS tasks of ROWS rows, every field a read-only memory-mapped .npy file in a tmp dir."""
    root = tmp_path_factory.mktemp("cheetah_memmaps")
    rng = np.random.default_rng(0)
    tasks = []
    for t in range(NUM_TASKS):
        task = {}
        for f in FIELDS:
            shape = (ROWS, ACT_DIM if f == "action" else OBS_DIM) if f in VECTOR_FIELDS else (ROWS, 1)
            path = root / f"task{t:02d}_{f}.npy"
            out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
            out[...] = rng.random(shape, dtype=np.float32)
            out.flush()
            del out
            task[f] = np.load(path, mmap_mode="r")
            # Map every page into this process now, as a long training run would have done: the
            # timings are then steady-state copies, not first-touch page faults.
            task[f].reshape(-1)[:: 4096 // 4].sum()
        tasks.append(task)
    return tasks


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """After bench_meta_step.py's interleaved runs: their speed-ups; after bench_sampler.py:
    paper-style time / each sampler's time (min and median), with the load."""
    import os
    import sys

    tr = terminalreporter
    inter = getattr(sys.modules.get("bench_meta_step"), "INTERLEAVED", None)
    if inter:
        tr.section("meta-step: paper loop vs batched, interleaved in one process (same run)")
        for T, (lmin, bmin, lmed, bmed) in sorted(inter.items()):
            tr.write_line(f"T={T:<3d} paper_loop min {lmin * 1e3:8.1f} ms, median {lmed * 1e3:8.1f}   "
                          f"batched min {bmin * 1e3:7.1f} ms, median {bmed * 1e3:7.1f}   "
                          f"speed-up {lmin / bmin:5.2f}x (min/min), {lmed / bmed:5.2f}x (median)")
    mod = sys.modules.get("bench_sampler")
    results = getattr(mod, "RESULTS", None)
    if not results:
        return
    tr.section("meta-batch sampling: speed-up over the paper-style sampler (same run)")
    tr.write_line(f"load average now (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}; "
                  f"CPUs: {os.cpu_count()}")
    for T in sorted({t for t, _ in results}):
        paper = results.get((T, "paper_style"))
        if paper is None:
            continue
        for impl in ("numpy_twin", "cpp_1_thread", "cpp"):
            if (T, impl) in results:
                mn, med = results[(T, impl)]
                tr.write_line(f"T={T:<3d} {impl:13s} min {mn * 1e3:8.3f} ms ({paper[0] / mn:5.1f}x)   "
                              f"median {med * 1e3:8.3f} ms ({paper[1] / med:5.1f}x)")
