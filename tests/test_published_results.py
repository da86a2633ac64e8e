"""The committed results/summary.json: the schema users and RESULTS.md rely on, and numbers that
agree with each other (a hand edit or a bad merge of one family's entry shows up here)."""

from __future__ import annotations

import json
import math
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = {"cheetah_dir": {"0", "1"}, "cheetah_vel": {"2", "7", "15", "23", "26"},
            "ant_dir": {"6", "17", "23", "30", "41"}, "walker_param": {"2", "12", "15", "39", "43"}}
ALGOS = {"macaw", "meta_bc", "mt_ft", "mt_ft_k20", "focal"}


def _entries():
    with open(os.path.join(ROOT, "results", "summary.json")) as f:
        summary = json.load(f)
    return [(fam, algo, e) for fam, algos in summary.items() for algo, e in algos.items()]


def test_only_known_families_and_algorithms():
    entries = _entries()
    assert entries, "results/summary.json is empty"
    for fam, algo, _ in entries:
        assert fam in FAMILIES, fam
        assert algo in ALGOS, (fam, algo)


@pytest.mark.parametrize("fam,algo,e", _entries(), ids=lambda v: v if isinstance(v, str) else "")
def test_entry_is_complete_and_consistent(fam, algo, e):
    seeds = e["seeds"]
    assert len(seeds) >= 3 and len(set(seeds)) == len(seeds), f"{fam}/{algo}: at least 3 distinct seeds"
    assert e["meta_steps"] >= 20_000, f"{fam}/{algo}: at least 20,000 gradient steps"
    assert fam in e["command"] and "reproduce" in e["command"], f"{fam}/{algo}: the command that made it"
    assert set(e["per_task"]) == FAMILIES[fam], f"{fam}/{algo}: the paper's test tasks"
    n = len(seeds)
    for key in ("adapted", "unadapted", "normalised_adapted", "normalised_unadapted"):
        assert len(e[key]) == n, (fam, algo, key)
        # each seed's value is the mean over the test tasks of that seed's per-task value
        for s in range(n):
            per_task = [t[key][s] for t in e["per_task"].values()]
            assert math.isclose(e[key][s], sum(per_task) / len(per_task), rel_tol=1e-9, abs_tol=1e-9), (fam, algo, key, s)
    for task, t in e["per_task"].items():
        lo, hi = t["random"], t["data_best"]
        assert hi > lo, f"{fam}/{algo} task {task}: the best stored trajectory beats the random policy"
        for raw, norm in (("adapted", "normalised_adapted"), ("unadapted", "normalised_unadapted")):
            for r, z in zip(t[raw], t[norm]):
                assert math.isclose(z, (r - lo) / (hi - lo), rel_tol=1e-9, abs_tol=1e-9), (fam, algo, task, raw)
    agg = e["aggregate"]["normalised_adapted"]
    assert agg["iqm_ci"][0] <= agg["iqm"] <= agg["iqm_ci"][1], f"{fam}/{algo}: the IQM lies in its CI"
    assert agg["mean_ci"][0] <= agg["mean"] <= agg["mean_ci"][1], f"{fam}/{algo}: the mean lies in its CI"
    values = [z for t in e["per_task"].values() for z in t["normalised_adapted"]]
    assert math.isclose(agg["mean"], sum(values) / len(values), rel_tol=1e-9), f"{fam}/{algo}: aggregate mean"


def _script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _results_md() -> str:
    with open(os.path.join(ROOT, "RESULTS.md")) as f:
        return f.read().replace("**", "")         # bold marks the headline numbers


def _summary() -> dict:
    with open(os.path.join(ROOT, "results", "summary.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("fam", sorted(f for f, algos in _summary().items() if len(algos) > 1))
def test_results_md_comparison_table_says_what_summary_json_says(fam):
    """Every row of `python scripts/comparison_table.py FAMILY` appears in RESULTS.md as printed."""
    text = _results_md()
    rows = _script("comparison_table").table(_summary()[fam]).splitlines()[2:]
    assert rows
    for row in rows:
        assert row in text, f"RESULTS.md lacks (or has other numbers in) this {fam} row:\n{row}"


@pytest.mark.parametrize("fam", sorted(_summary()))
def test_results_md_per_task_macaw_numbers_say_what_summary_json_says(fam):
    """Each test task's MACAW returns, gain and normalised scores (mean ± std over seeds, as
    `python scripts/per_task_table.py FAMILY` prints them) appear in one row of RESULTS.md."""
    text = _results_md()
    rows = _script("per_task_table").table(_summary()[fam]["macaw"]).splitlines()[2:]
    assert len(rows) == len(FAMILIES[fam])
    for row in rows:
        numbers = " | ".join(row.split(" | ")[1:6])
        assert f" | {numbers} | " in text, f"RESULTS.md lacks {fam} MACAW task row numbers: {numbers}"
