"""Bad input to the meta-step and config: clear errors naming the field."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from macaw_fast import MacawConfig, MetaLearner

from helpers import make_learner, random_batch


@pytest.fixture
def learner():
    return make_learner(5, 2, n_train=3, net_width=6, net_depth=1, wlinear_dim=4, head_width=3)


def batches(T=2, B=6, obs=5, act=2):
    return random_batch(T, B, obs, act, seed=0), random_batch(T, B, obs, act, seed=1)


@pytest.mark.parametrize("field,shape,match", [
    ("obs", (2, 6, 4), r"inner.obs: expected shape \(2, 6, 5\)"),
    ("action", (2, 6, 3), r"inner.action: expected shape \(2, 6, 2\)"),
    ("terminal_obs", (2, 5, 5), r"inner.terminal_obs"),
    ("mc_return", (2, 6, 1), r"inner.mc_return: expected shape \(2, 6\)"),
    ("terminal_discount", (6,), r"inner.terminal_discount"),
])
def test_wrong_shapes(learner, field, shape, match):
    inner, outer = batches()
    inner = dataclasses.replace(inner, **{field: torch.zeros(shape, dtype=torch.float64)})
    with pytest.raises(ValueError, match=match):
        learner.meta_loss(inner, outer)


def test_obs_not_3d(learner):
    inner, outer = batches()
    with pytest.raises(ValueError, match="inner.obs: expected shape"):
        learner.meta_loss(dataclasses.replace(inner, obs=inner.obs[0]), outer)


def test_mismatched_task_counts(learner):
    inner, _ = batches(T=2)
    _, outer = batches(T=3)
    with pytest.raises(ValueError, match="inner has T=2, outer has T=3"):
        learner.meta_loss(inner, outer)


@pytest.mark.parametrize("field", ["obs", "mc_return", "terminal_discount", "action"])
def test_nan_in_batch(learner, field):
    inner, outer = batches()
    bad = getattr(outer, field).clone()
    bad.view(-1)[3] = float("nan")
    with pytest.raises(ValueError, match=f"outer.{field}: contains NaN or inf"):
        learner.meta_loss(inner, dataclasses.replace(outer, **{field: bad}))


def test_dtype_mismatch(learner):
    inner, outer = batches()
    with pytest.raises(TypeError, match="inner: expected tensors of dtype torch.float64"):
        learner.meta_loss(inner.to(torch.float32), outer)
    with pytest.raises(TypeError, match="outer.done: expected a floating-point tensor"):
        learner.meta_loss(inner, dataclasses.replace(outer, done=outer.done.bool()))


def test_batch_of_one_row(learner):
    inner, outer = batches(B=1)
    with pytest.raises(ValueError, match="at least 2 rows"):
        learner.meta_loss(inner, outer)


def test_not_a_batch(learner):
    inner, _ = batches()
    with pytest.raises(TypeError, match="outer: expected a macaw_fast.data.Batch"):
        learner.meta_loss(inner, {"obs": inner.obs})


@pytest.mark.parametrize("field,value", [("net_width", 0), ("net_depth", -1), ("outer_policy_lr", -1e-3),
                                         ("inner_value_lr", 0.0), ("target_vf_alpha", 1.5),
                                         ("action_sigma", float("nan")), ("head_width", 2.5)])
def test_bad_config_values(field, value):
    with pytest.raises(ValueError, match=f"config.{field}"):
        MetaLearner(5, 2, 3, MacawConfig(**{field: value}))


def test_bad_dims():
    with pytest.raises(ValueError, match="n_train_tasks"):
        MetaLearner(5, 2, 0)
    with pytest.raises(ValueError, match="obs_dim"):
        MetaLearner(-5, 2, 3)


def test_unknown_config_field():
    with pytest.raises(ValueError, match="unknown MacawConfig field"):
        MacawConfig.from_dict({"net_widht": 3})


def test_state_dict_round_trip_and_mismatch(learner):
    inner, outer = batches()
    learner.meta_step(inner, outer)
    state = learner.state_dict()
    twin = MetaLearner.from_state_dict(state)
    for a, b in zip(learner.parameters(), twin.parameters()):
        assert torch.equal(a, b)
    m1, m2 = learner.meta_step(inner, outer), twin.meta_step(inner, outer)
    assert m1["loss/meta"] == m2["loss/meta"]
    other = make_learner(5, 2, n_train=3, net_width=7, net_depth=1, wlinear_dim=4, head_width=3)
    with pytest.raises(ValueError, match="net_width"):
        other.load_state_dict(state)


def test_non_finite_loss_leaves_parameters(learner):
    inner, outer = batches()
    with torch.no_grad():
        learner.vf.layers[0].bias.fill_(float("inf"))
    before = [p.detach().clone() for p in learner.policy.parameters()]
    with pytest.raises(FloatingPointError, match="not finite"):
        learner.meta_step(inner, outer)
    for a, b in zip(before, learner.policy.parameters()):
        assert torch.equal(a, b)
