"""ops.all_finite (the batches' NaN/inf check) and Batch.validate's use of it."""

from __future__ import annotations

import math

import pytest
import torch

import macaw_fast.ops as ops
from macaw_fast.data.synthetic import synthetic_batch

F64 = torch.float64


def _tensors(shapes, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=F64).to(dtype) for s in shapes]


SHAPES = [(3, 5, 7), (3, 5), (1,), (2, 1100), (0,), (4, 4, 2), (3, 5), (9,)]


def test_finite_tensors(backend):
    assert ops.all_finite(_tensors(SHAPES), backend=backend) is True
    assert ops.all_finite([], backend=backend) is True


# every tensor slot (incl. the 8th and a 9th, in the second launch), first/last/past-first-block elements
@pytest.mark.parametrize("which", [0, 3, 7, 8])
@pytest.mark.parametrize("where", [0, -1, 1500])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_one_bad_value_is_found(backend, which, where, bad):
    ts = _tensors(SHAPES + [(2000,)], seed=1)
    flat = ts[which].view(-1)
    if where >= flat.numel():
        pytest.skip("tensor too small for this position")
    flat[where] = bad
    assert ops.all_finite(ts, backend=backend) is False
    flat[where] = 0.5
    # the flag of the Triton path is cleared after a failure: a clean call passes again
    assert ops.all_finite(ts, backend=backend) is True


def test_float32_strided_and_huge_values(backend):
    ts = _tensors([(6, 4), (5,)], seed=2, dtype=torch.float32)
    assert ops.all_finite(ts, backend=backend)
    t = torch.randn(4, 6).t()                   # non-contiguous: torch path
    t[2, 3] = math.nan
    assert not ops.all_finite(ts + [t], backend=backend)
    # finite values whose norm overflows float32: still finite
    assert ops.all_finite([torch.full((10,), 3e38)], backend=backend)
    assert not ops.all_finite([torch.full((10,), 3e38), torch.tensor([math.inf])], backend=backend)
    # mixed dtypes: torch path, same answer
    assert ops.all_finite([ts[0], ts[1].double()], backend=backend)


def test_bad_input():
    with pytest.raises(TypeError, match="tensors\\[1\\] must be floating-point"):
        ops.all_finite([torch.zeros(2), torch.zeros(2, dtype=torch.int64)])
    with pytest.raises(TypeError, match="tensors\\[0\\] must be a torch.Tensor"):
        ops.all_finite([[1.0]])


@pytest.mark.parametrize("field", ["obs", "terminal_discount", "terminal_obs"])
def test_batch_validate_names_the_field(field):
    b = synthetic_batch(2, 4, 3, 2, torch.Generator().manual_seed(0))
    b.validate(3, 2)
    getattr(b, field).view(-1)[-1] = math.nan
    with pytest.raises(ValueError, match=f"batch.{field}: contains NaN or inf"):
        b.validate(3, 2)
    getattr(b, field).view(-1)[-1] = 0.0
    b.validate(3, 2)
