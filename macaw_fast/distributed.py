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

    torchrun --nproc_per_node=2 -m macaw_fast.distributed --data DATASET --out RUN --preset cheetah_dir

Only rank 0 evaluates, logs and writes checkpoints; the run directory and checkpoint format are those
of ``macaw-fast train``, so either can resume the other's run. See docs/distributed.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from datetime import timedelta
from typing import Sequence

import torch
import torch.distributed as dist

from .data.batch import Batch
from .data.sampler import MetaBatchSampler, choose_tasks

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
    "train_distributed",
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


def allreduce_grads(learner, extra: torch.Tensor | None = None) -> torch.Tensor | None:
    """SUM-all-reduce every gradient of ``learner`` (and ``extra``) as ONE flat bucket, in place.

    A parameter without a gradient contributes zeros (and receives the sum). ``extra``: a 1-D
    tensor of other sums to reduce in the same call (metrics); its reduced copy is returned.
    Without a process group this is a no-op that returns ``extra``.
    """
    params = learner.parameters()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return extra
    parts = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
             for p in params]
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
    return bucket[offset:] if extra is not None else None


# Metrics that are means over the tasks (or over all T*B rows) of a batch: their task-count-weighted
# mean over ranks is the single-process value.
_MEAN_METRICS = ("loss/value_inner", "loss/value_outer", "loss/policy_inner", "loss/policy_outer",
                 "adv/mean", "weight/mean")
_SAME_METRICS = ("lr/value_inner_mean", "lr/policy_inner_mean", "adv_head_weight")


def distributed_meta_step(learner, inner: Batch | None, outer: Batch | None, *, max_metrics: bool = True) -> dict:
    """One exact data-parallel meta-step: local loss, backward, one all-reduce, identical Adam steps.

    ``inner`` / ``outer``: this rank's tasks of the step (None or zero tasks: the rank contributes
    nothing). Each rank's loss is (sum of ITS tasks' outer losses) / N_train, so the reduced gradient
    is the single-process meta-gradient. Raises FloatingPointError on every rank (parameters
    unchanged) when the total meta-loss is not finite. Returns the single-process metrics:
    'loss/meta' and the means exactly, 'adv/std' by pooling, 'weight/max' by a second (MAX)
    all-reduce when ``max_metrics`` (else this rank's value).
    """
    learner.optimizer.zero_grad(set_to_none=True)
    n_local = 0 if inner is None else inner.num_tasks
    dev, dt = learner.device, learner.dtype
    if n_local:
        loss, m = learner.meta_loss(inner, outer)
        loss.backward()
        rows = n_local * inner.batch_size
        mean_a, std_a = m["adv/mean"], m["adv/std"]
        sums = [loss.detach().reshape(())] + [torch.tensor(n_local * m[k], dtype=dt, device=dev) for k in _MEAN_METRICS]
        sums += [torch.tensor(v, dtype=dt, device=dev) for v in
                 (n_local, rows, rows * mean_a, (rows - 1) * std_a ** 2 + rows * mean_a ** 2)]
        extra = torch.stack(sums)
        local_max = m["weight/max"]
    else:
        m = {}
        extra = torch.zeros(1 + len(_MEAN_METRICS) + 4, dtype=dt, device=dev)
        local_max = -math.inf
    if not n_local:
        with torch.no_grad():  # the rates before the step, as the single-process metrics report them
            m = dict(zip(_SAME_METRICS, (learner.value_rates().mean().item(), learner.policy_rates().mean().item(),
                                         learner.head_weight().item())))
    red = allreduce_grads(learner, extra).tolist()
    total_loss, n_tasks = red[0], red[1 + len(_MEAN_METRICS)]
    if not math.isfinite(total_loss):
        raise FloatingPointError(f"meta-loss is not finite ({total_loss}); parameters left unchanged")
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


def _all_ok(ok: bool, what: str, err: BaseException | None) -> None:
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


def _broadcast_state(state: dict | None) -> dict:
    """Rank 0's learner state on every rank (tensors pickled through the group)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return state
    box = [state]
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    _collective("broadcast of the learner state", dist.broadcast_object_list, box, src=0, device=dev)
    return box[0]


def train_distributed(data: str, out: str, mc, tc, *, presets: list[str] | None = None, resume: bool = False,
                      stop_after: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
    """Meta-train on ``data`` into run directory ``out`` with every rank of the process group.

    Same run directory, checkpoints and step convention as :func:`macaw_fast.train.loop.train`
    (config.json, metrics.jsonl, checkpoints/latest.pt), so a 1-process run resumes a distributed
    one and the other way round. Works as a single process too (no group). ``stop_after``: return
    after this many meta-steps of this call. Returns rank 0's last evaluation record (or {}).
    """
    from .train.loop import (RunSetup, atomic_write_bytes, atomic_write_json, load_checkpoint, make_learner,
                             params_finite, read_jsonl, save_checkpoint)

    rank, world = init_distributed(timeout_s)
    main = rank == 0
    out = os.path.abspath(out)
    cfg_path = os.path.join(out, "config.json")
    ckpt_dir = os.path.join(out, "checkpoints")
    latest = os.path.join(ckpt_dir, "latest.pt")
    err = None
    try:
        if resume and not os.path.isfile(latest):
            raise FileNotFoundError(f"{out}: nothing to resume (no checkpoints/latest.pt)")
        if not resume and (os.path.exists(cfg_path) or os.path.exists(latest)):
            raise FileExistsError(f"{out}: a run already exists here (use --resume {out}, or another --out)")
        setup = RunSetup(data, mc, tc)
        inner_s, outer_s = setup.samplers()
    except (ValueError, FileNotFoundError, FileExistsError, TypeError) as e:
        err = e
    _all_ok(err is None, "setup", err)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    elif world > 1 and not torch.cuda.is_available():
        local = _env_int("LOCAL_WORLD_SIZE", world)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    learner = make_learner(setup)
    state, start = None, 0
    if main:
        if resume:
            ck = load_checkpoint(latest)
            state, start = ck["learner"], int(ck["step"])
        else:
            state = learner.state_dict()
    state, start = _broadcast_state((state, start)) if world > 1 else (state, start)
    learner.load_state_dict(state)

    log = None
    evaluator = setup.evaluator() if main and tc.eval_interval else None
    if main:
        if resume:
            recs = [r for r in read_jsonl(os.path.join(out, "metrics.jsonl")) if r.get("step", 0) < start]
            atomic_write_bytes(os.path.join(out, "metrics.jsonl"),
                               lambda f: f.write("".join(json.dumps(r) + "\n" for r in recs).encode()))
        else:
            os.makedirs(ckpt_dir, exist_ok=True)
            atomic_write_json(cfg_path, {"format": "macaw-fast/run", "data": setup.data, "presets": presets or [],
                                         "family": setup.family, "train_ids": setup.train_ids,
                                         "test_ids": setup.test_ids, "macaw": mc.to_dict(), "train": tc.to_dict(),
                                         "distributed": {"world_size": world}})
            save_checkpoint(latest, learner, 0, setup)
        log = open(os.path.join(out, "metrics.jsonl"), "a")

    sharded = ShardedMetaBatchSampler(inner_s, outer_s, list(range(len(setup.train_ids))), tc.tasks_per_step,
                                      rank, world)
    dtype, device = learner.dtype, learner.device
    last_eval: dict = {}
    t_last, s_last = time.perf_counter(), start
    step = start
    try:
        for step in range(start, tc.steps + 1):
            if main and step != start:
                if step % tc.latest_interval == 0 or step == tc.steps:
                    save_checkpoint(latest, learner, step, setup)
                if tc.numbered_interval and step % tc.numbered_interval == 0:
                    save_checkpoint(os.path.join(ckpt_dir, f"step_{step:07d}.pt"), learner, step, setup)
            if evaluator is not None and (step % tc.eval_interval == 0 or step == tc.steps):
                res = evaluator.evaluate(learner, step, tc.eval_batches, tc.eval_rollouts,
                                         random_episodes=tc.random_episodes)
                keys = ("mean_adapted", "mean_unadapted", "mean_normalised_adapted", "mean_normalised_unadapted",
                        "adapted", "unadapted")
                last_eval = {"kind": "eval", "step": step, **{k: res[k] for k in keys if k in res}}
                log.write(json.dumps(_jsonable(last_eval)) + "\n")
                log.flush()
            if step == tc.steps or (stop_after is not None and step - start >= stop_after):
                break
            _, mine, inner, outer = sharded.sample(step)
            if mine:
                inner, outer = inner.to(device=device, dtype=dtype), outer.to(device=device, dtype=dtype)
            else:
                inner = outer = None
            logging = step % tc.log_interval == 0
            metrics = distributed_meta_step(learner, inner, outer, max_metrics=logging)
            if not params_finite(learner):
                raise FloatingPointError(f"step {step}: a parameter became NaN/inf after the meta-step. "
                                         f"Stopped; the last good checkpoint is {latest} (not overwritten)")
            if main and logging:
                now = time.perf_counter()
                rate = (step - s_last) / (now - t_last) if step > s_last else None
                t_last, s_last = now, step
                log.write(json.dumps(_jsonable({"kind": "train", "step": step, "steps_per_s": rate,
                                                "world_size": world, **metrics})) + "\n")
                log.flush()
    except FloatingPointError as e:
        if main:
            log.write(json.dumps({"kind": "error", "step": step, "error": str(e)}) + "\n")
        raise
    finally:
        if log is not None:
            log.close()
        if evaluator is not None:
            evaluator.close()
    return last_eval


# ------------------------------------------------------------------------------------------------
# entry point: torchrun --nproc_per_node=N -m macaw_fast.distributed ...


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m macaw_fast.distributed`` (the options of ``macaw-fast train``)."""
    from .train.config import add_config_arguments

    p = argparse.ArgumentParser(
        prog="torchrun --nproc_per_node=N -m macaw_fast.distributed",
        description="Data-parallel MACAW meta-training: each rank adapts its share of every task batch; "
                    "gradients are all-reduced; rank 0 logs, evaluates and checkpoints.")
    p.add_argument("--data", help="dataset directory")
    p.add_argument("--out", help="run directory to create")
    p.add_argument("--resume", metavar="RUN", help="continue a run (from `macaw-fast train` or this command)")
    p.add_argument("--preset", action="append", default=[], help="preset name (repeatable)")
    p.add_argument("--config-file", help="JSON with 'macaw' and 'train' sections")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help="seconds a rank waits for its peers in any collective before failing; must exceed "
                        f"the evaluation time of rank 0 (default {DEFAULT_TIMEOUT_S:g})")
    p.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)
    add_config_arguments(p)
    return p


def _jsonable(x):
    from .train.loop import _jsonable as to_jsonable

    return to_jsonable(x)


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, join the group, train, leave the group. Errors print one line and return 1."""
    from .train.config import overrides_from_args, resolve_config

    args = build_parser().parse_args(argv)
    try:
        if args.resume:
            from .train.runs import resume_settings

            cfg, mc, tc = resume_settings(args.resume, *overrides_from_args(args))
            data, out, presets = cfg["data"], args.resume, cfg.get("presets")
        else:
            if not args.data or not args.out:
                raise ValueError("--data DATASET and --out RUN are required (or --resume RUN)")
            mac, tr = {}, {}
            if args.config_file:
                with open(args.config_file) as f:
                    d = json.load(f)
                mac.update(d.get("macaw", {}))
                tr.update(d.get("train", {}))
            m2, t2 = overrides_from_args(args)
            mac.update(m2)
            tr.update(t2)
            mc, tc = resolve_config(args.preset, mac, tr)
            data, out, presets = args.data, args.out, args.preset
        res = train_distributed(data, out, mc, tc, presets=presets, resume=bool(args.resume),
                                stop_after=args.stop_after, timeout_s=args.timeout)
        if res and is_main():
            print(f"step {res['step']}: mean adapted return {res['mean_adapted']:.2f}")
        rc = 0
    except (ValueError, FileNotFoundError, FileExistsError, TypeError, FloatingPointError, DistributedError) as e:
        print(f"macaw-fast distributed (rank {rank_and_world()[0]}): error: {e}", file=sys.stderr)
        rc = 1
    return leave_group(rc)


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


if __name__ == "__main__":
    sys.exit(main())
