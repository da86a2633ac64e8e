"""``collect_report.png``: the evaluation return of every task against env steps."""

from __future__ import annotations

import json

__all__ = ["write_report"]


def write_report(log_path: str, out_path: str, task_ids: list[str], family: str, dataset_path: str | None = None) -> str:
    """Plot ``eval_return`` per task from the JSONL log ``log_path`` into ``out_path`` (atomically).

    Left: evaluation (mean-action) return per task (the legend names up to 10 tasks). Middle: mean
    and spread over tasks. Right (with ``dataset_path``): the return of every stored training
    trajectory per task against the env step where it ended, i.e. the quality mix of the data.
    Returns ``out_path``. Needs matplotlib.
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
    fig, axes = plt.subplots(1, 3 if dataset_path else 2, figsize=(18 if dataset_path else 12, 4.5))
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
    if dataset_path:
        from ..data.store import open_dataset

        ds = open_dataset(dataset_path)
        ax = axes[2]
        for j, tid in enumerate(task_ids):
            td = ds[tid]
            lengths, rets_ = td.episode_lengths, td.episode_returns
            if lengths and rets_:
                ax.plot(np.cumsum(lengths), rets_, lw=0.8, alpha=0.8)
        ax.set_xlabel("env steps per task (end of trajectory)")
        ax.set_ylabel("return of stored trajectory")
        ax.set_title("stored training trajectories")
    fig.tight_layout()
    from .._io import save_figure

    return save_figure(fig, out_path, dpi=100)
