"""The CLI's glibc malloc tuning: applies once, can be turned off, never on plain import."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str, env_extra: dict | None = None) -> str:
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          check=True).stdout.strip()


def test_tune_malloc_applies_once_and_opt_out():
    code = "from macaw_fast._malloc import tune_malloc; print(tune_malloc(), tune_malloc())"
    first, again = _run(code).split()
    assert first == again                      # idempotent
    if sys.platform.startswith("linux") and "glibc" in " ".join(__import__("platform").libc_ver()):
        assert first == "True"
    assert _run(code, {"MACAW_FAST_MALLOC_TUNING": "0"}) == "False False"


def test_plain_import_does_not_tune():
    assert _run("import macaw_fast, macaw_fast._malloc as m; print(m._done)") == "None"
