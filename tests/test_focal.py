"""The FOCAL-style baseline (macaw_fast.focal) against a plain per-task implementation, float64."""

from __future__ import annotations

import math

import pytest
import torch

from macaw_fast.focal import FOCAL, FOCALConfig

from helpers import random_batch, rel_err

OBS, ACT = 5, 2


def _make(backend="torch", **cfg):
    torch.manual_seed(0)
    return FOCAL(OBS, ACT, 6, FOCALConfig(net_width=8, net_depth=2, latent_dim=3, **cfg), dtype=torch.float64,
                 backend=backend)


def _mlp(params, x):
    for k, (w, b) in enumerate(params):
        if k > 0:
            x = torch.relu(x)
        x = x @ w + b
    return x


def _params(layers):
    return [(m.weight, m.bias) for m in layers]


def _plain_z(enc, batch, t):
    """Task t's latent: the mean over its rows of the encoded [s, a, r, s'], one row at a time."""
    rows = [_mlp(enc, torch.cat([batch.obs[t, b], batch.action[t, b], batch.reward[t, b].reshape(1),
                                 batch.next_obs[t, b]])) for b in range(batch.obs.shape[1])]
    return torch.stack(rows).mean(0)


def _plain_loss(learner, inner, outer):
    """L_V + L_pi + L_metric written task by task and pair by pair."""
    c = learner.config
    enc, vp, pp = (_params(m) for m in (learner.encoder.layers, learner.vf.layers, learner.policy.trunk.layers))
    T = inner.obs.shape[0]
    z = [_plain_z(enc, inner, t) for t in range(T)]
    z2 = [_plain_z(enc, outer, t) for t in range(T)]
    same = sum(((z[i] - z2[i]) ** 2).sum() for i in range(T)) / T
    pairs = [(i, j) for i in range(T) for j in range(T) if i != j]
    push = sum(c.metric_beta / (((z[i] - z2[j]) ** 2).sum().sqrt() ** c.metric_power + c.metric_eps)
               for i, j in pairs) / len(pairs)
    lvs, lps = [], []
    for t in range(T):
        zt = z[t].detach()
        s = torch.cat([outer.obs[t], zt.expand(outer.obs.shape[1], -1)], -1)
        st = torch.cat([outer.terminal_obs[t], zt.expand(outer.obs.shape[1], -1)], -1)
        v = _mlp(vp, s).squeeze(-1)
        with torch.no_grad():
            target = outer.mc_return[t] + outer.terminal_discount[t] * _mlp([(w.detach(), b.detach()) for w, b in vp],
                                                                            st).squeeze(-1)
            adv = target - v.detach()
            w = torch.exp(torch.clamp((adv - adv.mean()) / (adv.std() * c.adaptation_temp),
                                      max=math.log(c.exp_advantage_clip)))
        logp = torch.distributions.Normal(torch.tanh(_mlp(pp, s)), c.action_sigma).log_prob(outer.action[t]).sum(-1)
        lvs.append((v - target).pow(2).mean())
        lps.append((-w * logp).mean())
    return sum(lvs) / T + sum(lps) / T + same + push


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_gradient_matches_a_plain_per_task_implementation(backend):
    learner = _make(backend, metric_power=1.5, metric_beta=0.7)
    inner, outer = random_batch(4, 6, OBS, ACT, seed=1), random_batch(4, 6, OBS, ACT, seed=2)
    g = learner.meta_gradient(inner, outer)
    got = [p.grad.clone() for p in learner.parameters()]
    assert all(x.abs().sum() > 0 for x in got[:-1])         # the encoder is reached (by the metric loss)
    learner.optimizer.zero_grad(set_to_none=True)
    loss = _plain_loss(learner, inner, outer)
    loss.backward()
    ref = [p.grad for p in learner.parameters()]
    scale = torch.cat([r.flatten() for r in ref]).abs().max()
    for a, b in zip(got, ref):
        # the encoder's output bias cancels in every z_i - z'_j: its gradient is zero up to rounding
        assert rel_err(a, b) <= 1e-10 or (a - b).abs().max() <= 1e-14 * scale
    assert rel_err(torch.cat([x.flatten() for x in got]), torch.cat([r.flatten() for r in ref])) <= 1e-10
    assert g.metrics[-1].item() == pytest.approx(loss.item(), rel=1e-12)
    # the RL losses do not train the encoder: with the metric loss's weight ~0 its gradient vanishes
    tiny = _make(backend, metric_beta=1e-300)
    tiny.meta_gradient(random_batch(1, 6, OBS, ACT, seed=1), random_batch(1, 6, OBS, ACT, seed=1))
    assert all(p.grad.abs().max() == 0 for p in tiny.encoder.parameters())


def test_adapt_infers_the_latent_and_act_conditions_on_it():
    learner = _make()
    batch = random_batch(3, 5, OBS, ACT, seed=4)
    ad = learner.adapt(batch)
    enc = _params(learner.encoder.layers)
    pp = _params(learner.policy.trunk.layers)
    obs = torch.randn(3, 2, OBS, dtype=torch.float64)
    mu = learner.act(obs, ad)
    mu0 = learner.act(obs)
    for t in range(3):
        z = _plain_z(enc, batch, t)
        assert rel_err(ad.policy[0][t], z) <= 1e-12
        assert rel_err(mu[t], torch.tanh(_mlp(pp, torch.cat([obs[t], z.expand(2, -1)], -1)))) <= 1e-12
        assert rel_err(mu0[t], torch.tanh(_mlp(pp, torch.cat([obs[t], torch.zeros(2, 3, dtype=torch.float64)], -1)))) \
            <= 1e-12
    assert rel_err(learner.act(obs[1:2], ad, tasks=[1]), mu[1:2]) == 0


def test_meta_steps_state_round_trip_and_bad_config():
    a, b = _make("torch"), _make("cpu")
    for k in range(3):
        inner, outer = random_batch(3, 6, OBS, ACT, seed=10 + k), random_batch(3, 6, OBS, ACT, seed=20 + k)
        ma, mb = a.meta_step(inner, outer), b.meta_step(inner, outer)
        assert ma == mb and set(ma) == set(FOCAL.metric_names) | {"loss/meta"}
    import copy

    twin = FOCAL.from_state_dict(copy.deepcopy(a.state_dict()), backend="torch")   # (Adam would share its state)
    inner, outer = random_batch(3, 6, OBS, ACT, seed=99), random_batch(3, 6, OBS, ACT, seed=98)
    assert twin.meta_step(inner, outer) == a.meta_step(inner, outer)
    for p, q in zip(twin.parameters(), a.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="focal.latent_dim: expected a positive integer"):
        FOCALConfig(latent_dim=0).validate()
    with pytest.raises(ValueError, match="focal.metric_eps: expected a positive number"):
        FOCALConfig(metric_eps=-1.0).validate()


def test_train_resume_eval_through_the_cli(tmp_path):
    import subprocess
    import sys

    from macaw_fast.train.loop import load_checkpoint
    from macaw_fast.train.scripted import make_scripted_dataset

    data = make_scripted_dataset(tmp_path / "ds", "cheetah_dir", episodes_per_task=2, episode_steps=60, seed=1)
    tiny = ["--algo", "focal", "--preset", "cheetah_dir", "--net-width", "16", "--batch-size", "16", "--threads", "1",
            "--progress", "false", "--tensorboard", "false", "--eval-interval", "2", "--eval-rollouts", "1",
            "--random-episodes", "1", "--latest-interval", "2",
            "--latent-dim", "3", "--encoder-depth", "1", "--encoder-lr", "0.001", "--metric-beta", "2.5",
            "--metric-power", "1.5", "--metric-eps", "0.2"]

    def cli(*args, ok=True):
        p = subprocess.run([sys.executable, "-m", "macaw_fast", *args], capture_output=True, text=True, timeout=600)
        assert (p.returncode == 0) == ok, p.stderr[-3000:]
        return p

    cli("train", "--data", str(data), "--out", str(tmp_path / "full"), "--steps", "4", *tiny)
    cli("train", "--data", str(data), "--out", str(tmp_path / "part"), "--steps", "2", *tiny)
    cli("train", "--resume", str(tmp_path / "part"), "--steps", "4")
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "latest.pt")["learner"]
    b = load_checkpoint(tmp_path / "part" / "checkpoints" / "latest.pt")["learner"]
    assert a["format"] == "macaw-fast/focal"
    # focal's own flags reach its config (and survive the resume)
    for ck in (a, b):
        c = ck["config"]
        assert (c["latent_dim"], c["encoder_depth"], c["encoder_lr"], c["metric_beta"], c["metric_power"],
                c["metric_eps"]) == (3, 1, 0.001, 2.5, 1.5, 0.2)
    assert sorted(a["encoder"]) == ["layers.0.bias", "layers.0.weight", "layers.1.bias", "layers.1.weight"]
    assert a["encoder"]["layers.1.weight"].shape[-1] == 3                 # one hidden layer, latent of 3
    for net in ("encoder", "vf", "policy"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), (net, k)
    out = cli("eval", str(tmp_path / "part"), "--batches", "1", "--episodes", "1", "--random-episodes", "0",
              "--batch-size", "16").stdout
    assert "mean" in out
    err = cli("eval", str(tmp_path / "part"), "--batches", "1", "--episodes", "1", "--batch-size", "16",
              "--online-ft", ok=False).stderr
    assert "--online-ft: online fine-tuning is implemented for MACAW only" in err
    # focal's fields are refused for the other algorithms, and bad values with the field named
    base = ["train", "--data", str(data), "--steps", "1", "--preset", "cheetah_dir", "--progress", "false"]
    err = cli(*base, "--out", str(tmp_path / "m"), "--latent-dim", "4", ok=False).stderr
    assert "train.latent_dim: only --algo focal" in err and not (tmp_path / "m").exists()
    err = cli(*base, "--out", str(tmp_path / "f"), "--algo", "focal", "--metric-eps", "-1", ok=False).stderr
    assert "train.metric_eps: expected a positive number" in err and not (tmp_path / "f").exists()
