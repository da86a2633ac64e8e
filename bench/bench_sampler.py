"""Meta-batch sampling: the paper's per-task Python sampling vs the numpy twin vs the C++ sampler.

Run: ``pytest bench/bench_sampler.py --benchmark-only`` (one table per T, then a summary of the
paper-style / C++ time ratios with the load average). B = 256, Cheetah rows,
tasks memory-mapped from .npy files larger than the L3 cache (bench/conftest.py); each round
samples a new step, so new tasks and rows. ``memcpy`` copies the same number of bytes as one
meta-batch from a 256 MB memory-mapped file (a new offset each round) for a GB/s reference.
The timed call is the whole user-facing step: ``choose_tasks`` plus ``MetaBatchSampler.sample``
into preallocated buffers. ``cpp`` uses the sampler's default thread count (min(4, CPUs)).
"""

from __future__ import annotations

import itertools
import os
import random

import numpy as np
import pytest
import torch

from macaw_fast.data import FIELDS
from macaw_fast.data.sampler import MetaBatchSampler, choose_tasks

B = 256
ROW_FLOATS = 20 * 3 + 6 + 4  # obs, next_obs, terminal_obs, action, 4 scalars


def paper_style_sample(tasks, task_ids, batch_size):
    """The paper's way: per task, randint / random.sample indices, numpy fancy indexing per field, then stack.

    (The task batch itself is drawn with ``random.sample`` as the paper's code does; the other
    implementations use ``choose_tasks``, which is included in their time.)
    """
    inner_fields = {f: [] for f in FIELDS}
    outer_fields = {f: [] for f in FIELDS}
    for t in task_ids:
        task = tasks[t]
        n = len(task["obs"])
        start = np.random.randint(0, n - batch_size)
        window = slice(start, start + batch_size)
        rows = np.array(random.sample(range(n), batch_size))
        for f in FIELDS:
            inner_fields[f].append(task[f][window])
            outer_fields[f].append(task[f][rows])
    inner = {f: torch.from_numpy(np.stack(v)) for f, v in inner_fields.items()}
    outer = {f: torch.from_numpy(np.stack(v)) for f, v in outer_fields.items()}
    return inner, outer


@pytest.mark.parametrize("impl", ["paper_style", "numpy_twin", "cpp_1_thread", "cpp", "memcpy"])
@pytest.mark.parametrize("T", [5, 35])
def test_sample_meta_batch(benchmark, cheetah_memmaps, tmp_path_factory, impl, T):
    benchmark.group = f"meta-batch sampling T={T} B={B}"
    nbytes = 2 * T * B * ROW_FLOATS * 4
    all_ids = list(range(len(cheetah_memmaps)))
    steps = itertools.count()
    benchmark.extra_info.update(
        bytes_per_call=nbytes, torch=torch.__version__, cpus=os.cpu_count(), tasks=len(cheetah_memmaps),
        rows_per_task=len(cheetah_memmaps[0]["obs"]),
    )
    if impl == "paper_style":
        random.seed(0)
        np.random.seed(0)

        def fn():
            paper_style_sample(cheetah_memmaps, random.sample(all_ids, T), B)

    elif impl == "memcpy":
        path = tmp_path_factory.mktemp("memcpy") / "flat.npy"
        size = 256 << 20
        src = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(size,))
        src[...] = 1
        dst = np.empty(nbytes, np.uint8)
        offsets = itertools.cycle(range(0, size - nbytes, nbytes))

        def fn():
            o = next(offsets)
            np.copyto(dst, src[o : o + nbytes])

    else:
        backend = "numpy" if impl == "numpy_twin" else "cpp"
        threads = 1 if impl == "cpp_1_thread" else None
        sampler = MetaBatchSampler(cheetah_memmaps, B, seed=0, backend=backend, num_threads=threads)
        benchmark.extra_info["num_threads"] = sampler.num_threads
        out = sampler.allocate(T)

        def fn():
            step = next(steps)
            sampler.sample(step, choose_tasks(all_ids, T, 0, step), out=out)

    fn()  # warm-up (first touch of the pages)
    benchmark.extra_info["loadavg_before"] = os.getloadavg()[0]
    benchmark(fn)
    stats = benchmark.stats.stats
    benchmark.extra_info["loadavg_after"] = os.getloadavg()[0]
    benchmark.extra_info["GB/s"] = nbytes / stats.mean / 1e9
    RESULTS[(T, impl)] = (stats.min, stats.median)


#: (T, impl) -> (min, median) seconds of this session, for the ratio summary (bench/conftest.py).
RESULTS: dict[tuple[int, str], tuple[float, float]] = {}
