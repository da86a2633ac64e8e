"""Evaluation (docs/algorithm.md §6): offline adaptation on a test task's data, then mean-action rollouts.

For each task: draw a batch of ``batch_size`` rows of that task's offline data uniformly at random
(without replacement), adapt the value function then the policy with one step each
(:meth:`MetaLearner.adapt`), and roll out the adapted policy's MEAN action, clipped to the action
bounds, for one episode. The meta-trained (unadapted) policy is rolled out on the same task from
the same start states. Several adaptation batches and several rollouts per batch can be averaged
(single rollouts are noisy). Every random draw is a pure function of (seed, step, task, batch,
rollout), so evaluation never touches the training RNG and a resumed run evaluates identically.

Normalised score of a return R on task i: (R - R_random,i) / (R_best,i - R_random,i), where
R_random,i is the mean return of a uniformly random policy and R_best,i the best trajectory
return stored in the task's data (``None`` when the data does not know its trajectories).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..data.batch import FIELDS, Batch

_EVAL_STREAM = 0xE7A1  # separates evaluation draws from everything else seeded by the run seed
#: The random-policy reference of the normalised score is seeded by the task alone (its index in
#: the dataset), never by the run's seed: every seed and algorithm evaluated on the same data is
#: normalised by the same R_random. (Before 2026-12-07 each run seed drew its own 3 episodes, so
#: the reference itself varied between seeds.)
_REFERENCE_STREAM = 0x4EF0
#: Random-policy episodes per task of that reference (TrainConfig.random_episodes's default too).
RANDOM_EPISODES = 10


def _seed(*parts: int) -> int:
    """A 32-bit seed derived from integers (numpy SeedSequence: well mixed, stable across versions)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def family_of(ds) -> str:
    """The task family of an open dataset, from its env id."""
    from ..envs import FAMILIES

    for name, fam in FAMILIES.items():
        if ds.env_id in (fam.env_id, name):
            return name
    raise ValueError(f"{ds.path}: dataset env id {ds.env_id!r} is not one of the MACAW families "
                     f"({', '.join(f.env_id for f in FAMILIES.values())})")


def check_dataset_env(ds, family: str) -> None:
    """Raise ValueError if the dataset's obs/act sizes differ from the env family's."""
    from ..envs import FAMILIES

    fam = FAMILIES[family]
    if (ds.obs_dim, ds.act_dim) != (fam.obs_dim, fam.act_dim):
        raise ValueError(f"{ds.path}: dataset has obs_dim={ds.obs_dim}, act_dim={ds.act_dim} but the {family} "
                         f"env has obs_dim={fam.obs_dim}, act_dim={fam.act_dim}")


def sample_rows_batch(task_arrays: Sequence[dict], rows: Sequence[np.ndarray], dtype, device) -> Batch:
    """Gather rows[k] of task_arrays[k] into a (K, B, ...) Batch."""
    out = {}
    for f in FIELDS:
        out[f] = torch.from_numpy(np.stack([np.asarray(a[f][r], dtype=np.float32) for a, r in zip(task_arrays, rows)]))
        if out[f].dim() == 3 and out[f].shape[-1] == 1 and f not in ("obs", "action", "next_obs", "terminal_obs"):
            out[f] = out[f][..., 0]
    return Batch(**out).to(device=device, dtype=dtype)


def rollout_mean(envs: list[list], act: Callable[[torch.Tensor], torch.Tensor], seeds: list[list[int]],
                 dtype, device, max_steps: int = 200, return_velocity: bool = False):
    """Run envs[g][r] in lock-step with actions act(obs (G, R, obs_dim)) -> (G, R, act_dim).

    Each env is reset with seeds[g][r] and runs until termination, truncation or ``max_steps``.
    Actions are clipped to the env's bounds. Returns the undiscounted returns, (G, R); with
    ``return_velocity`` also each episode's mean velocity along its task's goal (``info``'s
    ``goal_velocity``, Ant-Dir) or forward (``x_velocity``), (G, R): the tasks' progress measure.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny forwards: extra threads only add synchronisation (30x slower on a busy CPU)
    try:
        ret, vel = _rollout_mean(envs, act, seeds, dtype, device, max_steps)
        return (ret, vel) if return_velocity else ret
    finally:
        torch.set_num_threads(threads)


def _rollout_mean(envs, act, seeds, dtype, device, max_steps):
    G, R = len(envs), len(envs[0])
    obs = np.stack([np.stack([envs[g][r].reset(seed=seeds[g][r])[0] for r in range(R)]) for g in range(G)])
    ret = np.zeros((G, R))
    vel = np.zeros((G, R))
    steps = np.zeros((G, R))
    alive = np.ones((G, R), dtype=bool)
    space = envs[0][0].action_space
    lo, hi = space.low, space.high
    for _ in range(max_steps):
        with torch.no_grad():
            a = act(torch.as_tensor(obs, dtype=dtype, device=device)).to("cpu", torch.float64).numpy()
        a = np.clip(a, lo, hi)
        for g in range(G):
            for r in range(R):
                if not alive[g, r]:
                    continue
                o, rew, term, trunc, info = envs[g][r].step(a[g, r])
                obs[g, r] = o
                ret[g, r] += rew
                vel[g, r] += info.get("goal_velocity", info.get("x_velocity", np.nan))
                steps[g, r] += 1
                if term or trunc:
                    alive[g, r] = False
        if not alive.any():
            break
    return ret, vel / np.maximum(steps, 1)


@dataclass
class EvalTask:
    """One task to evaluate: dataset id, position in the dataset, env task dict."""

    id: str
    index: int
    task: dict


class Evaluator:
    """Evaluates a MetaLearner on a fixed list of dataset tasks (docs/algorithm.md §6).

    ``ds``: an open dataset; ``task_ids``: dataset task ids to evaluate; ``family``: env family;
    ``batch_size``: rows per adaptation batch; ``seed``: base of every evaluation draw.
    """

    def __init__(self, ds, task_ids: Sequence[str], family: str, batch_size: int = 256, seed: int = 0,
                 env_kwargs: dict | None = None) -> None:
        from ..envs import validate_task

        self.ds, self.family, self.batch_size, self.seed = ds, family, int(batch_size), int(seed)
        check_dataset_env(ds, family)
        self.tasks = []
        for tid in task_ids:
            if tid not in ds:
                raise ValueError(f"{ds.path}: evaluation task {tid!r} is not in the dataset (tasks: {ds.tasks})")
            td = ds[tid]
            if td.num_rows < self.batch_size:
                raise ValueError(f"{ds.path}: task {tid!r} has {td.num_rows} rows, fewer than one "
                                 f"adaptation batch of {self.batch_size}")
            try:
                task = validate_task(family, td.params)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{ds.path}: task {tid!r} parameters are not a {family} task: {e}") from None
            self.tasks.append(EvalTask(tid, ds.tasks.index(tid), task))
        self.env_kwargs = dict(env_kwargs or {})
        self._envs: dict[str, list] = {}
        self._random: dict[str, float] | None = None
        self._random_episodes = 0

    def envs(self, k: int, n: int) -> list:
        """n envs of task k (made once, reused)."""
        from ..envs import make

        t = self.tasks[k]
        pool = self._envs.setdefault(t.id, [])
        while len(pool) < n:
            pool.append(make(self.family, t.task, disable_env_checker=True, **self.env_kwargs))
        return pool[:n]

    def close(self) -> None:
        """Close every env."""
        for pool in self._envs.values():
            for e in pool:
                e.close()
        self._envs.clear()

    # ---------------------------------------------------------------- reference returns
    def random_returns(self, episodes: int = RANDOM_EPISODES) -> dict[str, float]:
        """Mean return of a uniformly random policy per task over ``episodes`` episodes (cached after
        the first call). Seeded by the task's index in the dataset only: the same reference for
        every run seed, algorithm and evaluator on this data."""
        if self._random is None or self._random_episodes != episodes:
            self._random, self._random_episodes = {}, episodes
            for k, t in enumerate(self.tasks):
                env = self.envs(k, 1)[0]
                rng = np.random.default_rng(_seed(_REFERENCE_STREAM, t.index))
                total = 0.0
                for ep in range(episodes):
                    env.reset(seed=_seed(_REFERENCE_STREAM, t.index, ep))
                    env.action_space.seed(int(rng.integers(2**31)))
                    for _ in range(1000):
                        _, r, term, trunc, _ = env.step(env.action_space.sample())
                        total += r
                        if term or trunc:
                            break
                self._random[t.id] = total / max(episodes, 1)
        return dict(self._random)

    def best_data_returns(self) -> dict[str, float | None]:
        """Best trajectory return in each task's data (None when unknown)."""
        out = {}
        for t in self.tasks:
            rets = self.ds[t.id].episode_returns
            out[t.id] = float(max(rets)) if rets else None
        return out

    def normalised(self, returns: dict[str, float], random_episodes: int = RANDOM_EPISODES) -> dict[str, float | None]:
        """(R - R_random) / (R_best - R_random) per task; None where R_best is unknown or not above random."""
        rnd, best = self.random_returns(random_episodes), self.best_data_returns()
        out = {}
        for tid, r in returns.items():
            b = best.get(tid)
            out[tid] = None if b is None or b <= rnd[tid] else float((r - rnd[tid]) / (b - rnd[tid]))
        return out

    # ---------------------------------------------------------------- the evaluation
    def adaptation_batch(self, step: int, n_batches: int, dtype, device) -> Batch:
        """(K * n_batches, B, ...) adaptation data: n_batches random batches per task, task-major."""
        arrays, rows = [], []
        for k, t in enumerate(self.tasks):
            td = self.ds[t.id]
            for b in range(n_batches):
                rng = np.random.default_rng(_seed(self.seed, _EVAL_STREAM, step, k, b))
                rows.append(np.sort(rng.choice(td.num_rows, self.batch_size, replace=False)))
                arrays.append(td)
        return sample_rows_batch(arrays, rows, dtype, device)

    def evaluate(self, learner, step: int = 0, n_batches: int = 1, n_rollouts: int = 1,
                 unadapted: bool = True, random_episodes: int = RANDOM_EPISODES,
                 unadapted_rollouts: int | None = None) -> dict[str, Any]:
        """Adapted (and unadapted) mean-action returns per task and their means.

        The unadapted policy is rolled out ``unadapted_rollouts`` times per task (default
        ``n_rollouts``) from the start states of the adapted rollouts (rollout r of the unadapted
        policy starts where rollout r of every adaptation batch starts; past ``n_rollouts`` the
        start states are new).

        Returns ``{"adapted": {task: mean}, "unadapted": {...}, "adapted_all": {task: [[per batch, per
        rollout]]}, "mean_adapted", "mean_unadapted", "normalised_adapted", "normalised_unadapted",
        "mean_normalised_adapted", "velocity_adapted", "velocity_unadapted": {task: mean episode velocity
        along the goal (Ant-Dir) or forward}, ...}``.
        """
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # small ops: on a busy CPU extra threads cost far more than they give
        try:
            return self._evaluate(learner, step, n_batches, n_rollouts, unadapted, random_episodes,
                                  unadapted_rollouts or n_rollouts)
        finally:
            torch.set_num_threads(threads)

    def _evaluate(self, learner, step, n_batches, n_rollouts, unadapted, random_episodes, n_unadapted):
        K = len(self.tasks)
        dtype, device = learner.dtype, learner.device
        batch = self.adaptation_batch(step, n_batches, dtype, device)
        adapted = learner.adapt(batch)
        for th in adapted.policy:
            th.detach_()
        envs = [self.envs(k, n_batches * n_rollouts) for k in range(K)]
        grid = [envs[k][b * n_rollouts:(b + 1) * n_rollouts] for k in range(K) for b in range(n_batches)]
        seeds = [[_seed(self.seed, _EVAL_STREAM, step, k, 1000 + r) for r in range(n_rollouts)]
                 for k in range(K) for _ in range(n_batches)]
        # A diverged adaptation (non-finite parameters) scores NaN; its env is driven with zeros, never NaN.
        bad = ~torch.stack([th.detach().flatten(1).isfinite().all(1) for th in adapted.policy]).all(0)

        def act(o):
            a = learner.act(o, adapted)
            return a.masked_fill(bad.view(-1, *[1] * (a.dim() - 1)), 0.0) if bool(bad.any()) else a

        ret_a, vel_a = rollout_mean(grid, act, seeds, dtype, device, return_velocity=True)
        ret_a[bad.cpu().numpy()] = np.nan
        vel_a[bad.cpu().numpy()] = np.nan
        res: dict[str, Any] = {"adapted_all": {}, "adapted": {}}
        for k, t in enumerate(self.tasks):
            block = ret_a[k * n_batches:(k + 1) * n_batches]
            res["adapted_all"][t.id] = block.tolist()
            res["adapted"][t.id] = float(block.mean())
        res["velocity_adapted"] = {t.id: float(vel_a[k * n_batches:(k + 1) * n_batches].mean())
                                   for k, t in enumerate(self.tasks)}
        res["mean_adapted"] = float(np.mean(list(res["adapted"].values())))
        if unadapted:
            # Same start states as the adapted rollouts of batch 0 (paired comparison).
            ugrid = [self.envs(k, max(n_unadapted, n_batches * n_rollouts))[:n_unadapted] for k in range(K)]
            useeds = [[_seed(self.seed, _EVAL_STREAM, step, k, 1000 + r) for r in range(n_unadapted)] for k in range(K)]
            ret_u, vel_u = rollout_mean(ugrid, lambda o: learner.act(o), useeds, dtype, device, return_velocity=True)
            res["velocity_unadapted"] = {t.id: float(vel_u[k].mean()) for k, t in enumerate(self.tasks)}
            res["unadapted"] = {t.id: float(ret_u[k].mean()) for k, t in enumerate(self.tasks)}
            res["unadapted_all"] = {t.id: ret_u[k].tolist() for k, t in enumerate(self.tasks)}
            res["mean_unadapted"] = float(np.mean(list(res["unadapted"].values())))
        if random_episodes > 0:
            for kind in ("adapted", "unadapted"):
                if kind in res:
                    norm = self.normalised(res[kind], random_episodes)
                    res[f"normalised_{kind}"] = norm
                    vals = [v for v in norm.values() if v is not None]
                    res[f"mean_normalised_{kind}"] = float(np.mean(vals)) if vals else None
        return res


# ------------------------------------------------------------------------------------------------
# Online fine-tuning (docs/algorithm.md §6)


def online_finetune(learner, adapted_value: list, adapted_policy: list, env, *, iterations: int = 500,
                    burn_in: int = 25, value_steps: int = 100, policy_steps: int = 200, batch_size: int = 256,
                    lr: float = 1e-5, eval_rollouts: int = 3, noise: float = 0.2, seed: int = 0,
                    gamma: float = 0.99, log: Callable[[dict], None] | None = None) -> list[float]:
    """Fine-tune one task's adapted networks online; returns the mean evaluation return per iteration.

    ``adapted_value``/``adapted_policy``: that task's adapted generated parameters (one (1, P)
    tensor per layer, as in :class:`macaw_fast.macaw.Adapted` sliced to one task). Each iteration:
    ``eval_rollouts`` mean-action rollouts (averaged, logged), one noisy rollout (mu + N(0, noise^2),
    clipped) appended to a buffer that starts empty; after ``burn_in`` iterations and once the buffer
    holds >= ``batch_size`` rows, ``value_steps`` MC-regression steps of V and ``policy_steps``
    advantage-weighted steps of the policy (bootstrapped advantages, no head term) on random batches,
    Adam(lr). Adam acts on each layer's generated parameters theta (see docs/training.md).
    """
    from ..data.store import compute_derived
    from ..nets import advantage_weights, gaussian_log_prob

    c = learner.config
    dtype, device = learner.dtype, learner.device
    vth = [p.detach().clone().requires_grad_(True) for p in adapted_value]
    n_trunk = learner.policy.num_trunk_layers
    pth = [p.detach().clone().requires_grad_(True) for p in adapted_policy[:n_trunk]]
    opt_v = torch.optim.Adam(vth, lr=lr)
    opt_p = torch.optim.Adam(pth, lr=lr)
    rng = np.random.default_rng(_seed(seed, _EVAL_STREAM, 99))
    buf: dict[str, list] = {f: [] for f in FIELDS}
    lo, hi = env.action_space.low, env.action_space.high
    history = []

    def mean_action(o):
        return learner.policy.mean(pth, o)

    for it in range(iterations):
        rs = [rollout_mean([[env]], mean_action, [[_seed(seed, _EVAL_STREAM, 100, it, r)]], dtype, device)[0, 0]
              for r in range(eval_rollouts)]
        mean_ret = float(np.mean(rs))
        history.append(mean_ret)
        # One noisy rollout into the buffer.
        o, _ = env.reset(seed=_seed(seed, _EVAL_STREAM, 200, it))
        traj = {"obs": [], "action": [], "reward": [], "next_obs": []}
        term = False
        for _ in range(1000):
            with torch.no_grad():
                mu = mean_action(torch.as_tensor(o, dtype=dtype, device=device).view(1, 1, -1))[0, 0].cpu().numpy()
            a = np.clip(mu + noise * rng.standard_normal(mu.shape), lo, hi)
            o2, r, term, trunc, _ = env.step(a)
            for k, v in (("obs", o), ("action", a), ("reward", r), ("next_obs", o2)):
                traj[k].append(np.asarray(v, dtype=np.float64))
            o = o2
            if term or trunc:
                break
        done, mc, tobs, tdisc = compute_derived(np.array(traj["reward"]), np.array(traj["next_obs"]), bool(term), gamma)
        for k, v in (("obs", traj["obs"]), ("action", traj["action"]), ("reward", traj["reward"]),
                     ("next_obs", traj["next_obs"]), ("done", done), ("mc_return", mc), ("terminal_obs", tobs),
                     ("terminal_discount", tdisc)):
            buf[k].extend(list(np.asarray(v)))
        n = len(buf["obs"])
        if log is not None:
            log({"iteration": it, "return": mean_ret, "buffer_rows": n})
        if it < burn_in or n < batch_size:
            continue
        arrays = {k: np.asarray(v, dtype=np.float32) for k, v in buf.items()}

        def batch() -> Batch:
            rows = rng.choice(n, batch_size, replace=False)
            return sample_rows_batch([arrays], [rows], dtype, device)

        for _ in range(value_steps):
            b = batch()
            loss = (learner.vf.forward_thetas(vth, b.obs) - b.mc_return).pow(2).mean()
            opt_v.zero_grad()
            loss.backward()
            opt_v.step()
        for _ in range(policy_steps):
            b = batch()
            with torch.no_grad():
                v = learner.vf.forward_thetas(vth, torch.cat([b.terminal_obs, b.obs], 1))
                adv = b.mc_return + b.terminal_discount * v[:, :batch_size] - v[:, batch_size:]
                w = advantage_weights(adv, c.adaptation_temp, c.exp_advantage_clip)
            loss = (-w * gaussian_log_prob(b.action, learner.policy.mean(pth, b.obs), c.action_sigma)).mean()
            opt_p.zero_grad()
            loss.backward()
            opt_p.step()
    return history


def finite(x) -> bool:
    """True when x is a finite number."""
    return isinstance(x, (int, float)) and math.isfinite(x)
