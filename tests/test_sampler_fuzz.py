"""Fuzz the C++ sampler with random and malformed arguments for a bounded time.

Every call must either succeed with exactly the numpy twin's output, or raise a Python exception
(never crash, never read out of bounds: run under AddressSanitizer by .ci/asan.sh). Both backends
must agree on whether a call is valid.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from macaw_fast.data import FIELDS, VECTOR_FIELDS
from macaw_fast.data.sampler import sample_meta_batch_numpy

C = pytest.importorskip("macaw_fast._C")
if not hasattr(C, "sample_meta_batch"):
    pytest.skip("macaw_fast._C was built without the sampler", allow_module_level=True)

ERRORS = (ValueError, TypeError, IndexError, OverflowError)
SECONDS = float(os.environ.get("MACAW_FAST_FUZZ_SECONDS", "3"))


def rand_array(rng: np.random.Generator, n: int, width: int | None) -> object:
    """A float32 array of n rows, sometimes malformed (dtype, layout, shape, type)."""
    shape = (n,) if width is None else (n, width)
    a = rng.standard_normal(shape).astype(np.float32)
    r = rng.random()
    if r < 0.02:
        return a.astype(rng.choice([np.float64, np.float16, np.int32]))
    if r < 0.04 and a.ndim == 2 and a.shape[1] > 1:
        return np.asfortranarray(a) if a.shape[0] > 1 else a[:, ::2]
    if r < 0.05:
        return a[::2]
    if r < 0.06:
        return a.reshape(-1)
    if r < 0.07:
        return a[..., None]
    if r < 0.075:
        return a.tolist()
    if r < 0.08:
        return None
    if r < 0.085:
        return a.byteswap().view(a.dtype.newbyteorder())
    return a


def rand_task(rng: np.random.Generator, obs_dim: int, act_dim: int) -> list:
    n = int(rng.integers(0, 40))
    out = []
    for f in FIELDS:
        rows = n if rng.random() > 0.03 else max(0, n + int(rng.integers(-2, 3)))
        if f in VECTOR_FIELDS:
            d = act_dim if f == "action" else obs_dim
            if rng.random() < 0.03:
                d = int(rng.integers(0, 4))
            out.append(rand_array(rng, rows, d))
        else:
            out.append(rand_array(rng, rows, 1 if rng.random() < 0.5 else None))
    if rng.random() < 0.02:
        out = out[: int(rng.integers(0, 8))]
    return out


def rand_outputs(rng: np.random.Generator, T: int, B: int, obs_dim: int, act_dim: int) -> list:
    outs = []
    for f in FIELDS:
        shape = (T, B, act_dim if f == "action" else obs_dim) if f in VECTOR_FIELDS else (T, B)
        if rng.random() < 0.01:
            shape = tuple(s + int(rng.integers(-1, 2)) for s in shape)
        shape = tuple(max(0, s) for s in shape)
        a = np.zeros(shape, np.float32)
        if rng.random() < 0.005:
            a.flags.writeable = False
        outs.append(a)
    return outs


def rand_slots(rng: np.random.Generator, T: int) -> list[int] | None:
    """None (all slots) or a random subset/ordering of [0, T), sometimes malformed (out of range, empty)."""
    r = rng.random()
    if r < 0.5:
        return None
    if r < 0.53:
        return []
    k = int(rng.integers(1, max(T, 1) + 1))
    if r < 0.6:
        return [int(x) for x in rng.integers(-1, T + 2, k)]
    return [int(x) for x in rng.integers(0, max(T, 1), k)]


def test_fuzz_random_and_malformed_arguments():
    rng = np.random.default_rng(20261117)
    deadline = time.monotonic() + SECONDS
    calls = ok = 0
    while time.monotonic() < deadline:
        obs_dim, act_dim = int(rng.integers(1, 5)), int(rng.integers(1, 4))
        tasks = [rand_task(rng, obs_dim, act_dim) for _ in range(int(rng.integers(1, 4)))]
        T = int(rng.integers(0, 4))
        ids = [int(x) for x in rng.integers(-1, len(tasks) + 1, T)] if rng.random() < 0.1 else [
            int(x) for x in rng.integers(0, len(tasks), T)
        ]
        B = int(rng.integers(-1, 30)) if rng.random() < 0.05 else int(rng.integers(1, 12))
        seed = int(rng.integers(0, 2**63)) * int(rng.integers(1, 3))
        step = int(rng.integers(0, 2**63))
        if rng.random() < 0.02:
            seed = -seed - 1
        mode = str(rng.choice(["contiguous", "uniform", "bogus"], p=[0.49, 0.49, 0.02]))
        paper = bool(rng.random() < 0.5)
        nt = int(rng.integers(0, 5))
        slots = rand_slots(rng, T)
        rows = T if slots is None else len(slots)
        inner, outer = rand_outputs(rng, rows, B, obs_dim, act_dim), rand_outputs(rng, rows, B, obs_dim, act_dim)
        r = rng.random()
        if r < 0.05:
            inner = None
        elif r < 0.1:
            outer = None
        elif r < 0.11:
            inner = outer = None
        inner2 = None if inner is None else [a.copy() for a in inner]
        outer2 = None if outer is None else [a.copy() for a in outer]
        pairs = list(zip(inner or [], inner2 or [])) + list(zip(outer or [], outer2 or []))
        for a, b in pairs:
            b.flags.writeable = a.flags.writeable
        calls += 1
        try:
            got = C.sample_meta_batch(tasks, ids, B, seed, step, mode, paper, inner, outer, nt, slots)
        except ERRORS:
            got = None
        try:
            want = sample_meta_batch_numpy(tasks, ids, B, seed, step, mode, paper, inner2, outer2, nt, slots)
        except ERRORS:
            want = None
        assert (got is None) == (want is None), (calls, B, ids, slots, mode, paper)
        if got is not None:
            ok += 1
            for a, b in zip(got, want):
                assert (a is None) == (b is None)
                if a is not None:
                    np.testing.assert_array_equal(a, b)
            for a, b in pairs:
                np.testing.assert_array_equal(a, b)
        # The stateful sampler: it validates every task up front (an error there is fine), and
        # then must agree with the twin on every call.
        try:
            core = C.Sampler(tasks, B, mode, paper, seed)
        except ERRORS:
            core = None
        if core is not None:
            calls += 1
            inner3 = None if inner is None else [np.zeros_like(a) for a in inner]
            outer3 = None if outer is None else [np.zeros_like(a) for a in outer]
            for a, b in zip((inner3 or []) + (outer3 or []), (inner or []) + (outer or [])):
                a.flags.writeable = b.flags.writeable
            try:
                got3 = core.sample(step, ids, inner3, outer3, slots, nt, True)
            except ERRORS:
                got3 = None
            assert (got3 is None) == (want is None), (calls, B, ids, slots, mode, paper)
            if got3 is not None:
                for a, b in zip(got3, want):
                    assert (a is None) == (b is None)
                    if a is not None:
                        np.testing.assert_array_equal(a, b)
                for a, b in zip((inner3 or []) + (outer3 or []), (inner2 or []) + (outer2 or [])):
                    np.testing.assert_array_equal(a, b)
    print(f"fuzz: {calls} calls, {ok} valid")
    assert calls > 50 and ok > 5, (calls, ok)  # the fuzzer exercised both outcomes
