"""Child processes that run N at a time and never outlive the process that started them.

Used by ``macaw-fast reproduce --jobs N`` (one training run per process) and ``macaw-fast train
--seeds``. A child that survived its parent (killed with SIGKILL, say) would keep writing a run
directory while the rerun of the same command trains it too, so every child started here asks the
kernel to kill it when its parent dies (Linux ``PR_SET_PDEATHSIG``; elsewhere the parent's
``finally`` is the only guard). The child does this itself, at start-up, when it finds
``MACAW_FAST_DIE_WITH`` in its environment: :func:`die_with_parent_if_asked` (called by the CLI's
``main`` and by ``train/_job.py``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

#: Environment variable naming the pid of the parent a child must not outlive.
PARENT_ENV = "MACAW_FAST_DIE_WITH"


def die_with_parent_if_asked() -> None:
    """If started by :func:`run_jobs`: be killed (SIGKILL) when the parent dies, and exit now if it
    already has."""
    pid = os.environ.pop(PARENT_ENV, None)
    if not pid:
        return
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != int(pid):     # the parent died before prctl took effect
        os._exit(1)


@dataclass
class Job:
    """One command to run: ``name`` prefixes each line of its output."""

    name: str
    cmd: list


class JobFailed(RuntimeError):
    """A job exited with a non-zero status (the jobs still running were stopped)."""

    def __init__(self, job: Job, returncode: int) -> None:
        super().__init__(f"{job.name}: exited with status {returncode} (its output is above, each line prefixed "
                         f"[{job.name}])")
        self.job, self.returncode = job, returncode


def _relay(stream, prefix: str, sink) -> None:
    for line in iter(stream.readline, ""):
        sink.write(f"[{prefix}] {line}" if line.endswith("\n") else f"[{prefix}] {line}\n")
        sink.flush()
    stream.close()


def run_jobs(jobs: list[Job], parallel: int, *, on_start=None, on_end=None, env: dict | None = None,
             sink=None, poll_s: float = 0.2) -> None:
    """Run ``jobs`` in order, at most ``parallel`` at a time; their stdout and stderr go to ``sink``
    (default: sys.stderr), each line prefixed with ``[name]``.

    ``on_start(job)`` and ``on_end(job, seconds)`` are called as each starts and ends well. The first
    job that fails stops the others (SIGTERM, then SIGKILL after 10 s) and raises :class:`JobFailed`;
    an exception here (KeyboardInterrupt included) stops them the same way before it propagates.
    """
    if parallel < 1:
        raise ValueError(f"parallel: expected an integer >= 1, got {parallel!r}")
    sink = sink or sys.stderr
    child_env = {**(os.environ if env is None else env), PARENT_ENV: str(os.getpid())}
    pending = list(jobs)
    running: list = []              # (job, Popen, start time, relay thread)
    try:
        while pending or running:
            while pending and len(running) < parallel:
                job = pending.pop(0)
                if on_start:
                    on_start(job)
                p = subprocess.Popen(job.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=child_env, bufsize=1)
                t = threading.Thread(target=_relay, args=(p.stdout, job.name, sink), daemon=True)
                t.start()
                running.append((job, p, time.perf_counter(), t))
            time.sleep(poll_s)
            for entry in list(running):
                job, p, t0, t = entry
                if p.poll() is None:
                    continue
                running.remove(entry)
                t.join(timeout=5)
                if p.returncode != 0:
                    raise JobFailed(job, p.returncode)
                if on_end:
                    on_end(job, time.perf_counter() - t0)
    finally:
        _stop([p for _, p, _, _ in running])


def _stop(procs: list, grace_s: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


__all__ = ["Job", "JobFailed", "run_jobs", "die_with_parent_if_asked", "PARENT_ENV"]
