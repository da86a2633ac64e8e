"""The README stays true: its Python block runs as written, and CI runs its test command."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def test_ci_runs_the_readme_test_command():
    first = re.search(r"```bash\n(.*?)```", _readme(), re.S).group(1)
    cmds = [ln for ln in first.splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(cmds) == 2 and "macaw-fast demo" in cmds[0]
    test_cmd = cmds[1].rsplit("&&", 1)[1].strip()          # e.g. "pytest tests"
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    assert re.search(rf"^{re.escape(test_cmd)}$", ci, re.M), f"{test_cmd!r} is not a line of .ci/run"


def test_python_example_runs_as_written(tmp_path):
    pytest.importorskip("gymnasium")
    pytest.importorskip("mujoco")
    blocks = re.findall(r"```python\n(.*?)```", _readme(), re.S)
    example = next(b for b in blocks if "MetaBatchLoader" in b)
    script = tmp_path / "readme_example.py"
    script.write_text(example)
    env = {**os.environ, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.strip().splitlines()
    assert lines[0].startswith("{'loss") and lines[-1].startswith("4 ")


def test_results_table_matches_the_published_summary():
    """The README's 'Does it reproduce MACAW?' numbers are results/summary.json's, rounded."""
    import json

    with open(os.path.join(ROOT, "results", "summary.json")) as f:
        summary = json.load(f)
    section = _readme().split("## Does it reproduce MACAW?", 1)[1].split("\n## ", 1)[0]
    labels = {"cheetah_dir": "Cheetah-Dir", "cheetah_vel": "Cheetah-Vel", "ant_dir": "Ant-Dir",
              "walker_param": "Walker-Params"}
    rows = {}
    for ln in section.splitlines():
        cells = [c.strip() for c in ln.split("|")[1:-1]]
        if cells and any(lab in cells[0] for lab in labels.values()):
            for lab in cells[0].split(", "):
                rows[lab] = cells[1:]
    # every family of the paper has a row; the ones with results in summary.json show them
    assert set(rows) == set(labels.values())
    done = [f for f in labels if f in summary]
    assert "cheetah_dir" in done and "cheetah_vel" in done

    def iqm(fam, algo, with_ci=True):
        if algo not in summary[fam]:
            return "running"  # a family whose baselines are still training shows MACAW alone
        a = summary[fam][algo]["aggregate"]["normalised_adapted"]
        return f"{a['iqm']:.2f} [{a['iqm_ci'][0]:.2f}, {a['iqm_ci'][1]:.2f}]" if with_ci else f"{a['iqm']:.2f}"

    for fam, label in labels.items():
        if fam not in done:
            assert rows[label][0] == "running", f"{label}: no results in summary.json, the row should say running"
            continue
        macaw, meta_bc, mt_ft, focal, gain = rows[label]
        assert macaw == iqm(fam, "macaw") and meta_bc == iqm(fam, "meta_bc") and focal == iqm(fam, "focal")
        want = f"{iqm(fam, 'mt_ft', False)} / {iqm(fam, 'mt_ft_k20', False)}"
        assert mt_ft == ("running" if want == "running / running" else want)
        lo = summary[fam]["macaw"]["aggregate"]["return_gain"]["mean_ci"][0]
        assert (gain == "CI excludes 0") == (lo > 0)
