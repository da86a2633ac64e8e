"""The whole fused MACAW meta-step captured in one CUDA graph (GPU only).

`GraphedMetaStep(learner, T, B)` records forward, meta-backward and the Adam update of a fused
`MetaLearner` once, on static input buffers, and `step(inner, outer)` then only copies the new
batches into those buffers and replays the graph: one launch of the graph instead of several
hundred kernel launches and no Python in the loop. Results equal eager fused steps (same kernels,
same order); tests/test_cuda_graph.py checks it where a GPU exists.

Differences from `MetaLearner.meta_step`, all forced by capture:

* No host synchronisation inside the step: the meta-loss and metrics are written to static
  tensors and read once after the replay (one sync per step, as in the eager step).
* The finiteness check happens after the replay, so on a non-finite meta-loss the parameters have
  already been updated (eager raises before the update). `step` still raises.
* Adam runs with ``capturable=True`` (step counters on the GPU); the learner keeps that setting.
* Input checks (shapes, dtypes, finiteness) run on each incoming batch on the host side of `step`,
  not inside the graph; shapes are fixed to (T, B) at construction.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..data.batch import Batch
from ..macaw import METRIC_NAMES, MetaLearner


class GraphedMetaStep:
    """A fused `MetaLearner`'s meta-step (forward, backward, Adam) captured in a CUDA graph.

    Args:
        learner: a ``MetaLearner(..., fused=True)`` whose parameters live on a CUDA device. Its
            optimizer is switched to ``capturable=True``. The learner's parameters and Adam state
            are the graph's: after `step`, ``learner`` holds the updated values (checkpointing,
            evaluation and eager steps keep working on it).
        T, B: tasks per meta-batch and rows per task of every batch `step` will receive.
        warmup: eager iterations on a side stream before capture (they build the optimizer state
            and Triton's compiled kernels); their parameter updates are undone exactly.

    Raises:
        RuntimeError: without CUDA, or if the learner is not fused or not on a CUDA device.
    """

    def __init__(self, learner: MetaLearner, T: int, B: int, *, warmup: int = 2) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("GraphedMetaStep needs a CUDA GPU (torch.cuda.is_available() is False)")
        if not learner.fused:
            raise RuntimeError("GraphedMetaStep needs MetaLearner(..., fused=True)")
        if learner.device.type != "cuda":
            raise RuntimeError(f"GraphedMetaStep needs the learner on a CUDA device, got {learner.device}")
        for name, v in (("T", T), ("B", B)):
            if not isinstance(v, int) or isinstance(v, bool) or v < (1 if name == "T" else 2):
                raise ValueError(f"GraphedMetaStep: {name} must be an integer >= {1 if name == 'T' else 2}, got {v!r}")
        self.learner, self.T, self.B = learner, T, B
        opt = learner.optimizer
        for group in opt.param_groups:
            group["capturable"] = True
        for state in opt.state.values():                # existing step counters move to the GPU
            if "step" in state and state["step"].device != learner.device:
                state["step"] = state["step"].to(learner.device, torch.float32)
        kw = {"device": learner.device, "dtype": learner.dtype}
        od, ad = learner.obs_dim, learner.act_dim
        shapes = {"obs": (T, B, od), "action": (T, B, ad), "reward": (T, B), "next_obs": (T, B, od),
                  "done": (T, B), "mc_return": (T, B), "terminal_obs": (T, B, od), "terminal_discount": (T, B)}
        # the warm-up runs on random finite inputs (zeros would make the advantages' std 0)
        g = torch.Generator(device=learner.device).manual_seed(0)
        self.static_inner = Batch(**{k: torch.randn(s, generator=g, **kw) for k, s in shapes.items()})
        self.static_outer = Batch(**{k: torch.randn(s, generator=g, **kw) for k, s in shapes.items()})
        self.graph = torch.cuda.CUDAGraph()
        self._capture(warmup)

    # ------------------------------------------------------------------ capture
    def _snapshot(self):
        opt = self.learner.optimizer
        params = [p.detach().clone() for p in self.learner.parameters()]
        state = {p: {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in s.items()}
                 for p, s in opt.state.items()}
        return params, state

    def _restore(self, snap) -> None:
        """Put parameters and Adam state back, in place (the graph keeps its addresses)."""
        params, state = snap
        opt = self.learner.optimizer
        with torch.no_grad():
            for p, v in zip(self.learner.parameters(), params):
                p.copy_(v)
            for p, s in opt.state.items():
                old = state.get(p)
                for k, v in s.items():
                    if isinstance(v, Tensor):
                        v.copy_(old[k]) if old is not None else v.zero_()

    def _body(self) -> Tensor:
        # exactly the eager step's calls: MetaLearner.meta_step is meta_gradient + a host-side
        # finiteness check + apply_update, and the fused backend reads nothing back to the host
        grad = self.learner.meta_gradient(self.static_inner, self.static_outer, check_inputs=False)
        self.learner.apply_update(grad)
        return grad.metrics

    def _capture(self, warmup: int) -> None:
        opt = self.learner.optimizer
        snap = self._snapshot()
        side = torch.cuda.Stream(device=self.learner.device)
        side.wait_stream(torch.cuda.current_stream(self.learner.device))
        with torch.cuda.stream(side):
            for _ in range(max(1, warmup)):
                opt.zero_grad(set_to_none=True)
                self._body()
        torch.cuda.current_stream(self.learner.device).wait_stream(side)
        torch.cuda.synchronize(self.learner.device)
        self._restore(snap)                         # the warm-up's updates are undone exactly
        opt.zero_grad(set_to_none=True)             # grads are allocated (and reused) by the graph
        with torch.cuda.graph(self.graph):
            self.static_values = self._body()
        torch.cuda.synchronize(self.learner.device)
        # capture recorded the step but did not run it: parameters are still the snapshot's

    # ------------------------------------------------------------------ replay
    def _load(self, src: Batch, dst: Batch, name: str) -> None:
        if not isinstance(src, Batch):
            raise TypeError(f"{name}: expected a macaw_fast.data.Batch, got {type(src).__name__}")
        src.validate(self.learner.obs_dim, self.learner.act_dim, name)
        if (src.num_tasks, src.batch_size) != (self.T, self.B):
            raise ValueError(f"{name}: the graph was captured for T={self.T}, B={self.B}; "
                             f"got T={src.num_tasks}, B={src.batch_size}")
        for (field, s), (_, d) in zip(src, dst):
            if s.dtype != d.dtype:
                raise TypeError(f"{name}.{field}: expected dtype {d.dtype}, got {s.dtype}")
            d.copy_(s, non_blocking=True)

    def step(self, inner: Batch, outer: Batch) -> dict:
        """One meta-step by graph replay: copy the batches in, replay, return the metrics.

        Same metrics dict as `MetaLearner.meta_step` (including 'loss/meta').
        """
        self._load(inner, self.static_inner, "inner")
        self._load(outer, self.static_outer, "outer")
        self.graph.replay()
        values = self.static_values.tolist()
        metrics = dict(zip(METRIC_NAMES, values[:-1]))
        metrics["loss/meta"] = values[-1]
        if not math.isfinite(values[-1]):
            raise FloatingPointError(f"meta-loss is not finite ({values[-1]}) in the graphed step; "
                                     "unlike the eager step the parameters were already updated")
        return metrics
