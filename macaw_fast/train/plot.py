"""Learning curves: adapted vs unadapted test return over meta-steps, per task and mean, seeds aggregated."""

from __future__ import annotations

import os

import numpy as np

from .loop import read_jsonl


def seed_dirs(run: str) -> list[str]:
    """The run directories holding metrics.jsonl: ``run`` itself, or its ``seed_*`` sub-directories."""
    if os.path.isfile(os.path.join(run, "metrics.jsonl")):
        return [run]
    subs = sorted(os.path.join(run, d) for d in os.listdir(run) if d.startswith("seed_")) if os.path.isdir(run) else []
    subs = [d for d in subs if os.path.isfile(os.path.join(d, "metrics.jsonl"))]
    if not subs:
        raise FileNotFoundError(f"{run}: no metrics.jsonl (not a run directory, and no seed_* runs inside)")
    return subs


def eval_curves(run: str) -> dict:
    """{"steps": (S,), "adapted": {task|"mean": (seeds, S)}, "unadapted": {...}} on the steps all seeds share."""
    per_seed = []
    for d in seed_dirs(run):
        recs = {r["step"]: r for r in read_jsonl(os.path.join(d, "metrics.jsonl")) if r.get("kind") == "eval"}
        per_seed.append(recs)
    steps = sorted(set.intersection(*[set(r) for r in per_seed]))
    if not steps:
        raise ValueError(f"{run}: no evaluation step common to all seeds")
    out = {"steps": np.array(steps), "seeds": len(per_seed)}
    for kind in ("adapted", "unadapted"):
        if kind not in per_seed[0][steps[0]]:
            continue
        tasks = list(per_seed[0][steps[0]][kind])
        cur = {t: np.array([[r[s][kind][t] for s in steps] for r in per_seed]) for t in tasks}
        cur["mean"] = np.array([[r[s][f"mean_{kind}"] for s in steps] for r in per_seed])
        out[kind] = cur
    return out


def task_names(run: str) -> dict[str, str]:
    """Test-task id -> how people name it ('forward', 'v = 1.20 m/s', 'goal 2.20 rad'), from the
    run's dataset; {} when the dataset cannot be opened."""
    import json

    from ..envs import task_label

    d = seed_dirs(run)[0]
    try:
        with open(os.path.join(d, "config.json")) as f:
            cfg = json.load(f)
        from ..data.store import open_dataset

        ds = open_dataset(cfg["data"])
        return {t: task_label(cfg.get("family", ""), ds[t].params) for t in ds.tasks}
    except Exception:  # noqa: BLE001 - a moved dataset only costs the names
        return {}


def plot_runs(runs: list[str], out: str, per_task: bool = True) -> str:
    """Write a PNG: one panel for the task mean and (with ``per_task``) one per task; the line is the
    mean over seeds, the band ± one standard deviation over seeds (ddof 1, as the tables)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {r: eval_curves(r) for r in runs}
    names = task_names(runs[0])
    tasks = ["mean"]
    if per_task:
        first = next(iter(curves.values()))
        tasks += [t for t in first["adapted"] if t != "mean"]
    n = len(tasks)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, task in enumerate(tasks):
        ax = axes[i // cols][i % cols]
        for j, (run, c) in enumerate(curves.items()):
            label = os.path.basename(os.path.normpath(run))
            for kind, style in (("adapted", "-"), ("unadapted", "--")):
                if kind not in c or task not in c[kind]:
                    continue
                y = c[kind][task]
                m, s = y.mean(0), (y.std(0, ddof=1) if y.shape[0] > 1 else 0 * y[0])
                col = colors[j % len(colors)]
                ax.plot(c["steps"], m, style, color=col, label=f"{label} {kind} ({c['seeds']} seed{'s' * (c['seeds'] > 1)})")
                if y.shape[0] > 1:
                    ax.fill_between(c["steps"], m - s, m + s, color=col, alpha=0.15 if kind == "adapted" else 0.07)
        name = names.get(task, "")
        ax.set_title("mean over test tasks" if task == "mean" else f"test task {task}" + (f": {name}" if name else ""))
        ax.set_xlabel("meta-step")
        ax.set_ylabel("return")
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7, title="band: ± 1 std over seeds", title_fontsize=7)
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.tight_layout()
    from .._io import save_figure

    return save_figure(fig, out, dpi=110)
