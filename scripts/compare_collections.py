"""Two collections of the same tasks compared task by task (docs/collect.md, "bfloat16 products").

    macaw-fast quality RUN_A --json a.json; macaw-fast quality RUN_B --json b.json
    python scripts/compare_collections.py a.json b.json

Prints, for the final evaluation return, the velocity over the last stored rows and the stored
trajectory returns (mean and best), both means and the paired difference B - A with a 95 %
bootstrap CI over tasks (seeded), and the share of stored trajectories that end in a fall.
"""
import json, sys
import numpy as np
a, b = (json.load(open(p)) for p in sys.argv[1:3])
ta = {t["task"]: t for t in a["tasks"]}; tb = {t["task"]: t for t in b["tasks"]}
ids = sorted(set(ta) & set(tb), key=int)
print(f"steps {a['step']} (A) / {b['step']} (B), {len(ids)} tasks")
rng = np.random.default_rng(0)
for k in ("eval_return", "velocity_last", "return_mean", "return_max"):
    x = np.array([ta[i][k] for i in ids], float); y = np.array([tb[i][k] for i in ids], float)
    d = y - x
    boots = [rng.choice(d, len(d)).mean() for _ in range(5000)]
    lo, hi = np.percentile(boots, [2.5, 97.5])
    print(f"{k}: A {x.mean():.2f}, B {y.mean():.2f}, paired diff {d.mean():+.2f} [{lo:+.2f}, {hi:+.2f}], B higher on {(d > 0).sum()}/{len(d)}")
fa = sum(ta[i]["falls"] for i in ids) / sum(ta[i]["trajectories"] for i in ids)
fb = sum(tb[i]["falls"] for i in ids) / sum(tb[i]["trajectories"] for i in ids)
print(f"falls: A {fa:.3f}, B {fb:.3f} of stored trajectories")
