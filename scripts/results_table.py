"""Print a markdown table of a multi-seed run's evaluations (the numbers in RESULTS.md).

    python scripts/results_table.py RUN [RUN ...] [--last K]

For each RUN (a run directory or one holding seed_* runs): per seed, the mean over its last K
evaluations (default 3: single evaluations are noisy) of the adapted and unadapted test return,
mean and per task; then mean ± std over seeds. Also the median training speed (steps/s) logged.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from macaw_fast.train.loop import read_jsonl
from macaw_fast.train.plot import eval_curves, seed_dirs


def _ms(x: np.ndarray) -> str:
    return f"{x.mean():.1f} ± {x.std(ddof=1) if x.size > 1 else 0.0:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--last", type=int, default=3, help="evaluations averaged per seed (default 3)")
    args = ap.parse_args()
    for run in args.runs:
        c = eval_curves(run)
        k = min(args.last, len(c["steps"]))
        steps = c["steps"][-k:]
        tasks = [t for t in c["adapted"] if t != "mean"]
        speeds = []
        for d in seed_dirs(run):
            sp = [r["steps_per_s"] for r in read_jsonl(os.path.join(d, "metrics.jsonl"))
                  if r.get("kind") == "train" and r.get("steps_per_s") is not None]
            speeds.append(float(np.median(sp)) if sp else float("nan"))
        print(f"\n{run}: {c['seeds']} seed(s), evaluations at steps {', '.join(map(str, steps))} averaged per seed; "
              f"median steps/s per seed {', '.join(f'{s:.2f}' for s in speeds)}")
        print("| | adapted | unadapted | gain |")
        print("|---|---|---|---|")
        for t in ["mean"] + tasks:
            a = c["adapted"][t][:, -k:].mean(1)
            u = c["unadapted"][t][:, -k:].mean(1)
            print(f"| {'mean over tasks' if t == 'mean' else 'task ' + t} | {_ms(a)} | {_ms(u)} | {_ms(a - u)} |")


if __name__ == "__main__":
    main()
