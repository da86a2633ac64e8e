"""Evaluation: determinism, adapted vs unadapted paths, normalised score, paper archives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from macaw_fast.data.store import open_dataset
from macaw_fast.macaw import MetaLearner
from macaw_fast.config import MacawConfig
from macaw_fast.train.evaluate import Evaluator, rollout_mean


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from macaw_fast.train.scripted import make_scripted_dataset

    return make_scripted_dataset(tmp_path_factory.mktemp("data") / "ds", "cheetah_dir", episodes_per_task=2,
                                 episode_steps=60, seed=2)


def learner(seed=0):
    torch.manual_seed(seed)
    return MetaLearner(20, 6, 2, MacawConfig(net_width=16, wlinear_dim=8, head_width=8))


def test_evaluation_is_deterministic_and_reports_both(dataset):
    ds = open_dataset(dataset)
    ev = Evaluator(ds, ds.test_tasks, "cheetah_dir", batch_size=32, seed=5)
    L = learner()
    a = ev.evaluate(L, step=3, n_batches=2, n_rollouts=1, random_episodes=1)
    b = ev.evaluate(L, step=3, n_batches=2, n_rollouts=1, random_episodes=1)
    assert a == b
    assert set(a["adapted"]) == set(a["unadapted"]) == {"0", "1"}
    assert set(a["velocity_adapted"]) == set(a["velocity_unadapted"]) == {"0", "1"}
    assert np.isclose(a["mean_adapted"], np.mean([np.mean(v) for v in a["adapted_all"].values()]))
    # A different step draws different adaptation batches.
    c = ev.evaluate(L, step=4, n_batches=2, n_rollouts=1, random_episodes=1)
    assert c["adapted"] != a["adapted"]
    ev.close()


def test_a_diverged_adaptation_scores_nan_and_never_drives_the_env_with_nan(dataset, monkeypatch):
    """Adapted parameters that are not finite (a fine-tuning step size too large) give NaN returns
    for their batch only; their env gets zeros, not NaN controls (MuJoCo would warn and go unstable)."""
    ds = open_dataset(dataset)
    ev = Evaluator(ds, ds.test_tasks, "cheetah_dir", batch_size=32, seed=5)
    L = learner()
    good = ev.evaluate(L, step=3, n_batches=2, n_rollouts=1, unadapted=False, random_episodes=0)
    adapt = L.adapt

    def broken(batch):
        out = adapt(batch)
        out.policy[0][1] = float("nan")      # task 0, adaptation batch 1
        return out

    monkeypatch.setattr(L, "adapt", broken)
    seen = []
    import macaw_fast.train.evaluate as evaluate_mod

    real = evaluate_mod._rollout_mean

    def spy(envs, act, *a):
        def checked(o):
            x = act(o)
            seen.append(bool(torch.isfinite(x).all()))
            return x
        return real(envs, checked, *a)

    monkeypatch.setattr(evaluate_mod, "_rollout_mean", spy)
    bad = ev.evaluate(L, step=3, n_batches=2, n_rollouts=1, unadapted=False, random_episodes=0)
    assert all(seen) and seen
    assert np.isnan(bad["adapted_all"]["0"][1][0]) and bad["adapted_all"]["0"][0] == good["adapted_all"]["0"][0]
    assert bad["adapted_all"]["1"] == good["adapted_all"]["1"]
    ev.close()


def test_normalised_score_by_hand(dataset):
    ds = open_dataset(dataset)
    ev = Evaluator(ds, ["0"], "cheetah_dir", batch_size=32)
    rnd = ev.random_returns(2)["0"]
    best = max(ds["0"].episode_returns)
    got = ev.normalised({"0": best}, 2)["0"]
    if best > rnd:
        assert got == pytest.approx(1.0)
        assert ev.normalised({"0": rnd}, 2)["0"] == pytest.approx(0.0)
    else:
        assert got is None
    ev.close()


def test_random_reference_is_the_same_for_every_seed_and_evaluator(dataset):
    """The normalised score's R_random is seeded by the task alone: evaluators of different run
    seeds (and with the tasks in another order) on the same data get the same reference, so seeds
    and algorithms are normalised alike; the episode count is part of the cached value."""
    ds = open_dataset(dataset)
    evs = [Evaluator(ds, ["0", "1"], "cheetah_dir", batch_size=32, seed=s) for s in (0, 5)]
    evs.append(Evaluator(ds, ["1", "0"], "cheetah_dir", batch_size=32, seed=9))
    refs = [ev.random_returns(2) for ev in evs]
    assert refs[0] == refs[1] == refs[2]
    assert refs[0]["0"] != refs[0]["1"]                       # each task draws its own episodes
    three = evs[0].random_returns(3)
    assert three != refs[0] and evs[1].random_returns(3) == three
    # asking for the first count again gives its reference back, not the cached other one
    assert evs[0].random_returns(2) == refs[0]
    for ev in evs:
        ev.close()


def test_rollout_mean_clips_actions_and_sums_rewards():
    from macaw_fast.envs import make

    envs = [[make("cheetah_dir", {"direction": 1.0}, disable_env_checker=True, max_episode_steps=5)]]
    big = lambda o: torch.full((1, 1, 6), 50.0, dtype=torch.float64)  # noqa: E731 - clipped to 1
    r = rollout_mean(envs, big, [[0]], torch.float64, "cpu", max_steps=5)
    ref = make("cheetah_dir", {"direction": 1.0}, disable_env_checker=True, max_episode_steps=5)
    ref.reset(seed=0)
    total = sum(ref.step(np.ones(6))[1] for _ in range(5))
    assert r[0, 0] == pytest.approx(total)


@pytest.mark.parametrize("family,task,key", [("cheetah_vel", {"velocity": 1.0}, "x_velocity"),
                                              ("ant_dir", {"goal": 2.0}, "goal_velocity")])
def test_rollout_mean_reports_the_tasks_progress_velocity(family, task, key):
    """With return_velocity, each episode's mean of the task's progress measure: the velocity along
    the goal for Ant-Dir (not its x-velocity), the forward velocity otherwise."""
    from macaw_fast.envs import make

    rng = np.random.default_rng(0)
    acts = rng.uniform(-1, 1, (12, 8 if family == "ant_dir" else 6))
    it = iter(range(12))
    envs = [[make(family, task, disable_env_checker=True, max_episode_steps=12)]]
    r, v = rollout_mean(envs, lambda o: torch.as_tensor(acts[next(it)]).view(1, 1, -1), [[3]], torch.float64, "cpu",
                        max_steps=12, return_velocity=True)
    ref = make(family, task, disable_env_checker=True, max_episode_steps=12)
    ref.reset(seed=3)
    infos = [ref.step(a)[4] for a in acts]
    assert v[0, 0] == pytest.approx(np.mean([i[key] for i in infos]), rel=1e-12)
    if family == "ant_dir":
        assert v[0, 0] != pytest.approx(np.mean([i["x_velocity"] for i in infos]), rel=1e-3)


def test_eval_cli_on_a_paper_archive(dataset, tmp_path, capsys):
    from macaw_fast.cli import main
    from macaw_fast.paper import export_archive

    torch.save(export_archive(learner()), tmp_path / "archive_0.pt")
    rc = main(["eval", str(tmp_path / "archive_0.pt"), "--data", str(dataset), "--batches", "1", "--episodes", "1",
               "--batch-size", "32", "--random-episodes", "1", "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 0 and "adapted" in out and "mean" in out
    import json

    res = json.loads((tmp_path / "r.json").read_text())
    assert set(res["adapted"]) == {"0", "1"} and "random" in res


def test_eval_paper_archive_needs_data(tmp_path, capsys):
    from macaw_fast.cli import main
    from macaw_fast.paper import export_archive

    torch.save(export_archive(learner()), tmp_path / "archive_0.pt")
    assert main(["eval", str(tmp_path / "archive_0.pt")]) == 1
    assert "needs --data" in capsys.readouterr().err


def test_online_finetune_runs_and_logs(dataset):
    from macaw_fast.train.evaluate import online_finetune

    ds = open_dataset(dataset)
    ev = Evaluator(ds, ["0"], "cheetah_dir", batch_size=32)
    L = learner()
    ad = L.adapt(ev.adaptation_batch(0, 1, L.dtype, L.device))
    env = ev.envs(0, 1)[0]
    logs = []
    hist = online_finetune(L, [p.detach() for p in ad.value], [p.detach() for p in ad.policy], env, iterations=3,
                           burn_in=1, value_steps=2, policy_steps=2, batch_size=64, eval_rollouts=1, log=logs.append)
    assert len(hist) == 3 and all(np.isfinite(hist))
    assert [r["buffer_rows"] for r in logs] == [200, 400, 600]
    ev.close()
