"""What every meta-learning algorithm of macaw-fast shares, whatever its losses.

`MetaAlgorithm` holds the parts of a learner that do not depend on the algorithm: the execution
strategy (`macaw_fast.backends`), input checks, task chunks, and the two halves of a step:
`meta_gradient` (written by each algorithm) and `apply_update`, joined by `meta_step` with a
finiteness check between them. `macaw_fast.macaw.MetaLearner` (MACAW) and
`macaw_fast.meta_bc.MetaBC` (meta-behaviour-cloning) are its subclasses.
"""

from __future__ import annotations

import math
import os
import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import backends
from .data.batch import Batch

class DictConfig:
    """``to_dict`` / ``from_dict`` for the algorithms' config dataclasses (unknown keys are an error)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_macaw(cls, mc, **extra):
        """The fields of a `MacawConfig` that mean the same here (same names), plus ``extra``."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in mc.to_dict().items() if k in names}, **extra)


#: `chunk_size='auto'`: task batches up to this size run the meta-step's backward in one pass;
#: larger ones in the fewest equal chunks of at most this many tasks (bounds the memory held by
#: the graph; measured at the paper config, see `MetaLearner.meta_step`).
AUTO_CHUNK_MAX = 18


def _adam_impl(device: torch.device) -> dict:
    """The fastest Adam implementation for the device (same update rule; fused is ~4x on CPU)."""
    return {"fused": True} if device.type in ("cpu", "cuda") else {"foreach": True}


@dataclass
class MetaGradient:
    """A meta-gradient from `MetaLearner.meta_gradient`, not yet applied.

    ``metrics``: `METRIC_NAMES` then the meta-loss, one tensor on the learner's device (nothing was
    read back to the host). ``leaves``, ``pending``: the backend's generated-parameter leaves of
    the step and what it still has to turn into parameter gradients (e.g. low-rank factors of
    W's gradient); `MetaLearner.dense_gradients` forms every ``.grad``, `MetaLearner.apply_update`
    applies it once.
    """

    metrics: Tensor
    leaves: list
    pending: object = None
    dense: bool = False
    applied: bool = False


@dataclass
class Adapted:
    """Per-task adapted generated parameters: one (T, P) tensor per layer."""

    value: list[Tensor]
    policy: list[Tensor]
    """Trunk layers then (when present) head layers."""

    def __len__(self) -> int:
        """Number of tasks T."""
        return int((self.policy or self.value)[0].shape[0])

    def select(self, tasks) -> "Adapted":
        """The adapted parameters of a subset of the tasks: ``tasks`` is an index, a list of indices,
        a slice or a boolean/integer tensor over the T tasks (in the order they were adapted)."""
        if isinstance(tasks, int):
            tasks = [tasks]
        if isinstance(tasks, (list, tuple)):
            n = len(self)
            bad = [t for t in tasks if not isinstance(t, int) or not -n <= t < n]
            if bad:
                raise IndexError(f"Adapted.select: task indices {bad} out of range for {n} adapted tasks")
            tasks = torch.as_tensor(tasks, dtype=torch.long, device=(self.policy or self.value)[0].device)
        return Adapted(value=[p[tasks] for p in self.value], policy=[p[tasks] for p in self.policy])




class MetaAlgorithm:
    """Base of the learners: subclasses build their networks and parameters, set `metric_names`,
    `state_format` and the optimizer, and write `meta_gradient`, `adapt`, `act` and the state.

    Call `_setup` first in ``__init__``: it validates the sizes and resolves the backend.
    """

    #: Names of the step's metrics, in the order of `MetaGradient.metrics` (then the meta-loss).
    metric_names: tuple = ()
    #: The "format" field of `state_dict`.
    state_format: str = ""

    def _setup(self, obs_dim: int, act_dim: int, n_train_tasks: int, *, device, backend, fused: bool | None,
               ops_backend: str, chunk_size: int | str) -> None:
        for name, v in (("obs_dim", obs_dim), ("act_dim", act_dim), ("n_train_tasks", n_train_tasks)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: expected a positive integer, got {v!r}")
        self.obs_dim, self.act_dim, self.n_train_tasks = obs_dim, act_dim, n_train_tasks
        #: Default tasks per backward pass of `meta_step` ('auto' or a positive int).
        self.chunk_size = chunk_size
        self.resolve_chunk_size(1)      # validates chunk_size
        if ops_backend not in ("auto", "triton", "torch"):
            raise ValueError(f"ops_backend: expected 'auto', 'triton' or 'torch', got {ops_backend!r}")
        if fused is True:
            backend = "fused"
        elif fused is False and backend == "auto":
            backend = "cpu" if backends.extension_built() else "torch"
        #: The execution strategy (`macaw_fast.backends`).
        self.backend = backends.resolve(backend, device, ops_backend)

    def _layers(self) -> list[nn.Module]:
        """Every generated-parameter layer of the learner's networks, in a fixed order."""
        raise NotImplementedError

    def meta_gradient(self, inner: Batch, outer: Batch, chunk_size: int | str | None = None, *,
                      check_inputs: bool = True) -> "MetaGradient":
        raise NotImplementedError

    @property
    def fused(self) -> bool:
        """Whether the step runs the fused ops (``backend.name == 'fused'``)."""
        return self.backend.name == "fused"


    def parameters(self) -> list[Tensor]:
        """Every trained tensor: value net, policy (with head), rates and kappa."""
        return [g for group in self.optimizer.param_groups for g in group["params"]]

    @property
    def device(self) -> torch.device:
        return self.parameters()[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.parameters()[0].dtype


    # ------------------------------------------------------------------ input checks
    def _check(self, batch: Batch, name: str) -> None:
        if not isinstance(batch, Batch):
            raise TypeError(f"{name}: expected a macaw_fast.data.Batch, got {type(batch).__name__}")
        batch.validate(self.obs_dim, self.act_dim, name)
        if batch.obs.dtype != self.dtype or batch.obs.device != self.device:
            raise TypeError(f"{name}: expected tensors of dtype {self.dtype} on {self.device}, "
                            f"got {batch.obs.dtype} on {batch.obs.device} (use batch.to(...))")
        if batch.batch_size < 2:
            raise ValueError(f"{name}: advantage weights need at least 2 rows per task (unbiased std), "
                             f"got batch size {batch.batch_size}")

    def _check_pair(self, inner: Batch, outer: Batch) -> None:
        self._check(inner, "inner")
        self._check(outer, "outer")
        if inner.num_tasks != outer.num_tasks:
            raise ValueError(f"inner and outer batches must hold the same tasks: inner has T={inner.num_tasks}, "
                             f"outer has T={outer.num_tasks}")


    def resolve_chunk_size(self, num_tasks: int, chunk_size: int | str | None = None) -> int:
        """Tasks per backward pass that `meta_step` uses for a task batch of ``num_tasks``.

        ``chunk_size``: None for this learner's `chunk_size`; 'auto' for the measured default
        (all tasks at once up to `AUTO_CHUNK_MAX` tasks, else the fewest equal chunks of at most
        that many); a positive int for at most that many tasks per chunk.
        """
        cs = self.chunk_size if chunk_size is None else chunk_size
        if cs == "auto":
            n_chunks = -(-num_tasks // AUTO_CHUNK_MAX)
            return -(-num_tasks // n_chunks)
        if not isinstance(cs, int) or isinstance(cs, bool) or cs < 1:
            raise ValueError(f"chunk_size: expected 'auto' or a positive integer, got {cs!r}")
        return min(cs, num_tasks)


    def dense_gradients(self, grad: MetaGradient) -> None:
        """Form every parameter's ``.grad`` from a `meta_gradient` (a backend may keep part of it
        factored until `apply_update`); for drivers that reduce gradients across processes."""
        if not grad.dense:
            self.backend.dense_gradients(self._layers(), grad.leaves, grad.pending)
            grad.dense = True

    def apply_update(self, grad: MetaGradient) -> None:
        """One Adam step of all three parameter groups from a `meta_gradient`."""
        if grad.applied:
            raise RuntimeError("apply_update: this meta-gradient was already applied")
        grad.applied = True
        if grad.dense:
            self.optimizer.step()
        else:
            self.backend.apply_update(self.optimizer, self._layers(), grad.leaves, grad.pending)

    def meta_step(self, inner: Batch, outer: Batch, chunk_size: int | str | None = None) -> dict:
        """`meta_gradient`, a check that the meta-loss is finite, `apply_update`. Returns the metrics
        (`metric_names` and 'loss/meta', over all tasks, as `meta_loss`'s).

        Raises FloatingPointError, parameters unchanged, when the meta-loss is not finite.
        """
        grad = self.meta_gradient(inner, outer, chunk_size)
        values = grad.metrics.tolist()
        if not math.isfinite(values[-1]):
            raise FloatingPointError(f"meta-loss is not finite ({values[-1]}); parameters left unchanged")
        self.apply_update(grad)
        metrics = dict(zip(self.metric_names, values))
        metrics["loss/meta"] = values[-1]
        return metrics


    @staticmethod
    def _slice(inner: Batch, outer: Batch, start: int, stop: int) -> tuple[Batch, Batch]:
        if (start, stop) == (0, inner.num_tasks):
            return inner, outer
        return tuple(Batch(**{k: v[start:stop] for k, v in b}) for b in (inner, outer))

    @classmethod
    def from_checkpoint(cls, path, *, device=None, backend="auto", fused: bool | None = None,
                        ops_backend: str = "auto", chunk_size: int | str = "auto") -> "MetaAlgorithm":
        """A learner from a ``macaw-fast train`` checkpoint file or run directory (its
        ``checkpoints/latest.pt``), verified against its SHA-256. For the paper's ``archive_*.pt``
        use :func:`macaw_fast.paper.load_archive`."""
        from .checkpoint import load_checkpoint

        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "checkpoints", "latest.pt")
        st = load_checkpoint(path, map_location="cpu")
        return cls.from_state_dict(st["learner"], device=device, backend=backend, fused=fused,
                                   ops_backend=ops_backend, chunk_size=chunk_size)

