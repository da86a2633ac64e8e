"""Shared test helpers: random batches and learners, relative-error comparison, child processes."""

from __future__ import annotations

import os
import time

import torch

from macaw_fast import Batch, MacawConfig, MetaLearner
from macaw_fast.reference import reference_meta_loss


def random_batch(T: int, B: int, obs_dim: int, act_dim: int, *, seed: int, dtype=torch.float64) -> Batch:
    """A random Batch with varied terminal discounts (some exactly 0, as after a termination) and dones."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=dtype) * scale

    done = (torch.rand(T, B, generator=g) < 0.2).to(dtype)
    disc = torch.rand(T, B, generator=g, dtype=dtype)
    disc = torch.where(done.bool(), torch.zeros_like(disc), disc)
    return Batch(obs=r(T, B, obs_dim), action=torch.rand(T, B, act_dim, generator=g, dtype=dtype) * 2 - 1,
                 reward=r(T, B), next_obs=r(T, B, obs_dim), done=done, mc_return=r(T, B, scale=5.0),
                 terminal_obs=r(T, B, obs_dim), terminal_discount=disc)


def make_learner(obs_dim=7, act_dim=3, n_train=9, *, seed=0, dtype=torch.float64, fused=False,
                 ops_backend="auto", device="cpu", backend=None, **cfg) -> MetaLearner:
    """A learner with parameters drawn on the CPU from ``seed`` (the same on every device), moved to
    ``device``. ``backend``: a backend word or instance (default: 'fused' with ``fused``, else 'cpu')."""
    if backend is None:
        backend = "fused" if fused else "cpu"
    torch.manual_seed(seed)
    learner = MetaLearner(obs_dim, act_dim, n_train, MacawConfig(**cfg), dtype=dtype, backend=backend,
                          ops_backend=ops_backend)
    if torch.device(device).type != "cpu":
        learner = MetaLearner.from_state_dict(learner.state_dict(), device=device, backend=backend,
                                              ops_backend=ops_backend)
    return learner


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / max(||b||, tiny): relative error of a against the reference b."""
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def grads_of(learner: MetaLearner) -> list[torch.Tensor]:
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in learner.parameters()]


def param_names(learner: MetaLearner) -> list[str]:
    names = [f"vf.{n}" for n, _ in learner.vf.named_parameters()]
    names += [f"policy.{n}" for n, _ in learner.policy.named_parameters()]
    return names + ["vf_lrs", "policy_lrs", "adv_coef"]


def compare_with_reference(learner: MetaLearner, inner: Batch, outer: Batch, tol: float = 1e-10) -> list[torch.Tensor]:
    """Assert that ``learner.meta_loss`` and its meta-gradients equal the per-task reference loop's
    to ``tol`` relative; returns the learner's gradients (one per parameter)."""
    loss, _ = learner.meta_loss(inner, outer)
    loss.backward()
    got = grads_of(learner)
    learner.optimizer.zero_grad(set_to_none=True)
    ref = reference_meta_loss(learner, inner, outer)
    ref.backward()
    want = grads_of(learner)
    assert abs(loss.item() - ref.item()) <= tol * abs(ref.item())
    for name, a, b in zip(param_names(learner), got, want):
        assert rel_err(a, b) <= tol, f"{name}: {rel_err(a, b):.3e}"
    return got


def child_pids(pid: int) -> list[int]:
    """The pids of ``pid``'s children (Linux /proc)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_all_dead(pids: list[int], timeout_s: float = 15.0) -> bool:
    """Wait up to ``timeout_s`` for every pid to be gone; whether they all are."""
    deadline = time.monotonic() + timeout_s
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(pid_alive(p) for p in pids)


def assert_same_tree(a, b, where=""):
    """Nested dicts/lists of tensors and plain values are equal, tensors bit for bit (``where``
    names the first path that differs)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs"
    else:
        assert a == b, where
