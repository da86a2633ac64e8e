"""Device kernels launched by one meta-step: batched (torch ops) vs fused (Triton kernels).

Run: ``TRITON_INTERPRET=1 python bench/count_launches.py`` (without the interpreter and without
a GPU the fused step runs the torch twins, whose count is printed too but is not what a GPU runs).
``--ops``: the most frequent ops/kernels per row; ``--sources``: the fused step's torch ops grouped
by where they run (the autograd node executing, or "fwd", and the innermost macaw_fast frame).
A launch is a non-view aten op (TorchDispatchMode) or a Triton kernel launch; counts do not depend
on the network sizes, so small ones are used (the interpreter is slow), with the paper's T = 5.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_ops import count_launches  # noqa: E402

from macaw_fast import MacawConfig, MetaLearner  # noqa: E402
from macaw_fast.data.synthetic import synthetic_batch  # noqa: E402


def launches_per_step(fused: bool, backend: str = "auto", T: int = 5, small: bool = True) -> dict:
    cfg = MacawConfig(net_width=8, wlinear_dim=4, head_width=4) if small else MacawConfig()
    torch.manual_seed(0)
    learner = MetaLearner(20, 6, 35, cfg, fused=fused, ops_backend=backend)
    g = torch.Generator().manual_seed(0)
    B = 16 if small else 256
    inner, outer = synthetic_batch(T, B, 20, 6, g), synthetic_batch(T, B, 20, 6, g)
    learner.meta_step(inner, outer)                      # optimizer state exists from now on
    return count_launches(learner.meta_step, inner, outer)


def torch_op_sources(backend: str = "triton", T: int = 5) -> Counter:
    """The fused step's torch ops (as counted above) by (autograd node or 'fwd', innermost
    macaw_fast frame, op name): where the launches that are not Triton kernels come from."""
    import traceback

    import bench_ops
    from torch.utils._python_dispatch import TorchDispatchMode

    cfg = MacawConfig(net_width=8, wlinear_dim=4, head_width=4)
    torch.manual_seed(0)
    learner = MetaLearner(20, 6, 35, cfg, fused=True, ops_backend=backend)
    g = torch.Generator().manual_seed(0)
    inner, outer = synthetic_batch(T, 16, 20, 6, g), synthetic_batch(T, 16, 20, 6, g)
    learner.meta_step(inner, outer)
    src: Counter = Counter()

    class _Where(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name not in bench_ops.NO_KERNEL and not bench_ops._IN_TRITON[0]:
                node = torch._C._current_autograd_node()
                frame = next((f"{os.path.basename(f.filename)}:{f.name}" for f in reversed(traceback.extract_stack())
                              if "macaw_fast" in f.filename and "_common" not in f.filename), "?")
                src[(node.name() if node is not None else "fwd", frame, name)] += 1
            return func(*args, **(kwargs or {}))

    with bench_ops._count_triton(), _Where():
        learner.meta_step(inner, outer)
    return src


def main() -> int:
    from macaw_fast.ops._common import interpreter_requested, triton_importable

    rows = {"batched": launches_per_step(False)}
    rows["fused (torch twins)"] = launches_per_step(True, "torch")
    if interpreter_requested() and triton_importable():
        rows["fused (triton)"] = launches_per_step(True, "triton")
    out = {k: {"total": v["total"], "torch": v["torch"], "triton": v["triton"]} for k, v in rows.items()}
    for k, v in out.items():
        print(f"{k:22s} total {v['total']:5d}   torch ops {v['torch']:5d}   triton {v['triton']:4d}")
    if "--json" in sys.argv:
        print(json.dumps(out))
    if "--ops" in sys.argv:
        for k, v in rows.items():
            print(k, v["ops"].most_common(25))
    if "--sources" in sys.argv:
        src = torch_op_sources("triton" if "fused (triton)" in rows else "torch")
        for (node, frame, op), n in sorted(src.items(), key=lambda kv: -kv[1]):
            print(f"{n:4d}  {node:32s} {frame:40s} {op}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
