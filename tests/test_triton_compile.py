"""Every Triton kernel specialisation the ops use compiles ahead of time for sm_80 and sm_90.

The interpreter accepts code that a GPU compile rejects (layouts, dot shapes, dtypes), so this runs
the real compiler (no GPU needed). Skipped cleanly when triton is not installed.

Under ``TRITON_INTERPRET=1`` triton's code generation itself is patched for the interpreter, and a
compile with an empty cache fails; the compiles then run once, for every spec, in a subprocess
without ``TRITON_INTERPRET`` (so CI on a fresh machine runs them in either mode).
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

from macaw_fast.backends.fused_ops._aot import compile_spec, kernel_specs  # noqa: E402

SPECS = kernel_specs()
CAPABILITIES = (80, 90)

_CHILD = """
import json, sys
from macaw_fast.backends.fused_ops._aot import compile_spec, kernel_specs
out = {{i: [compile_spec(s, c) for c in {caps}] for i, s in enumerate(kernel_specs()) if i % {n} == {k}}}
sys.stdout.write("\\n" + json.dumps(out, default=str))
"""


@pytest.fixture(scope="module")
def compiled():
    """(spec index, capability) -> compile metadata."""
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        return lambda i, cap: compile_spec(SPECS[i], cap)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    n = max(1, min(4, os.cpu_count() or 1))   # compiles are single-threaded: one process per core
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD.format(caps=CAPABILITIES, n=n, k=k)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(n)]
    table = {}
    for p in procs:
        out, err = p.communicate(timeout=1800)
        assert p.returncode == 0, f"compile subprocess failed:\n{err[-4000:]}"
        table.update({int(i): v for i, v in json.loads(out.rsplit("\n", 1)[-1]).items()})
    assert sorted(table) == list(range(len(SPECS)))
    return lambda i, cap: table[i][CAPABILITIES.index(cap)]


def _id(spec):
    flags = ",".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in spec["constexprs"].items())
    return f"{spec['name']}-{str(spec['dtype']).split('.')[-1]}-{flags}"


def test_specs_cover_every_kernel():
    names = {s["name"] for s in SPECS}
    assert names == {"adapt_reduce_kernel", "adapt_mix_kernel", "adapt_expand_kernel",
                     "adapt_bwd_reduce_kernel", "adapt_bwd_mix_kernel", "adapt_bwd_expand_kernel",
                     "batched_linear_kernel", "linear_bwd_kernel", "linear_dbwd_kernel",
                     "awr_loss_kernel", "awr_loss_bwd_kernel", "awr_loss_dbwd_kernel", "theta_grad_kernel",
                     "step_metrics_kernel", "nonfinite_kernel",
                     "value_mse_kernel", "value_mse_bwd_kernel", "value_mse_dbwd_kernel",
                     "wlinear_generate_kernel", "advantage_kernel", "objective_kernel",
                     "theta_grad_group_kernel", "adapt_reduce_group_kernel", "adapt_mix_group_kernel",
                     "adapt_expand_group_kernel", "adapt_bwd_reduce_group_kernel", "adapt_bwd_mix_group_kernel",
                     "adapt_bwd_expand_group_kernel"}


@pytest.mark.triton
@pytest.mark.parametrize("capability", CAPABILITIES)
@pytest.mark.parametrize("index", range(len(SPECS)), ids=[_id(s) for s in SPECS])
def test_kernel_compiles_for_gpu(index, capability, compiled):
    spec = SPECS[index]
    md = compiled(index, capability)
    assert md["name"] == spec["name"] and md["capability"] == capability
    assert md["ptx_bytes"] > 0 and md["cubin_bytes"] > 0
    assert md["num_warps"] == spec["num_warps"]
    # fits the smallest per-block shared memory of the targets (A100: 163 KiB, H100: 227 KiB)
    assert md["shared"] <= 163 * 1024
