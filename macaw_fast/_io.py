"""Atomic file writes shared by training and collection (checkpoints, configs, logs)."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable


#: mode of every file written here: mkstemp's temporary files are 0600, which the rename would keep
FILE_MODE = 0o644


def fsync_dir(path: str) -> None:
    """fsync a directory, so a rename inside it is durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str, write: Callable) -> None:
    """Create ``path`` atomically: ``write(file)`` into a temporary file, fsync, rename, fsync the directory.

    An interruption at any moment leaves either the old file or the new one, never a mix; the
    temporary file is removed on error.
    """
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    try:
        os.fchmod(fd, FILE_MODE)         # an ordinary file, not mkstemp's private 0600
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            if e.filename is None:       # full disk, file-size limit: say which file was being written
                raise OSError(e.errno, e.strerror or str(e), path) from None
            raise
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(d)


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    import torch

    atomic_write_bytes(path, lambda f: torch.save(obj, f))


def save_figure(fig, path: str, dpi: int = 100) -> str:
    """Save a matplotlib figure as PNG at ``path`` atomically (a unique temporary file, then a
    rename; the temporary file is removed on error) and close it. Returns ``path``."""
    import matplotlib.pyplot as plt

    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".png", dir=d)
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_jsonl(path: str) -> list[dict]:
    """The records of a JSONL file; a torn last line (a killed writer) is ignored."""
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return out
