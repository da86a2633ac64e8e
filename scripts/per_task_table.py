"""Print RESULTS.md's per-task table of one family and algorithm from results/summary.json.

    python scripts/per_task_table.py FAMILY [--algo macaw] [--quality QUALITY_JSON] [--summary F]

One row per test task: adapted and unadapted return, their gain, the normalised scores (mean ±
std over seeds of each seed's per-task mean), the mean episode velocity adapted / unadapted (along
the goal for Ant-Dir, forward otherwise; mean over seeds), the task's random-policy reference, and
the stored trajectories' returns: min / mean from ``macaw-fast quality RUN --json QUALITY_JSON`` of
the collection (left out without --quality) and the best one the normalisation uses.
"""

from __future__ import annotations

import argparse
import json
import os
import re

import numpy as np


def _minus(text: str) -> str:
    return re.sub(r"(?<![\w.])-(?=\d)", "−", text)


def _ms(x, digits: int) -> str:
    x = np.asarray(x, dtype=float)
    sd = x.std(ddof=1) if x.size > 1 else 0.0
    return f"{x.mean():.{digits}f} ± {sd:.{digits}f}"


def table(entry: dict, quality: dict | None = None) -> str:
    rows = ["| task | adapted | unadapted | gain | normalised adapted | normalised unadapted | "
            "velocity adapted / unadapted (m/s) | random | data: min / mean / best |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for task, t in entry["per_task"].items():
        a, u = np.asarray(t["adapted"]), np.asarray(t["unadapted"])
        va, vu = t.get("velocity_adapted"), t.get("velocity_unadapted")
        vel = f"{np.mean(va):.2f} / {np.mean(vu):.2f}" if va is not None and vu is not None else "n/a"
        q = (quality or {}).get(task)
        data = (f"{q['return_min']:.0f} / {q['return_mean']:.0f} / " if q else "") + f"{t['data_best']:.0f}"
        rows.append(f"| {task} | {_ms(a, 1)} | {_ms(u, 1)} | {_ms(a - u, 1)} | {_ms(t['normalised_adapted'], 2)} | "
                    f"{_ms(t['normalised_unadapted'], 2)} | {vel} | {t['random']:.1f} | {data} |")
    return _minus("\n".join(rows))


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("family")
    ap.add_argument("--algo", default="macaw", help="the summary entry (default macaw)")
    ap.add_argument("--quality", metavar="JSON", help="`macaw-fast quality RUN --json` of the family's collection")
    ap.add_argument("--summary", default=os.path.join(here, os.pardir, "results", "summary.json"))
    args = ap.parse_args()
    with open(args.summary) as f:
        summary = json.load(f)
    if args.family not in summary or args.algo not in summary[args.family]:
        raise SystemExit(f"{args.summary}: no entry {args.family}.{args.algo}")
    quality = None
    if args.quality:
        with open(args.quality) as f:
            quality = {t["task"]: t for t in json.load(f)["tasks"]}
    print(table(summary[args.family][args.algo], quality))


if __name__ == "__main__":
    main()
