"""`macaw-fast reproduce FAMILY --out DIR`: MACAW on one of the paper's benchmarks, end to end.

Stages, each skipped when its output is complete and verified, resumed when it was interrupted,
and redone from scratch when its output is missing or corrupt::

    collect    batched per-task SAC (macaw-fast collect)       DIR/collect/ (dataset in DIR/collect/dataset)
    subsample  the paper's buffer_skip (every k-th row)         DIR/data/
    train      MACAW, one run per seed (bit-exact resume)       DIR/train/seed_<s>/
    evaluate   the final checkpoint of every seed, many         DIR/eval/seed_<s>.json
               adaptation batches x rollouts per test task
    results    per-seed and per-task returns, IQM and 95 %      DIR/results/summary.json, table.md, curves.png
               stratified-bootstrap CIs (rliable), curves

``DIR/reproduce.json`` records the settings that define the experiment (family, data recipe,
training configuration, evaluation protocol). Run the same command again after a kill, a reboot
or on another day and it continues where it stopped; a setting that would change what was
already computed is refused, naming the flag. ``--steps`` may grow (training continues), seeds may
be added, and the final-evaluation protocol may change (only that stage is redone).

How each stage knows its output is good:

- collect: the collector's own resume (bit-identical data after a kill) and, before and after it,
  a full SHA-256 verification of the committed rows (``verify_dataset``); a dataset that fails is
  collected again from scratch.
- subsample: ``DIR/stages/subsample.json`` records the fingerprint (the per-field SHA-256 in the
  manifests) of the collected data it was made from; the output is verified the same way.
- train: every checkpoint carries a SHA-256 of its content; a corrupt ``latest.pt`` is replaced by
  the newest intact numbered checkpoint (or the seed starts again), then training resumes
  bit-exactly. ``DIR/stages/train_seed_<s>.json`` records the fingerprint of the training data;
  a run made from other data is started again.
- evaluate: the JSON records the SHA-256 of the checkpoint it evaluated and the protocol.

Everything the stages compute is a pure function of the settings and seeds, so an interrupted and
resumed pipeline ends with the same numbers as an uninterrupted one (tests/test_reproduce.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field

from .._io import atomic_write_json, atomic_write_text

#: Step number that keys the final evaluation's random draws (distinct from every training step's).
FINAL_EVAL_STEP = 10**9
#: Step number that keys the draws of mt_ft's step-size tuning (on training tasks).
TUNE_STEP = 10**9 + 1
#: Subdirectories and files a reproduce directory may hold.
STAGE_ENTRIES = ("reproduce.json", "collect", "data", "train", "eval", "results", "stages")


@dataclass
class ReproduceConfig:
    """The settings of one reproduction (the ``macaw-fast reproduce`` flags mirror these fields)."""

    family: str
    """Task family: cheetah_dir, cheetah_vel, ant_dir or walker_param."""
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    """Training seeds (one run of each algorithm each)."""
    algos: list = field(default_factory=lambda: ["macaw"])
    """Algorithms to train and evaluate on the same data ('macaw', 'meta_bc': train.algo)."""
    steps: int = 20_000
    """Meta-steps per seed."""
    collect_steps: int | None = None
    """SAC env steps (= dataset rows) per task; None = the family's default (docs/collect.md)."""
    collect_seed: int = 0
    """Seed of the data collection."""
    collect_overrides: dict = field(default_factory=dict)
    """Other CollectConfig fields (width, utd, warmup, batch_size, ...; tests and recipes)."""
    buffer_skip: int = 7
    """Train on every k-th stored row, as the paper's loader did (1 = every row)."""
    presets: list = field(default_factory=list)
    """Training presets applied after the family's own (e.g. an ablation)."""
    macaw_overrides: dict = field(default_factory=dict)
    """MacawConfig fields to override (as ``train --config-file``'s "macaw")."""
    train_overrides: dict = field(default_factory=dict)
    """TrainConfig fields to override (as ``train --config-file``'s "train")."""
    eval_interval: int = 1_000
    """Meta-steps between evaluations during training."""
    eval_batches: int = 4
    """Adaptation batches per test task at each evaluation during training."""
    eval_rollouts: int = 2
    """Mean-action rollouts per adaptation batch during training."""
    final_batches: int = 10
    """Adaptation batches per test task in the final evaluation."""
    final_rollouts: int = 3
    """Mean-action rollouts per adaptation batch (and of the unadapted policy, per batch) in the final evaluation."""
    ft_policy_lrs: list = field(default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1])
    """mt_ft: policy fine-tuning step sizes tried on training tasks (with every ft_value_lrs); the test
    tasks are evaluated with the best pair (docs/reproduce.md)."""
    ft_value_lrs: list = field(default_factory=lambda: [1e-6, 1e-5, 1e-4])
    """mt_ft: value-function fine-tuning step sizes tried (plain SGD on a squared error of returns in
    the hundreds: 1e-4 already diverges within 20 steps on Cheetah-Dir)."""
    ft_more_steps: int = 20
    """mt_ft: fine-tuning steps of its second row ('mt_ft_k<N>'; 0 = no second row)."""
    tune_tasks: int = 5
    """mt_ft: training tasks the step size is tuned on (evenly spaced over the training split)."""
    threads: int = 0
    """torch threads for training and evaluation (0 = torch's default)."""
    collect_threads: int = 1
    """torch threads for the SAC updates of the collection (1: see docs/collect.md)."""
    jobs: int = 1
    """Training runs at once, each in its own process (1 = one after another, in this process).
    With jobs > 1 and threads = 0 each run gets cpu_count // jobs torch threads."""
    progress: bool = True
    """Progress bars."""

    #: Fields that may differ between invocations on the same directory.
    MUTABLE = ("seeds", "algos", "steps", "final_batches", "final_rollouts", "ft_policy_lrs", "ft_value_lrs", "ft_more_steps", "tune_tasks",
               "threads", "collect_threads", "jobs", "progress")

    def validate(self) -> "ReproduceConfig":
        """Raise ValueError naming the flag of the first bad value."""
        from ..envs import FAMILIES

        if self.family not in FAMILIES:
            raise ValueError(f"FAMILY: unknown task family {self.family!r}; expected one of {', '.join(FAMILIES)}")
        if not isinstance(self.seeds, list) or not self.seeds or \
                not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.seeds):
            raise ValueError(f"--seeds: expected one or more integers >= 0, got {self.seeds!r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds: duplicate seeds in {self.seeds}")
        from .config import ALGOS

        if not isinstance(self.algos, list) or not self.algos or any(a not in ALGOS for a in self.algos) \
                or len(set(self.algos)) != len(self.algos):
            raise ValueError(f"--algos: expected distinct names among {', '.join(ALGOS)}, got {self.algos!r}")
        for name, lo in (("steps", 1), ("collect_steps", 1), ("collect_seed", 0), ("buffer_skip", 1),
                         ("eval_interval", 1), ("eval_batches", 1), ("eval_rollouts", 1), ("final_batches", 1),
                         ("final_rollouts", 1), ("threads", 0), ("collect_threads", 1), ("jobs", 1)):
            v = getattr(self, name)
            if name == "collect_steps" and v is None:
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"--{name.replace('_', '-')}: expected an integer >= {lo}, got {v!r}")
        for name in ("ft_policy_lrs", "ft_value_lrs"):
            v = getattr(self, name)
            if not isinstance(v, list) or not v or len(set(v)) != len(v) or not all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0 for x in v):
                raise ValueError(f"--{name.replace('_', '-')}: expected distinct positive numbers, got {v!r}")
        for name, lo in (("ft_more_steps", 0), ("tune_tasks", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"--{name.replace('_', '-')}: expected an integer >= {lo}, got {v!r}")
        base = self.train_overrides.get("ft_steps") or 1 if isinstance(self.train_overrides, dict) else 1
        if self.ft_more_steps and self.ft_more_steps <= base:
            raise ValueError(f"--ft-more-steps: expected more than mt_ft's {base} fine-tuning step(s) (or 0), "
                             f"got {self.ft_more_steps}")
        for name in ("collect_overrides", "macaw_overrides", "train_overrides"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name}: expected a JSON object, got {getattr(self, name)!r}")
        bad = sorted(set(self.collect_overrides) & {"family", "steps_per_task", "seed", "threads", "progress"})
        if bad:
            raise ValueError(f"--collect-config: {bad} are set by reproduce's own flags (--collect-steps, "
                             f"--collect-seed, --collect-threads)")
        bad = sorted(set(self.train_overrides) & {"ft_value_lr", "ft_policy_lr"})
        if bad:
            raise ValueError(f"--train-config: {bad} are tuned by reproduce (--ft-policy-lrs, --ft-value-lrs)")
        bad = sorted(set(self.train_overrides) & {"steps", "seed", "eval_interval", "eval_batches", "eval_rollouts",
                                                  "threads", "progress", "family", "algo"})
        if bad:
            raise ValueError(f"--train-config: {bad} are set by reproduce's own flags (--steps, --seeds, "
                             f"--eval-interval, --eval-batches, --eval-rollouts, --threads, --algos)")
        from .config import load_preset

        for name in self.presets:
            algo = load_preset(name)[1].get("algo")
            if algo is not None:
                raise ValueError(f"--preset {name}: sets the algorithm, which reproduce takes from --algos "
                                 f"(e.g. --algos macaw {algo})")
        for algo in self.algos:     # validates presets and overrides for every algorithm, before any work
            try:
                self.train_configs(self.seeds[0], algo)
            except ValueError as e:
                if not (self.macaw_overrides or self.train_overrides) or not _valid_without_overrides(self, algo):
                    raise
                raise ValueError(f"--train-config: {e}") from None
        self.collect_kwargs()
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ReproduceConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown reproduce setting(s): {', '.join(unknown)}")
        return cls(**d)

    def collect_kwargs(self) -> dict:
        """Keyword arguments of :func:`macaw_fast.collect.collect` for this reproduction."""
        from ..collect.collector import CollectConfig, FAMILY_DEFAULTS

        kw = dict(FAMILY_DEFAULTS[self.family])
        if self.collect_steps is not None:
            kw["steps_per_task"] = self.collect_steps
        kw.update(self.collect_overrides)
        kw.update(seed=self.collect_seed, threads=self.collect_threads)
        known = {f.name for f in dataclasses.fields(CollectConfig)}
        unknown = sorted(set(kw) - known)
        if unknown:
            raise ValueError(f"--collect-config: unknown collection setting(s) {unknown} "
                             f"(fields of CollectConfig: {', '.join(sorted(known))})")
        try:
            CollectConfig(family=self.family, **kw).validate()
        except ValueError as e:
            # CollectConfig names its field ("matmul: expected ..."); the other fields' flags are checked above
            if str(e).split(":", 1)[0] not in self.collect_overrides:
                raise
            raise ValueError(f"--collect-config: {e}") from None
        return kw

    def ft_variants(self) -> dict:
        """mt_ft's result names -> fine-tuning steps: 'mt_ft' (as many steps as MACAW's adaptation,
        or train.ft_steps) and, with ft_more_steps, 'mt_ft_k<N>'."""
        if "mt_ft" not in self.algos:
            return {}
        out = {"mt_ft": int(self.train_overrides.get("ft_steps") or 1)}
        if self.ft_more_steps:
            out[f"mt_ft_k{self.ft_more_steps}"] = self.ft_more_steps
        return out

    def result_names(self) -> list:
        """One name per row of results: every algorithm, mt_ft followed by its second row."""
        return [n for a in self.algos for n in ([a] if a != "mt_ft" else list(self.ft_variants()))]

    def train_configs(self, seed: int, algo: str = "macaw"):
        """(MacawConfig, TrainConfig) of the run of ``seed`` and ``algo``."""
        from .config import resolve_config

        from .config import ALGO_FIELDS

        # a field that belongs to one algorithm (train.ft_steps, train.latent_dim, ...) sets only that one's runs
        theirs = {k for a, names in ALGO_FIELDS.items() if a != algo for k in names}
        tro = {k: v for k, v in self.train_overrides.items() if k not in theirs}
        tr = {**tro, "algo": algo, "seed": seed, "steps": self.steps, "eval_interval": self.eval_interval,
              "eval_batches": self.eval_batches, "eval_rollouts": self.eval_rollouts, "threads": self.threads,
              "progress": self.progress}
        return resolve_config([self.family, *self.presets], dict(self.macaw_overrides), tr)


def _valid_without_overrides(cfg: ReproduceConfig, algo: str) -> bool:
    """Whether ``algo``'s configuration resolves without --train-config (then that file is to blame)."""
    try:
        dataclasses.replace(cfg, macaw_overrides={}, train_overrides={}).train_configs(cfg.seeds[0], algo)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------------------
# helpers


def _name(algo: str) -> str:
    """How a stage names its algorithm: nothing for MACAW (as before baselines existed), else 'NAME '."""
    return "" if algo == "macaw" else f"{algo} "


def _say(msg: str) -> None:
    print(f"macaw-fast reproduce: {msg}", file=sys.stderr, flush=True)


def dataset_fingerprint(path: str) -> str:
    """SHA-256 over the per-field SHA-256 of every task in a dataset's manifests (cheap: no data read)."""
    from ..data.store import open_dataset

    ds = open_dataset(path)
    h = hashlib.sha256()
    for t in ds.tasks:
        m = ds[t].manifest
        h.update(t.encode())
        for f in sorted(m["fields"]):
            h.update(f"{f}:{m['fields'][f]['sha256']}:{ds[t].num_rows}".encode())
    return h.hexdigest()


def _reference_key(tc) -> dict:
    """How the normalised score's random-policy reference is made: part of the evaluation and
    tuning keys, so results computed with another reference (before 2026-12-07 each seed drew its
    own 3 episodes) are recomputed instead of reused."""
    return {"random_episodes": tc.random_episodes, "seeded_by": "task"}


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            d = json.load(f)
        return d if isinstance(d, dict) else None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


# ------------------------------------------------------------------------------------------------
# the pipeline


#: The reproduce directories whose lock this process holds (lock file path -> open descriptor).
_HELD_LOCKS: dict[str, int] = {}


class Reproduction:
    """One reproduce directory: its settings and stages (see the module docstring)."""

    def __init__(self, out: str, config: ReproduceConfig) -> None:
        self.dir = os.path.abspath(os.fspath(out))
        self.cfg = config.validate()
        self.collect_dir = os.path.join(self.dir, "collect")
        self.data_dir = os.path.join(self.dir, "data")
        self.stage_dir = os.path.join(self.dir, "stages")

    # ---------------------------------------------------------------- settings
    def check_directory(self) -> None:
        """Refuse a directory that holds something else or a reproduction with other settings."""
        d = self.dir
        if os.path.exists(d) and not os.path.isdir(d):
            raise FileExistsError(f"--out {d}: exists and is not a directory")
        saved = os.path.join(d, "reproduce.json")
        if os.path.exists(saved):
            old = _read_json(saved)
            if old is None or "config" not in old:
                raise ValueError(f"{saved}: not a readable reproduce settings file; move it away or use another --out")
            oc = old["config"]
            if oc.get("family") != self.cfg.family:
                raise ValueError(f"--out {d}: holds a {oc.get('family')} reproduction, not {self.cfg.family}; "
                                 f"use another --out")
            new = self.cfg.to_dict()
            for k in sorted(set(oc) | set(new)):
                if k in ReproduceConfig.MUTABLE or oc.get(k) == new.get(k):
                    continue
                flag = {"collect_overrides": "--collect-config", "macaw_overrides": "--train-config",
                        "train_overrides": "--train-config", "presets": "--preset"}.get(k, "--" + k.replace("_", "-"))
                raise ValueError(f"{flag}: {d} was made with {oc.get(k)!r}, got {new.get(k)!r}; changing it would "
                                 f"invalidate what is computed there (use another --out)")
            return
        if os.path.isdir(d):
            others = [e for e in os.listdir(d) if e not in STAGE_ENTRIES and not e.endswith((".out", ".log"))]
            if others:
                raise FileExistsError(f"--out {d}: not a reproduce directory (it holds {sorted(others)[:5]}); "
                                      f"use an empty or new directory")
            ccfg = _read_json(os.path.join(self.collect_dir, "config.json"))
            if ccfg is not None and ccfg.get("family") not in (None, self.cfg.family):
                raise ValueError(f"--out {d}: its collect/ holds {ccfg.get('family')} data, not {self.cfg.family}")

    def lock(self) -> None:
        """Hold DIR/.reproduce.lock for the life of this process (released by the kernel on any exit,
        kill -9 included): a second `reproduce` on the same directory is refused, not interleaved."""
        import fcntl

        os.makedirs(self.dir, exist_ok=True)
        path = os.path.join(self.dir, ".reproduce.lock")
        if path in _HELD_LOCKS:       # this process holds it already (a second Reproduction of the same DIR)
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FileExistsError(f"--out {self.dir}: another `macaw-fast reproduce` is running on this directory "
                                  f"({path} is locked); wait for it to finish or use another --out") from None
        _HELD_LOCKS[path] = fd      # kept open: closing it would release the lock

    def remove_stale_temporaries(self) -> list[str]:
        """Delete what interrupted atomic writes left in the pipeline's own files (settings, stage
        records, evaluations, results); the collection, data and runs clean up their own."""
        from .loop import remove_stale_temporaries

        dirs = [self.dir, self.stage_dir, os.path.join(self.dir, "results"), os.path.join(self.dir, "eval")]
        ev = dirs[-1]
        if os.path.isdir(ev):
            dirs += [os.path.join(ev, n) for n in sorted(os.listdir(ev)) if os.path.isdir(os.path.join(ev, n))]
        return [os.path.join(d, n) for d in dirs for n in remove_stale_temporaries(d)]

    def save_settings(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        atomic_write_json(os.path.join(self.dir, "reproduce.json"),
                          {"format": "macaw-fast/reproduce", "config": self.cfg.to_dict()})

    def _record_time(self, stage: str, seconds: float) -> None:
        path = os.path.join(self.stage_dir, "wall_clock.json")
        os.makedirs(self.stage_dir, exist_ok=True)
        d = _read_json(path) or {}
        d[stage] = round(d.get(stage, 0.0) + seconds, 1)
        atomic_write_json(path, d)

    # ---------------------------------------------------------------- stage: collect
    def collect(self) -> str:
        """The collected dataset (collected, resumed, or verified and reused)."""
        from ..collect import collect
        from ..data.store import DatasetError, verify_dataset

        ds_path = os.path.join(self.collect_dir, "dataset")
        overwrite = False
        if os.path.exists(ds_path):
            try:
                verify_dataset(ds_path, progress=False)
            except (DatasetError, FileNotFoundError, ValueError) as e:
                _say(f"collect: the collected data failed verification ({str(e).splitlines()[0]}); "
                     f"collecting again from scratch")
                overwrite = True
        t0 = time.perf_counter()
        path = collect(self.cfg.family, self.collect_dir, progress=self.cfg.progress, resume=not overwrite,
                       overwrite=overwrite, **self.cfg.collect_kwargs())
        verify_dataset(path, progress=False)
        self._record_time("collect", time.perf_counter() - t0)
        return path

    # ---------------------------------------------------------------- stage: subsample
    def subsample(self, collected: str) -> str:
        """The training data: every buffer_skip-th row of the collected data (made or reused)."""
        from ..data.store import DatasetError, verify_dataset
        from ..data.subsample import subsample_dataset

        if self.cfg.buffer_skip == 1:
            return collected
        marker = os.path.join(self.stage_dir, "subsample.json")
        want = {"source": dataset_fingerprint(collected), "buffer_skip": self.cfg.buffer_skip}
        have = _read_json(marker)
        if have is not None and {k: have.get(k) for k in want} == want and os.path.exists(self.data_dir):
            try:
                verify_dataset(self.data_dir, progress=False)
                if dataset_fingerprint(self.data_dir) == have.get("output"):
                    return self.data_dir
                _say("subsample: DIR/data is not the data this stage made; making it again")
            except (DatasetError, FileNotFoundError, ValueError) as e:
                _say(f"subsample: the training data failed verification ({str(e).splitlines()[0]}); making it again")
        t0 = time.perf_counter()
        subsample_dataset(collected, self.data_dir, skip=self.cfg.buffer_skip, overwrite=True,
                          progress=self.cfg.progress)
        verify_dataset(self.data_dir, progress=False)
        os.makedirs(self.stage_dir, exist_ok=True)
        atomic_write_json(marker, {**want, "output": dataset_fingerprint(self.data_dir)})
        self._record_time("subsample", time.perf_counter() - t0)
        return self.data_dir

    # ---------------------------------------------------------------- stage: train
    def run_dir(self, seed: int, algo: str = "macaw") -> str:
        """DIR/train/seed_<s> (MACAW) or DIR/train/<algo>/seed_<s>."""
        return os.path.join(self.dir, "train", *([] if algo == "macaw" else [algo]), f"seed_{seed}")

    @staticmethod
    def _stage(name: str, seed: int, algo: str) -> str:
        return f"{name}_seed_{seed}" if algo == "macaw" else f"{name}_{algo}_seed_{seed}"

    def train_seed(self, data: str, seed: int, algo: str = "macaw", record: bool = True, on_eval=None) -> None:
        """Train (or resume, or confirm finished) the run of one seed and algorithm; ``record``: add
        the time taken to DIR/stages/wall_clock.json (a parallel run's parent does that instead);
        ``on_eval``: passed to :func:`train.loop.train`."""
        from .loop import intact_checkpoints, read_jsonl, train

        run = self.run_dir(seed, algo)
        marker = os.path.join(self.stage_dir, self._stage("train", seed, algo) + ".json")
        fp = dataset_fingerprint(data)
        have = _read_json(marker)
        if os.path.exists(run) and (have is None or have.get("data") != fp):
            _say(f"train: {run} was not trained on the current data; training seed {seed} again")
            shutil.rmtree(run)
        os.makedirs(self.stage_dir, exist_ok=True)
        atomic_write_json(marker, {"data": fp})
        mc, tc = self.cfg.train_configs(seed, algo)
        good = intact_checkpoints(os.path.join(run, "checkpoints"))
        if good and good[0][0] > self.cfg.steps:
            raise ValueError(f"--steps {self.cfg.steps}: seed {seed} is already trained to step {good[0][0]} "
                             f"({run}); use --steps {good[0][0]} or more")
        if good and good[0][0] == self.cfg.steps and good[0][1].endswith("latest.pt"):
            evals = [r for r in read_jsonl(os.path.join(run, "metrics.jsonl"))
                     if r.get("kind") == "eval" and r.get("step") == self.cfg.steps]
            if evals:
                return
        t0 = time.perf_counter()
        resume = os.path.exists(os.path.join(run, "config.json")) or os.path.isdir(os.path.join(run, "checkpoints"))
        train(data, run, mc, tc, presets=[self.cfg.family, *self.cfg.presets], resume=resume, on_eval=on_eval)
        if record:
            self._record_time(self._stage("train", seed, algo), time.perf_counter() - t0)


    def train_parallel(self, data: str, runs: list, first: int, n: int, command: str = "") -> None:
        """Train ``runs`` ([(algo, seed)]) ``jobs`` at a time, one process each (``train/_job.py``);
        each process dies with this one, so a killed pipeline leaves no run training behind."""
        import shlex

        from .._procs import Job, run_jobs
        from ._job import COMMAND_ENV

        jobs, number = [], {}
        for i, (a, s) in enumerate(runs):
            name = f"train {_name(a)}seed {s}"
            jobs.append(Job(name, [sys.executable, "-m", "macaw_fast.train._job", self.dir, data, str(s), a,
                                str(training_threads(self.cfg))]))
            number[name] = (first + i, a, s)

        def start(job):
            k, a, s = number[job.name]
            _say(f"[{k}/{n}] train {_name(a)}seed {s}: {self.cfg.steps} meta-steps -> {self.run_dir(s, a)} "
                 f"(process {k - first + 1} of {len(runs)}, {self.cfg.jobs} at a time, "
                 f"{training_threads(self.cfg)} thread(s) each)")

        def end(job, seconds):
            _, a, s = number[job.name]
            self._record_time(self._stage("train", s, a), seconds)
            _say(f"{job.name}: done ({seconds / 60:.1f} min)")

        env = {**os.environ, COMMAND_ENV: json.dumps(shlex.split(command) if command else None)}
        run_jobs(jobs, self.cfg.jobs, on_start=start, on_end=end, env=env)

    # ---------------------------------------------------------------- stage: tune (mt_ft)
    def tune_path(self, seed: int) -> str:
        """DIR/eval/mt_ft/tune_seed_<s>.json: mt_ft's step-size sweep on training tasks."""
        return os.path.join(self.dir, "eval", "mt_ft", f"tune_seed_{seed}.json")

    def _final_checkpoint(self, seed: int, algo: str) -> dict:
        from .loop import load_checkpoint

        ck = load_checkpoint(os.path.join(self.run_dir(seed, algo), "checkpoints", "latest.pt"))
        if int(ck["step"]) != self.cfg.steps:
            raise ValueError(f"{self.run_dir(seed, algo)}: latest checkpoint is step {ck['step']}, "
                             f"expected {self.cfg.steps}")
        return ck

    def tune_seed(self, data: str, seed: int) -> dict:
        """mt_ft's fine-tuning step-size sweep for one seed: every (steps, value lr, policy lr) of
        ft_variants x ft_value_lrs x ft_policy_lrs, adapted on training-task batches and rolled out on those tasks (computed, or verified and reused).

        Training tasks, not test tasks, so the choice does not peek at the numbers it is judged by
        (Cheetah-Dir has no others: its training and test tasks are the same two)."""
        import torch

        from .evaluate import Evaluator
        from .loop import RunSetup, _jsonable
        from .runs import learner_from_state_dict

        c = self.cfg
        ck = self._final_checkpoint(seed, "mt_ft")
        steps = sorted(set(c.ft_variants().values()))
        key = {"checkpoint_sha256": ck["sha256"], "step": c.steps, "value_lrs": list(c.ft_value_lrs),
               "policy_lrs": list(c.ft_policy_lrs), "ft_steps": steps,
               "tasks": c.tune_tasks, "batches": c.eval_batches, "rollouts": c.eval_rollouts,
               "data": dataset_fingerprint(data), "reference": _reference_key(c.train_configs(seed, "mt_ft")[1])}
        path = self.tune_path(seed)
        old = _read_json(path)
        if old is not None and old.get("key") == key and "result" in old:
            return old["result"]
        t0 = time.perf_counter()
        mc, tc = c.train_configs(seed, "mt_ft")
        learner = learner_from_state_dict(ck["learner"])
        setup = RunSetup(data, mc, tc)
        ids = setup.train_ids
        m = min(c.tune_tasks, len(ids))
        ids = [ids[round(i * (len(ids) - 1) / (m - 1))] for i in range(m)] if m > 1 else ids[:1]
        ev = Evaluator(setup.ds, ids, setup.family, tc.batch_size, tc.seed)
        grid: dict = {}
        threads = torch.get_num_threads()
        try:
            for k in steps:
                for vlr in c.ft_value_lrs:
                    for plr in c.ft_policy_lrs:
                        learner.set_fine_tuning(ft_steps=k, ft_value_lr=vlr, ft_policy_lr=plr)
                        r = ev.evaluate(learner, TUNE_STEP, c.eval_batches, c.eval_rollouts, unadapted=False,
                                        random_episodes=tc.random_episodes)
                        grid.setdefault(str(k), []).append({
                            "value_lr": float(vlr), "policy_lr": float(plr), "mean_return": r["mean_adapted"],
                            "mean_normalised": r.get("mean_normalised_adapted"), "per_task": r["adapted"]})
        finally:
            ev.close()
            torch.set_num_threads(threads)
        res = _jsonable({"tasks": ids, "grid": grid})
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_json(path, {"format": "macaw-fast/ft-tune", "key": key, "result": res})
        self._record_time("tune_mt_ft", time.perf_counter() - t0)
        return res

    def tuned_fine_tuning(self) -> dict:
        """mt_ft result name -> {"steps", "value_lr", "policy_lr", "score": [{value_lr, policy_lr, score}],
        "criterion", "tasks", "protocol"}: the pair with the best mean normalised return over seeds x
        tuning tasks (the mean return where the data gives no normalised score; a pair that diverged
        on any seed scores None). Needs every seed's tune_seed."""
        tunes = [_read_json(self.tune_path(s)) for s in self.cfg.seeds]
        if any(t is None for t in tunes):
            raise ValueError("mt_ft: the step-size tuning is not complete for every seed")
        out = {}
        for name, k in self.cfg.ft_variants().items():
            rows = [t["result"]["grid"][str(k)] for t in tunes]         # per seed: a list over the pairs
            use_norm = all(e["mean_normalised"] is not None for r in rows for e in r)
            crit = "mean_normalised" if use_norm else "mean_return"
            score = []
            for i, e in enumerate(rows[0]):
                vals = [r[i][crit] for r in rows]
                ok = all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals)   # NaN is stored as "nan"
                score.append({"value_lr": e["value_lr"], "policy_lr": e["policy_lr"],
                              "score": sum(vals) / len(vals) if ok else None})
            good = [e for e in score if e["score"] is not None]
            if not good:
                raise ValueError(f"mt_ft: every fine-tuning step size pair gave non-finite returns ({k} steps)")
            best = max(good, key=lambda e: e["score"])
            out[name] = {"steps": k, "value_lr": best["value_lr"], "policy_lr": best["policy_lr"], "score": score,
                         "criterion": crit, "tasks": tunes[0]["result"]["tasks"],
                         "protocol": f"{self.cfg.eval_batches} batches x {self.cfg.eval_rollouts} rollouts per task"}
        return out

    # ---------------------------------------------------------------- stage: evaluate
    def eval_path(self, seed: int, algo: str = "macaw") -> str:
        """DIR/eval/seed_<s>.json (MACAW) or DIR/eval/<name>/seed_<s>.json (a result name)."""
        return os.path.join(self.dir, "eval", *([] if algo == "macaw" else [algo]), f"seed_{seed}.json")

    def evaluate_seed(self, data: str, seed: int, algo: str = "macaw") -> dict:
        """The final evaluation of one seed's last checkpoint (computed, or verified and reused).
        ``algo`` is a result name: mt_ft's rows use their tuned fine-tuning step size."""
        import torch

        from ..envs import task_label
        from .loop import RunSetup, _jsonable
        from .runs import learner_from_state_dict

        run_algo = self._run_algo(algo)
        ck = self._final_checkpoint(seed, run_algo)
        mc, tc = self.cfg.train_configs(seed, run_algo)
        key = {"checkpoint_sha256": ck["sha256"], "step": self.cfg.steps, "batches": self.cfg.final_batches,
               "rollouts": self.cfg.final_rollouts, "data": dataset_fingerprint(data),
               "reference": _reference_key(tc)}
        ft = None
        if run_algo == "mt_ft":
            ft = self.tuned_fine_tuning()[algo]
            key["fine_tuning"] = {k: ft[k] for k in ("steps", "value_lr", "policy_lr")}
        path = self.eval_path(seed, algo)
        old = _read_json(path)
        if old is not None and old.get("key") == key and "result" in old:
            return old["result"]
        t0 = time.perf_counter()
        learner = learner_from_state_dict(ck["learner"])
        if ft is not None:
            learner.set_fine_tuning(ft_steps=ft["steps"], ft_value_lr=ft["value_lr"], ft_policy_lr=ft["policy_lr"])
        setup = RunSetup(data, mc, tc)
        ev = setup.evaluator()
        threads = torch.get_num_threads()
        try:
            res = ev.evaluate(learner, FINAL_EVAL_STEP, self.cfg.final_batches, self.cfg.final_rollouts,
                              random_episodes=tc.random_episodes,
                              unadapted_rollouts=self.cfg.final_batches * self.cfg.final_rollouts)
            res["random"], res["data_best"] = ev.random_returns(tc.random_episodes), ev.best_data_returns()
            res["labels"] = {t.id: task_label(self.cfg.family, t.task) for t in ev.tasks}
        finally:
            ev.close()
            torch.set_num_threads(threads)
        res = _jsonable(res)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_json(path, {"format": "macaw-fast/final-eval", "key": key, "result": res})
        self._record_time("evaluate" if algo == "macaw" else f"evaluate_{algo}", time.perf_counter() - t0)
        return res

    # ---------------------------------------------------------------- stage: results
    def results(self, command: str) -> dict:
        """Write DIR/results/{summary.json, table.md, curves.png} (one entry, table and curves per
        algorithm: curves_<algo>.png for the baselines); returns the first algorithm's entry."""
        from .stats import family_entry, write_comparison, write_curves, write_table

        wall = _read_json(os.path.join(self.stage_dir, "wall_clock.json")) or {}
        from .loop import read_jsonl

        done = [r for r in read_jsonl(os.path.join(self.collect_dir, "log.jsonl")) if r.get("final")]
        if done:      # the collection's own clock (it may have run outside this pipeline, or resumed)
            wall["collect"] = max(wall.get("collect", 0.0), float(done[-1].get("wall_s", 0.0)))
        out = os.path.join(self.dir, "results")
        os.makedirs(out, exist_ok=True)
        entries, tables = {}, []
        variants = self.cfg.ft_variants()
        tuned = self.tuned_fine_tuning() if variants else {}
        names = self.cfg.result_names()
        for algo in names:
            evals = {s: _read_json(self.eval_path(s, algo))["result"] for s in self.cfg.seeds}
            run_algo = "mt_ft" if algo in variants else algo
            own = ("train_seed_", "evaluate") if algo == "macaw" else (f"train_{run_algo}_seed_", f"evaluate_{algo}")
            stage_wall = {k: v for k, v in wall.items()
                          if k in own or k.startswith(own[0]) or (k == "tune_mt_ft" and algo in variants)
                          or not k.startswith(("train_", "evaluate", "tune_"))}
            entries[algo] = family_entry(evals, self.cfg, command, stage_wall)
            if algo in tuned:
                entries[algo]["fine_tuning"] = tuned[algo]
            tables.append((f"## {algo}\n\n" if len(names) > 1 else "")
                          + write_table(self.cfg.family, entries[algo], algo))
        atomic_write_json(os.path.join(out, "summary.json"), {self.cfg.family: entries})
        atomic_write_text(os.path.join(out, "table.md"), "\n".join(tables))
        self.write_data_quality(out)
        for algo, entry in entries.items():
            if algo in variants and algo != "mt_ft":
                continue        # the second row has no training run of its own
            png = "curves.png" if algo == "macaw" else f"curves_{algo}.png"
            try:
                entry["curves_png"] = write_curves([self.run_dir(s, algo) for s in self.cfg.seeds], self.cfg.family,
                                                   os.path.join(out, png), entry.get("labels", {}))
            except ImportError as e:
                _say(f"results: no {png} ({e}); install them with pip install 'macaw-fast[results]'")
        if len(self.cfg.algos) > 1:
            try:
                write_comparison({a: [self.run_dir(s, a) for s in self.cfg.seeds] for a in self.cfg.algos},
                                 self.cfg.family, os.path.join(out, "comparison.png"),
                                 final={a: entries[a] for a in names})
            except ImportError as e:
                _say(f"results: no comparison.png ({e})")
        return entries[self.cfg.algos[0]]

    def write_data_quality(self, out: str) -> None:
        """DIR/results/data_quality.{json,md}: the collection's per-task quality (`macaw-fast quality`):
        the test tasks' table and a line over all tasks."""
        from ..collect.quality import collection_quality, format_quality

        q = collection_quality(self.collect_dir)
        atomic_write_json(os.path.join(out, "data_quality.json"), q)
        text = (f"# Data quality ({self.cfg.family}, {self.collect_dir})\n\nTest tasks:\n\n{format_quality(q, only='test')}"
                f"\n\nAll {len(q['tasks'])} tasks: {format_quality(q).rsplit(chr(10), 1)[-1]}\n")
        atomic_write_text(os.path.join(out, "data_quality.md"), text)

    # ---------------------------------------------------------------- all of it
    def run(self, command: str = "") -> dict:
        self.check_directory()
        self.lock()
        for path in self.remove_stale_temporaries():
            _say(f"removed {path} (left by an interrupted write)")
        self.save_settings()
        runs = [(a, s) for a in self.cfg.algos for s in self.cfg.seeds]
        evals = [(a, s) for a in self.cfg.result_names() for s in self.cfg.seeds]
        tunes = self.cfg.seeds if "mt_ft" in self.cfg.algos else []
        n = 3 + len(runs) + len(tunes) + len(evals)
        k = 1
        _say(f"[{k}/{n}] collect -> {self.collect_dir}")
        collected = self.collect()
        k += 1
        _say(f"[{k}/{n}] subsample (buffer_skip {self.cfg.buffer_skip}) -> {self.data_dir}")
        data = self.subsample(collected)
        if self.cfg.jobs > 1 and len(runs) > 1:
            self.train_parallel(data, runs, k + 1, n, command)
            k += len(runs)
        else:
            for a, s in runs:
                k += 1
                _say(f"[{k}/{n}] train {_name(a)}seed {s}: {self.cfg.steps} meta-steps -> {self.run_dir(s, a)}")
                self.train_seed(data, s, a)
        for s in tunes:
            k += 1
            _say(f"[{k}/{n}] tune mt_ft seed {s}: fine-tuning step sizes (value {self.cfg.ft_value_lrs} x policy "
                 f"{self.cfg.ft_policy_lrs}) on up to {self.cfg.tune_tasks} training tasks -> {self.tune_path(s)}")
            self.tune_seed(data, s)
        for a, s in evals:
            k += 1
            _say(f"[{k}/{n}] evaluate {_name(a)}seed {s}: {self.cfg.final_batches} batches x {self.cfg.final_rollouts} "
                 f"rollouts per test task -> {self.eval_path(s, a)}")
            self.evaluate_seed(data, s, a)
        k += 1
        _say(f"[{k}/{n}] results -> {os.path.join(self.dir, 'results')}")
        return self.results(command)

    # ---------------------------------------------------------------- the plan
    def _run_algo(self, name: str) -> str:
        """The trained algorithm behind a result name ('mt_ft_k20' is mt_ft's run, fine-tuned longer)."""
        return "mt_ft" if name in self.cfg.ft_variants() else name

    def _plausibly_done(self, path: str, seed: int, algo: str) -> bool:
        """Whether a tuning or final-evaluation file looks reusable, without hashing the checkpoint:
        it exists and was made for this step count and this random-policy reference."""
        old = _read_json(path)
        if old is None or "result" not in old or not isinstance(old.get("key"), dict):
            return False
        key = old["key"]
        return key.get("step") == self.cfg.steps and \
            key.get("reference") == _reference_key(self.cfg.train_configs(seed, algo)[1])

    def plan(self, rates: dict | None = None) -> list[dict]:
        """Each stage's status and estimated remaining wall-clock seconds (``--dry-run``)."""
        from .loop import intact_checkpoints, read_jsonl

        rates = rates if rates is not None else measure_rates(self.cfg)
        c = self.cfg
        kw = c.collect_kwargs()
        from ..envs import FAMILIES

        T = len(kw.get("tasks") or FAMILIES[c.family].paper_tasks())
        steps_task = kw["steps_per_task"]
        done_steps = 0
        log = read_jsonl(os.path.join(self.collect_dir, "log.jsonl"))
        if log:
            done_steps = max(int(r.get("step", 0)) for r in log)
        finished = any(r.get("final") for r in log) and done_steps >= steps_task
        warm = kw.get("warmup", 5000)
        utd = kw.get("utd", 1.0)
        rem_steps = 0 if finished else steps_task - done_steps
        rem_updates = 0 if finished else max(0, steps_task - max(warm, done_steps)) * utd
        collect_s = rem_steps * T * rates["env_step_s"] + rem_updates * rates["sac_update_s"]
        rows = []
        rows.append({"stage": "collect", "status": "done" if finished else
                     (f"at {done_steps}/{steps_task} env steps per task" if done_steps else "to do"),
                     "estimate_s": collect_s,
                     "detail": f"{T} tasks x {steps_task} env steps, {int(max(0, steps_task - warm) * utd)} "
                               f"SAC updates of all tasks (width {kw.get('width')})"})
        sub_done = _read_json(os.path.join(self.stage_dir, "subsample.json")) is not None
        rows.append({"stage": "subsample", "status": "done" if sub_done else "to do",
                     "estimate_s": 0.0 if sub_done or c.buffer_skip == 1 else 5.0 + T * steps_task * 2e-6,
                     "detail": f"buffer_skip {c.buffer_skip}"})
        test_tasks = 5 if c.family != "cheetah_dir" else 2
        ep_s = 200 * (rates["env_step_s"] + rates.get("act_s", 0.0))
        per_eval = test_tasks * (c.eval_batches * c.eval_rollouts + c.eval_rollouts) * ep_s
        runs = [(a, s) for a in c.algos for s in c.seeds]
        for a, s in runs:
            good = intact_checkpoints(os.path.join(self.run_dir(s, a), "checkpoints"))
            at = good[0][0] if good else 0
            left = max(0, c.steps - at)
            n_evals = left // c.eval_interval + 1
            rows.append({"stage": f"train {_name(a)}seed {s}", "status": "done" if left == 0 else (f"at step {at}" if at else "to do"),
                         "estimate_s": left * _step_seconds(rates, a) + n_evals * per_eval,
                         "detail": f"{c.steps} meta-steps, evaluation every {c.eval_interval} "
                                   f"({c.eval_batches} batches x {c.eval_rollouts} rollouts)"})
        if "mt_ft" in c.algos:
            n_tune = len(set(c.ft_variants().values())) * len(c.ft_value_lrs) * len(c.ft_policy_lrs)
            for s in c.seeds:
                done = self._plausibly_done(self.tune_path(s), s, "mt_ft")
                rows.append({"stage": f"tune mt_ft seed {s}", "status": "done" if done else "to do",
                             "estimate_s": 0.0 if done else n_tune * c.tune_tasks * c.eval_batches * c.eval_rollouts * ep_s,
                             "detail": f"{n_tune} (steps, value lr, policy lr) settings on up to {c.tune_tasks} training tasks"})
        final = test_tasks * 2 * c.final_batches * c.final_rollouts * ep_s
        for a, s in [(a, s) for a in c.result_names() for s in c.seeds]:
            done = self._plausibly_done(self.eval_path(s, a), s, self._run_algo(a))
            rows.append({"stage": f"evaluate {_name(a)}seed {s}", "status": "done" if done else "to do",
                         "estimate_s": 0.0 if done else final,
                         "detail": f"{c.final_batches} batches x {c.final_rollouts} rollouts per test task"})
        rows.append({"stage": "results", "status": "", "estimate_s": 10.0, "detail": "summary.json, table.md, curves.png"})
        return rows


def measure_rates(cfg: ReproduceConfig, repeats: int = 3) -> dict:
    """Seconds per env step, per batched SAC update of all tasks and per meta-step, measured here
    on random data of the family's shapes (a few seconds)."""
    import numpy as np
    import torch

    from ..collect.sac import BatchedSAC, SACConfig
    from ..envs import FAMILIES, make

    fam = FAMILIES[cfg.family]
    kw = cfg.collect_kwargs()
    T = len(kw.get("tasks") or fam.paper_tasks())
    env = make(cfg.family, fam.paper_tasks()[0], disable_env_checker=True)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    n = 0
    for _ in range(400):
        _, _, term, trunc, _ = env.step(rng.uniform(-1, 1, fam.act_dim))
        n += 1
        if term or trunc:
            env.reset()
    env_s = (time.perf_counter() - t0) / n
    env.close()

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(cfg.collect_threads)
        g = torch.Generator().manual_seed(0)
        B = kw.get("batch_size", 256)
        sac_cfg = SACConfig(width=kw.get("width", 256), matmul=kw.get("matmul", "float32"))
        sac = BatchedSAC(T, fam.obs_dim, fam.act_dim, sac_cfg, seed=0)
        batch = {"obs": torch.randn(T, B, fam.obs_dim, generator=g), "action": torch.rand(T, B, fam.act_dim) * 2 - 1,
                 "reward": torch.randn(T, B, generator=g), "next_obs": torch.randn(T, B, fam.obs_dim, generator=g),
                 "done": torch.zeros(T, B)}
        times = []
        for k in range(repeats + 1):
            t0 = time.perf_counter()
            sac.update(batch, generator=g)
            if k:
                times.append(time.perf_counter() - t0)
        sac_s = min(times)
        obs = torch.randn(T, 1, fam.obs_dim)
        t0 = time.perf_counter()
        for _ in range(20):
            sac.act(obs, generator=g)
        act_collect_s = (time.perf_counter() - t0) / 20

        torch.set_num_threads(training_threads(cfg) or threads)
        step_s = {a: _meta_step_seconds(cfg, fam, repeats, a) for a in cfg.algos}
    finally:
        torch.set_num_threads(threads)
    return {"env_step_s": env_s, "sac_update_s": sac_s, "meta_step_s": step_s.get("macaw", min(step_s.values())),
            "step_s": step_s, "act_s": act_collect_s / T, "collect_act_s": act_collect_s}


def training_threads(cfg: ReproduceConfig) -> int:
    """Torch threads of each training run: ``threads``; with ``jobs`` > 1 and threads 0, the cores
    shared out; 0 = torch's default (one run at a time)."""
    if cfg.threads or cfg.jobs == 1:
        return cfg.threads
    return max(1, (os.cpu_count() or 1) // cfg.jobs)


def _step_seconds(rates: dict, algo: str) -> float:
    """Seconds per gradient step of ``algo``: its own measured rate, else MACAW's meta-step."""
    return rates.get("step_s", {}).get(algo, rates["meta_step_s"])


def _meta_step_seconds(cfg: ReproduceConfig, fam, repeats: int, algo: str = "macaw") -> float:
    """Seconds per training step of ``algo`` (its meta_step on random batches of the run's shapes)."""
    import torch

    from ..data.batch import Batch
    from .loop import build_learner

    mc, tc = cfg.train_configs(cfg.seeds[0], algo)
    n_train = len(fam.paper_tasks()) - (0 if cfg.family == "cheetah_dir" else 5)
    T, B = min(tc.tasks_per_step, n_train), tc.batch_size
    g = torch.Generator().manual_seed(0)

    def batch() -> Batch:
        return Batch(obs=torch.randn(T, B, fam.obs_dim, generator=g), action=torch.rand(T, B, fam.act_dim) * 2 - 1,
                     reward=torch.randn(T, B, generator=g), next_obs=torch.randn(T, B, fam.obs_dim, generator=g),
                     done=torch.zeros(T, B), mc_return=torch.randn(T, B, generator=g),
                     terminal_obs=torch.randn(T, B, fam.obs_dim, generator=g),
                     terminal_discount=torch.full((T, B), 0.5))
    learner = build_learner(fam.obs_dim, fam.act_dim, n_train, mc, tc)
    times = []
    for k in range(repeats + 1):
        inner, outer = batch(), batch()
        t0 = time.perf_counter()
        learner.meta_step(inner, outer)
        if k:
            times.append(time.perf_counter() - t0)
    return min(times)


def plan_total(rows: list[dict], jobs: int = 1, oversubscribed: float = 1.0) -> float:
    """Estimated wall-clock seconds of a plan: its training rows ``jobs`` at a time (each started, in
    order, when a process is free, as ``--jobs`` runs them) and ``oversubscribed`` times slower
    (threads of the runs at once / cores, when above 1), everything else one after another."""
    train = [r["estimate_s"] for r in rows if r["stage"].startswith("train ")]
    free = [0.0] * max(1, min(jobs, len(train) or 1))
    for t in train:
        i = free.index(min(free))
        free[i] += t
    busy = max(1.0, oversubscribed) if jobs > 1 else 1.0
    return sum(r["estimate_s"] for r in rows if not r["stage"].startswith("train ")) + max(free) * busy


def oversubscription(cfg: ReproduceConfig) -> float:
    """Torch threads of the training runs that run at once, over this machine's cores."""
    import torch

    threads = training_threads(cfg) or torch.get_num_threads()
    return cfg.jobs * threads / (os.cpu_count() or 1)


def format_plan(rows: list[dict], jobs: int = 1, oversubscribed: float = 1.0) -> str:
    def hms(s: float) -> str:
        s = int(round(s))
        return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"

    w = max([18] + [len(r["stage"]) for r in rows])
    lines = [f"{'stage':<{w}s} {'status':<34s} {'estimate':>9s}  what"]
    for r in rows:
        lines.append(f"{r['stage']:<{w}s} {r['status']:<34s} {hms(r['estimate_s']):>9s}  {r['detail']}")
    how = f"training runs {jobs} at a time" if jobs > 1 else ""
    if jobs > 1 and oversubscribed > 1:
        how += f", {oversubscribed:.1f}x as many threads as cores: each run that much slower"
    lines.append(f"{'total':<{w}s} {'':<34s} {hms(plan_total(rows, jobs, oversubscribed)):>9s}  {how}".rstrip())
    return "\n".join(lines)


def merge_summary(entry_file: str, summary: str) -> None:
    """Merge the family entries of ``entry_file`` (a reproduce DIR/results/summary.json) into ``summary``."""
    new = _read_json(entry_file)
    if new is None:
        raise FileNotFoundError(f"{entry_file}: no results to publish (run the pipeline to the end first)")
    old = {}
    if os.path.exists(summary):
        old = _read_json(summary)
        if old is None:
            raise ValueError(f"--summary {summary}: exists but is not a JSON object; not overwritten")
    for fam, algos in new.items():
        old.setdefault(fam, {}).update(algos)
    d = os.path.dirname(os.path.abspath(summary))
    os.makedirs(d, exist_ok=True)
    atomic_write_json(summary, old)


__all__ = ["ReproduceConfig", "Reproduction", "measure_rates", "format_plan", "plan_total", "oversubscription", "merge_summary",
           "FINAL_EVAL_STEP"]
