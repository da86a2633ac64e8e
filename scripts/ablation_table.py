"""Pair two (or more) settings of a MACAW ablation by seed, as in RESULTS.md's ablation tables.

Each setting is NAME=RUN:EVAL, paths under --runs with ``{s}`` standing for the seed:
RUN is the run directory (its metrics.jsonl gives the training-time windows) and EVAL the
`macaw-fast eval RUN --batches 10 --episodes 3 --json EVAL` file of its final evaluation. The first
setting is the baseline; every other one is paired with it by seed and task (same data, same task
and batch draws). The test tasks are read from the evaluation files. Prints the training-time
averages and the final evaluations; --json writes the aggregate (results/ablations/*.json).

    python scripts/ablation_table.py --runs ~/macaw-runs \\
        --setting "1e-4=walker_param/train/seed_{s}:walker_ablate/eval/walker_param_train_seed_{s}.json" \\
        --setting "1e-5=walker_ablate/opl1e-5_s{s}:walker_ablate/eval/walker_ablate_opl1e-5_s{s}.json" \\
        [--seeds 0 1 2] [--json results/ablations/walker_param_outer_policy_lr.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics as st

import numpy as np

from macaw_fast.train.stats import interval_estimates

#: (first step, last step, metric) of the training-time columns: early, middle and late training
WINDOWS = ((1000, 2000, "mean_adapted"), (5000, 8000, "mean_adapted"), (5000, 8000, "mean_unadapted"),
           (10000, 20000, "mean_adapted"), (10000, 20000, "mean_unadapted"))
#: the fields of each final evaluation kept in --json
KEEP = ("mean_adapted", "mean_unadapted", "mean_normalised_adapted", "mean_normalised_unadapted", "adapted",
        "unadapted", "normalised_adapted", "normalised_unadapted", "random", "data_best", "protocol")


def evals(path: str) -> list[dict]:
    with open(os.path.join(path, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r.get("kind") == "eval"]


def window(recs: list[dict], lo: int, hi: int, key: str) -> float:
    """Mean of ``key`` over the evaluations at multiples of 1,000 in [lo, hi] (reproduce's runs
    evaluate every 1,000 steps, hand-started ones may evaluate more often: compare like with like)."""
    v = [r[key] for r in recs if lo <= r["step"] <= hi and r["step"] % 1000 == 0]
    return sum(v) / len(v) if v else float("nan")


def parse_setting(text: str) -> tuple[str, str, str]:
    name, sep, paths = text.partition("=")
    run, sep2, ev = paths.rpartition(":")
    if not (sep and sep2 and name and run and ev):
        raise SystemExit(f"--setting {text!r}: expected NAME=RUN:EVAL (paths with {{s}} for the seed)")
    return name, run, ev


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=os.path.expanduser("~/macaw-runs"), help="the paths are relative to this")
    ap.add_argument("--setting", action="append", required=True, metavar="NAME=RUN:EVAL",
                    help="one setting (give two or more; the first is the baseline)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--json", help="write the aggregate here")
    a = ap.parse_args()
    settings = {name: (run, ev) for name, run, ev in map(parse_setting, a.setting)}
    if len(settings) < 2:
        raise SystemExit("--setting: give at least two settings with distinct names")
    base = next(iter(settings))
    print("seed | setting | adapted 1-2k | adapted 5-8k | unadapted 5-8k | adapted 10-20k | unadapted 10-20k")
    for s in a.seeds:
        for name, (run, _) in settings.items():
            e = evals(os.path.join(a.runs, run.format(s=s)))
            print(f"| {s} | {name} | " + " | ".join(f"{window(e, lo, hi, k):.1f}" for lo, hi, k in WINDOWS) + " |")
    rows = {}
    for s in a.seeds:
        for name, (_, ev) in settings.items():
            with open(os.path.join(a.runs, ev.format(s=s))) as f:
                rows[(s, name)] = json.load(f)
    tasks = list(rows[(a.seeds[0], base)]["adapted"])
    for key, d in rows.items():
        if list(d["adapted"]) != tasks:
            raise SystemExit(f"{key}: evaluated tasks {list(d['adapted'])}, the baseline {tasks}: not comparable")
    print("\nfinal evaluation: seed | setting | adapted | normalised | unadapted | per task " + " / ".join(tasks))
    for (s, name), d in rows.items():
        print(f"| {s} | {name} | {d['mean_adapted']:.1f} | {d['mean_normalised_adapted']:.3f} | {d['mean_unadapted']:.1f} | "
              + " / ".join(f"{d['adapted'][t]:.1f}" for t in tasks) + " |")

    def grid(name: str, key: str) -> np.ndarray:      # seeds x tasks
        return np.array([[rows[(s, name)][key][t] for t in tasks] for s in a.seeds])

    agg = {}
    for name in settings:
        agg[name] = {"adapted": interval_estimates(grid(name, "normalised_adapted")),
                     "unadapted": interval_estimates(grid(name, "normalised_unadapted")),
                     "mean_adapted_return": st.mean(rows[(s, name)]["mean_adapted"] for s in a.seeds),
                     "mean_unadapted_return": st.mean(rows[(s, name)]["mean_unadapted"] for s in a.seeds)}
        print(f"{name}: normalised adapted IQM {agg[name]['adapted']['iqm']:.3f} {agg[name]['adapted']['iqm_ci']}, "
              f"unadapted {agg[name]['unadapted']['iqm']:.3f}; returns {agg[name]['mean_adapted_return']:.1f} / "
              f"{agg[name]['mean_unadapted_return']:.1f}")
    diffs = {}
    for name in list(settings)[1:]:
        d = grid(name, "normalised_adapted") - grid(base, "normalised_adapted")
        diffs[name] = interval_estimates(d)
        print(f"paired difference ({name} minus {base}, seeds x tasks): mean {diffs[name]['mean']:.3f} "
              f"{diffs[name]['mean_ci']}, per seed {[round(float(x), 3) for x in d.mean(axis=1)]}")
    if a.json:
        out = {"runs": {k: v[0].replace("{s}", "S") for k, v in settings.items()},
               "command": "macaw-fast eval RUN --batches 10 --episodes 3 --json F",
               "evals": {f"{name}/seed_{s}": {k: rows[(s, name)][k] for k in KEEP} for (s, name) in rows},
               "aggregate": agg,
               "paired_difference_normalised": diffs[name] if len(diffs) == 1 else diffs}
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
