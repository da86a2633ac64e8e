"""Print RESULTS.md's comparison table of one family from results/summary.json.

    python scripts/comparison_table.py FAMILY [--summary results/summary.json]

One row per algorithm present (MACAW, Meta-BC, MT + fine-tune 1 and 20 steps, FOCAL-style): the
per-seed adapted and unadapted returns (the 20-step row's unadapted policy is the 1-step row's),
the normalised adapted IQM and the normalised gain's mean with their 95 % CIs, and each test
task's adapted return (mean over seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import re

NAMES = {"macaw": "MACAW", "meta_bc": "Meta-BC", "mt_ft": "MT + fine-tune, 1 step",
         "mt_ft_k20": "MT + fine-tune, 20 steps", "focal": "FOCAL-style (AWR)"}


def _minus(text: str) -> str:
    return re.sub(r"(?<![\w])-(?=\d)", "−", text)


def table(entries: dict) -> str:
    def ci(agg: dict, key: str, stat: str) -> str:
        a = agg[key]
        return f"{a[stat]:.2f} [{a[stat + '_ci'][0]:.2f}, {a[stat + '_ci'][1]:.2f}]"

    first = next(iter(entries.values()))
    labels = " / ".join(first["per_task"])
    lines = [f"| algorithm | adapted (per seed) | unadapted (per seed) | normalised adapted: IQM [95 % CI] | "
             f"normalised gain: mean [95 % CI] | tasks {labels} adapted |", "| --- | --- | --- | --- | --- | --- |"]
    for algo, name in NAMES.items():
        if algo not in entries:
            continue
        e = entries[algo]
        per_task = " / ".join(f"{sum(v['adapted']) / len(v['adapted']):.1f}" for v in e["per_task"].values())
        unadapted = ", ".join(f"{x:.1f}" for x in e["unadapted"])
        if algo == "mt_ft_k20" and e["unadapted"] == entries.get("mt_ft", {}).get("unadapted"):
            unadapted = "(same policy)"     # more fine-tuning steps from the same pooled policy
        lines.append(_minus(f"| {name} | {', '.join(f'{x:.1f}' for x in e['adapted'])} | {unadapted} | "
                            f"{ci(e['aggregate'], 'normalised_adapted', 'iqm')} | "
                            f"{ci(e['aggregate'], 'normalised_gain', 'mean')} | {per_task} |"))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("family", help="cheetah_dir, cheetah_vel, ant_dir or walker_param")
    ap.add_argument("--summary", default=os.path.join(os.path.dirname(__file__), "..", "results", "summary.json"))
    args = ap.parse_args()
    with open(args.summary) as f:
        summary = json.load(f)
    if args.family not in summary:
        raise SystemExit(f"{args.summary}: no entry for {args.family!r} (has: {', '.join(summary)})")
    print(table(summary[args.family]))


if __name__ == "__main__":
    main()
