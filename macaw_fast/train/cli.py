"""`macaw-fast train`, `macaw-fast eval` and `macaw-fast plot`: argument parsing, then calls into the package."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .._cli_types import flat_tasks, int_at_least, positive_float, task_list
from ..backends import BACKEND_NAMES
from .config import ALGOS, add_config_arguments, list_presets, overrides_from_args, resolve_config


# ------------------------------------------------------------------------------------------------
# train


def _configs(args) -> tuple:
    mac, tr = {}, {}
    if args.config_file:
        d = _config_file(args.config_file, "--config-file")
        mac.update(d.get("macaw", {}))
        tr.update(d.get("train", {}))
    m2, t2 = overrides_from_args(args)
    mac.update(m2)
    tr.update(t2)
    try:
        return resolve_config(args.preset, mac, tr)
    except ValueError as e:
        if not args.config_file:
            raise
        try:      # does the rest resolve without the file? then the file is to blame: name it
            resolve_config(args.preset, m2, t2)
        except ValueError:
            raise e from None
        raise ValueError(f"--config-file {args.config_file}: {e}") from None


def resume_configs(args) -> tuple:
    """(run description, MacawConfig, TrainConfig) to continue ``args.resume`` (see
    :func:`macaw_fast.train.runs.resume_settings`: the checkpoint's settings are the truth)."""
    from .runs import resume_settings

    mac, tr = overrides_from_args(args)
    return resume_settings(args.resume, mac, tr)


def _under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def run_train(args) -> int:
    """Entry point of `macaw-fast train` (data-parallel when launched by torchrun with >1 rank)."""
    if not _under_torchrun():
        return _run_train(args)
    from .distributed import DistributedError, leave_group, rank_and_world
    try:
        rc = _run_train(args)
    except DistributedError as e:   # a peer died or hung: one line, then leave the group
        print(f"macaw-fast train (rank {rank_and_world()[0]}): error: {e}", file=sys.stderr)
        return leave_group(1)
    except BaseException:
        leave_group(1)          # destroy the group before the error propagates and the process exits
        raise
    return leave_group(rc)


def _run_train(args) -> int:
    if getattr(args, "deprecated_config", None):
        print("macaw-fast train: --config NAME is deprecated (it looked like --config-file); use --preset NAME",
              file=sys.stderr)
        args.preset = list(args.preset) + list(args.deprecated_config)
    from .loop import train

    if args.list_presets:
        for name, desc in list_presets().items():
            print(f"{name:14s} {desc}")
        return 0
    if args.resume:
        cfg, mc, tc = resume_configs(args)
        res = train(cfg["data"], args.resume, mc, tc, presets=cfg.get("presets"), resume=True, timeout_s=args.timeout)
        _print_eval(res)
        return 0
    if not args.data:
        raise ValueError("--data DATASET is required (or --resume RUN)")
    if not args.out:
        raise ValueError("--out RUN is required")
    mc, tc = _configs(args)
    if args.overwrite:
        from .loop import RunSetup
        from .runs import clear_run

        RunSetup(args.data, mc, tc)          # everything validated before anything is deleted
        if clear_run(os.path.abspath(args.out)):
            print(f"macaw-fast train: --overwrite: removed the run in {args.out}", file=sys.stderr)
    if args.seeds:
        if _under_torchrun():
            raise ValueError("--seeds cannot be combined with torchrun: launch one torchrun job per seed")
        return _run_seeds(args, mc, tc)
    res = train(args.data, args.out, mc, tc, presets=args.preset, timeout_s=args.timeout)
    _print_eval(res)
    return 0


def _run_seeds(args, mc, tc) -> int:
    from .runs import run_seeds

    return run_seeds(args.data, args.out, mc, tc, list(args.seeds), presets=args.preset, report=_print_eval)


def _print_eval(res: dict, prefix: str = "") -> None:
    if not res:
        return
    print(f"{prefix}step {res['step']}: mean adapted return {res['mean_adapted']:.2f}, "
          f"unadapted {res.get('mean_unadapted', float('nan')):.2f}")


# ------------------------------------------------------------------------------------------------
# eval


def run_eval(args) -> int:
    """Entry point of `macaw-fast eval`."""
    import numpy as np

    from ..data.store import open_dataset
    from .evaluate import Evaluator, family_of, online_finetune

    from .runs import load_any_checkpoint

    learner, data, fam, step = load_any_checkpoint(args.checkpoint, args.data, args.backend)
    from ..macaw import MetaLearner

    if args.online_ft and not isinstance(learner, MetaLearner):
        raise ValueError(f"--online-ft: online fine-tuning is implemented for MACAW only; {args.checkpoint} holds a "
                         f"{type(learner).__name__}")
    ft = {k: getattr(args, k) for k in ("ft_steps", "ft_value_lr", "ft_policy_lr") if getattr(args, k) is not None}
    if ft:
        from ..mt_ft import MTFT

        if not isinstance(learner, MTFT):
            flag = "--" + next(iter(ft)).replace("_", "-")
            raise ValueError(f"{flag}: only mt_ft checkpoints fine-tune at test time; {args.checkpoint} holds a "
                             f"{type(learner).__name__}")
        learner.set_fine_tuning(**ft)
    ds = open_dataset(data)
    family = family_of(ds)
    if fam and fam != family:
        raise ValueError(f"{data}: a {family} dataset, but the checkpoint was trained on {fam}")
    if (learner.obs_dim, learner.act_dim) != (ds.obs_dim, ds.act_dim):
        raise ValueError(f"{data}: obs/act dims ({ds.obs_dim}, {ds.act_dim}) differ from the checkpoint's "
                         f"({learner.obs_dim}, {learner.act_dim})")
    args.tasks = flat_tasks(args.tasks)
    if args.tasks:
        bad = [i for i in args.tasks if i >= len(ds.tasks)]
        if bad:
            raise ValueError(f"--tasks: {bad} out of range; {data} has {len(ds.tasks)} tasks (indices 0.."
                             f"{len(ds.tasks) - 1})")
    tasks = ds.test_tasks if not args.tasks else [ds.tasks[i] for i in args.tasks]
    ev = Evaluator(ds, tasks, family, args.batch_size, args.seed)
    res = ev.evaluate(learner, 0, args.batches, args.episodes, random_episodes=args.random_episodes)
    nan = float("nan")
    rnd = ev.random_returns(args.random_episodes) if args.random_episodes else {t: nan for t in tasks}
    best = ev.best_data_returns()
    res["random"], res["data_best"] = rnd, best
    for kind in ("adapted", "unadapted"):
        res.setdefault(f"normalised_{kind}", {t: None for t in tasks})
        res.setdefault(f"mean_normalised_{kind}", None)
    print(f"{'task':>8s} {'adapted':>9s} {'norm':>6s} {'unadapted':>10s} {'norm':>6s} {'random':>8s} {'data best':>10s}")
    fmt = lambda v: "   n/a" if v is None else f"{v:6.2f}"  # noqa: E731
    for t in tasks:
        b = best[t]
        print(f"{t:>8s} {res['adapted'][t]:9.1f} {fmt(res['normalised_adapted'][t])} {res['unadapted'][t]:10.1f} "
              f"{fmt(res['normalised_unadapted'][t])} {rnd[t]:8.1f} {'n/a' if b is None else f'{b:.1f}':>10s}")
    print(f"{'mean':>8s} {res['mean_adapted']:9.1f} {fmt(res['mean_normalised_adapted'])} {res['mean_unadapted']:10.1f} "
          f"{fmt(res['mean_normalised_unadapted'])}")
    print(f"({args.batches} adaptation batch(es) x {args.episodes} mean-action rollout(s) per task)")
    if args.online_ft:
        adapted = learner.adapt(ev.adaptation_batch(0, 1, learner.dtype, learner.device))
        res["online_ft"] = {}
        for k, t in enumerate(ev.tasks):
            env = ev.envs(k, 1)[0]
            hist = online_finetune(learner, [p[k:k + 1].detach() for p in adapted.value],
                                   [p[k:k + 1].detach() for p in adapted.policy], env,
                                   iterations=args.ft_iterations, seed=args.seed)
            res["online_ft"][t.id] = hist
            print(f"online fine-tuning, task {t.id}: return {hist[0]:.1f} -> {hist[-1]:.1f} "
                  f"({len(hist)} iterations)")
    if args.video:
        from .runs import render_videos

        render_videos(ev, learner, args.video_dir, args.seed)
    if args.json:
        from .._provenance import provenance
        from .loop import _jsonable, atomic_write_json

        ck = os.path.join(args.checkpoint, "checkpoints", "latest.pt") if os.path.isdir(args.checkpoint) else args.checkpoint
        res.update(checkpoint=os.path.abspath(ck), checkpoint_step=step, data=os.path.abspath(data),
                   protocol={"batches": args.batches, "episodes": args.episodes, "batch_size": args.batch_size,
                             "random_episodes": args.random_episodes, "seed": args.seed},
                   provenance=provenance())
        atomic_write_json(args.json, _jsonable(res))
    ev.close()
    return 0 if np.isfinite(res["mean_adapted"]) else 1


# ------------------------------------------------------------------------------------------------
# plot


def run_plot(args) -> int:
    """Entry point of `macaw-fast plot`."""
    from .plot import plot_runs

    out = args.output or os.path.join(args.runs[0], "curves.png")
    print(plot_runs(args.runs, out, per_task=not args.mean_only))
    return 0


# ------------------------------------------------------------------------------------------------
# reproduce


def _json_object_file(path: str, flag: str) -> dict:
    try:
        with open(path) as f:
            d = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{flag} {path}: file not found") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{flag} {path}: not readable as JSON ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{flag} {path}: expected a JSON object, got {type(d).__name__}")
    return d


def _config_file(path: str, flag: str) -> dict:
    """A JSON file {"macaw": {...}, "train": {...}}; anything else is an error naming the key."""
    d = _json_object_file(path, flag)
    unknown = sorted(set(d) - {"macaw", "train"})
    if unknown:
        raise ValueError(f"{flag} {path}: unknown top-level key(s) {unknown}; expected only 'macaw' and 'train'")
    for k in ("macaw", "train"):
        if k in d and not isinstance(d[k], dict):
            raise ValueError(f"{flag} {path}: '{k}' must be a JSON object of fields, got {type(d[k]).__name__}")
    return d


def run_reproduce(args) -> int:
    """Entry point of `macaw-fast reproduce`."""
    from .reproduce import ReproduceConfig, Reproduction, format_plan, merge_summary, oversubscription

    collect_over = _json_object_file(args.collect_config, "--collect-config") if args.collect_config else {}
    train_file = _config_file(args.train_config, "--train-config") if args.train_config else {}
    cfg = ReproduceConfig(family=args.family, seeds=list(args.seeds), algos=list(args.algos), steps=args.steps,
                          collect_steps=args.collect_steps, collect_seed=args.collect_seed,
                          collect_overrides=collect_over, buffer_skip=args.buffer_skip, presets=list(args.preset),
                          macaw_overrides=train_file.get("macaw", {}), train_overrides=train_file.get("train", {}),
                          eval_interval=args.eval_interval, eval_batches=args.eval_batches,
                          eval_rollouts=args.eval_rollouts, final_batches=args.final_batches,
                          final_rollouts=args.final_rollouts, ft_policy_lrs=list(args.ft_policy_lrs),
                          ft_value_lrs=list(args.ft_value_lrs), ft_more_steps=args.ft_more_steps,
                          tune_tasks=args.tune_tasks, threads=args.threads,
                          collect_threads=args.collect_threads, jobs=args.jobs, progress=not args.no_progress)
    try:
        rep = Reproduction(args.out, cfg)
    except ValueError as e:     # name the file behind a --collect-config / --train-config error
        for flag, path in (("--collect-config", args.collect_config), ("--train-config", args.train_config)):
            if path and str(e).startswith(flag + ": "):
                raise ValueError(f"{flag} {path}: {str(e)[len(flag) + 2:]}") from None
        raise
    rep.check_directory()
    if args.dry_run:
        runs = f"{cfg.jobs} training runs at a time, " if cfg.jobs > 1 else ""
        print(f"macaw-fast reproduce {cfg.family} --out {rep.dir}: plan (estimates from rates measured now on "
              f"this machine, {runs}{torch_threads(cfg)} thread(s) each)")
        print(format_plan(rep.plan(), cfg.jobs, oversubscription(cfg)))
        return 0
    import shlex

    from .._procs import JobFailed

    command = "macaw-fast " + shlex.join(getattr(args, "argv", None) or ["reproduce", cfg.family, "--out", args.out])
    try:
        entry = rep.run(command)
    except JobFailed as e:
        print(f"macaw-fast reproduce: error: {e}; rerun the same command to resume", file=sys.stderr)
        return 1
    if args.summary:
        merge_summary(os.path.join(rep.dir, "results", "summary.json"), args.summary)
    agg = entry.get("aggregate", {}).get("normalised_adapted")
    line = (f"{cfg.family}: adapted {sum(entry['adapted']) / len(entry['adapted']):.1f}, unadapted "
            f"{sum(entry['unadapted']) / len(entry['unadapted']):.1f} (mean over {len(cfg.seeds)} seeds)")
    if agg:
        line += f"; normalised adapted IQM {agg['iqm']:.2f} [{agg['iqm_ci'][0]:.2f}, {agg['iqm_ci'][1]:.2f}]"
    print(line)
    print(f"results: {os.path.join(rep.dir, 'results')}")
    return 0


def torch_threads(cfg) -> int:
    """Torch threads of each training run of a reproduction."""
    import torch

    from .reproduce import training_threads

    return training_threads(cfg) or torch.get_num_threads()


def _register_reproduce(sub) -> None:
    from ..envs.tasks import FAMILY_NAMES

    r = sub.add_parser(
        "reproduce", help="the whole pipeline on one benchmark: collect, subsample, train seeds, evaluate, results",
        description="Reproduce MACAW on one of the paper's benchmarks: collect data with batched SAC, subsample it "
                    "as the paper's loader did, train every seed, evaluate the final checkpoints, write "
                    "OUT/results (summary.json, table.md with IQM and 95 % bootstrap CIs, curves.png). Run the "
                    "same command again to resume after any interruption; finished and verified stages are "
                    "skipped, corrupt ones redone. See docs/reproduce.md.")
    pos = int_at_least(1)
    nonneg = int_at_least(0)
    r.add_argument("family", choices=FAMILY_NAMES, metavar="FAMILY", help=f"task family: {', '.join(FAMILY_NAMES)}")
    r.add_argument("--out", required=True, help="directory of this reproduction (created; keep it outside the repo)")
    r.add_argument("--seeds", type=nonneg, nargs="+", default=[0, 1, 2], metavar="S", help="training seeds (default: 0 1 2)")
    r.add_argument("--algos", nargs="+", default=["macaw"], choices=ALGOS, metavar="ALGO",
                   help=f"algorithms trained and evaluated on the same data: {', '.join(ALGOS)} (default: macaw)")
    r.add_argument("--steps", type=pos, default=20_000, help="meta-steps per seed (default: 20000)")
    r.add_argument("--collect-steps", type=pos, default=None,
                   help="SAC env steps per task (default: the family's, see docs/collect.md)")
    r.add_argument("--collect-seed", type=nonneg, default=0, help="seed of the data collection (default: 0)")
    r.add_argument("--collect-config", metavar="JSON",
                   help="JSON object of other collection settings (width, utd, warmup, batch_size, ...)")
    r.add_argument("--buffer-skip", type=pos, default=7, help="train on every k-th stored row (default: 7, the paper's)")
    r.add_argument("--preset", action="append", default=[], metavar="NAME",
                   help="extra training preset after the family's (repeatable); see train --list-presets")
    r.add_argument("--train-config", metavar="JSON", help='JSON {"macaw": {...}, "train": {...}} of training overrides')
    r.add_argument("--eval-interval", type=pos, default=1000, help="meta-steps between evaluations (default: 1000)")
    r.add_argument("--eval-batches", type=pos, default=4,
                   help="adaptation batches per test task per evaluation during training (default: 4)")
    r.add_argument("--eval-rollouts", type=pos, default=2, help="rollouts per adaptation batch during training (default: 2)")
    r.add_argument("--final-batches", type=pos, default=10,
                   help="adaptation batches per test task in the final evaluation (default: 10)")
    r.add_argument("--final-rollouts", type=pos, default=3,
                   help="rollouts per adaptation batch in the final evaluation (default: 3)")
    r.add_argument("--ft-policy-lrs", type=positive_float, nargs="+", default=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
                   metavar="X", help="mt_ft: policy fine-tuning step sizes tried on training tasks (x every "
                                     "--ft-value-lrs); the best pair is used on the test tasks (default: 1e-4 3e-4 ... 1e-1)")
    r.add_argument("--ft-value-lrs", type=positive_float, nargs="+", default=[1e-6, 1e-5, 1e-4], metavar="X",
                   help="mt_ft: value-function fine-tuning step sizes tried (default: 1e-6 1e-5 1e-4)")
    r.add_argument("--ft-more-steps", type=nonneg, default=20, metavar="N",
                   help="mt_ft: fine-tuning steps of its second row, mt_ft_kN (0 = none; default: 20)")
    r.add_argument("--tune-tasks", type=pos, default=5, metavar="N",
                   help="mt_ft: training tasks the step size is tuned on (default: 5)")
    r.add_argument("--threads", type=nonneg, default=0, help="torch threads for training (default: 0 = torch's default)")
    r.add_argument("--collect-threads", type=pos, default=1, help="torch threads for the SAC updates (default: 1)")
    r.add_argument("--jobs", type=pos, default=1, metavar="N",
                   help="training runs at once, one process each (default: 1; with --threads 0 each gets "
                        "cores/N threads); the plan's total counts them so")
    r.add_argument("--summary", metavar="PATH", help="also merge the results into this summary.json (e.g. the repo's results/summary.json)")
    r.add_argument("--dry-run", action="store_true", help="print the plan, each stage's status and estimated time; run nothing")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.set_defaults(func=run_reproduce)


def register(sub) -> None:
    """Add the train, eval, plot and reproduce sub-commands."""
    _register_reproduce(sub)
    p = sub.add_parser("train", help="meta-train MACAW on an offline dataset",
                       description="Meta-train MACAW. Defaults are the paper's (docs/algorithm.md §4); presets and "
                                   "--field VALUE override them.")
    p.add_argument("--data", help="dataset directory (macaw-fast format)")
    p.add_argument("--out", help="run directory to create")
    p.add_argument("--resume", metavar="RUN", help="continue the run in RUN from checkpoints/latest.pt (bit-exact)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the run already in --out (only a run directory's own files) and start over")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="under torchrun: seconds a rank waits for its peers in any collective before failing; "
                        "must exceed rank 0's evaluation time (default: 300)")
    p.add_argument("--preset", action="append", default=[], metavar="NAME",
                   help="apply a preset (repeatable, in order); see --list-presets")
    p.add_argument("--config", action="append", dest="deprecated_config", default=[], help=argparse.SUPPRESS)
    p.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    p.add_argument("--config-file", metavar="JSON", help='a JSON file {"macaw": {...}, "train": {...}} of overrides')
    p.add_argument("--seeds", type=int, nargs="+", metavar="N",
                   help="train several seeds into RUN/seed_N (in-process or parallel processes, chosen by measurement)")
    add_config_arguments(p)
    p.set_defaults(func=run_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint (ours or the paper's archive_*.pt) on test tasks")
    e.add_argument("checkpoint", help="checkpoint file, run directory (uses its latest.pt), or a paper archive_*.pt")
    e.add_argument("--data", help="dataset (default: the one the run trained on; required for paper archives)")
    pos, nonneg = int_at_least(1), int_at_least(0)
    e.add_argument("--rollouts", "--eval-rollouts", "--episodes", dest="episodes", type=pos, default=3, metavar="N",
                   help="mean-action rollouts per adaptation batch and task (default: 3)")
    e.add_argument("--batches", "--eval-batches", dest="batches", type=pos, default=3, metavar="N",
                   help="adaptation batches per task (default: 3)")
    e.add_argument("--batch-size", type=pos, default=256, help="rows per adaptation batch (default: 256)")
    e.add_argument("--tasks", type=task_list, nargs="+", metavar="INDICES",
                   help="dataset task indices to evaluate, e.g. '2 7' or '2,7' or '0-4' (default: the test split)")
    e.add_argument("--random-episodes", type=nonneg, default=10,
                   help="random-policy episodes per task for the normalised score, seeded by the task alone "
                        "(the same reference for every run on the data); 0 = no normalised score (default: 10)")
    e.add_argument("--seed", type=nonneg, default=0, help="seed of the evaluation draws (default: 0)")
    e.add_argument("--backend", choices=BACKEND_NAMES, default="auto",
                   help="how adaptation runs, same results (docs/algorithm.md §4): %(choices)s (default: auto)")
    e.add_argument("--fused", dest="backend", action="store_const", const="fused", help="same as --backend fused")
    e.add_argument("--online-ft", action="store_true", help="online fine-tuning after the offline step (docs/algorithm.md §6)")
    e.add_argument("--ft-iterations", type=pos, default=500, help="online fine-tuning iterations (default: 500)")
    e.add_argument("--ft-steps", type=pos, metavar="N",
                   help="mt_ft checkpoints: SGD steps of fine-tuning on each adaptation batch (default: the run's)")
    e.add_argument("--ft-value-lr", type=positive_float, metavar="X",
                   help="mt_ft checkpoints: fine-tuning step size of the value function (default: the run's)")
    e.add_argument("--ft-policy-lr", type=positive_float, metavar="X",
                   help="mt_ft checkpoints: fine-tuning step size of the policy (default: the run's)")
    e.add_argument("--video", action="store_true", help="render one adapted rollout per task (needs a renderer + imageio)")
    e.add_argument("--video-dir", default="videos", help="where --video writes its GIFs (default: videos)")
    e.add_argument("--json", help="also write the full results to this JSON file")
    e.set_defaults(func=run_eval)

    q = sub.add_parser("plot", help="PNG learning curves of one or more runs (seeds aggregated)")
    q.add_argument("runs", nargs="+", help="run directories (a directory of seed_* runs is one curve)")
    q.add_argument("-o", "--output", help="PNG path (default: RUN/curves.png)")
    q.add_argument("--mean-only", action="store_true", help="only the mean over test tasks")
    q.set_defaults(func=run_plot)
