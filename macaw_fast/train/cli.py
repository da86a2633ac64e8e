"""`macaw-fast train`, `macaw-fast eval` and `macaw-fast plot`: argument parsing, then calls into the package."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

from .._cli_types import flat_tasks, int_at_least, task_list
from .config import add_config_arguments, list_presets, overrides_from_args, resolve_config


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
    return resolve_config(args.preset, mac, tr)


def measure_step_time(data: str, mc, tc, threads: int, steps: int = 3) -> float:
    """Seconds per meta-step of this run's configuration with ``threads`` torch threads (after one warm-up)."""
    import torch

    from .loop import RunSetup, _batches, make_learner

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        setup = RunSetup(data, mc, tc)
        inner_s, outer_s = setup.samplers()
        learner = make_learner(setup)
        it = _batches(setup, inner_s, outer_s, 0)
        times = []
        for k in range(steps + 1):
            inner, outer = next(it)
            inner, outer = inner.to(learner.device, learner.dtype), outer.to(learner.device, learner.dtype)
            t0 = time.perf_counter()
            learner.meta_step(inner, outer)
            if k:
                times.append(time.perf_counter() - t0)
        it.close()
        return min(times)
    finally:
        torch.set_num_threads(old)


def choose_seed_strategy(data: str, mc, tc, n_seeds: int, cores: int | None = None) -> dict:
    """Measure, then pick 'parallel' (one process per seed, 1 thread each) or 'sequential' (in-process, all threads).

    Sequential takes about n_seeds * t(all cores); parallel with P = min(cores, n_seeds) processes
    takes about ceil(n_seeds / P) * t(1 thread) when the processes do not slow each other down.
    """
    cores = cores or os.cpu_count() or 1
    t1 = measure_step_time(data, mc, tc, 1)
    tn = measure_step_time(data, mc, tc, cores) if cores > 1 else t1
    P = max(1, min(cores, n_seeds))
    seq, par = n_seeds * tn, math.ceil(n_seeds / P) * t1
    return {"strategy": "parallel" if P > 1 and par < seq else "sequential", "cores": cores,
            "step_s_1_thread": t1, "step_s_all_threads": tn, "processes": P,
            "estimated_s_per_step_all_seeds": {"sequential": seq, "parallel": par}}


def resume_configs(args) -> tuple:
    """(run config.json, MacawConfig, TrainConfig) of the run in ``args.resume``; only --steps and
    run-time options (progress, threads, prefetch, tensorboard) may be overridden."""
    cfg_path = os.path.join(args.resume, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{args.resume}: not a run directory (no config.json)")
    with open(cfg_path) as f:
        cfg = json.load(f)
    mac, tr = overrides_from_args(args)
    extra = {k: v for k, v in tr.items() if k not in ("steps", "progress", "tensorboard", "threads", "prefetch")}
    if mac or extra:
        raise ValueError(f"--resume continues a run with its own configuration; only --steps, --progress, "
                         f"--threads, --prefetch and --tensorboard may be given (got {sorted(mac) + sorted(extra)})")
    mc, tc = resolve_config([], cfg["macaw"], {**cfg["train"], **tr})
    return cfg, mc, tc


def _under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def run_train(args) -> int:
    """Entry point of `macaw-fast train` (data-parallel when launched by torchrun with >1 rank)."""
    if not _under_torchrun():
        return _run_train(args)
    from ..distributed import leave_group
    try:
        rc = _run_train(args)
    except BaseException:
        leave_group(1)          # destroy the group before the error propagates and the process exits
        raise
    return leave_group(rc)


def _run_train(args) -> int:
    if getattr(args, "deprecated_config", None):
        print("macaw-fast train: --config NAME is deprecated (it looked like --config-file); use --preset NAME",
              file=sys.stderr)
        args.preset = list(args.preset) + list(args.deprecated_config)
    if _under_torchrun():
        from ..distributed import train_distributed as train
    else:
        from .loop import train

    if args.list_presets:
        for name, desc in list_presets().items():
            print(f"{name:14s} {desc}")
        return 0
    if args.resume:
        cfg, mc, tc = resume_configs(args)
        res = train(cfg["data"], args.resume, mc, tc, presets=cfg.get("presets"), resume=True)
        _print_eval(res)
        return 0
    if not args.data:
        raise ValueError("--data DATASET is required (or --resume RUN)")
    if not args.out:
        raise ValueError("--out RUN is required")
    mc, tc = _configs(args)
    if args.seeds:
        if _under_torchrun():
            raise ValueError("--seeds cannot be combined with torchrun: launch one torchrun job per seed")
        return _run_seeds(args, mc, tc)
    res = train(args.data, args.out, mc, tc, presets=args.preset)
    _print_eval(res)
    return 0


def _run_seeds(args, mc, tc) -> int:
    from .loop import RunSetup, atomic_write_json, train

    RunSetup(args.data, mc, tc)  # validate before creating anything
    out = os.path.abspath(args.out)
    for s in args.seeds:
        if os.path.exists(os.path.join(out, f"seed_{s}", "config.json")):
            raise FileExistsError(f"{out}/seed_{s}: a run already exists here (resume it with --resume {out}/seed_{s})")
    os.makedirs(out, exist_ok=True)
    decision = choose_seed_strategy(args.data, mc, tc, len(args.seeds))
    atomic_write_json(os.path.join(out, "seeds_strategy.json"), decision)
    print(f"seeds {args.seeds}: {decision['strategy']} (1 thread {1000 * decision['step_s_1_thread']:.1f} ms/step, "
          f"{decision['cores']} threads {1000 * decision['step_s_all_threads']:.1f} ms/step)", file=sys.stderr)
    if decision["strategy"] == "sequential":
        for s in args.seeds:
            tc_s = type(tc).from_dict({**tc.to_dict(), "seed": s})
            _print_eval(train(args.data, os.path.join(out, f"seed_{s}"), mc, tc_s, presets=args.preset), f"seed {s}: ")
        return 0
    cfg_file = os.path.join(out, "seeds_config.json")
    atomic_write_json(cfg_file, {"macaw": mc.to_dict(), "train": {**tc.to_dict(), "threads": 1, "progress": False}})
    procs: list = []
    pending = list(args.seeds)
    rc = 0
    while pending or procs:
        while pending and len(procs) < decision["processes"]:
            s = pending.pop(0)
            cmd = [sys.executable, "-m", "macaw_fast", "train", "--data", args.data, "--out",
                   os.path.join(out, f"seed_{s}"), "--config-file", cfg_file, "--seed", str(s)]
            procs.append((s, subprocess.Popen(cmd)))
        time.sleep(0.5)
        for s, p in list(procs):
            if p.poll() is not None:
                procs.remove((s, p))
                print(f"seed {s}: finished with exit status {p.returncode}", file=sys.stderr)
                rc = rc or p.returncode
    return rc


def _print_eval(res: dict, prefix: str = "") -> None:
    if not res:
        return
    print(f"{prefix}step {res['step']}: mean adapted return {res['mean_adapted']:.2f}, "
          f"unadapted {res.get('mean_unadapted', float('nan')):.2f}")


# ------------------------------------------------------------------------------------------------
# eval


def load_any_checkpoint(path: str, data: str | None, fused: bool = False, with_step: bool = False):
    """(learner, dataset path, family or None): a macaw-fast checkpoint or the paper's archive_*.pt.
    With ``with_step`` also the checkpoint's step (None for a paper archive)."""
    import torch

    from ..macaw import MetaLearner
    from .loop import CHECKPOINT_FORMAT, load_checkpoint

    if os.path.isdir(path):
        path = os.path.join(path, "checkpoints", "latest.pt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: could not be read as a checkpoint ({type(e).__name__}: {e})") from None
    if isinstance(raw, dict) and raw.get("format") == CHECKPOINT_FORMAT:
        st = load_checkpoint(path)
        learner = MetaLearner.from_state_dict(st["learner"], fused=fused)
        out = learner, data or st["data"], st["family"]
        return out + (int(st["step"]),) if with_step else out
    if not data:
        raise ValueError(f"{path}: a paper archive needs --data DATASET (its test tasks and n_train)")
    from ..data.store import open_dataset
    from ..paper import load_archive

    ds = open_dataset(data)
    out = load_archive(raw, len(ds.train_tasks), fused=fused), data, None
    return out + (None,) if with_step else out


def run_eval(args) -> int:
    """Entry point of `macaw-fast eval`."""
    import numpy as np

    from ..data.store import open_dataset
    from .evaluate import Evaluator, family_of, online_finetune

    learner, data, fam, step = load_any_checkpoint(args.checkpoint, args.data, args.fused, with_step=True)
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
        _videos(ev, learner, args)
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


def _videos(ev, learner, args) -> None:
    """Render one adapted rollout per task to VIDEO_DIR/task_<id>.gif where a renderer is available."""
    import numpy as np
    import torch

    from ..envs import make

    out = args.video_dir
    try:
        import imageio.v2 as imageio
    except ImportError:
        print("--video: needs the 'imageio' package (pip install imageio); skipped", file=sys.stderr)
        return
    adapted = learner.adapt(ev.adaptation_batch(0, 1, learner.dtype, learner.device))
    os.makedirs(out, exist_ok=True)
    for k, t in enumerate(ev.tasks):
        try:
            env = make(ev.family, t.task, render_mode="rgb_array", disable_env_checker=True)
            o, _ = env.reset(seed=args.seed)
            frames = [env.render()]
        except Exception as e:  # noqa: BLE001 - no OpenGL context etc.
            print(f"--video: no renderer available ({type(e).__name__}: {e}); skipped "
                  "(try MUJOCO_GL=egl or MUJOCO_GL=osmesa)", file=sys.stderr)
            return
        one = [p[k:k + 1].detach() for p in adapted.policy]
        for _ in range(200):
            with torch.no_grad():
                a = learner.act(torch.as_tensor(o, dtype=learner.dtype).view(1, 1, -1),
                                type(adapted)(value=[], policy=one))[0, 0].numpy()
            o, _, term, trunc, _ = env.step(np.clip(a, env.action_space.low, env.action_space.high))
            frames.append(env.render())
            if term or trunc:
                break
        path = os.path.join(out, f"task_{t.id}.gif")
        imageio.mimsave(path, frames, duration=0.05)
        env.close()
        print(f"video: {path}")


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
    from .reproduce import ReproduceConfig, Reproduction, format_plan, merge_summary

    collect_over = _json_object_file(args.collect_config, "--collect-config") if args.collect_config else {}
    train_file = _config_file(args.train_config, "--train-config") if args.train_config else {}
    cfg = ReproduceConfig(family=args.family, seeds=list(args.seeds), steps=args.steps,
                          collect_steps=args.collect_steps, collect_seed=args.collect_seed,
                          collect_overrides=collect_over, buffer_skip=args.buffer_skip, presets=list(args.preset),
                          macaw_overrides=train_file.get("macaw", {}), train_overrides=train_file.get("train", {}),
                          eval_interval=args.eval_interval, eval_batches=args.eval_batches,
                          eval_rollouts=args.eval_rollouts, final_batches=args.final_batches,
                          final_rollouts=args.final_rollouts, threads=args.threads,
                          collect_threads=args.collect_threads, progress=not args.no_progress)
    rep = Reproduction(args.out, cfg)
    rep.check_directory()
    if args.dry_run:
        print(f"macaw-fast reproduce {cfg.family} --out {rep.dir}: plan (estimates from rates measured now on "
              f"this machine, {torch_threads(cfg)} thread(s) for training)")
        print(format_plan(rep.plan()))
        return 0
    import shlex

    command = "macaw-fast " + shlex.join(getattr(args, "argv", None) or ["reproduce", cfg.family, "--out", args.out])
    entry = rep.run(command)
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
    import torch

    return cfg.threads or torch.get_num_threads()


def _register_reproduce(sub) -> None:
    from ..envs.tasks import FAMILY_NAMES

    r = sub.add_parser(
        "reproduce", help="the whole pipeline on one benchmark: collect, subsample, train seeds, evaluate, results",
        description="Reproduce MACAW on one of the paper's benchmarks: collect data with batched SAC, subsample it "
                    "as the paper's loader did, train every seed, evaluate the final checkpoints, write "
                    "OUT/results (summary.json, table.md with IQM and 95 %% bootstrap CIs, curves.png). Run the "
                    "same command again to resume after any interruption; finished and verified stages are "
                    "skipped, corrupt ones redone. See docs/reproduce.md.")
    pos = int_at_least(1)
    nonneg = int_at_least(0)
    r.add_argument("family", choices=FAMILY_NAMES, metavar="FAMILY", help=f"task family: {', '.join(FAMILY_NAMES)}")
    r.add_argument("--out", required=True, help="directory of this reproduction (created; keep it outside the repo)")
    r.add_argument("--seeds", type=nonneg, nargs="+", default=[0, 1, 2], metavar="S", help="training seeds (default: 0 1 2)")
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
    r.add_argument("--threads", type=nonneg, default=0, help="torch threads for training (default: 0 = torch's default)")
    r.add_argument("--collect-threads", type=pos, default=1, help="torch threads for the SAC updates (default: 1)")
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
    e.add_argument("--rollouts", "--eval-rollouts", "--episodes", dest="episodes", type=pos, default=3,
                   help="mean-action rollouts per adaptation batch and task (default: 3)")
    e.add_argument("--batches", "--eval-batches", dest="batches", type=pos, default=3,
                   help="adaptation batches per task (default: 3)")
    e.add_argument("--batch-size", type=pos, default=256, help="rows per adaptation batch (default: 256)")
    e.add_argument("--tasks", type=task_list, nargs="+", metavar="INDICES",
                   help="dataset task indices to evaluate, e.g. '2 7' or '2,7' or '0-4' (default: the test split)")
    e.add_argument("--random-episodes", type=nonneg, default=3,
                   help="random-policy episodes per task for the normalised score; 0 = no normalised score (default: 3)")
    e.add_argument("--seed", type=nonneg, default=0, help="seed of the evaluation draws (default: 0)")
    e.add_argument("--fused", action="store_true", help="use the fused ops")
    e.add_argument("--online-ft", action="store_true", help="online fine-tuning after the offline step (docs/algorithm.md §6)")
    e.add_argument("--ft-iterations", type=pos, default=500, help="online fine-tuning iterations (default: 500)")
    e.add_argument("--video", action="store_true", help="render one adapted rollout per task (needs a renderer + imageio)")
    e.add_argument("--video-dir", default="videos", help="where --video writes its GIFs (default: videos)")
    e.add_argument("--json", help="also write the full results to this JSON file")
    e.set_defaults(func=run_eval)

    q = sub.add_parser("plot", help="PNG learning curves of one or more runs (seeds aggregated)")
    q.add_argument("runs", nargs="+", help="run directories (a directory of seed_* runs is one curve)")
    q.add_argument("-o", "--output", help="PNG path (default: RUN/curves.png)")
    q.add_argument("--mean-only", action="store_true", help="only the mean over test tasks")
    q.set_defaults(func=run_plot)
