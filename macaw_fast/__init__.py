"""macaw-fast: fast, exact MACAW (offline meta-RL with advantage weighting) for PyTorch.

The top-level names load on first use (PEP 562), so ``import macaw_fast.ops`` or
``import macaw_fast.envs`` pulls in nothing else of the package:

- :class:`MetaLearner`, :class:`Adapted` (``macaw_fast.macaw``), :class:`MacawConfig`
  (``macaw_fast.config``), :class:`Batch` (``macaw_fast.data.batch``);
- :func:`train` (``macaw_fast.train.run``): meta-train on a dataset and return the final evaluation.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {"MacawConfig": ("macaw_fast.config", "MacawConfig"), "Batch": ("macaw_fast.data.batch", "Batch"),
         "Adapted": ("macaw_fast.macaw", "Adapted"), "MetaLearner": ("macaw_fast.macaw", "MetaLearner")}

__all__ = ["Adapted", "Batch", "MacawConfig", "MetaLearner", "train", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    if name == "train":           # the subpackage, which is also callable: macaw_fast.train(data, out, ...)
        return importlib.import_module("macaw_fast.train")
    raise AttributeError(f"module 'macaw_fast' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
