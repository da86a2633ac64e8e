"""Print each algorithm's scores over a subset of a family's test tasks, from results/summary.json.

    python scripts/task_subset_table.py FAMILY --tasks 6 17 41 [--summary F]

For a family whose data is good on some test tasks only (Ant-Dir: tasks 23 and 30 were never
learned by their collecting agents, so their "best stored trajectory" is standing still), the
aggregate over the other tasks says what the methods do where the data shows the task. One row per
algorithm: the normalised adapted score (IQM and mean with 95 % stratified bootstrap CIs over seeds
x the chosen tasks, as RESULTS.md's tables), the normalised gain's mean and CI, and the mean
episode velocity adapted / unadapted (along the goal for Ant-Dir) over seeds and the chosen tasks.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from comparison_table import NAMES, _minus     # the same row names and minus signs as RESULTS.md's tables
from macaw_fast.train.stats import interval_estimates


def _ci(a: dict, stat: str) -> str:
    return f"{a[stat]:.2f} [{a[stat + '_ci'][0]:.2f}, {a[stat + '_ci'][1]:.2f}]"


def table(entries: dict, tasks: list[str]) -> str:
    lines = [f"| algorithm | normalised adapted, tasks {' / '.join(tasks)}: IQM [95 % CI] | mean [95 % CI] | "
             f"normalised gain: mean [95 % CI] | velocity adapted / unadapted (m/s) |",
             "| --- | --- | --- | --- | --- |"]
    for algo, name in NAMES.items():
        if algo not in entries:
            continue
        per_task = entries[algo]["per_task"]
        missing = [t for t in tasks if t not in per_task]
        if missing:
            raise SystemExit(f"{algo}: no test task(s) {missing} (has {', '.join(per_task)})")

        def matrix(key):        # (seeds, tasks)
            return np.array([per_task[t][key] for t in tasks], dtype=np.float64).T

        adapted = interval_estimates(matrix("normalised_adapted"))
        gain = interval_estimates(matrix("normalised_adapted") - matrix("normalised_unadapted"))
        vel = "n/a"
        if all("velocity_adapted" in per_task[t] for t in tasks):
            vel = f"{matrix('velocity_adapted').mean():.2f} / {matrix('velocity_unadapted').mean():.2f}"
        lines.append(f"| {name} | {_ci(adapted, 'iqm')} | {_ci(adapted, 'mean')} | {_ci(gain, 'mean')} | {vel} |")
    return _minus("\n".join(lines))


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("family")
    ap.add_argument("--tasks", nargs="+", required=True, help="test task ids")
    ap.add_argument("--summary", default=os.path.join(here, os.pardir, "results", "summary.json"))
    args = ap.parse_args()
    with open(args.summary) as f:
        summary = json.load(f)
    if args.family not in summary:
        raise SystemExit(f"{args.summary}: no entry for {args.family!r} (has: {', '.join(summary)})")
    print(table(summary[args.family], args.tasks))


if __name__ == "__main__":
    main()
