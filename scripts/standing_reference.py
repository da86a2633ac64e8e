"""Return of a policy that does nothing (zero action) on each test task of a dataset.

    python scripts/standing_reference.py DATASET [--episodes 30] [--summary results/summary.json]

On Ant-Dir the healthy bonus dominates a 200-step episode: an ant that stands still earns about as
much as a slow walker, far more than the uniformly random policy that sets the normalised score's
zero. This prints, per test task, the zero-action return and along-goal velocity (mean over
``--episodes`` start states), and, with --summary, each algorithm's adapted return re-normalised
from standing still: (R - R_still) / (R_best - R_still), mean over seeds, for the tasks whose best
stored trajectory beats standing still by more than 100 (the data shows a walk).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

from macaw_fast.data.store import open_dataset
from macaw_fast.envs import FAMILIES
from macaw_fast.train.evaluate import Evaluator, family_of, rollout_mean


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--episodes", type=int, default=30)
    ap.add_argument("--summary", default=os.path.join(here, os.pardir, "results", "summary.json"))
    args = ap.parse_args()
    ds = open_dataset(args.dataset)
    family = family_of(ds)
    ev = Evaluator(ds, ds.test_tasks, family)
    fam = FAMILIES[family]
    envs = [ev.envs(k, args.episodes) for k in range(len(ev.tasks))]
    seeds = [[1000 * k + r for r in range(args.episodes)] for k in range(len(ev.tasks))]
    ret, vel = rollout_mean(envs, lambda o: torch.zeros(*o.shape[:-1], fam.act_dim, dtype=torch.float64),
                            seeds, torch.float64, "cpu", return_velocity=True)
    still = {t.id: float(ret[k].mean()) for k, t in enumerate(ev.tasks)}
    best = ev.best_data_returns()
    print("| task | zero action: return | velocity (m/s) | best stored trajectory |")
    print("| --- | --- | --- | --- |")
    for k, t in enumerate(ev.tasks):
        print(f"| {t.id} | {still[t.id]:.1f} ± {ret[k].std(ddof=1):.1f} | {abs(vel[k].mean()):.2f} | {best[t.id]:.0f} |")
    if not os.path.exists(args.summary):
        return
    with open(args.summary) as f:
        entries = json.load(f).get(family, {})
    tasks = [t for t in still if best[t] is not None and best[t] > still[t] + 100]
    print(f"\nAdapted return normalised from standing still, tasks {' / '.join(tasks)} (mean over seeds):\n")
    print(f"| algorithm | {' | '.join(tasks)} | mean |")
    print("| --- |" + " --- |" * (len(tasks) + 1))
    for algo, e in entries.items():
        z = [np.mean([(r - still[t]) / (best[t] - still[t]) for r in e["per_task"][t]["adapted"]]) for t in tasks]
        print(f"| {algo} | {' | '.join(f'{v:.2f}' for v in z)} | {np.mean(z):.2f} |".replace("-", "−"))


if __name__ == "__main__":
    main()
