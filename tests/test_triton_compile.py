"""Every Triton kernel specialisation the ops use compiles ahead of time for sm_80 and sm_90.

The interpreter accepts code that a GPU compile rejects (layouts, dot shapes, dtypes), so this runs
the real compiler (no GPU needed). Skipped cleanly when triton is not installed.
"""

import pytest

pytest.importorskip("triton")

from macaw_fast.ops._aot import compile_spec, kernel_specs  # noqa: E402

SPECS = kernel_specs()


def _id(spec):
    flags = ",".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in spec["constexprs"].items())
    return f"{spec['name']}-{str(spec['dtype']).split('.')[-1]}-{flags}"


def test_specs_cover_every_kernel():
    names = {s["name"] for s in SPECS}
    assert names == {"adapt_reduce_kernel", "adapt_mix_kernel", "adapt_expand_kernel",
                     "adapt_bwd_reduce_kernel", "adapt_bwd_mix_kernel", "adapt_bwd_expand_kernel",
                     "batched_linear_kernel", "linear_bwd_kernel", "linear_dbwd_kernel",
                     "awr_loss_kernel", "awr_loss_bwd_kernel", "awr_loss_dbwd_kernel"}


@pytest.mark.triton
@pytest.mark.parametrize("capability", [80, 90])
@pytest.mark.parametrize("spec", SPECS, ids=_id)
def test_kernel_compiles_for_gpu(spec, capability):
    md = compile_spec(spec, capability)
    assert md["ptx_bytes"] > 0 and md["cubin_bytes"] > 0
    assert md["num_warps"] == spec["num_warps"]
    # fits the smallest per-block shared memory of the targets (A100: 163 KiB, H100: 227 KiB)
    assert md["shared"] <= 163 * 1024
