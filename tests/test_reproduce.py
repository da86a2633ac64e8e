"""`macaw-fast reproduce`: the whole pipeline with tiny budgets, in subprocesses.

End to end; killed (SIGKILL) at random moments and rerun, it ends with the same numbers as an
uninterrupted run; corrupt stage outputs (flipped bytes in a dataset, a truncated checkpoint) are
detected and their stage redone; bad input gets a one-line error naming the flag or path.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import child_pids, wait_all_dead

pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")
pytest.importorskip("rliable")

COLLECT = {"warmup": 100, "width": 16, "batch_size": 16, "eval_interval": 0, "eval_episodes": 1,
           "checkpoint_interval": 100, "tensorboard": False}
TRAIN = {"macaw": {"net_width": 16, "wlinear_dim": 8, "head_width": 8},
         "train": {"batch_size": 32, "random_episodes": 1, "latest_interval": 4, "numbered_interval": 8,
                   "log_interval": 5, "tensorboard": False}}
ENV = {**os.environ, "MACAW_FAST_BOOTSTRAP_REPS": "200", "OMP_NUM_THREADS": "1"}


def _args(tmp, out, *extra):
    cfiles = tmp / "collect.json", tmp / "train.json"
    cfiles[0].write_text(json.dumps(COLLECT))
    cfiles[1].write_text(json.dumps(TRAIN))
    return [sys.executable, "-m", "macaw_fast", "reproduce", "cheetah_dir", "--out", str(out), "--seeds", "0", "1",
            "--steps", "20", "--collect-steps", "400", "--collect-config", str(cfiles[0]), "--train-config",
            str(cfiles[1]), "--buffer-skip", "2", "--eval-interval", "10", "--eval-batches", "1", "--eval-rollouts", "1",
            "--final-batches", "2", "--final-rollouts", "1", "--threads", "1", "--no-progress", *extra]


def _run(tmp, out, *extra, check=True):
    p = subprocess.run(_args(tmp, out, *extra), capture_output=True, text=True, env=ENV, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"reproduce failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def _results(out) -> dict:
    """Everything the pipeline computed, without wall-clock times and the command line."""
    summ = json.loads((out / "results" / "summary.json").read_text())
    entry = summ["cheetah_dir"]["macaw"]
    entry.pop("wall_clock_s")
    entry.pop("command")
    evals = {s: json.loads((out / "eval" / f"seed_{s}.json").read_text()) for s in (0, 1)}
    for e in evals.values():
        e["key"].pop("checkpoint_sha256")   # the checkpoint records the (absolute) data path
    return {"summary": entry, "evals": evals, "learners": {s: _learner(out, s) for s in (0, 1)}}


def _diff(a, b, path="") -> list[str]:
    """Paths where two nested JSON-like values differ (for readable failures)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [p for k in sorted(set(a) | set(b), key=str) for p in _diff(a.get(k), b.get(k), f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for i, (x, y) in enumerate(zip(a, b)) for p in _diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"[:300]]


def _same_results(a, b) -> None:
    ra, rb = _results(a), _results(b)
    d = _diff(ra, rb)
    assert not d, "results differ at:\n" + "\n".join(d[:20])


def _learner(out, seed) -> dict:
    """The final learner state of one seed as numpy arrays (compared bitwise)."""
    import torch

    from macaw_fast.train.loop import load_checkpoint

    st = load_checkpoint(out / "train" / f"seed_{seed}" / "checkpoints" / "latest.pt")
    flat = {}

    def walk(prefix, x):
        if isinstance(x, dict):
            for k, v in x.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(f"{prefix}/{i}", v)
        elif isinstance(x, torch.Tensor):
            flat[prefix] = x.numpy().tobytes()
        else:
            flat[prefix] = x
    walk("", st["learner"])
    return {"step": st["step"], "state": flat}


def _arrays(ds_path) -> dict:
    from macaw_fast.data.store import open_dataset

    ds = open_dataset(ds_path)
    return {(t, f): np.array(ds[t][f]) for t in ds.tasks for f in ("obs", "action", "reward", "mc_return")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reproduce_ref")
    out = tmp / "ref"
    t0 = time.perf_counter()
    p = _run(tmp, out)
    return {"tmp": tmp, "out": out, "seconds": time.perf_counter() - t0, "stdout": p.stdout, "stderr": p.stderr}


def test_end_to_end(reference):
    out = reference["out"]
    assert "cheetah_dir: adapted" in reference["stdout"]
    for stage in ("[1/7] collect", "[2/7] subsample", "[3/7] train seed 0", "[5/7] evaluate seed 0", "[7/7] results"):
        assert stage in reference["stderr"]
    entry = json.loads((out / "results" / "summary.json").read_text())["cheetah_dir"]["macaw"]
    assert entry["seeds"] == [0, 1] and entry["meta_steps"] == 20
    assert len(entry["adapted"]) == 2 and len(entry["unadapted"]) == 2
    assert set(entry["per_task"]) == {"0", "1"}
    assert entry["per_task"]["0"]["label"] == "forward" and entry["per_task"]["1"]["label"] == "backward"
    for k in ("return_adapted", "return_unadapted", "return_gain"):
        a = entry["aggregate"][k]
        assert a["iqm_ci"][0] <= a["iqm"] <= a["iqm_ci"][1] and a["mean_ci"][0] <= a["mean"] <= a["mean_ci"][1]
    # the per-seed means are the means of the per-task values
    for i in range(2):
        assert entry["adapted"][i] == pytest.approx(np.mean([entry["per_task"][t]["adapted"][i] for t in ("0", "1")]))
    assert "| 0 (forward) |" in (out / "results" / "table.md").read_text()
    assert "Mean velocity per episode" in (out / "results" / "table.md").read_text()
    assert all(len(entry["per_task"][t]["velocity_adapted"]) == 2 for t in ("0", "1"))
    assert (out / "results" / "curves.png").stat().st_size > 1000
    # the data's quality, as `macaw-fast quality` computes it for the collection
    from macaw_fast.collect.quality import collection_quality

    assert json.loads((out / "results" / "data_quality.json").read_text()) == \
        json.loads(json.dumps(collection_quality(str(out / "collect"))))
    assert "| 1 | backward |" in (out / "results" / "data_quality.md").read_text()
    # one random-policy reference per task for every seed: the normalised scores are (R - R_random) /
    # (R_best - R_random) with the per_task "random" the summary reports
    for t, d in entry["per_task"].items():
        for r, z in zip(d["adapted"], d["normalised_adapted"]):
            if d["data_best"] > d["random"]:
                assert z == pytest.approx((r - d["random"]) / (d["data_best"] - d["random"]), rel=1e-9)
            else:                                 # this tiny run's data may not beat random
                assert z is None
    assert any(z is not None for d in entry["per_task"].values() for z in d["normalised_adapted"])
    ev = json.loads((out / "eval" / "seed_0.json").read_text())["result"]
    ev1 = json.loads((out / "eval" / "seed_1.json").read_text())["result"]
    assert ev["random"] == ev1["random"]
    assert all(len(v) == 2 and len(v[0]) == 1 for v in ev["adapted_all"].values())   # 2 batches x 1 rollout
    assert all(len(v) == 2 for v in ev["unadapted_all"].values())
    # a second run finds every stage done and changes nothing
    before = _results(out)
    p = _run(reference["tmp"], out)
    assert "failed verification" not in p.stderr and "again" not in p.stderr
    assert _results(out) == before


def test_an_evaluation_made_with_another_reference_is_recomputed(reference, tmp_path):
    """Final evaluations written before the random-policy reference was seeded by the task (their
    key has no "reference") are not reused: reproduce evaluates again and the numbers return."""
    out = tmp_path / "old_ref"
    shutil.copytree(reference["out"], out)
    before = _results(out)
    path = out / "eval" / "seed_1.json"
    d = json.loads(path.read_text())
    del d["key"]["reference"]
    d["result"]["random"] = {t: v - 50.0 for t, v in d["result"]["random"].items()}
    path.write_text(json.dumps(d))
    # the plan says so too
    p = subprocess.run(_args(reference["tmp"], out, "--dry-run"), capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 0, p.stderr
    status = {ln.split()[2]: ln for ln in p.stdout.splitlines() if ln.startswith("evaluate seed")}
    assert " done " in status["0"] and " to do " in status["1"], status
    _run(reference["tmp"], out)
    assert json.loads(path.read_text())["key"]["reference"]["seeded_by"] == "task"
    assert _results(out) == before


def test_a_baseline_added_to_a_finished_reproduction(reference, tmp_path):
    """`--algos macaw meta_bc` on a copy of a finished MACAW reproduction trains and evaluates only
    the baseline (MACAW's stages are reused untouched) and reports both algorithms."""
    out = tmp_path / "both"
    shutil.copytree(reference["out"], out)
    before = _results(out)
    p = _run(reference["tmp"], out, "--algos", "macaw", "meta_bc")
    assert "train meta_bc seed 0" in p.stderr and "evaluate meta_bc seed 1" in p.stderr and "[11/11] results" in p.stderr
    assert "train seed 0: " in p.stderr and "again" not in p.stderr
    assert _results(out) == before                                     # MACAW's numbers and learners unchanged
    summ = json.loads((out / "results" / "summary.json").read_text())["cheetah_dir"]
    assert set(summ) == {"macaw", "meta_bc"} and summ["meta_bc"]["seeds"] == [0, 1]
    assert summ["meta_bc"]["meta_steps"] == 20 and len(summ["meta_bc"]["adapted"]) == 2
    from macaw_fast.train.loop import load_checkpoint

    ck = load_checkpoint(out / "train" / "meta_bc" / "seed_1" / "checkpoints" / "latest.pt")
    assert ck["learner"]["format"] == "macaw-fast/meta-bc" and ck["step"] == 20
    assert (out / "eval" / "meta_bc" / "seed_0.json").exists()
    table = (out / "results" / "table.md").read_text()
    assert "## macaw" in table and "## meta_bc" in table
    assert "### cheetah_dir: Meta-BC, 20 meta-steps" in table and "### cheetah_dir: MACAW, 20 meta-steps" in table
    assert set(summ["meta_bc"]["wall_clock_s"]) >= {"train_meta_bc_seed_0", "evaluate_meta_bc"}
    assert not any(k.startswith("train_seed") or k == "evaluate" for k in summ["meta_bc"]["wall_clock_s"])
    assert "evaluate" in summ["macaw"]["wall_clock_s"] and "evaluate_meta_bc" not in summ["macaw"]["wall_clock_s"]
    assert (out / "results" / "curves_meta_bc.png").stat().st_size > 1000
    assert (out / "results" / "comparison.png").stat().st_size > 1000


def test_mt_ft_is_tuned_on_training_tasks_and_evaluated_with_the_best_step_size(reference, tmp_path):
    """`--algos macaw mt_ft`: mt_ft trains, its fine-tuning step sizes (value x policy) are swept on
    training tasks for each step count (1 and --ft-more-steps), the best pair by mean normalised
    return over seeds is used in the final evaluation of both rows (recomputed here from the
    checkpoint), a diverged pair scores None, and new step sizes redo only the sweep and mt_ft's
    evaluations."""
    import torch

    from macaw_fast.train.evaluate import Evaluator
    from macaw_fast.train.loop import RunSetup, load_checkpoint
    from macaw_fast.train.reproduce import FINAL_EVAL_STEP, ReproduceConfig
    from macaw_fast.train.runs import learner_from_state_dict

    out = tmp_path / "mt"
    shutil.copytree(reference["out"], out)
    ft = ["--algos", "macaw", "mt_ft", "--ft-policy-lrs", "0.001", "0.3", "--ft-value-lrs", "1e-5", "1e3",
          "--ft-more-steps", "3", "--tune-tasks", "2"]
    p = _run(reference["tmp"], out, *ft)
    for stage in ("train mt_ft seed 1", "tune mt_ft seed 0", "evaluate mt_ft seed 0", "evaluate mt_ft_k3 seed 1",
                  "[15/15] results"):
        assert stage in p.stderr
    assert "WARNING" not in p.stderr            # MuJoCo never saw a NaN control
    summ = json.loads((out / "results" / "summary.json").read_text())["cheetah_dir"]
    assert set(summ) == {"macaw", "mt_ft", "mt_ft_k3"}
    tunes = [json.loads((out / "eval" / "mt_ft" / f"tune_seed_{s}.json").read_text())["result"] for s in (0, 1)]
    assert tunes[0]["tasks"] == ["0", "1"] and set(tunes[0]["grid"]) == {"1", "3"}
    assert [(e["value_lr"], e["policy_lr"]) for e in tunes[0]["grid"]["3"]] == \
        [(1e-5, 0.001), (1e-5, 0.3), (1e3, 0.001), (1e3, 0.3)]
    for name, k in (("mt_ft", 1), ("mt_ft_k3", 3)):
        f = summ[name]["fine_tuning"]
        crit = "mean_normalised" if all(e["mean_normalised"] is not None
                                        for t in tunes for e in t["grid"][str(k)]) else "mean_return"
        assert f["steps"] == k and f["criterion"] == crit
        score = []
        for i in range(4):
            v = [t["grid"][str(k)][i][crit] for t in tunes]
            score.append(float(np.mean(v)) if all(isinstance(x, float) for x in v) else None)   # "nan": diverged
        assert [e["score"] for e in f["score"]] == pytest.approx(score)
        assert k == 1 or score[2] is None and score[3] is None           # value step size 1000 diverges
        best = max((i for i in range(4) if score[i] is not None), key=lambda i: score[i])
        assert (f["value_lr"], f["policy_lr"]) == [(1e-5, 0.001), (1e-5, 0.3), (1e3, 0.001), (1e3, 0.3)][best]
        # the final evaluation used that pair
        ck = load_checkpoint(out / "train" / "mt_ft" / "seed_1" / "checkpoints" / "latest.pt")
        learner = learner_from_state_dict(ck["learner"])
        learner.set_fine_tuning(ft_steps=k, ft_value_lr=f["value_lr"], ft_policy_lr=f["policy_lr"])
        mc, tc = ReproduceConfig.from_dict(json.loads((out / "reproduce.json").read_text())["config"]).train_configs(
            1, "mt_ft")
        ev = Evaluator(RunSetup(str(out / "data"), mc, tc).ds, ["0", "1"], "cheetah_dir", tc.batch_size, tc.seed)
        threads = torch.get_num_threads()
        res = ev.evaluate(learner, FINAL_EVAL_STEP, 2, 1, unadapted=False, random_episodes=0)
        torch.set_num_threads(threads)
        assert res["adapted"] == json.loads((out / "eval" / name / "seed_1.json").read_text())["result"]["adapted"]
    table = (out / "results" / "table.md").read_text()
    assert "### cheetah_dir: MT + fine-tune, 3 steps, 20 meta-steps" in table and "Fine-tuning: 3 SGD step(s)" in table
    assert "| value lr \\ policy lr | 0.001 | 0.3 |" in table and "| 1000 | n/a | n/a |" in table
    assert (out / "results" / "curves_mt_ft.png").exists() and not (out / "results" / "curves_mt_ft_k3.png").exists()
    assert (out / "results" / "comparison.png").stat().st_size > 1000
    assert "tune_mt_ft" in summ["mt_ft_k3"]["wall_clock_s"] and "tune_mt_ft" not in summ["macaw"]["wall_clock_s"]

    trained = (out / "train" / "mt_ft" / "seed_0" / "checkpoints" / "latest.pt").stat().st_mtime_ns
    p = _run(reference["tmp"], out, *ft[:4], "0.001", "0.01", *ft[6:])
    assert "again" not in p.stderr
    assert (out / "train" / "mt_ft" / "seed_0" / "checkpoints" / "latest.pt").stat().st_mtime_ns == trained
    tune = json.loads((out / "eval" / "mt_ft" / "tune_seed_0.json").read_text())
    assert tune["key"]["policy_lrs"] == [0.001, 0.01]
    assert {e["policy_lr"] for e in tune["result"]["grid"]["1"]} == {0.001, 0.01}
    summ2 = json.loads((out / "results" / "summary.json").read_text())["cheetah_dir"]
    assert {e["policy_lr"] for e in summ2["mt_ft"]["fine_tuning"]["score"]} == {0.001, 0.01}


def test_killed_at_random_moments_ends_with_the_same_results(reference, tmp_path):
    """SIGKILL once inside every stage (at a random moment after the stage announces itself), rerun."""
    out = tmp_path / "killed"
    rng = np.random.default_rng(0)
    kills = []
    for k in range(1, 8):
        proc = subprocess.Popen(_args(tmp_path, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV,
                                text=True)
        for line in proc.stderr:
            if f"[{k}/7]" in line:
                time.sleep(float(rng.uniform(0.0, 1.5 if k == 1 else 0.5)))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    kills.append(k)
                break
        proc.stderr.close()
        proc.wait()
    print("killed in stages", kills)
    assert len(kills) >= 4, f"kills landed only in stages {kills}"
    _run(tmp_path, out)
    _same_results(out, reference["out"])
    ref_data, got_data = _arrays(reference["out"] / "data"), _arrays(out / "data")
    assert ref_data.keys() == got_data.keys()
    for k in ref_data:
        np.testing.assert_array_equal(got_data[k], ref_data[k])
    leftovers = [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs if f.endswith(".tmp")]
    assert not leftovers


def test_parallel_training_ends_with_the_same_results(reference, tmp_path):
    """--jobs 2: the seeds train in two processes at once; every number equals the one-after-another run."""
    out = tmp_path / "jobs"
    p = _run(tmp_path, out, "--jobs", "2")
    assert "[3/7] train seed 0" in p.stderr and "[4/7] train seed 1" in p.stderr and "2 at a time" in p.stderr
    assert "train seed 1: done" in p.stderr
    _same_results(out, reference["out"])
    clock = json.loads((out / "stages" / "wall_clock.json").read_text())
    assert clock["train_seed_0"] > 0 and clock["train_seed_1"] > 0




@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="children die with their parent on Linux")
def test_killed_during_parallel_training_leaves_no_run_training_and_resumes(reference, tmp_path):
    """SIGKILL the pipeline while two training processes run: they die with it (no orphan goes on
    writing a run directory), and the rerun ends with the uninterrupted run's numbers."""
    out = tmp_path / "killed_jobs"
    proc = subprocess.Popen(_args(tmp_path, out, "--jobs", "2"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=ENV, text=True)
    kids = []
    for line in proc.stderr:
        if "[4/7] train seed 1" in line:
            time.sleep(0.5)
            kids = child_pids(proc.pid)
            proc.send_signal(signal.SIGKILL)
            break
    proc.stderr.close()
    proc.wait()
    assert len(kids) == 2, f"expected two training processes, found {kids}"
    assert wait_all_dead(kids), "a training process outlived the killed pipeline"
    _run(tmp_path, out, "--jobs", "2")
    _same_results(out, reference["out"])


def test_plan_total_counts_parallel_training_runs():
    from macaw_fast.train.reproduce import format_plan, plan_total

    rows = [{"stage": "collect", "status": "", "estimate_s": 100.0, "detail": ""},
            *({"stage": f"train seed {s}", "status": "to do", "estimate_s": t, "detail": ""}
              for s, t in enumerate((50.0, 30.0, 30.0))),
            {"stage": "evaluate seed 0", "status": "to do", "estimate_s": 5.0, "detail": ""}]
    assert plan_total(rows) == 215.0
    assert plan_total(rows, 2) == 105.0 + 60.0       # seeds 1 and 2 share one process while seed 0 runs
    assert plan_total(rows, 8) == 105.0 + 50.0
    assert "training runs 2 at a time" in format_plan(rows, 2).splitlines()[-1]
    # three one-thread runs on two cores: each runs at two thirds of its own speed
    assert plan_total(rows, 3, oversubscribed=1.5) == 105.0 + 50.0 * 1.5
    assert plan_total(rows, 3, oversubscribed=0.5) == 105.0 + 50.0
    assert "1.5x as many threads as cores" in format_plan(rows, 3, 1.5).splitlines()[-1]


def test_a_second_reproduce_on_the_same_directory_is_refused_and_temporaries_are_removed(reference, tmp_path):
    """While one reproduce holds OUT, another on OUT fails at once with the path named and touches
    nothing; temporaries left by writes that a kill interrupted are removed by the next run."""
    import fcntl

    out = tmp_path / "run"
    shutil.copytree(reference["out"], out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    fd = os.open(out / ".reproduce.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)      # as a running reproduce holds it
    try:
        p = _run(reference["tmp"], out, check=False)
    finally:
        os.close(fd)
    assert p.returncode == 1 and "another `macaw-fast reproduce` is running" in p.stderr and str(out) in p.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    stale = [out / "stages" / ".train_seed_0.json.abcd1234.tmp", out / "eval" / ".seed_1.json.x.tmp",
             out / "results" / ".table.md.y.tmp"]
    for f in stale:
        f.write_text("{")
    p = _run(reference["tmp"], out)
    for f in stale:
        assert not f.exists() and f"removed {f}" in p.stderr
    _same_results(out, reference["out"])


def _flip(path, offset_from_end=64):
    with open(path, "r+b") as f:
        f.seek(-offset_from_end, os.SEEK_END)
        b = f.read(1)
        f.seek(-offset_from_end, os.SEEK_END)
        f.write(bytes([b[0] ^ 0x01]))


def test_corrupt_training_data_is_made_again(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference["out"], out)
    _flip(out / "data" / "0" / "obs.npy")
    p = _run(reference["tmp"], out)
    assert "subsample: the training data failed verification" in p.stderr
    _same_results(out, reference["out"])
    from macaw_fast.data.store import verify_dataset

    verify_dataset(out / "data", progress=False)


def test_corrupt_collected_data_is_collected_again(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference["out"], out)
    _flip(out / "collect" / "dataset" / "1" / "reward.npy")
    p = _run(reference["tmp"], out)
    assert "collect: the collected data failed verification" in p.stderr
    _same_results(out, reference["out"])


def test_truncated_checkpoint_is_detected_and_training_redone(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference["out"], out)
    latest = out / "train" / "seed_0" / "checkpoints" / "latest.pt"
    size = latest.stat().st_size
    with open(latest, "r+b") as f:
        f.truncate(size // 2)
    p = _run(reference["tmp"], out)
    assert "latest.pt" in p.stderr and "corrupt" in p.stderr
    assert "resuming from" in p.stderr and "step_0000016.pt" in p.stderr
    _same_results(out, reference["out"])


def test_flipped_checkpoint_bits_are_detected(reference, tmp_path):
    from macaw_fast.train.loop import CheckpointError, load_checkpoint

    ck = tmp_path / "latest.pt"
    shutil.copy(reference["out"] / "train" / "seed_1" / "checkpoints" / "latest.pt", ck)
    load_checkpoint(ck)
    # flip a low bit inside the first tensor's data record (the zip's stored payload)
    raw = bytearray(ck.read_bytes())
    i = raw.index(b"data/0") + 200
    raw[i] ^= 0x01
    ck.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum mismatch|could not be read"):
        load_checkpoint(ck)


# ------------------------------------------------------------------------------------------------
# bad input: one line naming the flag or path, nothing written


def _cli(*args, env=ENV):
    return subprocess.run([sys.executable, "-m", "macaw_fast", "reproduce", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_unknown_family(tmp_path):
    p = _cli("hopper_vel", "--out", str(tmp_path / "x"))
    assert p.returncode == 2 and "invalid choice: 'hopper_vel'" in p.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("flag", ["--steps", "--collect-steps", "--eval-interval", "--final-batches", "--buffer-skip"])
def test_budgets_must_be_positive(tmp_path, flag):
    for bad in ("0", "-3"):
        p = _cli("cheetah_dir", "--out", str(tmp_path / "x"), flag, bad)
        assert p.returncode == 2 and f"argument {flag}: expected an integer >= 1" in p.stderr
    assert not (tmp_path / "x").exists()


def test_abbreviated_flags_are_refused(tmp_path):
    p = _cli("cheetah_dir", "--out", str(tmp_path / "x"), "--step", "5", "--dry-run")
    assert p.returncode == 2 and "unrecognized arguments: --step" in p.stderr


def test_out_holding_another_family(reference, tmp_path):
    p = _cli("cheetah_vel", "--out", str(reference["out"]), "--dry-run")
    assert p.returncode == 1
    assert p.stderr.strip().count("\n") == 0
    assert "holds a cheetah_dir reproduction, not cheetah_vel" in p.stderr


def test_changed_setting_is_refused(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference["out"], out)
    args = _args(reference["tmp"], out)
    args[args.index("--buffer-skip") + 1] = "3"
    p = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 1 and "--buffer-skip: " in p.stderr and "made with 2, got 3" in p.stderr
    _same_results(out, reference["out"])


def test_out_that_is_not_a_reproduction(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    p = _cli("cheetah_dir", "--out", str(tmp_path / "mine"), "--dry-run")
    assert p.returncode == 1 and "not a reproduce directory" in p.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_unwritable_out(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    p = _cli("cheetah_dir", "--out", str(f / "sub"), "--collect-steps", "400")
    assert p.returncode == 1 and str(f) in p.stderr and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0
    p = _cli("cheetah_dir", "--out", "/proc/macaw-fast-test", "--collect-steps", "400")
    assert p.returncode == 1 and "/proc/macaw-fast-test" in p.stderr and "Traceback" not in p.stderr


def test_dry_run_prints_the_plan_and_writes_nothing(reference, tmp_path):
    p = _cli("cheetah_dir", "--out", str(tmp_path / "new"), "--dry-run", "--steps", "1000")
    assert p.returncode == 0, p.stderr
    for stage in ("collect", "subsample", "train seed 0", "train seed 2", "evaluate seed 1", "results", "total"):
        assert stage in p.stdout
    assert not (tmp_path / "new").exists()
    # on a finished reproduction every stage is done
    args = _args(reference["tmp"], reference["out"], "--dry-run")
    p = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = {ln.split()[0] + (" " + ln.split()[2] if ln.startswith(("train", "evaluate")) else ""): ln
             for ln in p.stdout.splitlines()[2:] if ln.strip()}
    for k in ("collect", "subsample", "train 0", "train 1", "evaluate 0", "evaluate 1"):
        assert " done " in lines[k], lines[k]


def test_plan_prices_each_algorithm_at_its_own_measured_rate(tmp_path):
    from macaw_fast.train.reproduce import ReproduceConfig, Reproduction, measure_rates

    cfg = ReproduceConfig("cheetah_dir", seeds=[0], algos=["macaw", "mt_ft", "focal"], steps=30,
                          collect_steps=400, threads=1)
    rates = measure_rates(cfg, repeats=1)
    assert set(rates["step_s"]) == {"macaw", "mt_ft", "focal"}
    assert all(v > 0 for v in rates["step_s"].values())
    # the plan multiplies each run's remaining steps by that algorithm's own rate
    fake = {**rates, "env_step_s": 0.0, "act_s": 0.0, "step_s": {"macaw": 1.0, "mt_ft": 0.01, "focal": 0.1}}
    rows = {r["stage"]: r["estimate_s"] for r in Reproduction(str(tmp_path / "r"), cfg).plan(fake)}
    assert rows["train seed 0"] == pytest.approx(30.0)
    assert rows["train mt_ft seed 0"] == pytest.approx(0.3)
    assert rows["train focal seed 0"] == pytest.approx(3.0)


def test_a_preset_that_sets_the_algorithm_is_refused():
    from macaw_fast.train.reproduce import ReproduceConfig

    with pytest.raises(ValueError, match="--preset mt_ft_k20: sets the algorithm, which reproduce takes from --algos"):
        ReproduceConfig("cheetah_dir", presets=["mt_ft_k20"]).validate()


@pytest.mark.parametrize("overrides, match", [
    ({"matmul": "fp16"}, "--collect-config: matmul: expected one of float32, bfloat16, got 'fp16'"),
    ({"batch_size": 0}, "--collect-config: batch_size: expected an int >= 1"),
    ({"start_steps": 5}, r"--collect-config: unknown collection setting\(s\) \['start_steps'\]"),
])
def test_a_bad_collection_setting_names_collect_config(overrides, match):
    from macaw_fast.train.reproduce import ReproduceConfig

    with pytest.raises(ValueError, match=match):
        ReproduceConfig("cheetah_dir", collect_overrides=overrides).validate()


@pytest.mark.parametrize("cfg, match", [
    ({"train": {"latent_dim": -1}}, "train.latent_dim: expected a positive integer, got -1"),    # focal's field
    ({"train": {"ft_steps": 0}}, "train.ft_steps: expected a positive integer, got 0"),           # mt_ft's field
    ({"macaw": {"net_width": -3}}, "config.net_width: expected a positive integer, got -3"),
])
def test_a_bad_training_setting_of_any_algorithm_names_the_file_before_any_work(tmp_path, cfg, match):
    f = tmp_path / "train.json"
    f.write_text(json.dumps(cfg))
    p = _cli("cheetah_dir", "--out", str(tmp_path / "x"), "--algos", "macaw", "mt_ft", "focal", "--train-config", str(f))
    assert p.returncode == 1, p.stderr
    assert p.stderr.strip() == f"macaw-fast reproduce: error: --train-config {f}: {match}"
    assert not (tmp_path / "x").exists()


def test_a_bad_collection_file_is_named(tmp_path):
    f = tmp_path / "collect.json"
    f.write_text('{"matmul": "fp16"}')
    p = _cli("cheetah_dir", "--out", str(tmp_path / "x"), "--collect-config", str(f))
    assert p.returncode == 1, p.stderr
    assert p.stderr.strip() == (f"macaw-fast reproduce: error: --collect-config {f}: "
                                "matmul: expected one of float32, bfloat16, got 'fp16'")
    assert not (tmp_path / "x").exists()


def test_an_algorithms_own_training_fields_set_only_its_runs():
    from macaw_fast.train.reproduce import ReproduceConfig

    cfg = ReproduceConfig("cheetah_dir", algos=["macaw", "mt_ft", "focal"],
                          train_overrides={"ft_steps": 3, "latent_dim": 4, "batch_size": 64}).validate()
    tcs = {a: cfg.train_configs(0, a)[1] for a in cfg.algos}
    assert (tcs["macaw"].ft_steps, tcs["macaw"].latent_dim, tcs["macaw"].batch_size) == (None, None, 64)
    assert (tcs["mt_ft"].ft_steps, tcs["mt_ft"].latent_dim) == (3, None)
    assert (tcs["focal"].ft_steps, tcs["focal"].latent_dim) == (None, 4)
    for tc in tcs.values():
        tc.validate()


def test_bootstrap_intervals_are_reproducible():
    """rliable's stratified bootstrap draws from numpy's global RNG (it ignores random_state):
    interval_estimates must not depend on that state, and must leave it as it was."""
    from macaw_fast.train.stats import interval_estimates

    x = np.random.default_rng(3).normal(size=(3, 5))
    np.random.seed(1)
    a = interval_estimates(x, reps=300)
    state = np.random.get_state()[1].copy()
    np.random.seed(2)
    np.random.random(17)
    b = interval_estimates(x, reps=300)
    assert a == b
    np.random.seed(1)
    interval_estimates(x, reps=300)
    np.testing.assert_array_equal(np.random.get_state()[1], state)


def test_full_disk_is_a_one_line_error_and_damages_nothing(reference, tmp_path):
    """Writes that fail part-way (RLIMIT_FSIZE: every file is capped at 64 KiB, as on a full disk)
    stop the pipeline with one line naming the file; rerun with room, it ends as an uninterrupted run."""
    import resource

    def cap():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)        # write() then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    out = tmp_path / "full"
    p = subprocess.run(_args(tmp_path, out), capture_output=True, text=True, env=ENV, timeout=600, preexec_fn=cap)
    assert p.returncode == 1, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("macaw-fast reproduce: error: ") and "Traceback" not in p.stderr
    assert "File too large" in last and str(out) in last, last           # names the file being written
    _run(tmp_path, out)
    _same_results(out, reference["out"])
