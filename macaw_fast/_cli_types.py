"""Argument types shared by every ``macaw-fast`` sub-command, so one idea is parsed one way.

- :func:`int_at_least` ``(lo)``: an integer >= lo, with a message naming what was expected.
- :func:`task_list`: task indices written ``0,3,5``, ``0-9`` or a mix (``0-4,7``); an option that
  takes them with ``nargs="+"`` also accepts ``0 3 5`` (flatten with :func:`flat_tasks`).
"""

from __future__ import annotations

import argparse


def int_at_least(lo: int):
    """An argparse type: an integer >= ``lo``."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {v}")
        return v
    parse.__name__ = f"integer >= {lo}"
    return parse


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    import math

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def task_list(text: str) -> list[int]:
    """``0,3,5`` or ``0-9`` or a mix (``0-4,7``), indices >= 0."""
    out: list[int] = []
    try:
        for part in text.replace(" ", ",").split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected task indices like '0,3,5' or '0-9', got {text!r}") from None
    if not out:
        raise argparse.ArgumentTypeError(f"expected at least one task index, got {text!r}")
    neg = [i for i in out if i < 0]
    if neg:
        raise argparse.ArgumentTypeError(f"task indices must be >= 0, got {neg}")
    return out


def flat_tasks(value) -> list[int] | None:
    """Flatten ``nargs='+'`` values of :func:`task_list` (``--tasks 0 3-5`` -> [0, 3, 4, 5])."""
    if value is None:
        return None
    return [i for part in value for i in (part if isinstance(part, list) else [part])]


__all__ = ["int_at_least", "positive_int", "nonneg_int", "task_list", "flat_tasks"]
