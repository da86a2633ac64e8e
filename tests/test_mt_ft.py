"""Multi-task training + fine-tuning (macaw_fast.mt_ft, work in progress) against plain loops, float64."""

from __future__ import annotations

import json
import math

import pytest
import torch

from macaw_fast.mt_ft import MTFT, MTFTConfig

from helpers import random_batch, rel_err


def _make(**cfg):
    torch.manual_seed(0)
    return MTFT(5, 2, 6, MTFTConfig(net_width=8, net_depth=2, **cfg), dtype=torch.float64)


def _mlp(params, x):
    for k, (w, b) in enumerate(params):
        if k > 0:
            x = torch.relu(x)
        x = x @ w + b
    return x


def _plain_losses(vp, pp, obs, act, ret, disc, tobs, c):
    v = _mlp(vp, obs).squeeze(-1)
    with torch.no_grad():
        target = ret + disc * _mlp([(w.detach(), b.detach()) for w, b in vp], tobs).squeeze(-1)
        adv = target - v.detach()
        norm = (adv - adv.mean()) / (adv.std() * c.adaptation_temp)
        w = torch.exp(torch.clamp(norm, max=math.log(c.exp_advantage_clip)))
    logp = torch.distributions.Normal(torch.tanh(_mlp(pp, obs)), c.action_sigma).log_prob(act).sum(-1)
    return (v - target).pow(2).mean(), (-w * logp).mean()


def _params(net_layers):
    return [(m.weight, m.bias) for m in net_layers]


def test_pooled_gradient_matches_a_plain_loop():
    learner = _make()
    inner, outer = random_batch(3, 7, 5, 2, seed=1), random_batch(3, 7, 5, 2, seed=2)
    g = learner.meta_gradient(inner, outer)
    got = [p.grad.clone() for p in learner.parameters()]
    learner.optimizer.zero_grad(set_to_none=True)
    f = lambda t: t.reshape(-1, *t.shape[2:])  # noqa: E731
    lv, lp = _plain_losses(_params(learner.vf.layers), _params(learner.policy.trunk.layers), f(outer.obs),
                           f(outer.action), f(outer.mc_return), f(outer.terminal_discount), f(outer.terminal_obs),
                           learner.config)
    (lv + lp).backward()
    for a, b in zip(got, [p.grad for p in learner.parameters()]):
        assert rel_err(a, b) <= 1e-10
    assert g.metrics[-1].item() == pytest.approx((lv + lp).item(), rel=1e-12)


@pytest.mark.parametrize("steps", [1, 3])
def test_fine_tuning_matches_a_per_task_loop(steps):
    learner = _make(ft_steps=steps, ft_value_lr=0.05, ft_policy_lr=0.02)
    batch = random_batch(3, 9, 5, 2, seed=3)
    adapted = learner.adapt(batch)
    c = learner.config
    for i in range(3):
        vp = [(m.weight.detach().clone(), m.bias.detach().clone()) for m in learner.vf.layers]
        pp = [(m.weight.detach().clone(), m.bias.detach().clone()) for m in learner.policy.trunk.layers]
        args = (batch.obs[i], batch.action[i], batch.mc_return[i], batch.terminal_discount[i], batch.terminal_obs[i], c)
        for _ in range(steps):
            vp = [(w.requires_grad_(True), b.requires_grad_(True)) for w, b in vp]
            lv, _ = _plain_losses(vp, pp, *args)
            gs = torch.autograd.grad(lv, [t for pair in vp for t in pair])
            vp = [((w - c.ft_value_lr * gs[2 * k]).detach(), (b - c.ft_value_lr * gs[2 * k + 1]).detach())
                  for k, (w, b) in enumerate(vp)]
        for _ in range(steps):
            pp = [(w.requires_grad_(True), b.requires_grad_(True)) for w, b in pp]
            _, lp = _plain_losses(vp, pp, *args)
            gs = torch.autograd.grad(lp, [t for pair in pp for t in pair])
            pp = [((w - c.ft_policy_lr * gs[2 * k]).detach(), (b - c.ft_policy_lr * gs[2 * k + 1]).detach())
                  for k, (w, b) in enumerate(pp)]
        for th, (w, b) in zip(adapted.policy, pp):
            assert rel_err(th[i], torch.cat([w.reshape(-1), b])) <= 1e-10
        for th, (w, b) in zip(adapted.value, vp):
            assert rel_err(th[i], torch.cat([w.reshape(-1), b])) <= 1e-10


def test_meta_steps_with_each_backend_and_state_round_trip():
    """The optimizer step works through every backend's update (no generated-parameter leaves) and a
    state dict restores parameters and Adam moments."""
    inner, outer = random_batch(3, 7, 5, 2, seed=4), random_batch(3, 7, 5, 2, seed=5)
    learners = {}
    for backend in ("torch", "cpu", "fused"):
        torch.manual_seed(0)
        learners[backend] = MTFT(5, 2, 6, MTFTConfig(net_width=8, net_depth=2), dtype=torch.float64, backend=backend,
                                 ops_backend="torch")
        m = learners[backend].meta_step(inner, outer)
        assert set(m) == set(learners[backend].metric_names) | {"loss/meta"}
    for backend in ("cpu", "fused"):
        for a, b in zip(learners[backend].parameters(), learners["torch"].parameters()):
            assert torch.equal(a, b)
    twin = MTFT.from_state_dict(learners["cpu"].state_dict())
    assert twin.meta_step(inner, outer) == learners["cpu"].meta_step(inner, outer)
    with pytest.raises(ValueError, match="mt_ft.ft_steps: expected a positive integer"):
        MTFTConfig(ft_steps=0).validate()


def test_train_resume_eval_through_the_cli(tmp_path):
    import subprocess
    import sys

    from macaw_fast.train.loop import load_checkpoint
    from macaw_fast.train.scripted import make_scripted_dataset

    data = make_scripted_dataset(tmp_path / "ds", "cheetah_dir", episodes_per_task=2, episode_steps=60, seed=1)
    tiny = ["--algo", "mt_ft", "--preset", "cheetah_dir", "--net-width", "16", "--batch-size", "16", "--threads", "1",
            "--progress", "false", "--tensorboard", "false", "--eval-interval", "0", "--latest-interval", "2"]

    def cli(*args):
        p = subprocess.run([sys.executable, "-m", "macaw_fast", *args], capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        return p

    cli("train", "--data", str(data), "--out", str(tmp_path / "full"), "--steps", "4", *tiny)
    cli("train", "--data", str(data), "--out", str(tmp_path / "part"), "--steps", "2", *tiny)
    cli("train", "--resume", str(tmp_path / "part"), "--steps", "4")
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "latest.pt")["learner"]
    b = load_checkpoint(tmp_path / "part" / "checkpoints" / "latest.pt")["learner"]
    assert a["format"] == "macaw-fast/mt-ft"
    for net in ("vf", "policy"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), (net, k)
    out = cli("eval", str(tmp_path / "part"), "--batches", "1", "--episodes", "1", "--random-episodes", "0",
              "--batch-size", "16").stdout
    assert "mean" in out


def test_fine_tuning_flags_of_train_and_eval(tmp_path):
    """`train --algo mt_ft --ft-steps/--ft-value-lr/--ft-policy-lr` land in the checkpoint's config;
    `eval --ft-*` changes the fine-tuning of an mt_ft checkpoint (and so its adapted returns) and
    is refused, with the flag named, for other algorithms."""
    import subprocess
    import sys

    from macaw_fast.train.loop import load_checkpoint
    from macaw_fast.train.scripted import make_scripted_dataset

    data = make_scripted_dataset(tmp_path / "ds", "cheetah_dir", episodes_per_task=2, episode_steps=60, seed=1)
    tiny = ["--preset", "cheetah_dir", "--net-width", "16", "--batch-size", "16", "--threads", "1", "--steps", "2",
            "--progress", "false", "--tensorboard", "false", "--eval-interval", "0"]

    def cli(*args, ok=True):
        p = subprocess.run([sys.executable, "-m", "macaw_fast", *args], capture_output=True, text=True, timeout=600)
        assert (p.returncode == 0) == ok, p.stderr[-3000:]
        return p

    cli("train", "--data", str(data), "--out", str(tmp_path / "ft"), "--algo", "mt_ft", "--ft-steps", "3",
        "--ft-value-lr", "0.002", "--ft-policy-lr", "0.05", *tiny)
    c = load_checkpoint(tmp_path / "ft" / "checkpoints" / "latest.pt")["learner"]["config"]
    assert (c["ft_steps"], c["ft_value_lr"], c["ft_policy_lr"]) == (3, 0.002, 0.05)

    ev = ["--batches", "1", "--episodes", "1", "--random-episodes", "0", "--batch-size", "16"]
    runs = {}
    for name, extra in (("run's", []), ("small", ["--ft-steps", "1", "--ft-policy-lr", "1e-6"]),
                        ("tiny", ["--ft-policy-lr", "1e-9", "--ft-steps", "1"])):
        cli("eval", str(tmp_path / "ft"), *ev, *extra, "--json", str(tmp_path / f"{name}.json"))
        runs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    # a step size of 1e-6 barely moves the policy, 0.05 x 3 steps does
    small, tiny_, own = (runs[k]["mean_adapted"] for k in ("small", "tiny", "run's"))
    assert small == pytest.approx(tiny_, abs=0.5) and abs(own - small) > 1e-3

    p = cli("train", "--data", str(data), "--out", str(tmp_path / "bc"), "--algo", "meta_bc", "--ft-steps", "3", *tiny,
            ok=False)
    assert "train.ft_steps: only --algo mt_ft fine-tunes" in p.stderr and not (tmp_path / "bc").exists()
    cli("train", "--data", str(data), "--out", str(tmp_path / "mac"), *tiny)
    p = cli("eval", str(tmp_path / "mac"), *ev, "--ft-policy-lr", "0.1", ok=False)
    assert "--ft-policy-lr: only mt_ft checkpoints fine-tune" in p.stderr
    p = cli("eval", str(tmp_path / "ft"), *ev, "--ft-value-lr", "-1", ok=False)
    assert "--ft-value-lr" in p.stderr and "positive" in p.stderr
