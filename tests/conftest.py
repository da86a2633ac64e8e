"""Fixtures shared by the ops tests, and the Triton interpreter on machines without a GPU.

Without CUDA, ``TRITON_INTERPRET=1`` is set here, before anything imports triton, so ``pytest
tests`` runs the Triton kernel tests through Triton's interpreter on the CPU instead of skipping
them (set ``TRITON_INTERPRET=0`` to skip them, e.g. for a quick run).
"""

import os

if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

from macaw_fast.ops._common import interpreter_requested, triton_importable  # noqa: E402


@pytest.fixture(params=["torch", pytest.param("triton", marks=pytest.mark.triton)])
def backend(request):
    """The ops backend under test; Triton runs only under its interpreter here (no GPU)."""
    if request.param == "triton" and not (interpreter_requested() and triton_importable()):
        pytest.skip("Triton tests need TRITON_INTERPRET=1 (set before triton is imported) and triton")
    return request.param
