"""The command-line faults a new user tripped over (issue 19), each through the real command in a
subprocess: one line on stderr naming the flag, file or field, exit status 1 (2 for argparse),
nothing written or damaged."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

TINY = ["--net-width", "16", "--wlinear-dim", "8", "--head-width", "8", "--batch-size", "16", "--threads", "1",
        "--no-progress", "--no-tensorboard", "--eval-interval", "0"]


def run(*args, check_rc=None):
    p = subprocess.run([sys.executable, "-m", "macaw_fast", *map(str, args)], capture_output=True, text=True,
                       timeout=300)
    if check_rc is not None:
        assert p.returncode == check_rc, p.stderr[-2000:]
    return p


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from macaw_fast.train.scripted import make_scripted_dataset

    return make_scripted_dataset(tmp_path_factory.mktemp("data") / "ds", "cheetah_dir", episodes_per_task=2,
                                 episode_steps=60, seed=1)


def one_line(p) -> str:
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert "Traceback" not in p.stderr and lines, p.stderr[-2000:]
    return lines[-1]


def test_faults_through_the_real_command(dataset, tmp_path):
    out = tmp_path / "run"
    # 2. abbreviations never expand into other options
    assert "unrecognized arguments: --lr" in run("train", "--data", dataset, "--out", out, "--lr", "3", check_rc=2).stderr
    # 3. a misspelled top-level key of --config-file
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"trian": {"steps": 2}}))
    assert "unknown top-level key(s) ['trian']" in one_line(run("train", "--data", dataset, "--out", out, *TINY,
                                                                 "--config-file", cfg, check_rc=1))
    assert not out.exists()
    # 7. --device cuda without CUDA (this machine has none)
    import torch

    if not torch.cuda.is_available():
        assert "no CUDA device" in one_line(run("train", "--data", dataset, "--out", out, *TINY, "--steps", "1",
                                                "--device", "cuda", check_rc=1))
        assert not out.exists()
    # 1. a run directory stuck with config.json and no checkpoint leads somewhere either way
    out.mkdir()
    (out / "config.json").write_text("{}")
    run("train", "--data", dataset, "--out", out, *TINY, "--steps", "2", check_rc=0)
    # ... and --overwrite starts over (only a run's own files)
    before = (out / "checkpoints" / "latest.pt").stat().st_mtime_ns
    p = run("train", "--data", dataset, "--out", out, *TINY, "--steps", "2", "--overwrite", check_rc=0)
    assert "--overwrite: removed the run" in p.stderr
    assert (out / "checkpoints" / "latest.pt").stat().st_mtime_ns != before
    # without --overwrite an existing run is refused, naming --resume
    assert "use --resume" in one_line(run("train", "--data", dataset, "--out", out, *TINY, "--steps", "2", check_rc=1))
    # --overwrite refuses a directory that is not a run
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    assert "not a run directory" in one_line(run("train", "--data", dataset, "--out", other, *TINY, "--overwrite",
                                                 check_rc=1))
    assert (other / "notes.txt").read_text() == "keep"
    # 7. eval arguments
    for args, msg in ((["--tasks", "-1"], "--tasks"), (["--episodes", "0"], "--episodes"),
                      (["--random-episodes", "-2"], "--random-episodes")):
        assert msg in run("eval", out, *args, check_rc=2).stderr
    assert "--tasks: [9] out of range" in one_line(run("eval", out, "--tasks", "9", check_rc=1))
    # 4. a corrupt checkpoint
    latest = out / "checkpoints" / "latest.pt"
    raw = bytearray(latest.read_bytes())
    raw[raw.index(b"data/0") + 300] ^= 0x02
    latest.write_bytes(bytes(raw))
    assert str(latest) in one_line(run("eval", out, "--batch-size", "16", check_rc=1))
    # 7. an unwritable output directory
    f = tmp_path / "a_file"
    f.write_text("x")
    assert str(f) in one_line(run("train", "--data", dataset, "--out", f / "run", *TINY, "--steps", "1", check_rc=1))
