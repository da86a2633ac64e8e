"""Interop with the paper's checkpoints (`archive_<step>.pt`, docs/algorithm.md §9).

The paper's code saves ``torch.save`` of a dict with the value net and policy state_dicts (every
weight-transform layer's W and b appear under several alias keys), their Adam states, the learned
inner rates as lists of scalar parameters (``vf_lrs``: 12, ``policy_lrs``: 18 at depth 3, order
(z, weight, bias) per layer) and the head weight ``adv_coef``. `load_archive` builds a
`MetaLearner` from such a dict (dims and dtype read from the tensors); `export_archive` writes one.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from .config import MacawConfig
from .macaw import MetaLearner

#: Keys under which the paper's WLinear layer stores W and b, besides ``fc.weight`` / ``fc.bias``.
WEIGHT_ALIASES = ("weight", "seq.weight", "_linear.weight")
BIAS_ALIASES = ("seq.bias", "_linear.bias")


class ArchiveError(ValueError):
    """A paper archive is missing keys or holds inconsistent tensors."""


def _layer_count(state: dict, prefix: str, where: str) -> int:
    n = 0
    while f"{prefix}.fc_{n}.z" in state:
        n += 1
    if n == 0:
        raise ArchiveError(f"archive['{where}']: no layers found (expected keys '{prefix}.fc_0.z', ...)")
    return n


def _read_layer(state: dict, prefix: str, where: str, aliases: list[str] | None = None) -> dict[str, Tensor]:
    """z, W, b of one paper WLinear layer; checks that every alias key holds the same tensor."""
    out = {}
    for name, key in (("z", "z"), ("weight", "fc.weight"), ("bias", "fc.bias")):
        full = f"{prefix}.{key}"
        if full not in state:
            raise ArchiveError(f"archive['{where}']: missing key '{full}'")
        out[name] = state[full]
    for alias in WEIGHT_ALIASES + BIAS_ALIASES:
        full = f"{prefix}.{alias}"
        if full not in state:
            raise ArchiveError(f"archive['{where}']: missing alias key '{full}' (a paper archive has every alias)")
        canonical = out["weight" if alias.endswith("weight") else "bias"]
        if not torch.equal(state[full], canonical):
            raise ArchiveError(f"archive['{where}']: '{full}' disagrees with '{prefix}.fc.{alias.rsplit('.', 1)[-1]}'")
    for other in aliases or []:
        for key in ("z", "fc.weight", "fc.bias") + WEIGHT_ALIASES + BIAS_ALIASES:
            a, b = f"{other}.{key}", f"{prefix}.{key}"
            if a not in state:
                raise ArchiveError(f"archive['{where}']: missing alias key '{a}'")
            if not torch.equal(state[a], state[b]):
                raise ArchiveError(f"archive['{where}']: '{a}' disagrees with '{b}'")
    z, W, b = out["z"], out["weight"], out["bias"]
    if z.dim() != 1 or W.dim() != 2 or b.dim() != 1 or W.shape != (b.shape[0], z.shape[0]):
        raise ArchiveError(f"archive['{where}']: layer '{prefix}' has z {tuple(z.shape)}, W {tuple(W.shape)}, "
                           f"b {tuple(b.shape)}; expected z (D,), W (P, D), b (P,)")
    return out


def _solve_out(P: int, in_features: int, prefix: str, where: str) -> int:
    """out such that P = in*out + out."""
    if P % (in_features + 1):
        raise ArchiveError(f"archive['{where}']: layer '{prefix}' has P={P}, not a multiple of in+1={in_features + 1}")
    return P // (in_features + 1)


def _scalars(archive: dict, key: str, n: int) -> Tensor:
    if key not in archive:
        raise ArchiveError(f"archive: missing key '{key}'")
    vals = archive[key]
    if not isinstance(vals, (list, tuple)) or len(vals) != n:
        got = len(vals) if isinstance(vals, (list, tuple)) else type(vals).__name__
        raise ArchiveError(f"archive['{key}']: expected a list of {n} scalars, got {got}")
    return torch.stack([torch.as_tensor(v).detach().reshape(()) for v in vals])


def load_archive(path_or_dict: str | os.PathLike | dict, n_train_tasks: int, *,
                 config: MacawConfig | None = None, load_optimizer: bool = True,
                 device=None, backend="auto", fused: bool | None = None) -> MetaLearner:
    """Build a `MetaLearner` from the paper's ``archive_*.pt`` (a path or the loaded dict).

    Network sizes (obs/act dims, width, depth, D, head width) and the dtype come from the tensors;
    ``config`` may set the other hyper-parameters (default: the paper's). The Adam states of the
    value net and policy are loaded when present and ``load_optimizer`` is set.
    """
    if isinstance(path_or_dict, dict):
        archive = path_or_dict
    else:
        path = os.fspath(path_or_dict)
        if not os.path.exists(path):
            raise FileNotFoundError(f"paper archive not found: {path}")
        try:
            archive = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means "not an archive"
            raise ArchiveError(f"{path}: could not be read as a paper archive ({type(e).__name__}: {e})") from e
        if not isinstance(archive, dict):
            raise ArchiveError(f"{path}: expected a dict, got {type(archive).__name__}")
    for key in ("vf", "policy", "vf_lrs", "policy_lrs"):
        if key not in archive:
            raise ArchiveError(f"archive: missing key '{key}'")
    vf_state, pol_state = archive["vf"], archive["policy"]

    n_v = _layer_count(vf_state, "seq", "vf")
    vf_layers = [_read_layer(vf_state, f"seq.fc_{i}", "vf") for i in range(n_v)]
    n_p = _layer_count(pol_state, "seq", "policy")
    trunk = [_read_layer(pol_state, f"seq.fc_{i}", "policy",
                         [f"pre_seq.fc_{i}"] if i < n_p - 1 else [f"post_seq.fc_{i}"]) for i in range(n_p)]
    has_head = "head_seq.fc_0.z" in pol_state
    head = [_read_layer(pol_state, f"head_seq.fc_{i}", "policy") for i in range(2)] if has_head else []

    D = vf_layers[0]["z"].shape[0]
    dtype = vf_layers[0]["z"].dtype
    width = vf_layers[-1]["bias"].shape[0] - 1                      # last value layer: P = H*1 + 1
    if width < 1:
        raise ArchiveError("archive['vf']: last layer is too small to be a width-H -> 1 layer")
    P0 = vf_layers[0]["bias"].shape[0]                              # first layer: P0 = (obs + 1) * H
    if P0 % width or P0 // width < 2:
        raise ArchiveError(f"archive['vf']: layer 'seq.fc_0' has P={P0}, not (obs+1)*{width} for any obs >= 1")
    obs_dim = P0 // width - 1
    act_dim = _solve_out(trunk[-1]["bias"].shape[0], width, f"seq.fc_{n_p - 1}", "policy")
    head_width = _solve_out(head[0]["bias"].shape[0], width + act_dim, "head_seq.fc_0", "policy") if has_head else 32
    if n_p != n_v:
        raise ArchiveError(f"archive: value net has {n_v} layers but the policy trunk has {n_p}")

    cfg = MacawConfig(**{**(config or MacawConfig()).to_dict(), "net_width": width, "net_depth": n_v - 1,
                         "wlinear_dim": D, "head_width": head_width, "advantage_head": has_head,
                         "wlinear": True})
    learner = MetaLearner(obs_dim, act_dim, n_train_tasks, cfg, device=device, dtype=dtype, backend=backend,
                          fused=fused)

    def assign(ours: list, theirs: list, where: str):
        for k, (layer, src) in enumerate(zip(ours, theirs)):
            for name in ("z", "weight", "bias"):
                dst = getattr(layer, name)
                if dst.shape != src[name].shape:
                    raise ArchiveError(f"archive['{where}']: layer {k} {name} has shape {tuple(src[name].shape)}, "
                                       f"expected {tuple(dst.shape)} for obs={obs_dim}, act={act_dim}, width={width}")
                with torch.no_grad():
                    dst.copy_(src[name])

    assign(learner.vf.layers, vf_layers, "vf")
    assign(learner.policy.layers, trunk + head, "policy")
    with torch.no_grad():
        learner.vf_lrs.copy_(_scalars(archive, "vf_lrs", learner.vf_lrs.numel()).view_as(learner.vf_lrs))
        learner.policy_lrs.copy_(_scalars(archive, "policy_lrs", learner.policy_lrs.numel()).view_as(learner.policy_lrs))
        if has_head:
            if archive.get("adv_coef") is None:
                raise ArchiveError("archive: the policy has an advantage head but 'adv_coef' is missing")
            learner.adv_coef.copy_(torch.as_tensor(archive["adv_coef"]).reshape(()))
    if load_optimizer and "vf_opt" in archive and "policy_opt" in archive:
        _load_adam_states(learner, archive["vf_opt"], archive["policy_opt"])
    return learner


def _load_adam_states(learner: MetaLearner, vf_opt: dict, policy_opt: dict) -> None:
    sd = learner.optimizer.state_dict()
    groups = sd["param_groups"]
    for gi, (paper, where) in enumerate(((vf_opt, "vf_opt"), (policy_opt, "policy_opt"))):
        ids = groups[gi]["params"]
        try:
            paper_ids = paper["param_groups"][0]["params"]
            paper_state = paper["state"]
        except (KeyError, IndexError, TypeError) as e:
            raise ArchiveError(f"archive['{where}']: not an Adam state_dict ({e})") from e
        if len(paper_ids) != len(ids):
            raise ArchiveError(f"archive['{where}']: Adam state covers {len(paper_ids)} tensors, expected {len(ids)}")
        for ours, theirs in zip(ids, paper_ids):
            if theirs in paper_state:
                st = dict(paper_state[theirs])
                st["step"] = torch.as_tensor(float(st["step"]), dtype=torch.float32)
                sd["state"][ours] = st
    learner.optimizer.load_state_dict(sd)


def _layer_entries(prefix: str, z: Tensor, W: Tensor, b: Tensor) -> dict[str, Tensor]:
    d = {f"{prefix}.z": z, f"{prefix}.fc.weight": W, f"{prefix}.fc.bias": b}
    for alias in WEIGHT_ALIASES:
        d[f"{prefix}.{alias}"] = W
    for alias in BIAS_ALIASES:
        d[f"{prefix}.{alias}"] = b
    return d


def _value_of(p: Tensor, grads: bool) -> Tensor:
    if grads:
        return p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p.detach())
    return p.detach().clone()


def _paper_adam(learner: MetaLearner, group: int) -> dict:
    opt = learner.optimizer
    g = opt.param_groups[group]
    state = {}
    for i, p in enumerate(g["params"]):
        if p in opt.state and opt.state[p]:
            s = opt.state[p]
            state[i] = {"step": int(s["step"].item()), "exp_avg": s["exp_avg"].detach().clone(),
                        "exp_avg_sq": s["exp_avg_sq"].detach().clone()}
    hyper = {k: g[k] for k in ("lr", "betas", "eps", "weight_decay", "amsgrad")}
    return {"state": state, "param_groups": [{**hyper, "params": list(range(len(g["params"])))}]}


def export_archive(learner: MetaLearner, grads: bool = False) -> dict[str, Any]:
    """The learner as the paper's archive dict (save it with ``torch.save``).

    With ``grads=True`` every tensor is replaced by its ``.grad`` (zeros where None), so a
    meta-gradient can be compared key by key with one computed by the paper's code.
    Only weight-transform learners can be exported (the paper's format has no plain layers).
    """
    if not learner.config.wlinear:
        raise ValueError("export_archive: the paper's format holds weight-transform layers only (config.wlinear=False)")
    if grads:
        for name, layer in [(f"vf.layers.{i}", m) for i, m in enumerate(learner.vf.layers)] + \
                [(f"policy.layers.{i}", m) for i, m in enumerate(learner.policy.layers)]:
            if layer.weight.grad is None and (layer.z.grad is not None or layer.bias.grad is not None):
                raise ValueError(
                    f"export_archive(grads=True): {name}.weight has no .grad while its z/bias have one; "
                    "meta_step's low-rank Adam updates W without forming its gradient. Set "
                    "the learner's backend to macaw_fast.backends.cpu.CpuBackend(lowrank_adam=False) before "
                    "meta_step, or use meta_loss(...)[0].backward()")
    vf = {}
    for i, layer in enumerate(learner.vf.layers):
        vf.update(_layer_entries(f"seq.fc_{i}", *(_value_of(getattr(layer, n), grads) for n in ("z", "weight", "bias"))))
    pol = {}
    n = learner.policy.num_trunk_layers
    for i, layer in enumerate(learner.policy.trunk.layers):
        t = [_value_of(getattr(layer, k), grads) for k in ("z", "weight", "bias")]
        pol.update(_layer_entries(f"seq.fc_{i}", *t))
        pol.update(_layer_entries(f"pre_seq.fc_{i}" if i < n - 1 else f"post_seq.fc_{i}", *t))
    if learner.policy.head is not None:
        for i, layer in enumerate(learner.policy.head.layers):
            pol.update(_layer_entries(f"head_seq.fc_{i}", *(_value_of(getattr(layer, k), grads) for k in ("z", "weight", "bias"))))

    def scalars(p: Tensor) -> list[nn.Parameter]:
        v = _value_of(p, grads)
        return [nn.Parameter(x.clone()) for x in v.reshape(-1)]

    out = {
        "vf": vf,
        "policy": pol,
        "vf_opt": _paper_adam(learner, 0),
        "policy_opt": _paper_adam(learner, 1),
        "vf_lrs": scalars(learner.vf_lrs),
        "policy_lrs": scalars(learner.policy_lrs),
        # The paper's unused Q-function rates: its loader builds an Adam over them, so keep one per
        # value-net tensor at the initial value rather than an empty list.
        "q_lrs": [nn.Parameter(torch.tensor(float(torch.log(torch.tensor(learner.config.inner_value_lr))),
                                             dtype=learner.dtype)) for _ in range(learner.vf_lrs.numel())],
        "adv_coef": nn.Parameter(_value_of(learner.adv_coef, grads)) if learner.policy.head is not None else None,
    }
    return out
