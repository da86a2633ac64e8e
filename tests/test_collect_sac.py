"""Batched SAC: the update of T tasks at once equals T independent one-task SAC updates."""

import math

import pytest
import torch

from macaw_fast.collect.sac import SAC, BatchedSAC, SACConfig, squashed_gaussian

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine two threads make these tiny updates crawl."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _batch(T, B, o, a, g):
    return {"obs": torch.randn(T, B, o, dtype=F64, generator=g),
            "action": torch.rand(T, B, a, dtype=F64, generator=g) * 2 - 1,
            "reward": torch.randn(T, B, dtype=F64, generator=g),
            "next_obs": torch.randn(T, B, o, dtype=F64, generator=g),
            "done": (torch.rand(T, B, dtype=F64, generator=g) < 0.2).to(F64)}


def _max_diff(a: SAC, b: SAC) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("T,B,o,a,width", [(3, 17, 5, 2, 9), (1, 8, 20, 6, 16)])
def test_batched_update_equals_independent_updates(T, B, o, a, width):
    cfg = SACConfig(width=width, batch_size=B)
    agent = BatchedSAC(T, o, a, cfg, seed=1, dtype=F64)
    singles = [SAC.from_batched(agent, t) for t in range(T)]
    g = torch.Generator().manual_seed(3)
    steps = 25
    for _ in range(steps):
        bt = _batch(T, B, o, a, g)
        en = torch.randn(T, B, a, dtype=F64, generator=g)
        ep = torch.randn(T, B, a, dtype=F64, generator=g)
        agent.update(bt, en, ep)
        for t, s in enumerate(singles):
            s.update({k: v[t] for k, v in bt.items()}, en[t], ep[t])
    moved = 0.0
    for t, s in enumerate(singles):
        now = SAC.from_batched(agent, t)  # task t's parameters and targets after the batched updates
        assert _max_diff(s, now) < 1e-10 * steps
        moved = max(moved, _max_diff(now, SAC.from_batched(BatchedSAC(T, o, a, cfg, seed=1, dtype=F64), t)))
    assert moved > 1e-3  # the updates really changed the parameters


def test_tasks_do_not_share_parameters():
    """Changing task 1's data leaves task 0's parameters bit-identical."""
    T, B, o, a = 2, 8, 4, 2
    g = torch.Generator().manual_seed(0)
    bt = _batch(T, B, o, a, g)
    en, ep = torch.randn(T, B, a, dtype=F64, generator=g), torch.randn(T, B, a, dtype=F64, generator=g)
    x = BatchedSAC(T, o, a, SACConfig(width=8, batch_size=B), seed=5, dtype=F64)
    y = BatchedSAC(T, o, a, SACConfig(width=8, batch_size=B), seed=5, dtype=F64)
    bt2 = {k: v.clone() for k, v in bt.items()}
    bt2["reward"][1] += 100.0
    for _ in range(3):
        x.update(bt, en, ep)
        y.update(bt2, en, ep)
    a0, b0 = SAC.from_batched(x, 0), SAC.from_batched(y, 0)
    a1, b1 = SAC.from_batched(x, 1), SAC.from_batched(y, 1)
    assert _max_diff(a0, b0) == 0.0
    assert _max_diff(a1, b1) > 1e-3


def test_squashed_gaussian_logp_matches_change_of_variables():
    g = torch.Generator().manual_seed(0)
    mean, log_std, eps = (torch.randn(50, 3, dtype=F64, generator=g) * 0.5 for _ in range(3))
    a, logp = squashed_gaussian(mean, log_std, eps)
    u = mean + log_std.exp() * eps
    ref = torch.distributions.Normal(mean, log_std.exp()).log_prob(u).sum(-1) - torch.log(1 - torch.tanh(u) ** 2).sum(-1)
    assert torch.allclose(logp, ref, atol=1e-9)
    assert torch.equal(a, torch.tanh(u))


def test_state_dict_round_trip_continues_identically():
    T, B, o, a = 2, 8, 4, 2
    cfg = SACConfig(width=8, batch_size=B)
    g = torch.Generator().manual_seed(0)
    batches = [_batch(T, B, o, a, g) for _ in range(4)]
    x = BatchedSAC(T, o, a, cfg, seed=1, dtype=F64)
    for bt in batches[:2]:
        x.update(bt, generator=torch.Generator().manual_seed(9))
    y = BatchedSAC(T, o, a, cfg, seed=2, dtype=F64)
    y.load_state_dict(x.state_dict())
    for bt in batches[2:]:
        x.update(bt, generator=torch.Generator().manual_seed(7))
        y.update(bt, generator=torch.Generator().manual_seed(7))
    for p, q in zip(x.state_dict()["actor"] + x.state_dict()["critic"], y.state_dict()["actor"] + y.state_dict()["critic"]):
        assert torch.equal(p, q)


def test_temperature_moves_toward_target_entropy():
    """With a near-uniform wide policy (entropy above -act_dim) alpha must decrease."""
    T, B, o, a = 2, 32, 4, 3
    x = BatchedSAC(T, o, a, SACConfig(width=8, batch_size=B), seed=0, dtype=F64)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        m = x.update(_batch(T, B, o, a, g), generator=g)
    assert (x.log_alpha < 0).all() and (m["entropy"] > -a).all()
    assert math.isclose(x.target_entropy, -3.0)


def test_bad_inputs():
    with pytest.raises(ValueError, match="width"):
        SACConfig(width=0).validate()
    with pytest.raises(ValueError, match="gamma"):
        SACConfig(gamma=1.5).validate()
    x = BatchedSAC(2, 4, 2, SACConfig(width=8, batch_size=4), seed=0)
    g = torch.Generator().manual_seed(0)
    bt = {k: v.float() for k, v in _batch(3, 4, 4, 2, g).items()}
    with pytest.raises(ValueError, match="3 tasks"):
        x.update(bt)
    sd = x.state_dict()
    sd["actor"][0] = torch.zeros(1)
    with pytest.raises(ValueError, match="shape"):
        BatchedSAC(2, 4, 2, SACConfig(width=8, batch_size=4)).load_state_dict(sd)


def _bf16(x):
    """``x`` rounded to bfloat16, held in float64."""
    return x.to(torch.bfloat16).to(F64)


def test_bfloat16_products_match_a_float64_reference_of_the_same_rounding():
    """matmul='bfloat16': hidden layers multiply bf16-rounded inputs and weights with float32
    accumulation and round their output to bf16; the output layer runs in float32. A float64
    reference with the same roundings agrees to the accumulation's error."""
    from macaw_fast.collect.sac import _mlp

    g = torch.Generator().manual_seed(0)
    T, B, o, H, out = 3, 40, 11, 32, 5
    layers = [(torch.randn(T, i, j, generator=g) / math.sqrt(i), torch.randn(T, 1, j, generator=g) * 0.1)
              for i, j in ((o, H), (H, H), (H, out))]
    x = torch.randn(T, B, o, generator=g)
    got = _mlp(x, layers, torch.bfloat16)
    assert got.dtype == torch.float32
    ref = x.to(F64)
    for i, (w, b) in enumerate(layers):
        if i < 2:
            ref = _bf16(torch.baddbmm(_bf16(b), _bf16(ref), _bf16(w))).relu()   # rounded output
        else:
            ref = torch.baddbmm(b.to(F64), ref, w.to(F64))
    # one bf16 rounding of each hidden output (relative 2^-8) propagated through two layers
    assert (got.to(F64) - ref).abs().max() <= 2e-2 * ref.abs().max()
    full = _mlp(x, layers)
    assert not torch.equal(got, full)                               # the products really were bf16
    assert (got - full).abs().max() <= 5e-2 * full.abs().max()      # and close to float32's


def test_bfloat16_update_follows_the_float32_update():
    """One SAC update in bfloat16 moves every parameter nearly as float32 does (direction and size),
    and the losses agree to bf16 precision; the default stays float32."""
    T, B, o, a, H = 4, 64, 9, 3, 32
    g = torch.Generator().manual_seed(5)
    bt = {k: v.float() for k, v in _batch(T, B, o, a, g).items()}
    en, ep = torch.randn(T, B, a, generator=g), torch.randn(T, B, a, generator=g)
    assert SACConfig().matmul == "float32"
    agents = {m: BatchedSAC(T, o, a, SACConfig(width=H, batch_size=B, matmul=m), seed=2) for m in ("float32", "bfloat16")}
    before = [p.detach().clone() for p in agents["float32"].actor_params() + agents["float32"].critic_params()]
    metrics = {m: ag.update(bt, en, ep) for m, ag in agents.items()}
    for k in ("loss/critic", "loss/actor"):
        torch.testing.assert_close(metrics["bfloat16"][k], metrics["float32"][k], rtol=3e-2, atol=3e-2)
    after = {m: ag.actor_params() + ag.critic_params() for m, ag in agents.items()}
    for p0, p32, p16 in zip(before, after["float32"], after["bfloat16"]):
        d32, d16 = (p32 - p0).flatten(), (p16 - p0).flatten()
        if d32.norm() == 0:
            continue
        cos = torch.dot(d32, d16) / (d32.norm() * d16.norm())
        assert cos > 0.95 and 0.8 < d16.norm() / d32.norm() < 1.25
    assert all(p.dtype == torch.float32 for p in after["bfloat16"])


def test_matmul_setting_is_validated():
    with pytest.raises(ValueError, match="matmul: expected one of float32, bfloat16"):
        SACConfig(matmul="float16").validate()
    with pytest.raises(ValueError, match="matmul: the one-task SAC"):
        SAC(3, 2, SACConfig(matmul="bfloat16"))
