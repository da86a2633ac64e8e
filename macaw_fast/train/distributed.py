"""Data-parallel meta-training on torch.distributed (one process per GPU or per CPU group).

The meta-objective (docs/algorithm.md §4) is a sum over the step's task batch divided by N_train, so it splits
exactly across ranks: each rank takes a contiguous block of the task batch's slots (uneven splits
allowed: T=5 over 2 ranks gives slots 0-2 and 3-4), samples only those tasks, computes the sum of
its tasks' outer losses / N_train, and back-propagates. One all-reduce (SUM) of a single flat
bucket holding every gradient (plus a few metric sums) then gives every rank the single-process
meta-gradient, and every rank takes the same Adam step from the same state, so parameters and
optimizer moments stay identical without ever being broadcast again.

Sampling: the counter-based sampler keys every draw by (seed, step, task id, slot in the task batch,
stream). A rank therefore computes the row indices of the WHOLE task batch (cheap: index arithmetic
only) and gathers rows only for its own slots, so the union of what the ranks sample is exactly what
one process samples (:class:`ShardedMetaBatchSampler`).

Launch with torchrun (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)::

    torchrun --nproc_per_node=2 -m macaw_fast train --data DATASET --out RUN --preset cheetah_dir

The training loop is `macaw_fast.train.loop.train` itself: under torchrun it joins the group, and
only rank 0 evaluates, logs and writes checkpoints, so a run resumes with any number of ranks.
This module holds what the loop needs for that: the group, the task sharding, the all-reduce and
`distributed_meta_step`. See docs/distributed.md.
"""

from __future__ import annotations

import math
import os
import sys
from datetime import timedelta
from typing import Sequence

import torch
import torch.distributed as dist

from ..data.batch import Batch
from ..data.sampler import MetaBatchSampler, choose_tasks
from ..macaw import METRIC_NAMES

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DistributedError",
    "ShardedMetaBatchSampler",
    "allreduce_grads",
    "distributed_meta_step",
    "init_distributed",
    "is_main",
    "rank_and_world",
    "shard_slots",
    "shard_tasks",
]

#: Default collective timeout (seconds). It bounds how long a rank waits for a dead or hung peer, and
#: must exceed the longest time rank 0 spends alone (evaluation, checkpoint writes) between steps.
DEFAULT_TIMEOUT_S = 300.0


class DistributedError(RuntimeError):
    """A collective failed: another rank died, hung past the timeout, or the group broke."""


# ------------------------------------------------------------------------------------------------
# process group


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the initialised group, or (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that logs, evaluates and writes checkpoints."""
    return rank_and_world()[0] == 0


def _env_int(name: str, default: int | None = None) -> int:
    v = os.environ.get(name)
    if v is None:
        if default is None:
            raise ValueError(f"environment variable {name} is not set (launch with torchrun, which sets it)")
        return default
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"environment variable {name}: expected an integer, got {v!r}") from None


def local_world_size(world: int) -> int:
    """Ranks on this machine (torchrun's LOCAL_WORLD_SIZE; default ``world``)."""
    return _env_int("LOCAL_WORLD_SIZE", world)


def init_distributed(timeout_s: float = DEFAULT_TIMEOUT_S, backend: str | None = None) -> tuple[int, int]:
    """Join the process group described by torchrun's environment; returns (rank, world size).

    Reads RANK and WORLD_SIZE (absent: a single process, no group is created), MASTER_ADDR
    (default 127.0.0.1) and MASTER_PORT, and LOCAL_RANK for the GPU to use. ``backend``: None picks
    NCCL when CUDA is available and gloo otherwise. ``timeout_s`` bounds every collective, so a rank
    whose peer died or hangs raises instead of waiting forever. Calling it again is a no-op.
    """
    if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"timeout_s: expected a positive number of seconds, got {timeout_s!r}")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank}, WORLD_SIZE={world}: expected 0 <= RANK < WORLD_SIZE")
    if world == 1:
        return 0, 1
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    _env_int("MASTER_PORT")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend: expected 'nccl' or 'gloo', got {backend!r}")
    if backend == "nccl":
        torch.cuda.set_device(_env_int("LOCAL_RANK", rank % max(1, torch.cuda.device_count())))
    try:
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                                timeout=timedelta(seconds=float(timeout_s)))
    except Exception as e:  # noqa: BLE001 - rendezvous failures come in many types
        raise DistributedError(f"rank {rank}/{world}: could not join the process group at "
                               f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within {timeout_s:g} s "
                               f"({type(e).__name__}: {e})") from e
    return rank, world


def _collective(what: str, fn, *args, **kw):
    """Run a collective; turn a backend failure into a DistributedError that says what happened."""
    try:
        return fn(*args, **kw)
    except Exception as e:  # noqa: BLE001 - DistBackendError, RuntimeError, ...
        rank, world = rank_and_world()
        raise DistributedError(f"rank {rank}/{world}: {what} failed: another rank died, hung past the timeout, "
                               f"or the group broke ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                               ) from e


# ------------------------------------------------------------------------------------------------
# sharding


def shard_slots(num_slots: int, rank: int, world: int) -> range:
    """The slots of a task batch of ``num_slots`` that ``rank`` of ``world`` takes: a contiguous block.

    The first ``num_slots % world`` ranks take one slot more (T=5, world 2: 0-2 and 3-4); a rank may
    get none when world > T.
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank}, world {world}: expected 0 <= rank < world")
    if num_slots < 0:
        raise ValueError(f"num_slots: expected >= 0, got {num_slots}")
    base, extra = divmod(num_slots, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def shard_tasks(task_ids: Sequence[int], rank: int, world: int) -> tuple[list[int], list[int]]:
    """(global slots, task ids) of a task batch that ``rank`` of ``world`` takes (see :func:`shard_slots`)."""
    ids = list(task_ids)
    slots = list(shard_slots(len(ids), rank, world))
    return slots, [ids[s] for s in slots]


class ShardedMetaBatchSampler:
    """One rank's part of each step's meta-batch, drawn with the single-process sampler's keys.

    ``inner_sampler`` / ``outer_sampler``: the run's :class:`MetaBatchSampler` (the same object
    unless the inner rows are restricted); ``train_task_ids``: indices into the samplers' tasks;
    ``tasks_per_step``: the task-batch size. :meth:`sample` returns what
    ``outer_sampler.sample(step, choose_tasks(...))`` returns, restricted to this rank's slots.
    """

    def __init__(self, inner_sampler: MetaBatchSampler, outer_sampler: MetaBatchSampler,
                 train_task_ids: Sequence[int], tasks_per_step: int, rank: int, world: int) -> None:
        for name, s in (("inner_sampler", inner_sampler), ("outer_sampler", outer_sampler)):
            if not isinstance(s, MetaBatchSampler):
                raise TypeError(f"{name}: expected a MetaBatchSampler, got {type(s).__name__}")
        a, b = inner_sampler, outer_sampler
        if (a.seed, a.batch_size, a.num_tasks, a.obs_dim, a.act_dim) != (b.seed, b.batch_size, b.num_tasks,
                                                                         b.obs_dim, b.act_dim):
            raise ValueError("inner_sampler and outer_sampler must share seed, batch size, task count and dims")
        self.inner_sampler, self.outer_sampler = a, b
        self.train_task_ids = [int(t) for t in train_task_ids]
        self.tasks_per_step = int(tasks_per_step)
        self.rank, self.world = int(rank), int(world)
        shard_slots(0, self.rank, self.world)  # validates rank/world
        self._buffers: dict[int, tuple[Batch, Batch]] = {}

    def tasks_at(self, step: int) -> list[int]:
        """The whole task batch of ``step`` (every rank computes the same list)."""
        return choose_tasks(self.train_task_ids, self.tasks_per_step, self.outer_sampler.seed, step)

    def sample(self, step: int) -> tuple[list[int], list[int], Batch, Batch]:
        """(global slots, task ids, inner, outer) of this rank's share of step ``step``.

        The batches are the sampler's float32 buffers, overwritten at the next call with the same
        number of local tasks; their rows equal rows ``slots`` of the single-process meta-batch.
        """
        ids = self.tasks_at(step)
        slots, mine = shard_tasks(ids, self.rank, self.world)
        if len(mine) not in self._buffers:
            self._buffers[len(mine)] = self.outer_sampler.allocate(len(mine))
        inner, outer = self._buffers[len(mine)]
        if mine:
            if self.inner_sampler is self.outer_sampler:
                self.outer_sampler.sample(step, ids, out=(inner, outer), slots=slots)
            else:
                self.inner_sampler.sample(step, ids, out=(inner, None), slots=slots, batches="inner")
                self.outer_sampler.sample(step, ids, out=(None, outer), slots=slots, batches="outer")
        return slots, mine, inner, outer


# ------------------------------------------------------------------------------------------------
# the distributed meta-step


def allreduce_grads(learner, extra: torch.Tensor | None = None, *, skip: Sequence[torch.Tensor] = (),
                    more: Sequence[torch.Tensor] = ()) -> torch.Tensor | None:
    """SUM-all-reduce every gradient of ``learner`` (and ``extra``) as ONE flat bucket, in place.

    A parameter without a gradient contributes zeros (and receives the sum). ``skip``: parameters
    left out (their ``.grad`` untouched); ``more``: other tensors reduced in place in the same
    bucket. ``extra``: a 1-D tensor of other sums to reduce in the same call (metrics); its reduced
    copy is returned. Without a process group this is a no-op that returns ``extra``.
    """
    skipped = {id(p) for p in skip}
    params = [p for p in learner.parameters() if id(p) not in skipped]
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return extra
    parts = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
             for p in params] + [t.reshape(-1) for t in more]
    if extra is not None:
        parts.append(extra.to(dtype=params[0].dtype, device=params[0].device).reshape(-1))
    bucket = torch.cat(parts)
    _collective("all-reduce of the gradients", dist.all_reduce, bucket, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        n = p.numel()
        g = bucket[offset:offset + n].view_as(p)
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)
        offset += n
    for t in more:
        t.copy_(bucket[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
    return bucket[offset:] if extra is not None else None


def allgather_rows(mats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each (K_r, N_l) matrix of ``mats`` stacked over the ranks in rank order (rows of rank 0 first):
    (sum_r K_r, N_l). The row counts may differ by rank (two all-gathers: counts, then the padded
    rows of every matrix in one flat tensor). Without a group, ``mats`` as they are."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1 or not mats:
        return list(mats)
    world = dist.get_world_size()
    dev = mats[0].device
    counts = torch.tensor([m.shape[0] for m in mats], dtype=torch.int64, device=dev)
    all_counts = [torch.empty_like(counts) for _ in range(world)]
    _collective("all-gather of the factor sizes", dist.all_gather, all_counts, counts)
    all_counts = torch.stack(all_counts).tolist()                   # [rank][matrix]
    kmax = [max(c[i] for c in all_counts) for i in range(len(mats))]
    flat = torch.cat([torch.nn.functional.pad(m, (0, 0, 0, k - m.shape[0])).reshape(-1) for m, k in zip(mats, kmax)])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    _collective("all-gather of the gradient factors", dist.all_gather, gathered, flat)
    out = []
    offset = 0
    for i, m in enumerate(mats):
        n = kmax[i] * m.shape[1]
        out.append(torch.cat([g[offset:offset + n].view(kmax[i], m.shape[1])[:all_counts[r][i]]
                              for r, g in enumerate(gathered)]))
        offset += n
    return out


# Metrics that are means over the tasks (or over all T*B rows) of a batch: their task-count-weighted
# mean over ranks is the single-process value.
_MEAN_METRICS = ("loss/value_inner", "loss/value_outer", "loss/policy_inner", "loss/policy_outer",
                 "adv/mean", "weight/mean")
_SAME_METRICS = ("lr/value_inner_mean", "lr/policy_inner_mean", "adv_head_weight")


def distributed_meta_step(learner, inner: Batch | None, outer: Batch | None, *, max_metrics: bool = True) -> dict:
    """One exact data-parallel meta-step: local `MetaLearner.meta_gradient` (chunked like the
    single-process step), one all-reduce of the dense gradients, identical `apply_update`s.

    ``inner`` / ``outer``: this rank's tasks of the step (None or zero tasks: the rank contributes
    nothing). Each rank's loss is (sum of ITS tasks' outer losses) / N_train, so the reduced gradient
    is the single-process meta-gradient. Raises FloatingPointError on every rank (parameters
    unchanged) when the total meta-loss is not finite. Returns the single-process metrics:
    'loss/meta' and the means exactly, 'adv/std' by pooling, 'weight/max' by a second (MAX)
    all-reduce when ``max_metrics`` (else this rank's value).
    """
    from ..backends.cpu import CpuBackend
    from ..nets import WLinear

    learner.optimizer.zero_grad(set_to_none=True)
    n_local = 0 if inner is None else inner.num_tasks
    dev, dt = learner.device, learner.dtype
    # The cpu backend keeps each W's gradient as low-rank factors: the ranks sum dL/dtheta (in the
    # bucket) and gather the factor rows instead of summing dense P x D gradients, and every rank
    # then runs the same one-pass low-rank Adam on the same gathered factors.
    factored = isinstance(learner.backend, CpuBackend)
    wl = [m for m in learner._layers() if isinstance(m, WLinear)] if factored else []
    grad = None
    if n_local:
        grad = learner.meta_gradient(inner, outer)        # the single-process step's first half
        if factored:
            items = learner.backend.factors(learner._layers(), grad.leaves)
        else:
            learner.dense_gradients(grad)
        values = grad.metrics.tolist()
        m = dict(zip(METRIC_NAMES, values))
        rows = n_local * inner.batch_size
        mean_a, std_a = m["adv/mean"], m["adv/std"]
        sums = [grad.metrics[-1].reshape(())] + [torch.tensor(n_local * m[k], dtype=dt, device=dev)
                                                 for k in _MEAN_METRICS]
        sums += [torch.tensor(v, dtype=dt, device=dev) for v in
                 (n_local, rows, rows * mean_a, (rows - 1) * std_a ** 2 + rows * mean_a ** 2)]
        extra = torch.stack(sums)
        local_max = m["weight/max"]
    else:
        extra = torch.zeros(1 + len(_MEAN_METRICS) + 4, dtype=dt, device=dev)
        local_max = -math.inf
        with torch.no_grad():  # the rates before the step, as the single-process metrics report them
            m = dict(zip(_SAME_METRICS, (learner.value_rates().mean().item(), learner.policy_rates().mean().item(),
                                         learner.head_weight().item())))
        items = [(w, torch.zeros(1, w.num_generated, dtype=dt, device=dev), w.z.detach().unsqueeze(0))
                 for w in wl]                           # dL/dtheta = 0 and no factor rows
    if factored:       # A = [dL/dtheta; U], B = [z; V]: sum the first rows, gather the others
        dthetas = [a[0].clone() for _, a, _ in items]
        red = allreduce_grads(learner, extra, skip=[w.weight for w in wl], more=dthetas).tolist()
        rows = allgather_rows([torch.cat([a[1:], b[1:]], dim=1) for _, a, b in items])
    else:
        red = allreduce_grads(learner, extra).tolist()
    total_loss, n_tasks = red[0], red[1 + len(_MEAN_METRICS)]
    if not math.isfinite(total_loss):
        raise FloatingPointError(f"meta-loss is not finite ({total_loss}); parameters left unchanged")
    if factored:
        learner.backend.update_from_factors(learner.optimizer, [
            (w, torch.cat([d.unsqueeze(0), r[:, :w.num_generated]]),
             torch.cat([w.z.detach().unsqueeze(0), r[:, w.num_generated:]])) for w, d, r in zip(wl, dthetas, rows)])
    elif grad is not None:
        learner.apply_update(grad)
    else:
        learner.optimizer.step()
    out = {k: red[1 + i] / n_tasks for i, k in enumerate(_MEAN_METRICS)}
    rows, sx, sxx = red[-3:]
    out["adv/std"] = math.sqrt(max(0.0, (sxx - sx * sx / rows) / (rows - 1))) if rows > 1 else float("nan")
    if max_metrics and dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor([local_max], dtype=dt, device=dev)
        _collective("all-reduce of the metrics", dist.all_reduce, t, op=dist.ReduceOp.MAX)
        out["weight/max"] = t.item()
    else:
        out["weight/max"] = local_max
    out.update({k: m[k] for k in _SAME_METRICS})
    out["loss/meta"] = total_loss
    return out


# ------------------------------------------------------------------------------------------------
# the training loop (rank 0 logs, evaluates and checkpoints)


def all_ok(ok: bool, what: str, err: BaseException | None) -> None:
    """Every rank learns whether every rank passed ``what``; the failing rank raises its own error."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor([1.0 if ok else 0.0])
        if dist.get_backend() == "nccl":
            t = t.cuda()
        _collective(f"agreement after {what}", dist.all_reduce, t, op=dist.ReduceOp.MIN)
        all_ok = t.item() == 1.0
    else:
        all_ok = ok
    if err is not None:
        raise err
    if not all_ok:
        raise DistributedError(f"rank {rank_and_world()[0]}: another rank failed during {what} (see its error)")


def broadcast_from_main(obj):
    """Rank 0's ``obj`` on every rank (pickled through the group; tensors included)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    _collective("broadcast from rank 0", dist.broadcast_object_list, box, src=0, device=dev)
    return box[0]


def leave_group(rc: int = 0) -> int:
    """End this process's part in the process group, if it joined one: a final barrier when ``rc``
    is 0 (no rank exits while another may still need it), then ``destroy_process_group`` (stops
    the backend's threads before the interpreter exits; without it a rank could abort at exit
    with "terminate called without an active exception"). Returns ``rc``, or 1 if the barrier
    failed. A no-op without a group."""
    if not dist.is_initialized():
        return rc
    if rc == 0:
        try:
            _collective("final barrier", dist.barrier)
        except DistributedError as e:
            print(f"macaw-fast distributed: error: {e}", file=sys.stderr)
            rc = 1
    dist.destroy_process_group()
    return rc
