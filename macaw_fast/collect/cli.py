"""`macaw-fast collect`: make an offline dataset with batched per-task SAC (parses and calls)."""

from __future__ import annotations

import argparse

from .._cli_types import nonneg_int as _nonneg_int
from .._cli_types import positive_int as _positive_int
from .._cli_types import task_list as _tasks


def _utd(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 64], got {text!r}") from None
    if not (0 < v <= 64):
        raise argparse.ArgumentTypeError(f"expected a number in (0, 64], got {v}")
    return v


def run(args: argparse.Namespace) -> int:
    """Run a collection from parsed arguments; prints the dataset path and per-task final returns."""
    import os

    from .._io import read_jsonl
    from .collector import LOG, collect

    path = collect(args.family, args.out, steps_per_task=args.steps_per_task, seed=args.seed, tasks=args.tasks,
                   progress=not args.no_progress, resume=args.resume, overwrite=args.overwrite, warmup=args.warmup,
                   utd=args.utd, width=args.width, batch_size=args.batch_size, eval_interval=args.eval_interval,
                   eval_episodes=args.eval_episodes,
                   checkpoint_interval=args.checkpoint_interval, threads=args.threads, matmul=args.matmul,
                   tensorboard=not args.no_tensorboard)
    finals = [r for r in read_jsonl(os.path.join(args.out, LOG)) if r.get("final")]
    final = finals[-1] if finals else None
    print(f"dataset: {path}")
    if final:
        rets = " ".join(f"{r:.1f}" for r in final["eval_return"])
        print(f"final evaluation returns per task (mean action): {rets}")
    from .quality import collection_quality, format_quality

    summary = format_quality(collection_quality(args.out)).rsplit("\n", 1)[-1]
    print(f"data quality: {summary} (per task: macaw-fast quality {args.out})")
    return 0


def register(sub) -> None:
    """Add the ``collect`` sub-command."""
    p = sub.add_parser(
        "collect", help="make an offline dataset with batched per-task SAC",
        description="Train one SAC agent per task from scratch (all tasks of the family in one process, one "
                    "batched agent) and store each task's whole replay buffer as its offline data in "
                    "OUT/dataset. Checkpoints at intervals; --resume continues an interrupted run. Writes "
                    "OUT/log.jsonl (evaluations), OUT/tb (TensorBoard) and OUT/collect_report.png.")
    p.add_argument("--family", "--env", dest="family", required=True,
                   choices=["cheetah_dir", "cheetah_vel", "ant_dir", "walker_param"], help="task family")
    p.add_argument("--out", required=True, help="run directory (created; holds dataset/, checkpoint, logs)")
    p.add_argument("--steps-per-task", type=_positive_int, default=None,
                   help="env steps = dataset rows per task (default per family: cheetah_dir 30000, others 60000; "
                        "for Ant-Dir use 120000 with --utd 1: at the default the ants barely move; "
                        "see docs/collect.md for budgets)")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="seed of agents, RNG and envs (default 0)")
    p.add_argument("--tasks", type=_tasks, default=None,
                   help="task indices into the paper task set, e.g. '0,3' or '0-9' (default: all)")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete a previous run in OUT and start over")
    p.add_argument("--utd", type=_utd, default=None,
                   help="SAC updates per env step, 0.5 = every 2nd step (default per family: cheetah_dir 1, others 0.5)")
    p.add_argument("--width", type=_positive_int, default=None,
                   help="hidden units of actor and critics (default per family: cheetah_dir 256, others 128)")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="transitions per task per update (default 256)")
    p.add_argument("--warmup", type=_nonneg_int, default=5_000,
                   help="initial uniform-random steps before updates start (default 5000)")
    p.add_argument("--eval-interval", type=_nonneg_int, default=5_000,
                   help="env steps between evaluations, 0 = only at the end (default 5000)")
    p.add_argument("--eval-episodes", type=_positive_int, default=3,
                   help="mean-action evaluation episodes per task at each evaluation (default 3)")
    p.add_argument("--checkpoint-interval", type=_positive_int, default=5_000,
                   help="env steps between checkpoints and dataset commits (default 5000)")
    p.add_argument("--matmul", choices=["float32", "bfloat16"], default="float32",
                   help="precision of the SAC networks' hidden-layer products: bfloat16 is ~3x faster per product "
                        "on CPUs with AVX512-BF16 or AMX (docs/collect.md; default float32)")
    p.add_argument("--threads", type=_positive_int, default=1, help="torch threads (default 1; see docs/collect.md)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard logs")
    p.set_defaults(func=run)

    q = sub.add_parser(
        "quality", help="per-task quality of a collection's data (final evaluation, progress velocity, falls)",
        description="Per task of a `macaw-fast collect` run: the final evaluation (return, velocity, episode "
                    "length), the task's progress velocity over the last stored rows (along the goal for "
                    "Ant-Dir and Cheetah-Dir; with its error for Cheetah-Vel), the stored trajectories that "
                    "ended in a fall, and the stored trajectories' returns. Prints a markdown table "
                    "(docs/collect.md).")
    q.add_argument("run", help="the collection's --out directory (holds config.json, log.jsonl, dataset/)")
    q.add_argument("--split", choices=["train", "test"], default=None, help="only the tasks of this split (default: all)")
    q.add_argument("--last-rows", type=_positive_int, default=10_000,
                   help="stored rows per task (the last ones) that the progress velocity averages (default 10000)")
    q.add_argument("--json", default=None, metavar="PATH", help="also write the numbers to PATH as JSON")
    q.set_defaults(func=run_quality)


def run_quality(args: argparse.Namespace) -> int:
    """Print the quality table of a collection (and write it as JSON with --json)."""
    from .._io import atomic_write_json
    from .quality import collection_quality, format_quality

    q = collection_quality(args.run, last_rows=args.last_rows)
    print(format_quality(q, only=args.split))
    if args.json:
        atomic_write_json(args.json, q)
    return 0
