"""Meta-training, evaluation, plots and the reproduction pipeline.

The package is callable: ``macaw_fast.train(data, out, preset="cheetah_vel", steps=20_000)`` is
:func:`run`, the library entry point of ``macaw-fast train``. The command-line modules
(``cli``) only parse arguments and call into ``loop``, ``evaluate``, ``reproduce``, ``stats`` and
``plot``.
"""

from __future__ import annotations

import sys
import types


def run(data, out, *, preset=None, macaw: dict | None = None, resume: bool = False, **train_fields) -> dict:
    """Meta-train MACAW on the dataset ``data`` into the run directory ``out``; returns the final
    evaluation (``{"step", "mean_adapted", "mean_unadapted", "adapted": {task: return}, ...}``).

    ``preset``: a preset name or a list of them (``macaw-fast train --list-presets``), applied in
    order; ``macaw``: MacawConfig fields to override; ``train_fields``: TrainConfig fields
    (``steps``, ``seed``, ``eval_interval``, ``threads``, ...). ``resume=True`` continues the run in
    ``out`` bit-exactly. Unknown or invalid fields raise ValueError naming the field.

    Example: ``macaw_fast.train("data/cheetah_dir", "runs/dir", preset="cheetah_dir", steps=2000,
    eval_interval=500)``.
    """
    from .config import resolve_config
    from .loop import train

    presets = [preset] if isinstance(preset, str) else list(preset or [])
    mc, tc = resolve_config(presets, dict(macaw or {}), dict(train_fields))
    return train(data, out, mc, tc, presets=presets, resume=resume)


class _CallableModule(types.ModuleType):
    """Lets ``macaw_fast.train(...)`` call :func:`run` while ``macaw_fast.train.loop`` etc. stay modules."""

    def __call__(self, *args, **kwargs):
        return run(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["run"]
