"""`macaw-fast demo`: the README's first command, end to end on a fresh machine with no download.

1. Data: a Cheetah-Dir dataset collected on the spot by batched per-task SAC
   (``macaw_fast.collect``; 30k env steps per task by default), cached under the cache directory so a
   second run skips it. ``--fast`` uses a few scripted episodes instead (seconds; a smoke test).
   Training reads every 7th row, as the paper's loader did (``macaw-fast data subsample``): a
   contiguous inner window then spans several trajectories instead of one or two.
2. Meta-training with the paper's MACAW settings (preset ``demo``), with the fused ops or the
   batched step, whichever measures faster on this machine (both are exact).
3. Evaluation on both tasks, averaged over several adaptation batches and rollouts, adapted vs
   unadapted, with the learning-curve PNG written next to the run.
"""

from __future__ import annotations

import argparse

from ._cli_types import positive_int
import dataclasses
import os
import sys
import time


def cache_dir() -> str:
    """$MACAW_FAST_CACHE, else $XDG_CACHE_HOME/macaw-fast, else ~/.cache/macaw-fast."""
    if os.environ.get("MACAW_FAST_CACHE"):
        return os.environ["MACAW_FAST_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "macaw-fast")


def _dataset(args) -> str:
    """The training data: collected (or scripted) data, subsampled by ``--buffer-skip``."""
    full = _full_dataset(args)
    if args.buffer_skip == 1:
        return full
    from .data.store import open_dataset
    from .data.subsample import subsample_dataset

    out = f"{full.rstrip(os.sep)}-skip{args.buffer_skip}"
    try:
        ds, src_ds = open_dataset(out), open_dataset(full)
        src = ds[ds.tasks[0]].manifest.get("source", {})
        if src.get("from") == os.path.abspath(full) and \
                ds.num_rows == sum(src_ds[t].num_rows // args.buffer_skip for t in ds.tasks):
            return out
    except Exception:  # noqa: BLE001 - missing, partial or stale: make it again
        pass
    return subsample_dataset(full, out, skip=args.buffer_skip, overwrite=True, progress=False).path


def _full_dataset(args) -> str:
    cache = args.cache or cache_dir()
    if args.fast:
        from .data.store import open_dataset
        from .train.scripted import make_scripted_dataset

        path = os.path.join(cache, f"demo-scripted-s{args.seed}")
        try:
            open_dataset(path)
            return path
        except Exception:  # noqa: BLE001 - missing or partial: make it again
            return make_scripted_dataset(path, "cheetah_dir", episodes_per_task=4, episode_steps=100,
                                         seed=args.seed, overwrite=True)
    from .collect import collect

    out = os.path.join(cache, f"demo-cheetah_dir-sac{args.sac_steps}-s{args.seed}")
    print(f"[1/3] data: batched SAC on Cheetah-Dir, {args.sac_steps} env steps per task -> {out} "
          "(cached: a second run skips this)", file=sys.stderr)
    # A fresh machine is the demo's target: use up to 2 threads for the SAC updates (1.6x faster
    # than 1 at width 256 on idle cores; docs/collect.md). threads is a resumable setting.
    threads = min(2, os.cpu_count() or 1)
    return collect("cheetah_dir", out, steps_per_task=args.sac_steps, seed=args.seed, progress=True,
                   threads=threads)


def run(args: argparse.Namespace) -> int:
    """Collect (or reuse) data, meta-train (fused ops or the batched step, whichever measures faster
    here), evaluate, plot, print a per-task summary."""
    import torch

    from .train.runs import measure_step_time
    from .train.config import resolve_config
    from .train.loop import RunSetup, load_checkpoint, train
    from .train.plot import plot_runs

    t0 = time.perf_counter()
    data = _dataset(args)
    t_data = time.perf_counter() - t0
    train_over = {"seed": args.seed, "steps": args.steps}
    mac_over = {}
    if args.fast:
        train_over.update(steps=args.steps if args.steps_given else 20, batch_size=32, eval_interval=10,
                          latest_interval=10, eval_batches=2, eval_rollouts=1, random_episodes=1, log_interval=5)
        mac_over.update(net_width=32, wlinear_dim=16)
    mc, tc = resolve_config(["demo"], mac_over, train_over)
    if not args.fast:
        tc.eval_interval = max(tc.eval_interval, args.steps // 5)
    # Threads: tiny per-step work, so on a busy CPU one thread can beat two; measure and pick.
    cores = os.cpu_count() or 1
    t1 = measure_step_time(data, mc, tc, 1, steps=2)
    tn = measure_step_time(data, mc, tc, cores, steps=2) if cores > 1 else t1
    tc.threads = 1 if t1 <= tn else cores
    t_step = min(t1, tn)
    # The fused ops pay off where they run as Triton kernels (a GPU); on a CPU their torch twins are
    # slower than the batched step. Both are exact, so measure and keep the faster one.
    if tc.fused:
        plain = dataclasses.replace(tc, fused=False)
        t_plain = measure_step_time(data, mc, plain, tc.threads, steps=2)
        if t_plain < t_step:
            tc.fused, t_step = False, t_plain
    out = args.out
    if os.path.exists(os.path.join(out, "config.json")):
        out = f"{out.rstrip('/')}-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"[2/3] meta-training: {tc.steps} steps, {'fused ops' if tc.fused else 'batched step'}, "
          f"{tc.threads} thread(s) ({1000 * t_step:.0f} ms/step measured, the faster of fused and batched) "
          f"-> {out}", file=sys.stderr)
    t1_ = time.perf_counter()
    train(data, out, mc, tc, presets=["demo"])
    t_train = time.perf_counter() - t1_

    print("[3/3] evaluation", file=sys.stderr)
    from .train.runs import learner_from_state_dict

    st = load_checkpoint(os.path.join(out, "checkpoints", "latest.pt"))
    learner = learner_from_state_dict(st["learner"], fused=tc.fused)
    setup = RunSetup(data, mc, tc)
    ev = setup.evaluator()
    torch.set_num_threads(tc.threads)
    res = ev.evaluate(learner, step=10**9, n_batches=args.eval_batches, n_rollouts=args.eval_rollouts,
                      random_episodes=tc.random_episodes)
    png = plot_runs([out], os.path.join(out, "curves.png"))
    ev.close()
    names = {"0": "forward (+1)", "1": "backward (-1)"}
    print(f"\nmacaw-fast demo: Cheetah-Dir, {tc.steps} meta-steps; returns averaged over "
          f"{args.eval_batches} adaptation batches x {args.eval_rollouts} rollouts per task")
    print(f"  {'task':<15s} {'adapted':>9s} {'unadapted':>10s} {'gain':>8s}")
    for t in ev.tasks:
        a, u = res["adapted"][t.id], res["unadapted"][t.id]
        print(f"  {names.get(t.id, t.id):<15s} {a:9.1f} {u:10.1f} {a - u:+8.1f}")
    a, u = res["mean_adapted"], res["mean_unadapted"]
    print(f"  {'mean':<15s} {a:9.1f} {u:10.1f} {a - u:+8.1f}")
    verdict = "adapted beats unadapted" if a > u else "adapted does NOT beat unadapted"
    print(f"  -> {verdict} on average. Data {t_data:.0f} s, training+evals {t_train:.0f} s, "
          f"total {time.perf_counter() - t0:.0f} s.")
    print(f"  curves: {png}\n  run: {out} (macaw-fast eval {out}; macaw-fast plot {out})")
    return 0


def register(sub) -> None:
    """Add the `demo` sub-command."""
    p = sub.add_parser("demo", help="end-to-end demo: collect Cheetah-Dir data, meta-train, evaluate, plot")
    p.add_argument("--fast", action="store_true", help="seconds-long smoke run (scripted data, tiny networks)")
    p.add_argument("--steps", type=positive_int, default=None, help="meta-steps (default: 3000; 20 with --fast)")
    p.add_argument("--sac-steps", type=positive_int, default=30_000, help="SAC env steps per task for the data (default: 30000)")
    p.add_argument("--buffer-skip", type=int, default=7,
                   help="train on every k-th stored row, as the paper did (default 7; 1 = all rows)")
    p.add_argument("--eval-batches", type=positive_int, default=5,
                   help="adaptation batches per task in the final evaluation (default: 5)")
    p.add_argument("--eval-rollouts", type=positive_int, default=3,
                   help="rollouts per adaptation batch in the final evaluation (default: 3)")
    p.add_argument("--out", default="macaw-demo-run",
                   help="run directory (default: macaw-demo-run; a new one with a time stamp is made if it exists)")
    p.add_argument("--cache", default=None, help="cache directory for the data (default: ~/.cache/macaw-fast)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, training and evaluation (default: 0)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    if args.buffer_skip < 1:
        print(f"macaw-fast demo: error: --buffer-skip: expected an integer >= 1, got {args.buffer_skip}", file=sys.stderr)
        return 2
    args.steps_given = args.steps is not None
    if args.steps is None:
        args.steps = 3000
    return run(args)
