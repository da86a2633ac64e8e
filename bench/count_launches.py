"""Device kernels launched by one meta-step: batched (torch ops) vs fused (Triton kernels).

Run: ``TRITON_INTERPRET=1 python bench/count_launches.py`` (without the interpreter and without
a GPU the fused step runs the torch twins, whose count is printed too but is not what a GPU runs).
A launch is a non-view aten op (TorchDispatchMode) or a Triton kernel launch; counts do not depend
on the network sizes, so small ones are used (the interpreter is slow), with the paper's T = 5.
"""

from __future__ import annotations

import json
import os
import sys

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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
