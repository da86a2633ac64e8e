"""Training loop: bit-exact resume after kill -9, NaN guard, bad configuration values."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import assert_same_tree

from macaw_fast.cli import main
from macaw_fast.train.config import resolve_config
from macaw_fast.train.loop import load_checkpoint, read_jsonl, train

TINY = ["--net-width", "16", "--wlinear-dim", "8", "--head-width", "8", "--batch-size", "16", "--threads", "1",
        "--progress", "false", "--tensorboard", "false", "--eval-interval", "0"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from macaw_fast.train.scripted import make_scripted_dataset

    return make_scripted_dataset(tmp_path_factory.mktemp("data") / "ds", "cheetah_dir", episodes_per_task=2,
                                 episode_steps=60, seed=1)


def tiny(**train):
    return resolve_config(["cheetah_dir"], {"net_width": 16, "wlinear_dim": 8, "head_width": 8},
                          {"batch_size": 16, "threads": 1, "progress": False, "tensorboard": False,
                           "eval_interval": 0, **train})


def _state(path):
    return load_checkpoint(path)["learner"]



def test_resume_after_kill9_is_bit_exact(dataset, tmp_path):
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "macaw_fast", "train", "--data", str(dataset), "--out", str(run),
           "--preset", "cheetah_dir", "--head-width", "8", "--steps", "100000", "--latest-interval", "4", *TINY]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = run / "checkpoints" / "latest.pt"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if latest.exists() and load_checkpoint(latest)["step"] >= 4:
                break
            assert p.poll() is None, p.stderr.read().decode()
            time.sleep(0.05)
        else:
            pytest.fail("no checkpoint at step >= 4 within 120 s")
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    k = load_checkpoint(latest)["step"]
    assert k >= 4, k
    # The uninterrupted reference runs to a few steps past wherever the kill landed (a fast machine
    # can write several checkpoints before the poll above sees the first), so the resume always
    # has steps left to do.
    N = k + 6
    mc, tc = tiny(steps=N, latest_interval=4)
    train(dataset, tmp_path / "full", mc, tc)
    full = _state(tmp_path / "full" / "checkpoints" / "latest.pt")
    assert main(["train", "--resume", str(run), "--steps", str(N), "--progress", "false"]) == 0
    resumed = _state(latest)
    assert load_checkpoint(latest)["step"] == N
    assert_same_tree(resumed, full)
    # The log holds each training record once, in order, after the resume.
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == sorted(set(steps))


def test_nan_guard_stops_and_keeps_last_good_checkpoint(dataset, tmp_path, monkeypatch):
    from macaw_fast.macaw import MetaLearner

    orig = MetaLearner.meta_step
    calls = {"n": 0}

    def poisoned(self, inner, outer):
        m = orig(self, inner, outer)
        calls["n"] += 1
        if calls["n"] == 7:  # meta-step number 6 produces an inf weight
            with torch.no_grad():
                self.policy.layers[0].z[0] = float("inf")
        return m

    monkeypatch.setattr(MetaLearner, "meta_step", poisoned)
    mc, tc = tiny(steps=20, latest_interval=4, log_interval=1)
    with pytest.raises(FloatingPointError, match=r"step 6: .*NaN/inf.*latest\.pt"):
        train(dataset, tmp_path / "run", mc, tc)
    st = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert st["step"] == 4
    assert all(torch.isfinite(v).all() for v in st["learner"]["policy"].values())
    recs = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert recs[-1]["kind"] == "error" and "NaN/inf" in recs[-1]["error"]


def test_nonfinite_loss_is_reported(dataset, tmp_path):
    # Inf rewards -> the sampler or meta-step refuses; the run must stop with a clear error.
    mc, tc = tiny(steps=5, latest_interval=2)
    mc.outer_value_lr = 1e30
    mc.outer_policy_lr = 1e30
    mc.lrlr = 1e30
    with pytest.raises(FloatingPointError, match="last good checkpoint"):
        train(dataset, tmp_path / "run", mc, tc)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")["step"] in (0, 2, 4)


def _cli(capsys, *argv):
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def test_bad_config_values_are_clear_errors_and_overwrite_nothing(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--data", str(dataset), "--out", str(out), "--steps", "2", *TINY]
    rc, err = _cli(capsys, *base, "--outer-policy-lr", "-1")
    assert rc == 1 and "outer_policy_lr" in err and "non-negative" in err
    rc, err = _cli(capsys, *base, "--preset", "nope")
    assert rc == 1 and "unknown preset 'nope'" in err and "cheetah_vel" in err
    rc, err = _cli(capsys, *base, "--test-tasks", "0,7")
    assert rc == 1 and "indices [7]" in err
    rc, err = _cli(capsys, *base, "--preset", "cheetah_vel")
    assert rc == 1 and "expects a dataset of family cheetah_vel" in err
    rc, err = _cli(capsys, *base, "--inner-mode", "sideways")
    assert rc == 1 and "inner_mode" in err
    assert not out.exists()  # nothing was created by the failures
    assert _cli(capsys, *base)[0] == 0
    cfg = (out / "config.json").read_bytes()
    ck = (out / "checkpoints" / "latest.pt").read_bytes()
    rc, err = _cli(capsys, *base, "--seed", "3")
    assert rc == 1 and "already exists" in err
    assert (out / "config.json").read_bytes() == cfg and (out / "checkpoints" / "latest.pt").read_bytes() == ck


def test_dataset_whose_obs_dim_does_not_match_the_env(tmp_path, capsys):
    from macaw_fast.data.store import DatasetWriter

    rng = np.random.default_rng(0)
    with DatasetWriter.create(tmp_path / "bad", "macaw_fast/CheetahDir-v0", {"0": {"direction": 1.0}},
                              {"train": ["0"], "test": ["0"]}, obs_dim=5, act_dim=6) as w:
        w.append_trajectory("0", rng.normal(size=(40, 5)), rng.uniform(-1, 1, (40, 6)), rng.normal(size=40),
                            rng.normal(size=(40, 5)), False)
        w.commit()
    rc, err = _cli(capsys, "train", "--data", str(tmp_path / "bad"), "--out", str(tmp_path / "r"), *TINY)
    assert rc == 1 and "obs_dim=5" in err and "obs_dim=20" in err
    assert not (tmp_path / "r").exists()


def test_presets_cover_the_paper_ablations():
    mc, tc = resolve_config(["cheetah_vel", "no_wlinear"])
    assert not mc.wlinear and tc.family == "cheetah_vel"
    assert not resolve_config(["no_adv"])[0].advantage_head
    for q in ("start", "middle", "end"):
        assert resolve_config([f"data_{q}"])[1].inner_data == q
    for n in (3, 5, 10, 20):
        tc = resolve_config([f"vel_{n}tasks"])[1]
        assert len(tc.train_tasks) == n and sorted(tc.train_tasks + tc.test_tasks) == list(range(40))


def test_baseline_presets_pick_the_algorithm_on_any_family():
    from macaw_fast.train.loop import build_learner

    want = {"meta_bc": ("meta_bc", None), "mt_ft": ("mt_ft", 1), "mt_ft_k20": ("mt_ft", 20), "focal": ("focal", None)}
    for fam in ("cheetah_dir", "cheetah_vel", "ant_dir", "walker_param"):
        for preset, (algo, steps) in want.items():
            mc, tc = resolve_config([fam, preset])
            assert (tc.algo, tc.family, tc.ft_steps) == (algo, fam, steps)
    mc, tc = resolve_config(["cheetah_dir", "mt_ft_k20"])
    learner = build_learner(20, 6, 2, mc, tc)
    assert (learner.config.ft_steps, learner.config.ft_value_lr, learner.config.ft_policy_lr) == (20, 1e-6, 1e-3)
    with pytest.raises(ValueError, match="train.ft_steps: only --algo mt_ft"):
        resolve_config(["mt_ft_k20"], train={"algo": "macaw"})


def test_inner_data_ablation_restricts_inner_rows(dataset):
    from macaw_fast.train.loop import RunSetup, _batches

    mc, tc = tiny(inner_data="end", inner_data_rows=40)
    setup = RunSetup(dataset, mc, tc)
    inner_s, outer_s = setup.samplers()
    it = _batches(setup, inner_s, outer_s, 0)
    inner, outer = next(it)
    ends = [setup.ds[t]["obs"][-40:] for t in setup.train_ids]
    for k in range(inner.num_tasks):
        rows = inner.obs[k].numpy()
        assert any(np.isin(rows[:, 0], e[:, 0]).all() for e in ends)
    it.close()


# ------------------------------------------------------------------------------------------------
# run directories that were interrupted or damaged (issue: a run must never get stuck)


def test_config_without_checkpoint_starts_afresh(dataset, tmp_path, capsys):
    """config.json written but not the step-0 checkpoint (kill -9 or full disk right after it)."""
    mc, tc = tiny(steps=3)
    train(dataset, tmp_path / "ref", mc, tc)
    for resume in (False, True):
        run = tmp_path / f"stuck_{resume}"
        run.mkdir()
        (run / "config.json").write_text("{}")
        train(dataset, run, mc, tc, resume=resume)
        assert_same_tree(_state(run / "checkpoints" / "latest.pt"), _state(tmp_path / "ref" / "checkpoints" / "latest.pt"))
        assert "starting" in capsys.readouterr().err


def test_corrupt_latest_falls_back_to_newest_intact_checkpoint(dataset, tmp_path, capsys):
    mc, tc = tiny(steps=12, latest_interval=2, numbered_interval=4)
    train(dataset, tmp_path / "full", mc, tc)
    full = _state(tmp_path / "full" / "checkpoints" / "latest.pt")
    run = tmp_path / "part"
    train(dataset, run, mc, tc, stop_after=10)
    latest = run / "checkpoints" / "latest.pt"
    assert load_checkpoint(latest)["step"] == 10
    raw = bytearray(latest.read_bytes())
    raw[raw.index(b"data/0") + 300] ^= 0x01     # one low bit inside a tensor record
    latest.write_bytes(bytes(raw))
    (run / "checkpoints" / ".latest.pt.x1y2.tmp").write_bytes(b"half a checkpoint")
    from macaw_fast.train.loop import CheckpointError

    with pytest.raises(CheckpointError, match="checksum mismatch|could not be read"):
        load_checkpoint(latest)
    train(dataset, run, mc, tc, resume=True)
    err = capsys.readouterr().err
    assert "latest.pt.corrupt" in err and "step_0000008.pt" in err and ".latest.pt.x1y2.tmp" in err
    assert not (run / "checkpoints" / ".latest.pt.x1y2.tmp").exists()
    assert (run / "checkpoints" / "latest.pt.corrupt").exists()        # kept, not deleted
    assert_same_tree(_state(latest), full)
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r.get("kind") == "train"]
    assert steps == sorted(steps) and len(steps) == len(set(steps))    # records after step 8 redone once


def test_eval_of_a_corrupt_checkpoint_is_a_one_line_error(dataset, tmp_path):
    mc, tc = tiny(steps=2)
    train(dataset, tmp_path / "run", mc, tc)
    latest = tmp_path / "run" / "checkpoints" / "latest.pt"
    raw = bytearray(latest.read_bytes())
    raw[raw.index(b"data/0") + 300] ^= 0x04
    latest.write_bytes(bytes(raw))
    p = subprocess.run([sys.executable, "-m", "macaw_fast", "eval", str(latest), "--episodes", "1", "--batches", "1"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert str(latest) in p.stderr and ("checksum mismatch" in p.stderr or "could not be read" in p.stderr)


@pytest.mark.parametrize("argv, bad", [(["--lr", "3"], "--lr"), (["--disc", "0.5"], "--disc"),
                                       (["--step", "5"], "--step")])
def test_abbreviated_options_are_refused(dataset, tmp_path, capsys, argv, bad):
    with pytest.raises(SystemExit) as e:
        main(["train", "--data", str(dataset), "--out", str(tmp_path / "r"), *TINY, *argv])
    assert e.value.code == 2
    assert f"unrecognized arguments: {bad}" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("content, msg", [
    ('{"trian": {"steps": 2}}', "unknown top-level key(s) ['trian']"),
    ('[1, 2]', "expected a JSON object, got list"),
    ('{"train": [1]}', "'train' must be a JSON object"),
    ('{"train": {"stepz": 2}}', "stepz"),
    ('{not json', "not readable as JSON"),
    ('{"macaw": {"net_depth": 0}}', "config.net_depth: expected a positive integer, got 0"),
])
def test_config_file_mistakes_are_one_line_errors(dataset, tmp_path, capsys, content, msg):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(content)
    rc, err = _cli(capsys, "train", "--data", str(dataset), "--out", str(tmp_path / "r"), *TINY,
                   "--steps", "2", "--config-file", str(cfg))   # --steps: a regression fails fast, not after 1M steps
    assert rc == 1 and msg in err
    assert str(cfg) in err
    assert err.strip().count("\n") == 0
    assert not (tmp_path / "r").exists()


def test_eval_arguments_are_checked(dataset, tmp_path, capsys):
    mc, tc = tiny(steps=2)
    train(dataset, tmp_path / "run", mc, tc)
    ck = str(tmp_path / "run")
    for argv, msg in ((["--tasks", "-1"], "argument --tasks: task indices must be >= 0, got [-1]"),
                      (["--episodes", "0"], "argument --rollouts/--eval-rollouts/--episodes: expected an integer >= 1, got 0"),
                      (["--batches", "-2"], "argument --batches/--eval-batches: expected an integer >= 1, got -2"),
                      (["--random-episodes", "-1"], "argument --random-episodes: expected an integer >= 0")):
        with pytest.raises(SystemExit) as e:
            main(["eval", ck, *argv])
        assert e.value.code == 2 and msg in capsys.readouterr().err
    rc, err = _cli(capsys, "eval", ck, "--tasks", "0", "5", "--batch-size", "16", "--episodes", "1", "--batches", "1")
    assert rc == 1 and "--tasks: [5] out of range" in err and "has 2 tasks (indices 0..1)" in err
    rc = main(["eval", ck, "--random-episodes", "0", "--batch-size", "16", "--episodes", "1", "--batches", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and "n/a" in out and "mean" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a torch without CUDA")
def test_device_cuda_without_cuda_is_a_one_line_error(dataset, tmp_path, capsys):
    rc, err = _cli(capsys, "train", "--data", str(dataset), "--out", str(tmp_path / "r"), *TINY, "--steps", "2",
                   "--device", "cuda")
    assert rc == 1 and "train.device: 'cuda'" in err and "no CUDA device" in err
    assert not (tmp_path / "r").exists()


def test_provenance_in_config_checkpoint_logs_and_eval_json(dataset, tmp_path, capsys):
    import json

    rc = main(["train", "--data", str(dataset), "--out", str(tmp_path / "r"), *TINY, "--steps", "2",
               "--log-interval", "1"])
    assert rc == 0
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    prov = cfg["provenance"]
    assert prov["versions"]["torch"] == torch.__version__.split("+")[0] or prov["versions"]["torch"] == torch.__version__
    assert prov["versions"]["macaw-fast"] and prov["command"][:2] == ["macaw-fast", "train"]
    assert prov["time_utc"].endswith("Z")
    st = load_checkpoint(tmp_path / "r" / "checkpoints" / "latest.pt")
    assert st["provenance"]["versions"] == prov["versions"]
    recs = read_jsonl(tmp_path / "r" / "metrics.jsonl")
    assert recs and all(isinstance(r["time"], float) and r["time"] > 1.7e9 for r in recs)
    out = tmp_path / "e.json"
    rc = main(["eval", str(tmp_path / "r"), "--batch-size", "16", "--episodes", "1", "--batches", "1",
               "--random-episodes", "1", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["checkpoint"] == str(tmp_path / "r" / "checkpoints" / "latest.pt") and res["checkpoint_step"] == 2
    assert res["protocol"]["batches"] == 1 and res["provenance"]["command"][:2] == ["macaw-fast", "eval"]


def test_nan_in_the_data_is_reported_with_step_task_field_and_row(tmp_path, capsys):
    from macaw_fast.data.store import open_dataset
    from macaw_fast.train.scripted import make_scripted_dataset

    data = make_scripted_dataset(tmp_path / "d", "cheetah_dir", episodes_per_task=2, episode_steps=60, seed=1)
    f = tmp_path / "d" / "1" / "reward.npy"
    arr = np.load(f, mmap_mode="r+")
    arr[50:] = np.nan
    arr.flush()
    del arr
    mc, tc = tiny(steps=5, latest_interval=1)
    with pytest.raises(FloatingPointError) as e:
        train(data, tmp_path / "run", mc, tc)
    msg = str(e.value)
    rec = read_jsonl(tmp_path / "run" / "metrics.jsonl")[-1]
    assert rec["kind"] == "error" and rec["cause"] == "data" and rec["task"] == "1" and rec["field"] == "reward"
    assert f"step {rec['step']}:" in msg and "dataset task '1', field 'reward', row" in msg
    assert np.isnan(open_dataset(data)["1"]["reward"][rec["row"]]) and rec["row"] >= 50
    assert "macaw-fast train: step" in capsys.readouterr().err


def test_nonfinite_parameters_are_named(dataset, tmp_path, monkeypatch):
    from macaw_fast.macaw import MetaLearner

    real = MetaLearner.meta_step

    def poisoned(self, inner, outer):
        m = real(self, inner, outer)
        with torch.no_grad():
            self.vf.layers[1].z[0] = float("nan")
        return m

    monkeypatch.setattr(MetaLearner, "meta_step", poisoned)
    mc, tc = tiny(steps=3)
    with pytest.raises(FloatingPointError, match=r"step 0: parameter\(s\) vf\.\S*1\S*z"):
        train(dataset, tmp_path / "run", mc, tc)
    rec = read_jsonl(tmp_path / "run" / "metrics.jsonl")[-1]
    assert rec["cause"] == "parameters" and any(p.startswith("vf.") for p in rec["parameters"])


def test_bool_fields_have_no_flags_and_config_is_a_deprecated_preset_alias(dataset, tmp_path, capsys):
    import json

    rc = main(["train", "--data", str(dataset), "--out", str(tmp_path / "r"), *[a for a in TINY if a not in
               ("--progress", "--tensorboard", "false")], "--no-progress", "--no-tensorboard", "--steps", "1",
               "--config", "cheetah_dir"])
    assert rc == 0
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["train"]["progress"] is False and cfg["train"]["tensorboard"] is False
    assert cfg["presets"] == ["cheetah_dir"] and not (tmp_path / "r" / "tb").exists()
    assert "--config NAME is deprecated" in capsys.readouterr().err


def test_resume_takes_the_settings_from_the_checkpoint_and_reports_edits(dataset, tmp_path, capsys):
    import json

    mc, tc = tiny(steps=6, latest_interval=2)
    train(dataset, tmp_path / "full", mc, tc)
    train(dataset, tmp_path / "part", mc, tc, stop_after=4)
    cfg_path = tmp_path / "part" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["train"]["seed"] = 3                    # an edit that would change the run silently
    cfg["train"]["batch_size"] = 8
    cfg_path.write_text(json.dumps(cfg))
    capsys.readouterr()
    rc = main(["train", "--resume", str(tmp_path / "part")])
    assert rc == 0
    err = capsys.readouterr().err
    assert "differs from the checkpoint" in err and "train.seed: 3 in config.json, 0 in the checkpoint" in err
    assert "train.batch_size: 8 in config.json, 16 in the checkpoint" in err
    assert_same_tree(_state(tmp_path / "part" / "checkpoints" / "latest.pt"), _state(tmp_path / "full" / "checkpoints" / "latest.pt"))


def test_checkpoint_missing_a_key_is_named(tmp_path):
    from macaw_fast.checkpoint import CHECKPOINT_FORMAT, CheckpointError, state_digest

    p = tmp_path / "ck.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "step": 3, "macaw": {}, "train": {}}, p)
    with pytest.raises(CheckpointError, match=r"lacks the key\(s\) \['learner'\]"):
        load_checkpoint(p)
    st = {"format": CHECKPOINT_FORMAT, "version": 2, "step": 3, "macaw": {}, "train": {}}
    st["sha256"] = state_digest(st)              # intact, but still incomplete
    torch.save(st, p)
    with pytest.raises(CheckpointError, match="learner"):
        load_checkpoint(p)


@pytest.mark.parametrize("content, why", [
    (b"", "the file is empty or truncated"),
    (b"# not a checkpoint\n" * 50, "not a PyTorch checkpoint, or one holding Python objects that the safe loader refuses"),
    (bytes(range(256)) * 4, "not a PyTorch checkpoint, or one holding Python objects that the safe loader refuses"),
])
def test_a_file_that_is_no_checkpoint_is_a_short_one_line_error(tmp_path, content, why):
    """torch's own message for these is a paragraph that advises weights_only=False: we say what the
    file is in one line, through the library and through `eval` (which also reads paper archives)."""
    from macaw_fast.checkpoint import CheckpointError, load_checkpoint

    f = tmp_path / "x.pt"
    f.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(f)
    assert str(e.value) == f"{f}: could not be read as a checkpoint ({why})"
    p = subprocess.run([sys.executable, "-m", "macaw_fast", "eval", str(f)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.strip() == f"macaw-fast eval: error: {f}: could not be read as a checkpoint ({why})"


def test_eval_reads_its_checkpoint_once_and_verifies_it(dataset, tmp_path, monkeypatch):
    import torch

    from macaw_fast.train.runs import load_any_checkpoint

    mc, tc = tiny(steps=2)
    train(dataset, tmp_path / "run", mc, tc)
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    learner, data, fam, step = load_any_checkpoint(str(tmp_path / "run"), None)
    assert len(calls) == 1 and step == 2 and data == str(dataset)
    # the one read is verified like load_checkpoint: a checkpoint whose content no longer matches its
    # SHA-256 (re-saved with a changed step) is refused
    latest = tmp_path / "run" / "checkpoints" / "latest.pt"
    st = real(latest, weights_only=True)
    st["step"] = 3
    torch.save(st, latest)
    from macaw_fast.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_any_checkpoint(str(latest), None)
