"""Fixtures shared by the ops tests."""

import pytest

from macaw_fast.ops._common import interpreter_requested, triton_importable


@pytest.fixture(params=["torch", pytest.param("triton", marks=pytest.mark.triton)])
def backend(request):
    """The ops backend under test; Triton runs only under its interpreter here (no GPU)."""
    if request.param == "triton" and not (interpreter_requested() and triton_importable()):
        pytest.skip("Triton tests need TRITON_INTERPRET=1 (set before triton is imported) and triton")
    return request.param
