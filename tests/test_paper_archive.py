"""Interop with the paper's archive_*.pt checkpoints (docs/algorithm.md §9)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from macaw_fast.backends.cpu import CpuBackend
from macaw_fast.paper import ArchiveError, export_archive, load_archive

from helpers import make_learner, param_names, random_batch


# --- a module laid out like the paper's WLinear / MLP, written here from docs/algorithm.md §9, so its
# --- state_dict has the paper's keys (aliases included) by construction, not by our exporter.
class PaperStyleWLinear(nn.Module):
    def __init__(self, i, o, dim):
        super().__init__()
        self.z = nn.Parameter(torch.randn(dim, dtype=torch.float64) / o)
        self.fc = nn.Linear(dim, i * o + o, dtype=torch.float64)
        self.seq = self.fc
        self.weight = self.fc.weight
        self._linear = self.fc


class PaperStyleMLP(nn.Module):
    def __init__(self, dims, dim):
        super().__init__()
        self.seq = nn.Sequential()
        for k, (i, o) in enumerate(zip(dims[:-1], dims[1:])):
            self.seq.add_module(f"fc_{k}", PaperStyleWLinear(i, o, dim))


class PaperStylePolicy(PaperStyleMLP):
    def __init__(self, obs, act, width, depth, dim, head_width=32):
        super().__init__([obs] + [width] * depth + [act], dim)
        layers = list(self.seq.children())
        self.pre_seq = nn.Sequential()
        for k, layer in enumerate(layers[:-1]):
            self.pre_seq.add_module(f"fc_{k}", layer)
        self.post_seq = nn.Sequential()
        self.post_seq.add_module(f"fc_{depth}", layers[-1])
        self.head_seq = PaperStyleMLP([width + act, head_width, 1], dim).seq


def paper_style_archive(obs=5, act=2, width=6, depth=2, dim=4, head_width=3):
    torch.manual_seed(0)
    vf = PaperStyleMLP([obs] + [width] * depth + [1], dim)
    pol = PaperStylePolicy(obs, act, width, depth, dim, head_width)
    vf_opt = torch.optim.Adam(vf.parameters(), lr=1e-5)
    pol_opt = torch.optim.Adam(pol.parameters(), lr=1e-4)
    for opt, net in ((vf_opt, vf), (pol_opt, pol)):
        for p in net.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
    n_v, n_p = 3 * (depth + 1), 3 * (depth + 1) + 6
    return {
        "vf": vf.state_dict(), "policy": pol.state_dict(),
        "vf_opt": vf_opt.state_dict(), "policy_opt": pol_opt.state_dict(),
        "vf_lrs": [nn.Parameter(torch.tensor(-7.0 + 0.1 * k, dtype=torch.float64)) for k in range(n_v)],
        "policy_lrs": [nn.Parameter(torch.tensor(-6.0 - 0.1 * k, dtype=torch.float64)) for k in range(n_p)],
        "q_lrs": [nn.Parameter(torch.tensor(-7.0, dtype=torch.float64)) for _ in range(n_v)],
        "adv_coef": nn.Parameter(torch.tensor(-4.2, dtype=torch.float64)),
    }, vf, pol


def test_paper_style_archive_loads_with_its_values():
    archive, vf, pol = paper_style_archive()
    # the real paper archive has every alias key
    assert {"seq.fc_0.weight", "seq.fc_0.seq.weight", "seq.fc_0._linear.bias", "seq.fc_0.fc.bias"} <= set(archive["vf"])
    assert {"pre_seq.fc_1.z", "post_seq.fc_2.z", "head_seq.fc_1.fc.weight"} <= set(archive["policy"])
    learner = load_archive(archive, n_train_tasks=7)
    assert (learner.obs_dim, learner.act_dim) == (5, 2)
    c = learner.config
    assert (c.net_width, c.net_depth, c.wlinear_dim, c.head_width) == (6, 2, 4, 3)
    assert learner.dtype == torch.float64
    # parameters in the paper's named_parameters order (z, weight, fc.bias per layer) map 1:1
    paper_params = list(vf.parameters()) + list(pol.parameters())
    ours = list(learner.vf.parameters()) + list(learner.policy.parameters())
    assert len(paper_params) == len(ours)
    for a, b in zip(paper_params, ours):
        assert torch.equal(a.detach(), b.detach())
    assert torch.equal(learner.vf_lrs.flatten(), torch.stack([p.detach() for p in archive["vf_lrs"]]))
    assert torch.equal(learner.policy_lrs.flatten(), torch.stack([p.detach() for p in archive["policy_lrs"]]))
    assert learner.adv_coef.item() == -4.2
    # Adam moments came along, in the same order
    paper_state = archive["policy_opt"]["state"]
    for i, p in enumerate(learner.policy.parameters()):
        assert torch.equal(learner.optimizer.state[p]["exp_avg"], paper_state[i]["exp_avg"])
        assert learner.optimizer.state[p]["step"].item() == 1
    # it runs
    loss, _ = learner.meta_loss(random_batch(2, 6, 5, 2, seed=0), random_batch(2, 6, 5, 2, seed=1))
    assert torch.isfinite(loss)


def test_round_trip_is_lossless(tmp_path):
    learner = make_learner(5, 2, n_train=4, net_width=6, net_depth=2, wlinear_dim=4, head_width=3)
    inner, outer = random_batch(2, 8, 5, 2, seed=1), random_batch(2, 8, 5, 2, seed=2)
    learner.meta_step(inner, outer)
    learner.meta_step(inner, outer)
    path = tmp_path / "archive_2.pt"
    torch.save(export_archive(learner), path)
    loaded = load_archive(path, n_train_tasks=4)
    for name, a, b in zip(param_names(learner), learner.parameters(), loaded.parameters()):
        assert torch.equal(a, b), name
    for a, b in zip(learner.parameters()[:-3], loaded.parameters()[:-3]):
        sa, sb = learner.optimizer.state[a], loaded.optimizer.state[b]
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
        assert sa["step"].item() == sb["step"].item()
    # the same next step on both (rate optimizer state is not in the paper's format: reset it on both)
    for lr_param in learner.parameters()[-3:]:
        learner.optimizer.state.pop(lr_param, None)
    learner.meta_step(inner, outer)
    loaded.meta_step(inner, outer)
    for name, a, b in zip(param_names(learner), learner.parameters(), loaded.parameters()):
        assert torch.equal(a, b), name
    # and it is the paper's layout: exporting the loaded learner gives identical tensors
    again = export_archive(loaded)
    first = export_archive(learner)
    assert set(again["vf"]) == set(first["vf"]) and set(again["policy"]) == set(first["policy"])


def test_export_grads():
    learner = make_learner(5, 2, n_train=4, net_width=6, net_depth=2, wlinear_dim=4, head_width=3)
    loss, _ = learner.meta_loss(random_batch(2, 8, 5, 2, seed=1), random_batch(2, 8, 5, 2, seed=2))
    loss.backward()
    g = export_archive(learner, grads=True)
    layer = learner.vf.layers[1]
    assert torch.equal(g["vf"]["seq.fc_1.fc.weight"], layer.weight.grad)
    assert torch.equal(g["vf"]["seq.fc_1.seq.weight"], layer.weight.grad)
    assert torch.equal(g["policy"]["post_seq.fc_2.z"], learner.policy.trunk.layers[2].z.grad)
    assert g["vf_lrs"][4].item() == learner.vf_lrs.grad[1, 1].item()
    assert g["adv_coef"].item() == learner.adv_coef.grad.item()


def test_export_grads_after_low_rank_meta_step_refuses_missing_weight_grads():
    """meta_step's low-rank Adam leaves W's .grad None: exporting gradients then must not write
    zeros for W silently; with CpuBackend(lowrank_adam=False) the dense gradients are there."""
    batches = random_batch(2, 8, 5, 2, seed=1), random_batch(2, 8, 5, 2, seed=2)
    learner = make_learner(5, 2, n_train=4, net_width=6, net_depth=2, wlinear_dim=4, head_width=3)
    learner.meta_step(*batches)
    with pytest.raises(ValueError, match=r"vf.layers.0.weight has no .grad.*lowrank_adam=False"):
        export_archive(learner, grads=True)
    dense = make_learner(5, 2, n_train=4, net_width=6, net_depth=2, wlinear_dim=4, head_width=3,
                         backend=CpuBackend(lowrank_adam=False))
    dense.meta_step(*batches)
    g = export_archive(dense, grads=True)
    assert torch.equal(g["vf"]["seq.fc_0.fc.weight"], dense.vf.layers[0].weight.grad)
    assert g["vf"]["seq.fc_0.fc.weight"].norm() > 0


@pytest.mark.parametrize("mutate,match", [
    (lambda a: a["vf"].pop("seq.fc_1.fc.weight"), "missing key 'seq.fc_1.fc.weight'"),
    (lambda a: a["policy"].pop("pre_seq.fc_0.z"), "missing alias key 'pre_seq.fc_0.z'"),
    (lambda a: a["vf"].pop("seq.fc_0._linear.bias"), "missing alias key 'seq.fc_0._linear.bias'"),
    (lambda a: a["vf"].__setitem__("seq.fc_2.seq.weight", a["vf"]["seq.fc_2.seq.weight"] + 1.0),
     "'seq.fc_2.seq.weight' disagrees"),
    (lambda a: a["policy"].__setitem__("post_seq.fc_2.z", a["policy"]["post_seq.fc_2.z"] * 2),
     "'post_seq.fc_2.z' disagrees"),
    (lambda a: a.pop("vf_lrs"), "missing key 'vf_lrs'"),
    (lambda a: a["policy_lrs"].pop(), "expected a list of 15 scalars"),
    (lambda a: a.__setitem__("adv_coef", None), "'adv_coef' is missing"),
])
def test_bad_archives_raise_naming_the_key(mutate, match):
    archive, _, _ = paper_style_archive()
    archive = copy.deepcopy(archive)
    mutate(archive)
    with pytest.raises(ArchiveError, match=match):
        load_archive(archive, n_train_tasks=3)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_archive(tmp_path / "nope.pt", 3)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ArchiveError, match="bad.pt"):
        load_archive(bad, 3)


def test_plain_layers_cannot_be_exported():
    learner = make_learner(5, 2, net_width=4, net_depth=1, wlinear=False)
    with pytest.raises(ValueError, match="wlinear"):
        export_archive(learner)
