"""``collect_report.png``: the evaluation return of every task against env steps."""

from __future__ import annotations

import json
import os
import tempfile

__all__ = ["write_report"]


def write_report(log_path: str, out_path: str, task_ids: list[str], family: str) -> str:
    """Plot ``eval_return`` per task from the JSONL log ``log_path`` into ``out_path`` (atomically).

    One line per task (the legend names up to 10 tasks); a second panel shows the mean and the
    spread over tasks. Returns ``out_path``. Needs matplotlib.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    steps, rets = [], []
    with open(log_path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("eval_return") is not None:
                steps.append(rec["step"])
                rets.append(rec["eval_return"])
    if not steps:
        raise ValueError(f"{log_path}: no evaluation records to plot")
    order = np.argsort(steps, kind="stable")
    x = np.asarray(steps)[order]
    y = np.asarray(rets, dtype=float)[order]  # (evals, T)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    for j, tid in enumerate(task_ids):
        ax.plot(x, y[:, j], marker="o", ms=3, lw=1, label=f"task {tid}" if j < 10 else None)
    ax.set_xlabel("env steps per task")
    ax.set_ylabel("evaluation return (mean action, 200 steps)")
    ax.set_title(f"{family}: return per task")
    if len(task_ids) <= 10:
        ax.legend(fontsize=7)
    ax = axes[1]
    ax.plot(x, y.mean(1), color="k", label="mean over tasks")
    ax.fill_between(x, y.min(1), y.max(1), alpha=0.25, label="min..max")
    ax.set_xlabel("env steps per task")
    ax.set_title(f"{family}: {len(task_ids)} tasks")
    ax.legend(fontsize=7)
    fig.tight_layout()
    d = os.path.dirname(out_path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".report.", suffix=".png", dir=d)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, out_path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out_path
