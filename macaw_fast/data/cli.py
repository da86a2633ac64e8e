"""`macaw-fast data ...`: verify, info, import-paper, subsample, export-minari, import-minari.

Only argument parsing and printing lives here; the work is in :mod:`.store`, :mod:`.paper` and
:mod:`.minari_io` (imported lazily so ``macaw-fast --help`` stays fast).
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from .._cli_types import task_list


def _errors_reported(fn):
    """Report a missing optional dependency or an I/O failure (e.g. a full disk) as one clear line."""
    import functools

    @functools.wraps(fn)
    def wrapper(args):
        try:
            return fn(args)
        except (FileNotFoundError, FileExistsError):
            raise  # the top-level CLI reports these
        except (ImportError, OSError) as e:
            print(f"macaw-fast data {args.data_command}: error: {e}", file=sys.stderr)
            return 1

    return wrapper


def task_summary(ds) -> list[dict]:
    """Per task: id, rows, trajectories (None if unknown) and min/mean/max trajectory return."""
    out = []
    for t in ds.tasks:
        td = ds[t]
        rets = td.episode_returns or []
        lengths = td.episode_lengths
        out.append({"task": t, "rows": td.num_rows,
                    "trajectories": None if lengths is None else len(lengths),
                    "returns": rets,
                    "min": min(rets) if rets else None, "mean": sum(rets) / len(rets) if rets else None,
                    "max": max(rets) if rets else None, "params": td.params})
    return out


def plot_returns(ds, summary: list[dict], path: str) -> None:
    """Write a PNG with one histogram of trajectory returns per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(summary)
    cols = min(n, max(1, math.ceil(math.sqrt(n))))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.0 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, s in zip(axes.flat, summary):
        if s["returns"]:
            ax.hist(s["returns"], bins=min(30, max(5, len(s["returns"]) // 5)))
        else:
            ax.text(0.5, 0.5, "no returns", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"task {s['task']}: {_params_label(s['params'])}", fontsize=7)
        ax.set_xlabel("trajectory return", fontsize=6)
        ax.set_ylabel("trajectories", fontsize=6)
        ax.tick_params(labelsize=6)
    fig.suptitle(f"{os.path.basename(os.path.abspath(ds.path))} ({ds.env_id}): trajectory returns", fontsize=9)
    fig.tight_layout()
    from .._io import save_figure

    save_figure(fig, path, dpi=100)


def _params_label(params: dict) -> str:
    """Task parameters in a few characters: scalars as name=value, arrays as name[size]."""
    parts = []
    for k, v in params.items():
        if isinstance(v, (int, float)):
            parts.append(f"{k}={v:.3g}")
        else:
            parts.append(f"{k}[{len(v) if hasattr(v, '__len__') else '?'}]")
    text = ", ".join(parts)
    return text if len(text) <= 40 else text[:37] + "..."


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


@_errors_reported
def cmd_info(args) -> int:
    """Print a dataset's tasks, rows, trajectories and returns; write the returns histogram."""
    from .store import open_dataset

    ds = open_dataset(args.dataset)
    summary = task_summary(ds)
    print(f"{ds.path}: env {ds.env_id}, obs_dim {ds.obs_dim}, act_dim {ds.act_dim}, gamma {ds.gamma}, "
          f"{len(ds)} tasks, {ds.num_rows} rows, generation {ds.generation}")
    print("split: " + "; ".join(f"{k} {len(v)} ({', '.join(v)})" for k, v in ds.split.items()))
    print(f"{'task':>8} {'rows':>10} {'trajs':>7} {'ret min':>10} {'ret mean':>10} {'ret max':>10}  params")
    for s in summary:
        params = ", ".join(f"{k}={v if not isinstance(v, list) else '[' + str(len(v)) + ']'}" for k, v in s["params"].items())
        trajs = "?" if s["trajectories"] is None else str(s["trajectories"])
        print(f"{s['task']:>8} {s['rows']:>10} {trajs:>7} {_fmt(s['min']):>10} {_fmt(s['mean']):>10} "
              f"{_fmt(s['max']):>10}  {params}")
    if not args.no_plot:
        d = os.path.abspath(ds.path)
        path = args.plot or os.path.join(os.path.dirname(d), f"{os.path.basename(d)}_returns.png")
        plot_returns(ds, summary, path)
        print(f"histogram of trajectory returns per task: {path}")
    return 0


@_errors_reported
def cmd_verify(args) -> int:
    """Check every manifest, file size, SHA-256 and value of a dataset."""
    from .store import verify_dataset

    ds = verify_dataset(args.dataset, progress=not args.quiet)
    print(f"{ds.path}: OK ({len(ds)} tasks, {ds.num_rows} rows, generation {ds.generation}, all SHA-256 match)")
    return 0


@_errors_reported
def cmd_import_paper(args) -> int:
    """Import the paper's HDF5 buffers."""
    from .paper import import_paper

    tasks = args.tasks
    ds = import_paper(args.src, args.family, args.out, buffer_skip=args.buffer_skip, tasks=tasks,
                      overwrite=args.overwrite, progress=not args.quiet)
    print(f"imported {len(ds)} tasks ({ds.num_rows} rows, buffer_skip {args.buffer_skip}) into {ds.path}")
    return 0


@_errors_reported
def cmd_subsample(args) -> int:
    """Keep every k-th row of each task (the paper loader's buffer_skip) in a new dataset."""
    from .subsample import subsample_dataset

    ds = subsample_dataset(args.dataset, args.out, skip=args.skip, overwrite=args.overwrite,
                           progress=not args.quiet)
    print(f"subsampled {len(ds)} tasks (skip {args.skip}) into {ds.path}: {ds.num_rows} rows")
    return 0


@_errors_reported
def cmd_export_minari(args) -> int:
    """Export a dataset to Minari, one dataset per task under a namespace."""
    from .minari_io import export_minari

    bounds = None if args.action_bounds is None else tuple(float(x) for x in args.action_bounds.split(","))
    ids = export_minari(args.dataset, args.namespace, root=args.root, action_bounds=bounds,
                        overwrite=args.overwrite, progress=not args.quiet)
    print(f"exported {len(ids)} Minari datasets: {', '.join(ids)}")
    return 0


@_errors_reported
def cmd_import_minari(args) -> int:
    """Import a Minari namespace (as written by export-minari) into a dataset."""
    from .minari_io import import_minari

    ds = import_minari(args.namespace, args.out, root=args.root, overwrite=args.overwrite, progress=not args.quiet)
    print(f"imported {len(ds)} tasks ({ds.num_rows} rows) into {ds.path}")
    return 0


def register(sub) -> None:
    """Add the ``data`` command and its sub-commands to the top-level parser."""
    p = sub.add_parser("data", help="offline datasets: verify, info, import/export",
                       description="Work with macaw-fast offline datasets.")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    q = dsub.add_parser("verify", help="check manifests, sizes, SHA-256 sums and values")
    q.add_argument("dataset", help="dataset directory")
    q.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_verify)

    q = dsub.add_parser("info", help="tasks, rows, trajectory returns; histogram PNG")
    q.add_argument("dataset", help="dataset directory")
    q.add_argument("--plot", default=None, help="PNG path (default: <dataset name>_returns.png next to the dataset directory)")
    q.add_argument("--no-plot", action="store_true", help="do not write the histogram")
    q.set_defaults(func=cmd_info)

    q = dsub.add_parser("import-paper", help="import the MACAW paper's HDF5 buffers")
    q.add_argument("src", help="directory with buffers_<env>_train_<i>_sub_task_0.hdf5 and env_<env>_train_task<i>.pkl")
    q.add_argument("--family", "--env", dest="family", required=True,
                   choices=["cheetah_dir", "cheetah_vel", "ant_dir", "walker_param"], help="task family")
    q.add_argument("out", help="new dataset directory")
    q.add_argument("--buffer-skip", type=int, default=7, help="the paper loader's subsampling (default: 7, the paper's; 1 keeps every row)")
    q.add_argument("--tasks", type=task_list, default=None, help="task indices to import, e.g. '0,3,5' or '0-9' (default: all)")
    q.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    q.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_import_paper)

    q = dsub.add_parser("subsample", help="keep every k-th row per task, as the paper's loader did (buffer_skip)")
    q.add_argument("dataset", help="source dataset directory")
    q.add_argument("out", help="new dataset directory")
    q.add_argument("--skip", type=int, default=7,
                   help="keep rows (N mod skip) + skip*j of each task (default 7, the paper's buffer_skip)")
    q.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    q.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_subsample)

    q = dsub.add_parser("export-minari", help="export one Minari dataset per task under a namespace")
    q.add_argument("dataset", help="dataset directory")
    q.add_argument("namespace", help="Minari namespace, e.g. macaw/cheetah_vel")
    q.add_argument("--root", default=None, help="Minari datasets directory (default: $MINARI_DATASETS_PATH or ~/.minari/datasets)")
    q.add_argument("--action-bounds", default=None, help="LOW,HIGH of the action Box (default: -1,1 if all actions lie in it)")
    q.add_argument("--overwrite", action="store_true", help="replace the namespace if it exists")
    q.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_export_minari)

    q = dsub.add_parser("import-minari", help="build a dataset from a Minari namespace")
    q.add_argument("namespace", help="Minari namespace")
    q.add_argument("out", help="new dataset directory")
    q.add_argument("--root", default=None, help="Minari datasets directory (default: $MINARI_DATASETS_PATH or ~/.minari/datasets)")
    q.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    q.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_import_minari)


def main(argv=None) -> int:  # pragma: no cover - convenience for `python -m macaw_fast.data.cli`
    """Run ``macaw-fast data`` with ``argv``."""
    parser = argparse.ArgumentParser(prog="macaw-fast")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args) or 0)
