"""Library use: lazy top-level imports, MetaLearner.from_checkpoint, Adapted.select, act(tasks=...),
and the callable ``macaw_fast.train``."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from macaw_fast.data.synthetic import synthetic_batch


def _modules_after(stmt: str) -> set[str]:
    code = f"import sys; {stmt}; print(' '.join(m for m in sys.modules if m.startswith('macaw_fast')))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return set(p.stdout.split())


def test_import_ops_loads_nothing_else_of_the_package():
    mods = _modules_after("import macaw_fast.ops")
    assert mods and all(m == "macaw_fast" or m.startswith("macaw_fast.ops") for m in mods), sorted(mods)


def test_import_envs_loads_nothing_else_of_the_package():
    mods = _modules_after("import macaw_fast.envs")
    assert all(m == "macaw_fast" or m.startswith("macaw_fast.envs") for m in mods), sorted(mods)


def test_top_level_names_still_work():
    import macaw_fast

    assert macaw_fast.MetaLearner.__name__ == "MetaLearner" and macaw_fast.Batch.__name__ == "Batch"
    assert callable(macaw_fast.train) and macaw_fast.train.run.__name__ == "run"
    with pytest.raises(AttributeError):
        macaw_fast.nope  # noqa: B018


def _learner(T=4):
    from macaw_fast import MacawConfig, MetaLearner

    torch.manual_seed(0)
    return MetaLearner(5, 3, T, MacawConfig(net_width=16, wlinear_dim=8, head_width=8))


def test_adapted_select_and_act_on_a_task_subset():
    learner = _learner()
    batch = synthetic_batch(4, 16, 5, 3)
    adapted = learner.adapt(batch)
    assert len(adapted) == 4
    full = learner.act(batch.obs, adapted)
    for tasks in ([2], [3, 0], slice(1, 3)):
        idx = list(range(4))[tasks] if isinstance(tasks, slice) else tasks
        got = learner.act(batch.obs[idx], adapted, tasks=tasks)
        torch.testing.assert_close(got, full[idx], rtol=0, atol=0)
        torch.testing.assert_close(learner.act(batch.obs[idx], adapted.select(tasks)), full[idx], rtol=0, atol=0)
    with pytest.raises(IndexError, match="out of range for 4 adapted tasks"):
        adapted.select([4])
    with pytest.raises(ValueError, match="obs holds 1 tasks but 4 adapted"):
        learner.act(batch.obs[:1], adapted)


def test_from_checkpoint_and_callable_train(tmp_path):
    import macaw_fast
    from macaw_fast import MetaLearner
    from macaw_fast.train.scripted import make_scripted_dataset

    data = make_scripted_dataset(tmp_path / "d", "cheetah_dir", episodes_per_task=2, episode_steps=60, seed=1)
    res = macaw_fast.train(data, tmp_path / "run", preset="cheetah_dir", steps=3, batch_size=16, eval_interval=3,
                           eval_batches=1, eval_rollouts=1, random_episodes=1, threads=1, progress=False,
                           tensorboard=False, macaw={"net_width": 16, "wlinear_dim": 8, "head_width": 8})
    assert res["step"] == 3 and set(res["adapted"]) == {"0", "1"}
    a = MetaLearner.from_checkpoint(tmp_path / "run")
    b = MetaLearner.from_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    for (ka, va), (kb, vb) in zip(a.state_dict()["vf"].items(), b.state_dict()["vf"].items()):
        assert ka == kb and torch.equal(va, vb)
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        macaw_fast.train(data, tmp_path / "r2", preset="cheetah_dir", stepz=3)
    with pytest.raises(FileNotFoundError):
        MetaLearner.from_checkpoint(tmp_path / "nothing")
