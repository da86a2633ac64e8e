"""Where a result came from: versions, git commit, command line and start time.

Recorded in run configs (``config.json`` of ``train`` and ``collect``) and in every checkpoint,
so a number can be traced to the code and the command that produced it. Versions are read from
the installed distributions' metadata (nothing heavy is imported); the git commit is that of the
source tree the package was imported from, when it is a git checkout (``+dirty`` when it has
uncommitted changes to tracked files).
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
import time

#: Distributions whose versions are recorded (those not installed are recorded as None).
PACKAGES = ("macaw-fast", "torch", "numpy", "gymnasium", "mujoco", "triton")


@functools.lru_cache(maxsize=None)
def versions() -> dict[str, str | None]:
    """Installed version of each of :data:`PACKAGES` (None when not installed)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@functools.lru_cache(maxsize=None)
def git_commit() -> str | None:
    """The commit of the source tree this package was imported from, or None when it is not a checkout."""
    src = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(src, ".git")):
        return None
    try:
        head = subprocess.run(["git", "-C", src, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", src, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


_command: list[str] | None = None


def set_command(argv: list[str]) -> None:
    """Record the command line this process runs (``macaw-fast`` sets it from its own arguments)."""
    global _command
    _command = list(argv)


def command() -> list[str]:
    """The command line recorded by :func:`set_command` (this process's argv if none was)."""
    return list(_command if _command is not None else sys.argv)


def provenance(argv: list[str] | None = None) -> dict:
    """Versions, git commit, command line, start time (UTC), Python version and host of this process."""
    cmd = argv if argv is not None else command()
    return {"versions": versions(), "git_commit": git_commit(),
            "command": list(cmd),
            "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "python": platform.python_version(), "host": platform.node()}


__all__ = ["provenance", "set_command", "command", "versions", "git_commit", "PACKAGES"]
