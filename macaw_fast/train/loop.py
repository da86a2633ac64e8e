"""The training loop of `macaw-fast train`: data -> meta-steps -> evaluation, logs, checkpoints.

Run directory layout::

    RUN/
      config.json            data path, presets, MacawConfig, TrainConfig, family, task split
      metrics.jsonl          one JSON object per line: {"kind": "train"|"eval"|"error", "step", ...}
      checkpoints/latest.pt  overwritten every latest_interval steps (atomically)
      checkpoints/step_NNNNNNN.pt   kept every numbered_interval steps
      tb/                    TensorBoard events (when tensorboard is installed)

Step convention: "step s" is the state after s meta-steps. The evaluation logged at step s
evaluates that state, the checkpoint of step s holds it, and the training record of step s
describes meta-step number s (the update that takes the state from s to s + 1).

Determinism: the meta-batch of step s is a pure function of (seed, s) (counter-based sampler),
the networks are initialised from ``torch.manual_seed(seed)``, and evaluation draws from its own
(seed, step)-keyed generators. A checkpoint therefore needs only the learner's state (parameters,
rates, kappa, Adam moments and step counts) and the step to continue bit-exactly; it also stores
the torch/numpy/python RNG states, restored on resume for anything else that might draw.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

import numpy as np
import torch

from .._io import atomic_write_bytes, atomic_write_json, read_jsonl  # noqa: F401 (also imported from here)
from ..config import MacawConfig
from .config import TrainConfig
from .evaluate import Evaluator, check_dataset_env, family_of

from ..checkpoint import (CHECKPOINT_FORMAT, CheckpointError, intact_checkpoints,  # noqa: F401 (re-exported)
                          load_checkpoint, state_digest)


# ------------------------------------------------------------------------------------------------
# small I/O helpers


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return str(x)
    return x


# ------------------------------------------------------------------------------------------------
# run setup


class RunSetup:
    """Everything a run derives from (dataset, configs): family, task ids, samplers, evaluators."""

    def __init__(self, data: str, mc: MacawConfig, tc: TrainConfig) -> None:
        from ..data.store import open_dataset

        self.data = os.path.abspath(os.fspath(data))
        if not os.path.exists(self.data):
            raise FileNotFoundError(f"dataset not found: {self.data}")
        self.ds = ds = open_dataset(self.data)
        self.family = family_of(ds)
        if tc.family and tc.family != self.family:
            raise ValueError(f"{self.data}: the preset/config expects a dataset of family {tc.family}, "
                             f"but this dataset is {self.family} ({ds.env_id})")
        check_dataset_env(ds, self.family)
        self.train_ids = self._ids(tc.train_tasks, ds.train_tasks, "train_tasks")
        self.test_ids = self._ids(tc.test_tasks, ds.test_tasks, "test_tasks")
        if not self.test_ids:
            raise ValueError(f"{self.data}: the dataset has no test tasks (split 'test' is empty)")
        self.mc, self.tc = mc, tc

    def _ids(self, given, default, name) -> list[str]:
        ds = self.ds
        if given is None:
            missing = [t for t in default if t not in ds]
            if missing:
                raise ValueError(f"{self.data}: split tasks {missing} are missing from the dataset")
            return list(default)
        bad = [i for i in given if i >= len(ds.tasks)]
        if bad:
            raise ValueError(f"{self.data}: train.{name} holds task indices {bad} but the dataset has only "
                             f"{len(ds.tasks)} tasks (indices 0..{len(ds.tasks) - 1}); missing test/train tasks")
        return [ds.tasks[i] for i in given]

    def _arrays(self, tid: str, part: str) -> dict:
        td = self.ds[tid]
        arrays = td.arrays()
        if part == "all":
            return arrays
        n, k = td.num_rows, min(self.tc.inner_data_rows, td.num_rows)
        a = {"start": 0, "middle": (n - k) // 2, "end": n - k}[part]
        return {f: v[a:a + k] for f, v in arrays.items()}

    def row_offset(self, tid: str, part: str) -> int:
        """Dataset row of row 0 of the rows that ``part`` ('all'/'start'/'middle'/'end') samples from."""
        if part == "all":
            return 0
        n = self.ds[tid].num_rows
        k = min(self.tc.inner_data_rows, n)
        return {"start": 0, "middle": (n - k) // 2, "end": n - k}[part]

    def samplers(self):
        """(inner sampler, outer sampler): the same object unless inner_data restricts the inner rows."""
        from ..data.sampler import MetaBatchSampler

        tc = self.tc
        outer = MetaBatchSampler([self._arrays(t, "all") for t in self.train_ids], tc.batch_size,
                                 inner_mode=tc.inner_mode, seed=tc.seed)
        if tc.inner_data == "all":
            return outer, outer
        inner = MetaBatchSampler([self._arrays(t, tc.inner_data) for t in self.train_ids], tc.batch_size,
                                 inner_mode=tc.inner_mode, seed=tc.seed)
        return inner, outer

    def evaluator(self, train_tasks: bool = False) -> Evaluator:
        """Evaluator on the test tasks (or on the first eval_train_tasks training tasks)."""
        ids = self.train_ids[:self.tc.eval_train_tasks] if train_tasks else self.test_ids
        return Evaluator(self.ds, ids, self.family, self.tc.batch_size, self.tc.seed)


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available else cpu; otherwise torch.device(name)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"train.device: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device: {name!r}, but this torch ({torch.__version__}) sees no CUDA device; "
                         f"use --device cpu (or auto)")
    return dev


def make_learner(setup: RunSetup):
    """A freshly initialised learner of ``train.algo`` for the run (seeded from train.seed)."""
    torch.manual_seed(setup.tc.seed)
    return build_learner(setup.ds.obs_dim, setup.ds.act_dim, len(setup.train_ids), setup.mc, setup.tc)


def build_learner(obs_dim: int, act_dim: int, num_tasks: int, mc: MacawConfig, tc: TrainConfig):
    """The learner of ``tc.algo`` (MACAW or a baseline) for these shapes, on ``tc``'s device, dtype
    and backend, initialised from torch's global RNG."""
    kw = dict(device=resolve_device(tc.device), dtype=getattr(torch, tc.dtype), backend="fused" if tc.fused else tc.backend)
    dims = (obs_dim, act_dim, num_tasks)
    if tc.algo == "meta_bc":
        from ..meta_bc import MetaBC, MetaBCConfig

        return MetaBC(*dims, MetaBCConfig.from_macaw(mc), **kw)
    if tc.algo == "mt_ft":
        from ..mt_ft import MTFT, MTFTConfig

        from .config import FT_FIELDS

        ft = {k: getattr(tc, k) for k in FT_FIELDS if getattr(tc, k) is not None}
        return MTFT(*dims, MTFTConfig.from_macaw(mc, **ft), **kw)
    if tc.algo == "focal":
        from ..focal import FOCAL, FOCALConfig

        from .config import FOCAL_FIELDS

        own = {k: getattr(tc, k) for k in FOCAL_FIELDS if getattr(tc, k) is not None}
        return FOCAL(*dims, FOCALConfig.from_macaw(mc, **own), **kw)
    from ..macaw import MetaLearner

    return MetaLearner(*dims, mc, **kw)


# ------------------------------------------------------------------------------------------------
# checkpoints


def _rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    st = {"torch": torch.get_rng_state(),
          "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                    "cached": float(cached)},
          "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_checkpoint(path: str, learner, step: int, setup: RunSetup) -> None:
    """Write a resumable checkpoint atomically (tmp + fsync + rename), with a SHA-256 of its content
    that :func:`load_checkpoint` verifies."""
    from .._provenance import provenance

    state = {"format": CHECKPOINT_FORMAT, "version": 2, "step": int(step), "learner": learner.state_dict(),
             "macaw": setup.mc.to_dict(), "train": setup.tc.to_dict(), "data": setup.data,
             "family": setup.family, "train_ids": setup.train_ids, "test_ids": setup.test_ids,
             "rng": _rng_state(), "provenance": provenance()}
    state["sha256"] = state_digest(state)
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def remove_stale_temporaries(directory: str) -> list[str]:
    """Delete the temporary files that interrupted atomic writes left in ``directory`` (``.NAME.*.tmp``)."""
    removed = []
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            if name.startswith(".") and name.endswith(".tmp"):
                try:
                    os.unlink(os.path.join(directory, name))
                    removed.append(name)
                except OSError:
                    pass
    return removed


def params_finite(learner) -> bool:
    """True when every trained tensor is finite (one reduction per tensor)."""
    with torch.no_grad():
        return bool(torch.isfinite(torch.stack([p.sum() for p in learner.parameters()])).all())


# ------------------------------------------------------------------------------------------------
# the loop


class _Logger:
    """metrics.jsonl (every record with its wall-clock ``time``) and, when installed, TensorBoard
    (scalars, and the run's configuration as text)."""

    def __init__(self, run: str, tensorboard: bool, config: dict | None = None) -> None:
        self.path = os.path.join(run, "metrics.jsonl")
        self.f = open(self.path, "a")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                print(f"macaw-fast: TensorBoard logging is off: {e} (pip install 'macaw-fast[log]', or pass "
                      f"--tensorboard false); metrics still go to {self.path}", file=sys.stderr)
            else:
                self.tb = SummaryWriter(os.path.join(run, "tb"))
                if config is not None:
                    self.tb.add_text("config", "```\n" + json.dumps(_jsonable(config), indent=1) + "\n```", 0)

    def write(self, rec: dict) -> None:
        rec = {**rec, "time": round(time.time(), 3)}      # wall-clock (Unix seconds) of every record
        self.f.write(json.dumps(_jsonable(rec)) + "\n")
        self.f.flush()
        if self.tb is not None:
            step = rec.get("step", 0)
            prefix = rec.get("kind", "train")
            for k, v in rec.items():
                if k not in ("step", "kind", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"{prefix}/{k}", v, step)
                elif isinstance(v, dict) and k in ("adapted", "unadapted"):
                    for tid, r in v.items():
                        self.tb.add_scalar(f"{prefix}/{k}/task_{tid}", r, step)

    def close(self) -> None:
        self.f.close()
        if self.tb is not None:
            self.tb.close()


def _truncate_log(path: str, step: int) -> None:
    """Keep only records of steps before ``step`` (they are redone after a resume)."""
    recs = [r for r in read_jsonl(path) if r.get("step", 0) < step]
    atomic_write_bytes(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in recs).encode()))


def _eval_record(step: int, res: dict, prefix: str = "") -> dict:
    keys = ("mean_adapted", "mean_unadapted", "mean_normalised_adapted", "mean_normalised_unadapted",
            "adapted", "unadapted", "normalised_adapted", "normalised_unadapted", "adapted_all")
    return {"kind": prefix + "eval", "step": step, **{k: res[k] for k in keys if k in res}}


def _start_state(out: str, resume: bool) -> tuple[dict | None, list[str]]:
    """The checkpoint a run starts from (None: a fresh run) and notes on what was done to find it.
    Refuses to start over an existing run, or to resume where there is nothing."""
    cfg_path = os.path.join(out, "config.json")
    ckpt_dir = os.path.join(out, "checkpoints")
    latest = os.path.join(ckpt_dir, "latest.pt")
    notes: list[str] = []
    if resume:
        if not os.path.exists(cfg_path) and not os.path.isdir(ckpt_dir):
            raise FileNotFoundError(f"{out}: nothing to resume (no config.json, no checkpoints/)")
        state, notes = _resume_state(out, ckpt_dir, latest)
    else:
        if os.path.exists(latest) or intact_checkpoints(ckpt_dir):
            raise FileExistsError(f"{out}: a run already exists here (use --resume {out}, or another --out)")
        if os.path.exists(cfg_path):
            # config.json written but not the step-0 checkpoint (killed or disk full right after):
            # nothing was trained, so starting over loses nothing.
            notes.append(f"{out}: config.json without a checkpoint (an interrupted start); starting the run afresh")
        state = None
    for d in (out, ckpt_dir):
        for name in remove_stale_temporaries(d):
            notes.append(f"removed {os.path.join(d, name)} (left by an interrupted write)")
    return state, notes


def train(data: str, out: str, mc: MacawConfig, tc: TrainConfig, *, presets: list[str] | None = None,
          resume: bool = False, stop_after: int | None = None, timeout_s: float | None = None,
          on_eval=None) -> dict:
    """Meta-train on ``data`` into run directory ``out`` (or continue it with ``resume``).

    Everything is validated before anything is written; an existing run is never overwritten
    (FileExistsError: use ``resume``). ``stop_after``: return after this many meta-steps of this
    call (tests). Returns the last evaluation record (or {}).

    Launched by torchrun with several ranks, every rank runs this function: each meta-step is
    split over the ranks (`macaw_fast.train.distributed.distributed_meta_step`, the same
    meta-gradient), and only rank 0 reads and writes the run directory, evaluates and logs; a run
    resumes with any number of ranks. ``timeout_s``: how long a rank waits for its peers in any
    collective (default `macaw_fast.train.distributed.DEFAULT_TIMEOUT_S`). ``on_eval(record)`` is
    called with each evaluation's metrics record (as written to metrics.jsonl).
    """
    from . import distributed as dp

    rank, world = dp.init_distributed(dp.DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s)
    main = rank == 0
    out = os.path.abspath(out)
    cfg_path = os.path.join(out, "config.json")
    ckpt_dir = os.path.join(out, "checkpoints")
    latest = os.path.join(ckpt_dir, "latest.pt")
    state, notes, err = None, [], None
    try:
        if main:
            state, notes = _start_state(out, resume)
        setup = RunSetup(data, mc, tc)
        inner_sampler, outer_sampler = setup.samplers()
    except (ValueError, FileNotFoundError, FileExistsError, TypeError, OSError) as e:
        err = e
    if err is None and world > 1 and tc.algo != "macaw":
        err = ValueError(f"train.algo {tc.algo!r}: data-parallel training (torchrun) runs MACAW only; "
                         "train baselines in one process")
    dp.all_ok(err is None, "setup", err)         # every rank stops if any rank failed
    for n in notes:
        print(f"macaw-fast train: {n}", file=sys.stderr)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    elif world > 1 and not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dp.local_world_size(world)))
    learner = make_learner(setup)
    if world > 1:       # every rank starts from rank 0's state (and RNG state)
        state = dp.broadcast_from_main(state if state is not None or not main else
                                       {"learner": learner.state_dict(), "step": 0, "rng": _rng_state(),
                                        "fresh": True})
    start = 0
    if state is not None:
        learner.load_state_dict(state["learner"])
        start = int(state["step"])
        _set_rng_state(state["rng"])
        if state.get("fresh"):
            state = None
    evaluator = train_evaluator = log = bar = None
    if main:
        if state is not None:
            _truncate_log(os.path.join(out, "metrics.jsonl"), start)
        else:
            os.makedirs(ckpt_dir, exist_ok=True)
            if os.path.exists(os.path.join(out, "metrics.jsonl")):
                _truncate_log(os.path.join(out, "metrics.jsonl"), 0)
            from .._provenance import provenance

            atomic_write_json(cfg_path, {"format": "macaw-fast/run", "data": setup.data, "presets": presets or [],
                                         "family": setup.family, "train_ids": setup.train_ids,
                                         "test_ids": setup.test_ids, "macaw": mc.to_dict(), "train": tc.to_dict(),
                                         "provenance": provenance(),
                                         **({"distributed": {"world_size": world}} if world > 1 else {})})
            save_checkpoint(latest, learner, 0, setup)
        evaluator = setup.evaluator() if tc.eval_interval else None
        train_evaluator = setup.evaluator(train_tasks=True) if tc.eval_interval and tc.eval_train_tasks else None
        log = _Logger(out, tc.tensorboard, {"data": setup.data, "presets": presets or [], "macaw": mc.to_dict(),
                                             "train": tc.to_dict()})
        if tc.progress:
            from tqdm import tqdm

            bar = tqdm(total=tc.steps, initial=start, desc=os.path.basename(out), unit="step", dynamic_ncols=True,
                       file=sys.stderr, mininterval=1.0)
    if world > 1:
        it = _sharded_batches(setup, inner_sampler, outer_sampler, start, rank, world)
    else:
        it = _batches(setup, inner_sampler, outer_sampler, start, with_ids=True)
    error_extra: dict = {}
    last_eval: dict = {}
    t_last, s_last = time.perf_counter(), start
    dtype, device = learner.dtype, learner.device
    step = start
    try:
        for step in range(start, tc.steps + 1):
            if main and (step != start or state is None and step == 0):
                if step != 0 and (step % tc.latest_interval == 0 or step == tc.steps):
                    save_checkpoint(latest, learner, step, setup)
                if tc.numbered_interval and step % tc.numbered_interval == 0 and step != 0:
                    save_checkpoint(os.path.join(ckpt_dir, f"step_{step:07d}.pt"), learner, step, setup)
            if evaluator is not None and (step % tc.eval_interval == 0 or step == tc.steps):
                res = evaluator.evaluate(learner, step, tc.eval_batches, tc.eval_rollouts,
                                         random_episodes=tc.random_episodes)
                last_eval = _eval_record(step, res)
                log.write(last_eval)
                if on_eval is not None:
                    on_eval(last_eval)
                if train_evaluator is not None:
                    log.write(_eval_record(step, train_evaluator.evaluate(
                        learner, step, tc.eval_batches, tc.eval_rollouts, random_episodes=0), "train_"))
                if bar is not None:
                    bar.set_postfix_str(f"adapted {res['mean_adapted']:.1f} unadapted {res.get('mean_unadapted', float('nan')):.1f}")
            if step == tc.steps or (stop_after is not None and step - start >= stop_after):
                break
            inner, outer, ids = next(it)
            if inner is not None:
                inner, outer = inner.to(device=device, dtype=dtype), outer.to(device=device, dtype=dtype)
            logging = step % tc.log_interval == 0
            try:
                if world > 1:
                    metrics = dp.distributed_meta_step(learner, inner, outer, max_metrics=logging)
                else:
                    metrics = learner.meta_step(inner, outer)
            except (FloatingPointError, ValueError) as e:
                if isinstance(e, ValueError) and "NaN or inf" not in str(e):
                    raise
                if world > 1:      # each rank holds only its share of the batch: no per-row diagnosis
                    raise FloatingPointError(f"step {step}: {e}. Stopped; the last good checkpoint is "
                                             f"{latest}") from None
                where = diagnose_nonfinite(setup, learner, inner, outer, step, ids, (inner_sampler, outer_sampler))
                error_extra = where
                raise FloatingPointError(f"step {step}: {e}; {_describe(where)}. Stopped; the last good checkpoint "
                                         f"is {latest}") from None
            if not params_finite(learner):
                bad = _nonfinite_parameters(learner)
                error_extra = {"cause": "parameters", "parameters": bad}
                raise FloatingPointError(f"step {step}: parameter(s) {', '.join(bad[:6])}"
                                         f"{' ...' if len(bad) > 6 else ''} became NaN/inf after the meta-step. "
                                         f"Stopped; the last good checkpoint is {latest} (not overwritten)")
            if main and logging:
                now = time.perf_counter()
                rate = (step - s_last) / (now - t_last) if step > s_last else None
                t_last, s_last = now, step
                log.write({"kind": "train", "step": step, "steps_per_s": rate,
                           **({"world_size": world} if world > 1 else {}), **metrics})
            if bar is not None:
                bar.update(1)
    except FloatingPointError as e:
        if main:
            log.write({"kind": "error", "step": step, "error": str(e), **error_extra})
        print(f"macaw-fast train: {e}", file=sys.stderr)
        raise
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
        it.close()
        for ev in (evaluator, train_evaluator):
            if ev is not None:
                ev.close()
    return last_eval


def _resume_state(out: str, ckpt_dir: str, latest: str) -> tuple[dict | None, list[str]]:
    """The checkpoint to resume from (the newest intact one) and what was done to find it.

    A corrupt ``latest.pt`` is moved aside to ``latest.pt.corrupt`` and the newest intact numbered
    checkpoint is copied over it; with no intact checkpoint at all the run starts from step 0.
    """
    notes = []
    good = intact_checkpoints(ckpt_dir)
    if os.path.exists(latest) and latest not in (p for _, p in good):
        try:
            load_checkpoint(latest)
        except CheckpointError as e:
            os.replace(latest, latest + ".corrupt")
            notes.append(f"{e}; moved to {latest}.corrupt")
    if not good:
        notes.append(f"{out}: no intact checkpoint to resume from; starting from step 0")
        return None, notes
    step, path = good[0]
    if path != latest:
        with open(path, "rb") as src:
            data = src.read()
        atomic_write_bytes(latest, lambda f: f.write(data))
        notes.append(f"resuming from {path} (step {step}), the newest intact checkpoint")
    return load_checkpoint(latest), notes


def _batches(setup: RunSetup, inner_sampler, outer_sampler, start: int, with_ids: bool = False):
    """Yield (inner, outer) of steps start, start + 1, ... (prefetched when possible); with
    ``with_ids`` also the step's training-task indices (into ``setup.train_ids``)."""
    from ..data.loader import MetaBatchLoader
    from ..data.sampler import choose_tasks

    tc = setup.tc
    train_idx = list(range(len(setup.train_ids)))
    if inner_sampler is outer_sampler:
        loader = MetaBatchLoader(outer_sampler, train_idx, tc.tasks_per_step, start_step=start, prefetch=tc.prefetch)
        for ms in loader:
            yield (ms.inner, ms.outer, list(ms.task_ids)) if with_ids else (ms.inner, ms.outer)
        return
    step = start
    while True:
        ids = choose_tasks(train_idx, tc.tasks_per_step, tc.seed, step)
        inner, _ = inner_sampler.sample(step, ids)
        _, outer = outer_sampler.sample(step, ids)
        yield (inner, outer, list(ids)) if with_ids else (inner, outer)
        step += 1


def _sharded_batches(setup: RunSetup, inner_sampler, outer_sampler, start: int, rank: int, world: int):
    """Yield (inner, outer, task slots) of this rank's share of steps start, start + 1, ...; (None,
    None, []) at a step where this rank has no task."""
    from .distributed import ShardedMetaBatchSampler

    sharded = ShardedMetaBatchSampler(inner_sampler, outer_sampler, list(range(len(setup.train_ids))),
                                      setup.tc.tasks_per_step, rank, world)
    step = start
    while True:
        _, mine, inner, outer = sharded.sample(step)
        yield (inner, outer, mine) if mine else (None, None, [])
        step += 1


def diagnose_nonfinite(setup: RunSetup, learner, inner, outer, step: int, ids: list[int],
                       samplers: tuple) -> dict:
    """Where a non-finite meta-step came from: the first NaN/inf in the step's data (batch, dataset
    task, field, dataset row), else the tasks whose own meta-loss is not finite and its parts."""
    import numpy as np

    from ..data.batch import FIELDS
    from ..data.sampler import sample_indices_numpy

    tc = setup.tc
    for k, (name, b, sampler) in enumerate((("inner", inner, samplers[0]), ("outer", outer, samplers[1]))):
        for f in FIELDS:
            x = getattr(b, f)
            bad = ~torch.isfinite(x)
            if bool(bad.any()):
                t, r = (int(i) for i in bad.nonzero()[0][:2])
                rows = sample_indices_numpy(sampler.n_rows, ids, tc.batch_size, tc.seed, step, sampler.inner_mode,
                                            sampler.paper_window)[k]
                tid = setup.train_ids[ids[t]]
                part = tc.inner_data if name == "inner" else "all"
                row = int(rows[t, r]) + setup.row_offset(tid, part)
                return {"cause": "data", "batch": name, "task": tid, "field": f, "row": row,
                        "value": float(x[t, r].reshape(-1)[~torch.isfinite(x[t, r].reshape(-1))][0])}
    bad_tasks, parts = [], set()
    with torch.enable_grad():
        for t in range(inner.num_tasks):
            loss, metrics = learner.meta_loss(inner.task(t), outer.task(t))
            if not np.isfinite(float(loss.detach())):
                bad_tasks.append(setup.train_ids[ids[t]])
                parts.update(k for k, v in metrics.items() if not np.isfinite(float(v)))
    return {"cause": "loss", "tasks": bad_tasks, "metrics": sorted(parts)}


def _describe(where: dict) -> str:
    if where.get("cause") == "data":
        return (f"{where['batch']} batch: dataset task {where['task']!r}, field {where['field']!r}, row {where['row']} "
                f"is {where['value']}")
    if where.get("tasks"):
        return (f"the data is finite; the meta-loss of dataset task(s) {where['tasks']} is not "
                f"(non-finite: {', '.join(where['metrics']) or 'the total'})")
    return "the data is finite and so is each task's own meta-loss (the sum overflowed)"


def _nonfinite_parameters(learner) -> list[str]:
    """Names (state_dict keys) of the learner's tensors holding NaN or inf."""
    out = []
    for net, sd in learner.state_dict().items():
        if isinstance(sd, dict):
            for k, v in sd.items():
                if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
                    out.append(f"{net}.{k}")
        elif isinstance(sd, torch.Tensor) and sd.is_floating_point() and not bool(torch.isfinite(sd).all()):
            out.append(net)
    return out
