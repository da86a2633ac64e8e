"""Child processes N at a time (macaw_fast._procs): order, output, failure, and no orphans.

`reproduce --jobs N` and `train --seeds` run training in child processes. A child that outlived a
killed parent would go on writing a run directory that the rerun trains too, so every child must
die with its parent; these tests kill the parent with SIGKILL and look for survivors.
"""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from helpers import assert_same_tree, child_pids, wait_all_dead

from macaw_fast._procs import Job, JobFailed, run_jobs


def _py(code: str) -> list:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_jobs_run_at_most_n_at_a_time_and_their_output_is_prefixed(tmp_path):
    log = tmp_path / "log"
    code = f"""
        import os, sys, time, fcntl
        def mark(what):
            with open({str(log)!r}, "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX); f.write(what + "\\n")
        mark("start " + sys.argv[1]); print("hello from", sys.argv[1]); time.sleep(0.3); mark("end " + sys.argv[1])
    """
    jobs = [Job(f"job {i}", _py(code) + [str(i)]) for i in range(5)]
    sink, started, ended = io.StringIO(), [], []
    run_jobs(jobs, 2, on_start=lambda j: started.append(j.name), on_end=lambda j, s: ended.append((j.name, s)),
             sink=sink, poll_s=0.02)
    assert started == [f"job {i}" for i in range(5)]
    assert sorted(n for n, _ in ended) == started and all(s >= 0.3 for _, s in ended)
    running, peak = 0, 0
    for line in log.read_text().splitlines():
        running += 1 if line.startswith("start") else -1
        peak = max(peak, running)
    assert peak == 2
    for i in range(5):
        assert f"[job {i}] hello from {i}\n" in sink.getvalue()


def test_a_failed_job_stops_the_others_and_names_itself(tmp_path):
    sink = io.StringIO()
    jobs = [Job("slow", _py("import time; time.sleep(60)")),
            Job("bad", _py("import sys; print('something broke', file=sys.stderr); sys.exit(3)")),
            Job("never", _py("print('should not start')"))]
    t0 = time.monotonic()
    with pytest.raises(JobFailed, match=r"bad: exited with status 3") as e:
        run_jobs(jobs, 2, sink=sink, poll_s=0.02)
    assert e.value.returncode == 3 and time.monotonic() - t0 < 30
    assert "[bad] something broke" in sink.getvalue() and "should not start" not in sink.getvalue()




@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_children_die_with_a_killed_parent():
    """The parent runs two jobs that would sleep a minute (a child of `python -m macaw_fast`'s kind:
    they call die_with_parent_if_asked first); SIGKILL the parent; the children are gone."""
    child = "from macaw_fast._procs import die_with_parent_if_asked; die_with_parent_if_asked(); " \
            "print('up', flush=True); import time; time.sleep(60)"
    parent = textwrap.dedent(f"""
        import sys
        from macaw_fast._procs import Job, run_jobs
        run_jobs([Job(str(i), [sys.executable, "-c", {child!r}]) for i in range(2)], 2)
    """)
    p = subprocess.Popen([sys.executable, "-c", parent], stderr=subprocess.PIPE, text=True)
    up = 0
    for line in p.stderr:
        up += "up" in line
        if up == 2:
            break
    kids = child_pids(p.pid)
    assert len(kids) == 2
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert wait_all_dead(kids), "a child outlived its killed parent"


def test_a_child_whose_parent_is_already_gone_exits_at_once():
    code = "import os; os.environ['MACAW_FAST_DIE_WITH'] = '1'; " \
           "from macaw_fast._procs import die_with_parent_if_asked; die_with_parent_if_asked(); print('ran on')"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "ran on" not in p.stdout


def test_train_seeds_in_parallel_processes_equal_the_in_process_runs(tmp_path, monkeypatch):
    """`train --seeds` when it chooses processes: the same checkpoints as training each seed here."""
    from macaw_fast.train import runs
    from macaw_fast.train.config import resolve_config
    from macaw_fast.train.loop import load_checkpoint, train
    from macaw_fast.train.scripted import make_scripted_dataset

    data = make_scripted_dataset(tmp_path / "ds", "cheetah_dir", episodes_per_task=2, episode_steps=60, seed=1)
    mc, tc = resolve_config(["cheetah_dir"], {"net_width": 16, "wlinear_dim": 8, "head_width": 8},
                            {"batch_size": 16, "threads": 1, "progress": False, "tensorboard": False,
                             "eval_interval": 0, "steps": 6})
    monkeypatch.setattr(runs, "choose_seed_strategy", lambda *a, **k: {
        "strategy": "parallel", "processes": 2, "cores": 2, "step_s_1_thread": 0.0, "step_s_all_threads": 0.0})
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert runs.run_seeds(str(data), str(tmp_path / "par"), mc, tc, [0, 1]) == 0
    for s in (0, 1):
        tc_s = type(tc).from_dict({**tc.to_dict(), "seed": s})
        train(data, tmp_path / "seq" / f"seed_{s}", mc, tc_s)
        a = load_checkpoint(tmp_path / "par" / f"seed_{s}" / "checkpoints" / "latest.pt")
        b = load_checkpoint(tmp_path / "seq" / f"seed_{s}" / "checkpoints" / "latest.pt")
        assert a["step"] == b["step"] == 6
        assert_same_tree(a["learner"], b["learner"])

