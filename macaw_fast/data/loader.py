"""A DataLoader-like iterator over meta-training steps that samples step k+1 while step k trains.

Each step's task batch is ``choose_tasks(train_task_ids, tasks_per_step, seed, step)`` and its data
``sampler.sample(step, task_ids)``; both are pure functions of (seed, step), so an iterator started
at ``start_step=s`` yields exactly what an uninterrupted one yields from step s on.

Overlap: a background thread fills a ring of ``num_buffers`` buffer pairs. The C++ sampler releases
the GIL while it copies, so the copy runs in parallel with the training step on the main thread.
A yielded batch stays valid until the iterator is advanced ``num_buffers - 1`` more times (with
the default 2: until the next ``next()``); copy it, or raise ``num_buffers``, to keep it longer
(for example while an asynchronous host-to-GPU copy from pinned memory is still in flight).
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator, NamedTuple, Sequence

from .batch import Batch
from .sampler import MetaBatchSampler, choose_tasks

__all__ = ["MetaBatchLoader", "MetaStep"]


class MetaStep(NamedTuple):
    """One meta-training step's data."""

    step: int
    task_ids: list[int]
    inner: Batch
    outer: Batch


class _Stop:
    pass


class MetaBatchLoader:
    """Iterates over (step, task_ids, inner, outer) from ``start_step`` on, prefetching one step ahead.

    ``sampler``: a :class:`MetaBatchSampler` (its seed also seeds the task choice).
    ``train_task_ids``: the training tasks (indices into the sampler's tasks).
    ``tasks_per_step``: task-batch size (docs/algorithm.md §4: 5; all tasks when there are fewer).
    ``num_steps``: stop after this many steps (None: never). ``prefetch``: sample on a background
    thread (False: sample synchronously in ``next()``, same output). ``num_buffers``: >= 2.
    """

    def __init__(
        self,
        sampler: MetaBatchSampler,
        train_task_ids: Sequence[int],
        tasks_per_step: int = 5,
        *,
        start_step: int = 0,
        num_steps: int | None = None,
        prefetch: bool = True,
        num_buffers: int = 2,
    ) -> None:
        self.sampler = sampler
        self.train_task_ids = [int(t) for t in train_task_ids]
        if not self.train_task_ids:
            raise ValueError("train_task_ids: expected at least one training task")
        for t in self.train_task_ids:
            if not 0 <= t < sampler.num_tasks:
                raise IndexError(f"train_task_ids: task {t} out of range for {sampler.num_tasks} tasks")
        if tasks_per_step < 1:
            raise ValueError(f"tasks_per_step: expected >= 1, got {tasks_per_step}")
        if start_step < 0:
            raise ValueError(f"start_step: expected >= 0, got {start_step}")
        if num_steps is not None and num_steps < 0:
            raise ValueError(f"num_steps: expected >= 0 or None, got {num_steps}")
        if num_buffers < 2:
            raise ValueError(f"num_buffers: expected >= 2, got {num_buffers}")
        self.tasks_per_step = int(tasks_per_step)
        self.start_step = int(start_step)
        self.num_steps = num_steps
        self.prefetch = prefetch
        self.num_buffers = int(num_buffers)
        self._t = min(self.tasks_per_step, len(self.train_task_ids))

    def tasks_at(self, step: int) -> list[int]:
        """The task batch of ``step``."""
        return choose_tasks(self.train_task_ids, self.tasks_per_step, self.sampler.seed, step)

    def _steps(self) -> Iterator[int]:
        s = self.start_step
        while self.num_steps is None or s < self.start_step + self.num_steps:
            yield s
            s += 1

    def _make(self, step: int, out: tuple[Batch, Batch]) -> MetaStep:
        ids = self.tasks_at(step)
        inner, outer = self.sampler.sample(step, ids, out=out)
        return MetaStep(step, ids, inner, outer)

    def __iter__(self) -> Iterator[MetaStep]:
        buffers = [self.sampler.allocate(self._t) for _ in range(self.num_buffers)]
        if not self.prefetch:
            for i, step in enumerate(self._steps()):
                yield self._make(step, buffers[i % self.num_buffers])
            return
        yield from self._prefetching(buffers)

    def _prefetching(self, buffers: list[tuple[Batch, Batch]]) -> Iterator[MetaStep]:
        free = threading.Semaphore(len(buffers))  # buffers the consumer has given back
        ready: queue.Queue = queue.Queue()
        stop = threading.Event()

        def produce() -> None:
            try:
                for i, step in enumerate(self._steps()):
                    while not free.acquire(timeout=0.1):
                        if stop.is_set():
                            return
                    if stop.is_set():
                        return
                    ready.put(self._make(step, buffers[i % len(buffers)]))
                ready.put(_Stop())
            except BaseException as e:  # handed to the consumer, raised there
                ready.put(e)

        worker = threading.Thread(target=produce, name="macaw-fast-loader", daemon=True)
        worker.start()
        held = False
        try:
            while True:
                if held:
                    free.release()  # the consumer is done with the previous step's buffer
                item = ready.get()
                if isinstance(item, _Stop):
                    return
                if isinstance(item, BaseException):
                    raise item
                held = True
                yield item
        finally:
            stop.set()
            worker.join()
