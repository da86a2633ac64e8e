"""Meta-behaviour-cloning (macaw_fast.meta_bc) against a plain per-task loop in float64."""

from __future__ import annotations

import pytest
import torch

from macaw_fast.backends.cpu import CpuBackend
from macaw_fast.meta_bc import METRIC_NAMES, MetaBC, MetaBCConfig

from helpers import random_batch, rel_err

TOL = 1e-10


def _make(obs, act, n_train, backend, seed=0, **cfg):
    torch.manual_seed(seed)
    return MetaBC(obs, act, n_train, MetaBCConfig(**cfg), dtype=torch.float64, backend=backend, ops_backend="torch")


def _reference_loss(learner: MetaBC, inner, outer):
    """sum_i L_BC(theta'_i, outer_i) / N_train with per-task copies of every tensor, plain autograd
    (torch.distributions.Normal for the log-likelihood), create_graph inner step."""
    c = learner.config
    layers = learner.policy.layers
    dims = learner.policy.trunk.dims
    rates = torch.nn.functional.softplus(learner.policy_lrs)

    def forward(params, x):
        for k, p in enumerate(params):
            if k > 0:
                x = torch.relu(x)
            if c.wlinear:
                theta = p["weight"] @ p["z"] + p["bias"]
                w, b = theta[:dims[k] * dims[k + 1]].view(dims[k], dims[k + 1]), theta[dims[k] * dims[k + 1]:]
            else:
                w, b = p["weight"], p["bias"]
            x = x @ w + b
        return torch.tanh(x)

    def bc(params, obs, action):
        return -torch.distributions.Normal(forward(params, obs), c.action_sigma).log_prob(action).sum(-1).mean()

    total = 0.0
    for i in range(inner.num_tasks):
        params = [{n: getattr(m, n).clone() for n in m.tensor_names} for m in layers]
        flat = [t for p in params for t in p.values()]
        grads = iter(torch.autograd.grad(bc(params, inner.obs[i], inner.action[i]), flat, create_graph=True))
        adapted = [{n: t - rates[k, j] * next(grads) for j, (n, t) in enumerate(p.items())}
                   for k, p in enumerate(params)]
        total = total + bc(adapted, outer.obs[i], outer.action[i])
    return total / learner.n_train_tasks


@pytest.mark.parametrize("wlinear", [True, False])
@pytest.mark.parametrize("backend", ["torch", "cpu", "fused"])
def test_meta_gradient_matches_the_per_task_loop(wlinear, backend):
    T, B, obs, act = 4, 7, 5, 2
    kw = dict(net_width=9, net_depth=2, wlinear=wlinear, wlinear_dim=5)
    inner, outer = random_batch(T, B, obs, act, seed=1), random_batch(T, B, obs, act, seed=2)
    learner = _make(obs, act, 6, backend, **kw)
    loss, metrics = learner.meta_loss(inner, outer)
    loss.backward()
    got = [p.grad.clone() for p in learner.parameters()]
    learner.optimizer.zero_grad(set_to_none=True)
    ref = _reference_loss(learner, inner, outer)
    ref.backward()
    want = [p.grad.clone() for p in learner.parameters()]
    assert abs(loss.item() - ref.item()) <= TOL * abs(ref.item())
    assert list(metrics) == list(METRIC_NAMES)
    for a, b in zip(got, want):
        assert b.norm() > 0 and rel_err(a, b) <= TOL


@pytest.mark.parametrize("backend,chunk", [("cpu", "auto"), ("cpu", 3), ("torch", 2), ("fused", 3)])
def test_meta_steps_match_the_per_task_loop_with_adam(backend, chunk):
    """Two full meta-steps (chunked backward, the backend's update: the cpu backend's low-rank Adam)
    give the parameters of the per-task loop followed by torch's Adam."""
    T, B, obs, act = 5, 6, 4, 3
    kw = dict(net_width=8, net_depth=2, wlinear_dim=4)
    batches = [(random_batch(T, B, obs, act, seed=10 + k), random_batch(T, B, obs, act, seed=20 + k)) for k in range(2)]
    learner = _make(obs, act, 7, backend, **kw)
    ref = _make(obs, act, 7, CpuBackend(lowrank_adam=False), **kw)
    for inner, outer in batches:
        m = learner.meta_step(inner, outer, chunk_size=chunk)
        ref.optimizer.zero_grad(set_to_none=True)
        want = _reference_loss(ref, inner, outer)
        want.backward()
        ref.optimizer.step()
        assert m["loss/meta"] == pytest.approx(want.item(), rel=TOL)
    for a, b in zip(learner.parameters(), ref.parameters()):
        assert rel_err(a.detach(), b.detach()) <= TOL


def test_adapt_act_and_state_round_trip():
    T, B, obs, act = 3, 6, 4, 2
    learner = _make(obs, act, 5, "cpu", net_width=8, net_depth=2, wlinear_dim=4)
    inner, outer = random_batch(T, B, obs, act, seed=3), random_batch(T, B, obs, act, seed=4)
    learner.meta_step(inner, outer)
    adapted = learner.adapt(inner)
    assert adapted.value == [] and len(adapted) == T
    a = learner.act(outer.obs, adapted)
    assert a.shape == (T, B, act) and a.abs().max() < 1
    assert torch.equal(learner.act(outer.obs[1:2], adapted, tasks=[1]), a[1:2])
    assert not torch.equal(learner.act(outer.obs), a)                  # adaptation changes the actions
    twin = MetaBC.from_state_dict(learner.state_dict())
    for p, q in zip(learner.parameters(), twin.parameters()):
        assert torch.equal(p, q)
    m1, m2 = learner.meta_step(inner, outer), twin.meta_step(inner, outer)      # Adam state came along
    assert m1 == m2
    with pytest.raises(ValueError, match="not a macaw-fast MetaBC state"):
        twin.load_state_dict({**learner.state_dict(), "format": "macaw-fast/meta-learner"})


@pytest.mark.parametrize("field,value", [("net_width", 0), ("inner_policy_lr", -1.0), ("action_sigma", float("nan")),
                                         ("wlinear", "yes")])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"meta_bc.{field}: expected"):
        MetaBCConfig(**{field: value}).validate()


# ------------------------------------------------------------------------------------------------
# through the command line: train -> resume -> eval in subprocesses


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from macaw_fast.train.scripted import make_scripted_dataset

    return make_scripted_dataset(tmp_path_factory.mktemp("data") / "ds", "cheetah_dir", episodes_per_task=2,
                                 episode_steps=60, seed=1)


def _cli(*args, check_rc=0):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "macaw_fast", *args], capture_output=True, text=True, timeout=600)
    assert p.returncode == check_rc, p.stderr[-3000:]
    return p


def test_train_resume_eval_through_the_cli_bit_exact(dataset, tmp_path):
    from macaw_fast.train.loop import load_checkpoint

    tiny = ["--algo", "meta_bc", "--preset", "cheetah_dir", "--net-width", "16", "--wlinear-dim", "8",
            "--batch-size", "16", "--threads", "1", "--progress", "false", "--tensorboard", "false",
            "--eval-interval", "3", "--eval-batches", "1", "--eval-rollouts", "1", "--random-episodes", "0",
            "--latest-interval", "3"]
    _cli("train", "--data", str(dataset), "--out", str(tmp_path / "full"), "--steps", "6", *tiny)
    _cli("train", "--data", str(dataset), "--out", str(tmp_path / "part"), "--steps", "3", *tiny)
    _cli("train", "--resume", str(tmp_path / "part"), "--steps", "6")
    full = load_checkpoint(tmp_path / "full" / "checkpoints" / "latest.pt")
    part = load_checkpoint(tmp_path / "part" / "checkpoints" / "latest.pt")
    assert full["learner"]["format"] == "macaw-fast/meta-bc" and full["step"] == part["step"] == 6
    for k in ("policy", "policy_lrs"):
        a, b = full["learner"][k], part["learner"][k]
        for name in (a if isinstance(a, dict) else {"": a}):
            x, y = (a[name], b[name]) if isinstance(a, dict) else (a, b)
            assert torch.equal(x, y), (k, name)
    out = _cli("eval", str(tmp_path / "part"), "--batches", "1", "--episodes", "1", "--random-episodes", "0",
               "--batch-size", "16").stdout
    assert "mean" in out
    err = _cli("eval", str(tmp_path / "part"), "--online-ft", "--random-episodes", "0", "--batch-size", "16",
               check_rc=1).stderr
    assert "--online-ft: online fine-tuning is implemented for MACAW only" in err
    err = _cli("train", "--data", str(dataset), "--out", str(tmp_path / "bad"), "--algo", "pearl", *tiny[2:],
               check_rc=1).stderr
    assert "train.algo: expected one of macaw, meta_bc, mt_ft, focal, got 'pearl'" in err
    assert not (tmp_path / "bad").exists()
