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
