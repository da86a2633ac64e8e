"""Aggregate statistics of a reproduction, as the field now reports them.

Scores are (seeds x test tasks) matrices. Aggregates are the interquartile mean (IQM: the mean of
the middle 50 % of all seed-task scores) and the mean, each with a 95 % stratified bootstrap
confidence interval: seeds are resampled with replacement within each task (Agarwal et al.,
"Deep RL at the Edge of the Statistical Precipice", NeurIPS 2021), computed with their library
rliable (``pip install 'macaw-fast[results]'``). The same estimator gives the shaded bands of the
learning curves, so the plot and the table agree.

Normalised score of a return R on task i: (R - R_random,i) / (R_best,i - R_random,i), with R_random
the mean return of a uniformly random policy and R_best the best trajectory return in the task's
data (``macaw_fast.train.evaluate``).
"""

from __future__ import annotations

import math
import os

import numpy as np

#: Bootstrap resamples of the table's CIs (rliable's default is 50,000; 10,000 moved the CI ends by
#: about 1 % of the CI's width on a 3 x 5 matrix, at 1-2.5 s per CI instead of 6). The environment
#: variable MACAW_FAST_BOOTSTRAP_REPS overrides it (the tests use a few hundred).
REPS = int(os.environ.get("MACAW_FAST_BOOTSTRAP_REPS", "10000"))


def _rliable():
    try:
        from rliable import library as rly
        from rliable import metrics
    except ImportError as e:
        raise ImportError(f"the confidence intervals need rliable ({e}); "
                          f"install them with pip install 'macaw-fast[results]'") from None
    return rly, metrics


def interval_estimates(scores: np.ndarray, reps: int | None = None, seed: int = 0) -> dict:
    """IQM and mean of a (seeds, tasks) score matrix with 95 % stratified bootstrap CIs."""
    import warnings

    rly, metrics = _rliable()
    reps = REPS if reps is None else reps
    scores = np.asarray(scores, dtype=np.float64)

    def agg(x):
        return np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x)])

    # rliable's StratifiedBootstrap.update_indices draws from numpy's GLOBAL generator
    # (np.random.choice) and ignores random_state, so seed the global generator around the call
    # (and put it back): the CIs are then a pure function of the scores and ``seed``.
    saved = np.random.get_state()
    try:
        np.random.seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)   # arch's notice about its random_state argument
            point, ci = rly.get_interval_estimates({"s": scores}, agg, reps=reps,
                                                   random_state=np.random.RandomState(seed))
    finally:
        np.random.set_state(saved)
    p, c = point["s"], ci["s"]
    return {"iqm": float(p[0]), "iqm_ci": [float(c[0, 0]), float(c[1, 0])],
            "mean": float(p[1]), "mean_ci": [float(c[0, 1]), float(c[1, 1])]}


def _se(values) -> float:
    v = np.asarray(values, dtype=np.float64).ravel()
    return float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan")


def family_entry(evals: dict, cfg, command: str, wall: dict) -> dict:
    """The ``summary.json`` entry of one family and algorithm from the final evaluation of each seed.

    ``evals``: seed -> the result of ``Evaluator.evaluate`` (with ``random``, ``data_best``,
    ``labels``); ``cfg``: the ReproduceConfig; ``wall``: seconds per stage.
    """
    seeds = list(cfg.seeds)
    first = evals[seeds[0]]
    tasks = list(first["adapted"])
    per_task = {}
    for t in tasks:
        d = {"label": first.get("labels", {}).get(t, ""), "random": first["random"][t],
             "data_best": first["data_best"][t]}
        for kind in ("adapted", "unadapted", "normalised_adapted", "normalised_unadapted"):
            d[kind] = [evals[s].get(kind, {}).get(t) for s in seeds]
        for kind in ("adapted", "unadapted"):      # evaluations made before velocities were recorded lack them
            v = [evals[s].get(f"velocity_{kind}", {}).get(t) for s in seeds]
            if all(x is not None for x in v):
                d[f"velocity_{kind}"] = v
        d["se_adapted"] = [_se(evals[s]["adapted_all"][t]) for s in seeds]
        d["se_unadapted"] = [_se(evals[s]["unadapted_all"][t]) for s in seeds]
        per_task[t] = d
    entry = {
        "seeds": seeds, "meta_steps": cfg.steps,
        "adapted": [evals[s]["mean_adapted"] for s in seeds],
        "unadapted": [evals[s]["mean_unadapted"] for s in seeds],
        "normalised_adapted": [evals[s].get("mean_normalised_adapted") for s in seeds],
        "normalised_unadapted": [evals[s].get("mean_normalised_unadapted") for s in seeds],
        "per_task": per_task,
        "labels": {t: per_task[t]["label"] for t in tasks},
        "evaluation": {"adaptation_batches": cfg.final_batches, "rollouts_per_batch": cfg.final_rollouts,
                       "unadapted_rollouts": cfg.final_batches * cfg.final_rollouts,
                       "batch_size": 256, "test_tasks": tasks},
        "data": {"collect_steps_per_task": cfg.collect_kwargs()["steps_per_task"], "collect_seed": cfg.collect_seed,
                 "buffer_skip": cfg.buffer_skip, "collect_settings": cfg.collect_kwargs()},
        "command": command, "wall_clock_s": wall,
    }
    norm_ok = all(v is not None for t in tasks for k in ("normalised_adapted", "normalised_unadapted")
                  for v in per_task[t][k])
    mats = {"return_adapted": np.array([[per_task[t]["adapted"][i] for t in tasks] for i in range(len(seeds))]),
            "return_unadapted": np.array([[per_task[t]["unadapted"][i] for t in tasks] for i in range(len(seeds))])}
    mats["return_gain"] = mats["return_adapted"] - mats["return_unadapted"]
    if norm_ok:
        for kind in ("adapted", "unadapted"):
            mats[f"normalised_{kind}"] = np.array([[per_task[t][f"normalised_{kind}"][i] for t in tasks]
                                                   for i in range(len(seeds))])
        mats["normalised_gain"] = mats["normalised_adapted"] - mats["normalised_unadapted"]
    try:
        entry["aggregate"] = {k: interval_estimates(m) for k, m in mats.items()}
        entry["aggregate"]["method"] = (f"IQM and mean over seeds x test tasks; 95 % stratified bootstrap CI "
                                        f"(rliable, {REPS} resamples, seeds resampled within each task)")
    except ImportError as e:
        entry["aggregate"] = {"missing": str(e)}
        print(f"macaw-fast reproduce: results: no confidence intervals: {e}", flush=True)
    return entry


#: How tables and plots name the algorithms.
ALGO_NAMES = {"macaw": "MACAW", "meta_bc": "Meta-BC", "mt_ft": "MT + fine-tune", "focal": "FOCAL-style (AWR)"}


def algo_name(name: str) -> str:
    """How tables and plots name a result row ('mt_ft_k20' -> 'MT + fine-tune, 20 steps')."""
    if name.startswith("mt_ft_k") and name[7:].isdigit():
        return f"{ALGO_NAMES['mt_ft']}, {int(name[7:])} steps"
    return ALGO_NAMES.get(name, name)


def write_table(family: str, entry: dict, algo: str = "macaw") -> str:
    """A Markdown table of one family's entry: per task (mean over seeds ± std), then the aggregates."""
    seeds = entry["seeds"]

    def ms(v):
        v = [x for x in v if x is not None]
        if not v:
            return "n/a"
        return f"{np.mean(v):.1f} ± {np.std(v, ddof=1):.1f}" if len(v) > 1 else f"{v[0]:.1f}"

    def ms2(v):
        v = [x for x in v if x is not None]
        if not v:
            return "n/a"
        return f"{np.mean(v):.2f} ± {np.std(v, ddof=1):.2f}" if len(v) > 1 else f"{v[0]:.2f}"

    lines = [f"### {family}: {algo_name(algo)}, {entry['meta_steps']} meta-steps, seeds {seeds}", "",
             f"Per task: mean ± std over the {len(seeds)} seeds of each seed's mean over "
             f"{entry['evaluation']['adaptation_batches']} adaptation batches x "
             f"{entry['evaluation']['rollouts_per_batch']} rollouts (unadapted: "
             f"{entry['evaluation']['unadapted_rollouts']} rollouts).", "",
             "| task | adapted | unadapted | gain | normalised adapted | normalised unadapted | random | data best |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for t, d in entry["per_task"].items():
        gain = [a - u for a, u in zip(d["adapted"], d["unadapted"])]
        name = f"{t} ({d['label']})" if d["label"] else t
        best = "n/a" if d["data_best"] is None else f"{d['data_best']:.1f}"
        lines.append(f"| {name} | {ms(d['adapted'])} | {ms(d['unadapted'])} | {ms(gain)} | "
                     f"{ms2(d['normalised_adapted'])} | {ms2(d['normalised_unadapted'])} | {d['random']:.1f} | {best} |")
    if all("velocity_adapted" in d and "velocity_unadapted" in d for d in entry["per_task"].values()):
        lines += ["", "Mean velocity per episode (m/s; along the goal direction for Ant-Dir, forward otherwise):", "",
                  "| task | adapted | unadapted |", "| --- | --- | --- |"]
        for t, d in entry["per_task"].items():
            name = f"{t} ({d['label']})" if d["label"] else t
            lines.append(f"| {name} | {ms2(d['velocity_adapted'])} | {ms2(d['velocity_unadapted'])} |")
    agg = entry.get("aggregate", {})
    if "missing" not in agg:
        lines += ["", "Aggregates over seeds x test tasks (95 % stratified bootstrap CI):", "",
                  "| score | IQM [95 % CI] | mean [95 % CI] |", "| --- | --- | --- |"]
        for k in ("normalised_adapted", "normalised_unadapted", "normalised_gain", "return_adapted",
                  "return_unadapted", "return_gain"):
            if k in agg:
                a = agg[k]
                lines.append(f"| {k.replace('_', ' ')} | {a['iqm']:.3f} [{a['iqm_ci'][0]:.3f}, {a['iqm_ci'][1]:.3f}] | "
                             f"{a['mean']:.3f} [{a['mean_ci'][0]:.3f}, {a['mean_ci'][1]:.3f}] |")
    else:
        lines += ["", f"(no aggregates: {agg['missing']})"]
    ft = entry.get("fine_tuning")
    if ft:
        vlrs = sorted({e["value_lr"] for e in ft["score"]})
        plrs = sorted({e["policy_lr"] for e in ft["score"]})
        cell = {(e["value_lr"], e["policy_lr"]): e["score"] for e in ft["score"]}
        lines += ["", f"Fine-tuning: {ft['steps']} SGD step(s) of the value function (step size {ft['value_lr']:g}), "
                      f"then of the policy ({ft['policy_lr']:g}); the pair was chosen on training tasks "
                      f"{', '.join(ft['tasks'])} ({ft['protocol']}) by {ft['criterion'].replace('_', ' ')} over "
                      f"seeds x tasks (n/a: diverged):", "",
                  "| value lr \\ policy lr | " + " | ".join(f"{x:g}" for x in plrs) + " |",
                  "| --- |" + " --- |" * len(plrs)]
        for v in vlrs:
            lines.append(f"| {v:g} | " + " | ".join("n/a" if cell.get((v, x)) is None else f"{cell[(v, x)]:.3f}"
                                                  for x in plrs) + " |")
    return "\n".join(lines) + "\n"


def curve_data(run_dirs: list[str]) -> dict:
    """Per evaluation step (shared by all seeds): (seeds, tasks) matrices of adapted and unadapted returns."""
    from .loop import read_jsonl

    per_seed = []
    for d in run_dirs:
        per_seed.append({r["step"]: r for r in read_jsonl(os.path.join(d, "metrics.jsonl")) if r.get("kind") == "eval"})
    steps = sorted(set.intersection(*[set(r) for r in per_seed])) if per_seed else []
    if not steps:
        raise ValueError(f"no evaluation step common to all seeds in {run_dirs}")
    tasks = list(per_seed[0][steps[0]]["adapted"])
    out = {"steps": steps, "tasks": tasks}
    for kind in ("adapted", "unadapted"):
        out[kind] = np.array([[[r[s][kind][t] for t in tasks] for r in per_seed] for s in steps])  # (S, seeds, tasks)
    return out


def write_curves(run_dirs: list[str], family: str, path: str, labels: dict | None = None,
                 reps: int | None = None) -> str:
    """PNG: mean return over seeds x tasks with its 95 % stratified bootstrap CI (left), and each
    task's mean over seeds (right), adapted (solid) and unadapted (dashed), against meta-steps."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(f"matplotlib is missing ({e})") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cd = curve_data(run_dirs)
    steps = np.array(cd["steps"])
    labels = labels or {}
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(12, 4.2))
    colors = {"adapted": "tab:blue", "unadapted": "tab:orange"}
    for kind in ("adapted", "unadapted"):
        m = cd[kind]
        est = [interval_estimates(m[i], reps=reps or max(100, REPS // 5)) for i in range(len(steps))]
        mean = np.array([e["mean"] for e in est])
        lo = np.array([e["mean_ci"][0] for e in est])
        hi = np.array([e["mean_ci"][1] for e in est])
        a0.plot(steps, mean, color=colors[kind], label=kind)
        a0.fill_between(steps, lo, hi, color=colors[kind], alpha=0.2)
    a0.set_title(f"{family}: mean over {len(run_dirs)} seeds x {len(cd['tasks'])} test tasks\n"
                 "(band: 95 % stratified bootstrap CI)", fontsize=10)
    a0.set_xlabel("meta-step")
    a0.set_ylabel("return (200-step episode)")
    a0.legend()
    cmap = plt.get_cmap("tab10")
    for j, t in enumerate(cd["tasks"]):
        c = cmap(j % 10)
        name = labels.get(t) or f"task {t}"
        a1.plot(steps, cd["adapted"][:, :, j].mean(1), color=c, label=name)
        a1.plot(steps, cd["unadapted"][:, :, j].mean(1), color=c, ls="--")
    a1.set_title("per test task, mean over seeds (solid: adapted, dashed: unadapted)", fontsize=10)
    a1.set_xlabel("meta-step")
    a1.legend(fontsize=8)
    fig.tight_layout()
    from .._io import save_figure

    return save_figure(fig, path, dpi=100)


def write_comparison(runs: dict, family: str, path: str, reps: int | None = None, final: dict | None = None) -> str:
    """PNG: each algorithm's adapted return (and MACAW's unadapted one, dashed), mean over seeds x
    test tasks with its 95 % stratified bootstrap CI, against meta-steps. ``runs``: algorithm ->
    its seeds' run directories (evaluated at the same steps). With ``final`` (result name -> its
    summary entry), a second panel shows each row's final normalised adapted score (IQM, 95 % CI)."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(f"matplotlib is missing ({e})") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if final:
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
        _final_panel(bx, final)
    else:
        fig, ax = plt.subplots(figsize=(7, 4.2))
    cmap = plt.get_cmap("tab10")
    for j, (algo, dirs) in enumerate(runs.items()):
        cd = curve_data(dirs)
        steps = np.array(cd["steps"])
        for kind, ls in (("adapted", "-"), ("unadapted", "--")):
            if kind == "unadapted" and algo != "macaw":
                continue
            est = [interval_estimates(cd[kind][i], reps=reps or max(100, REPS // 5)) for i in range(len(steps))]
            mean = np.array([e["mean"] for e in est])
            ax.plot(steps, mean, color=cmap(j), ls=ls, label=f"{algo_name(algo)} {kind}")
            ax.fill_between(steps, [e["mean_ci"][0] for e in est], [e["mean_ci"][1] for e in est],
                            color=cmap(j), alpha=0.15)
    ax.set_title(f"{family}: mean over seeds x test tasks (band: 95 % CI)", fontsize=10)
    ax.set_xlabel("meta-step (gradient steps)")
    ax.set_ylabel("return (200-step episode)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    from .._io import save_figure

    return save_figure(fig, path, dpi=100)


def _final_panel(ax, final: dict) -> None:
    """Horizontal IQM bars with 95 % CIs of each row's final normalised adapted score (MACAW's
    unadapted one too)."""
    rows = []
    for name, entry in final.items():
        agg = entry.get("aggregate", {})
        key = "normalised_adapted" if "normalised_adapted" in agg else "return_adapted"
        if key in agg:
            rows.append((algo_name(name) + " adapted", agg[key]))
        if name == "macaw" and key.replace("adapted", "unadapted") in agg:
            rows.append(("MACAW unadapted", agg[key.replace("adapted", "unadapted")]))
    y = np.arange(len(rows))[::-1]
    for yi, (label, a) in zip(y, rows):
        ax.errorbar(a["iqm"], yi, xerr=[[a["iqm"] - a["iqm_ci"][0]], [a["iqm_ci"][1] - a["iqm"]]], fmt="o",
                    color="C0" if "unadapted" not in label else "0.5", capsize=3)
    ax.set_yticks(y)
    ax.set_yticklabels([r[0] for r in rows], fontsize=8)
    unit = "normalised" if all("normalised_adapted" in e.get("aggregate", {}) for e in final.values()) else "return"
    ax.set_xlabel(f"final {unit} score (IQM, 95 % CI)")
    ax.grid(axis="x", alpha=0.3)


__all__ = ["interval_estimates", "algo_name", "family_entry", "write_table", "write_curves", "write_comparison", "curve_data",
           "REPS"]
