"""`macaw-fast quality`: per-task data quality of a collection, recomputed from the stored rows."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from macaw_fast import envs
from macaw_fast.collect import collect
from macaw_fast.collect.quality import collection_quality, format_quality, progress_velocity
from macaw_fast.data.store import open_dataset


@pytest.mark.parametrize("family", ["cheetah_dir", "cheetah_vel", "ant_dir", "walker_param"])
def test_progress_velocity_reads_the_root_velocity_from_the_observation(family):
    """Put a known root velocity into the simulator: the observation-based progress velocity is it,
    signed by the direction (Cheetah-Dir) or projected on the goal (Ant-Dir)."""
    fam = envs.FAMILIES[family]
    task = fam.paper_tasks()[1]
    env = envs.make(family, task, disable_env_checker=True).unwrapped
    env.reset(seed=0)
    qvel = np.zeros(env.model.nv)
    qvel[0], qvel[1] = 1.3, -0.4        # x velocity (and y for the Ant; a joint elsewhere)
    env.set_state(env.data.qpos.copy(), qvel)
    v = float(progress_velocity(family, task, env._get_obs()))
    if family == "cheetah_dir":
        want = 1.3 * task["direction"]
    elif family == "ant_dir":
        want = 1.3 * math.cos(task["goal"]) - 0.4 * math.sin(task["goal"])
    else:
        want = 1.3
    assert v == pytest.approx(want, abs=1e-12)
    env.close()
    with pytest.raises(ValueError, match="unknown family 'hopper'"):
        progress_velocity("hopper", task, np.zeros((1, 3)))


def test_quality_of_a_collection_matches_its_rows_and_log(tmp_path):
    torch.set_num_threads(1)
    run = tmp_path / "run"
    collect("walker_param", run, steps_per_task=400, seed=0, tasks=[2, 3], warmup=400, width=8, batch_size=8,
            eval_interval=0, checkpoint_interval=200, progress=False, tensorboard=False)
    q = collection_quality(str(run), last_rows=150)
    assert q["family"] == "walker_param" and q["step"] == 400 and [r["task"] for r in q["tasks"]] == ["2", "3"]
    log = [json.loads(ln) for ln in open(run / "log.jsonl")][-1]
    ds = open_dataset(run / "dataset")
    for k, r in enumerate(q["tasks"]):
        td = ds[r["task"]]
        assert r["splits"] == (["test"] if r["task"] == "2" else ["train"])
        assert r["eval_return"] == pytest.approx(log["eval_return"][k])
        assert r["eval_length"] == pytest.approx(log["eval_length"][k])
        assert r["velocity_last"] == pytest.approx(float(np.asarray(td["obs"])[-150:, 8].mean()))
        # random walkers fall: every fall is a stored trajectory that ended with done = 1
        assert r["falls"] == int(np.asarray(td["done"]).sum()) >= 1
        assert r["trajectories"] == len(td.episode_lengths)
        rets = td.episode_returns
        assert (r["return_min"], r["return_max"]) == (min(rets), max(rets))
    table = format_quality(q, only="test")
    assert table.count("\n| 2 |") == 1 and "| 3 |" not in table and "1 tasks" in table

    p = subprocess.run([sys.executable, "-m", "macaw_fast", "quality", str(run), "--last-rows", "150",
                        "--json", str(tmp_path / "q.json")], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "falls / trajectories" in p.stdout and json.loads((tmp_path / "q.json").read_text())["tasks"] == \
        json.loads(json.dumps(q["tasks"]))
    p = subprocess.run([sys.executable, "-m", "macaw_fast", "quality", str(tmp_path)], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 1 and f"{tmp_path}/config.json: not found" in p.stderr and "Traceback" not in p.stderr


def test_collect_ends_with_the_data_quality_line(tmp_path):
    out = tmp_path / "c"
    p = subprocess.run([sys.executable, "-m", "macaw_fast", "collect", "--family", "walker_param", "--out", str(out),
                        "--tasks", "2", "--steps-per-task", "300", "--warmup", "300", "--eval-interval", "0",
                        "--eval-episodes", "1", "--width", "8", "--batch-size", "8", "--no-progress",
                        "--no-tensorboard"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    q = collection_quality(str(out))
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("data quality: ")]
    assert len(line) == 1 and f"macaw-fast quality {out}" in line[0]
    assert f"{q['tasks'][0]['falls']} of {q['tasks'][0]['trajectories']} stored trajectories end in a fall" in line[0]
