"""The Walker-Params outer-policy-step ablation of RESULTS.md: the paper's step (1e-4) against 1e-5,
three seeds each, paired by seed (same data, same task and batch draws).

Reads, under RUNS (default ~/macaw-runs):
  walker_param/train/seed_S            MACAW with the paper's configuration (reproduce walker_param)
  walker_ablate/opl1e-5_sS             the same with --outer-policy-lr 1e-5 (commands in RESULTS.md)
  walker_ablate/eval/<run>.json        `macaw-fast eval RUN --batches 10 --episodes 3 --json F` of each
and prints the training-time averages and the final evaluations; --json writes the aggregate
(results/ablations/walker_param_outer_policy_lr.json).

    python scripts/walker_ablation_table.py [--runs ~/macaw-runs] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics as st

import numpy as np

from macaw_fast.train.stats import interval_estimates

SEEDS = (0, 1, 2)
SETTINGS = {"1e-4": ("walker_param/train/seed_{s}", "walker_param_train_seed_{s}.json"),
            "1e-5": ("walker_ablate/opl1e-5_s{s}", "walker_ablate_opl1e-5_s{s}.json")}
TASKS = ["2", "12", "15", "39", "43"]


def evals(path: str) -> list[dict]:
    with open(os.path.join(path, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r.get("kind") == "eval"]


def window(recs: list[dict], lo: int, hi: int, key: str) -> float:
    """Mean of ``key`` over the evaluations at multiples of 1,000 in [lo, hi] (the reproduce runs
    evaluate every 1,000 steps, the ablation runs every 250: compare like with like)."""
    v = [r[key] for r in recs if lo <= r["step"] <= hi and r["step"] % 1000 == 0]
    return sum(v) / len(v) if v else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=os.path.expanduser("~/macaw-runs"))
    ap.add_argument("--json", help="write the aggregate here")
    a = ap.parse_args()
    print("seed | outer policy lr | adapted 1-2k | adapted 5-8k | unadapted 5-8k | adapted 10-20k | unadapted 10-20k")
    for s in SEEDS:
        for name, (run, _) in SETTINGS.items():
            e = evals(os.path.join(a.runs, run.format(s=s)))
            cells = [window(e, lo, hi, k) for lo, hi, k in ((1000, 2000, "mean_adapted"), (5000, 8000, "mean_adapted"),
                                                            (5000, 8000, "mean_unadapted"), (10000, 20000, "mean_adapted"),
                                                            (10000, 20000, "mean_unadapted"))]
            print(f"| {s} | {name} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    rows = {}
    for s in SEEDS:
        for name, (_, ev) in SETTINGS.items():
            with open(os.path.join(a.runs, "walker_ablate", "eval", ev.format(s=s))) as f:
                rows[(s, name)] = json.load(f)
    print("\nfinal evaluation (10 batches x 3 rollouts per task): seed | lr | adapted | normalised | unadapted | per task")
    for (s, name), d in rows.items():
        print(f"| {s} | {name} | {d['mean_adapted']:.1f} | {d['mean_normalised_adapted']:.3f} | {d['mean_unadapted']:.1f} | "
              + " / ".join(f"{d['adapted'][t]:.1f}" for t in TASKS) + " |")
    agg = {}
    for name in SETTINGS:
        m = np.array([[rows[(s, name)]["normalised_adapted"][t] for t in TASKS] for s in SEEDS])
        u = np.array([[rows[(s, name)]["normalised_unadapted"][t] for t in TASKS] for s in SEEDS])
        agg[name] = {"adapted": interval_estimates(m), "unadapted": interval_estimates(u),
                     "mean_adapted_return": st.mean(rows[(s, name)]["mean_adapted"] for s in SEEDS),
                     "mean_unadapted_return": st.mean(rows[(s, name)]["mean_unadapted"] for s in SEEDS)}
        print(f"{name}: normalised adapted IQM {agg[name]['adapted']['iqm']:.3f} {agg[name]['adapted']['iqm_ci']}, "
              f"unadapted {agg[name]['unadapted']['iqm']:.3f}; returns {agg[name]['mean_adapted_return']:.1f} / "
              f"{agg[name]['mean_unadapted_return']:.1f}")
    d = np.array([[rows[(s, "1e-5")]["normalised_adapted"][t] - rows[(s, "1e-4")]["normalised_adapted"][t]
                   for t in TASKS] for s in SEEDS])
    diff = interval_estimates(d)
    print(f"paired difference (1e-5 minus 1e-4, seeds x tasks): mean {diff['mean']:.3f} {diff['mean_ci']}, "
          f"per seed {[round(float(x), 3) for x in d.mean(axis=1)]}")
    if a.json:
        keep = ("mean_adapted", "mean_unadapted", "mean_normalised_adapted", "mean_normalised_unadapted", "adapted",
                "unadapted", "normalised_adapted", "normalised_unadapted", "random", "data_best", "protocol")
        out = {"runs": {k: v[0].replace("{s}", "S") for k, v in SETTINGS.items()},
               "command": "macaw-fast eval RUN --batches 10 --episodes 3 --json F",
               "evals": {f"{name}/seed_{s}": {k: rows[(s, name)][k] for k in keep} for (s, name) in rows},
               "aggregate": agg, "paired_difference_normalised": diff}
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
