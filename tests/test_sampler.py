"""The meta-batch sampler: C++ vs numpy twin, index properties, uniformity, determinism, errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from macaw_fast.data import FIELDS, VECTOR_FIELDS
from macaw_fast.data import sampler as S
from macaw_fast.data.loader import MetaBatchLoader
from macaw_fast.data.sampler import MetaBatchSampler, choose_tasks, sample_indices_numpy, sample_meta_batch_numpy

C = pytest.importorskip("macaw_fast._C")
if not hasattr(C, "sample_meta_batch"):
    pytest.skip("macaw_fast._C was built without the sampler", allow_module_level=True)

BACKENDS = ("cpp", "numpy")
M64 = (1 << 64) - 1


def make_task(n: int, obs_dim: int = 5, act_dim: int = 2, scalar_2d: bool = False, seed: int = 0) -> dict:
    """Random float32 fields of one task with n rows (standard normal: distinct rows)."""
    rng = np.random.default_rng(seed)
    out = {}
    for f in FIELDS:
        if f in VECTOR_FIELDS:
            d = act_dim if f == "action" else obs_dim
            a = rng.standard_normal((n, d)).astype(np.float32)
        else:
            a = rng.standard_normal((n, 1) if scalar_2d else (n,)).astype(np.float32)
        out[f] = a
    return out


def arrays(task: dict) -> list[np.ndarray]:
    return [task[f] for f in FIELDS]


def outputs(T: int, B: int, obs_dim: int = 5, act_dim: int = 2) -> list[np.ndarray]:
    return [
        np.full((T, B, act_dim if f == "action" else obs_dim), np.nan, np.float32) if f in VECTOR_FIELDS
        else np.full((T, B), np.nan, np.float32)
        for f in FIELDS
    ]


def run(backend: str, tasks, ids, B, seed, step, mode, paper_window, obs_dim=5, act_dim=2, num_threads=1):
    fn = C.sample_meta_batch if backend == "cpp" else sample_meta_batch_numpy
    inner, outer = outputs(len(ids), B, obs_dim, act_dim), outputs(len(ids), B, obs_dim, act_dim)
    idx = fn([arrays(t) for t in tasks], ids, B, seed, step, mode, paper_window, inner, outer, num_threads)
    return idx, inner, outer


# ------------------------------------------------------------------------------------------------
# The RNG: C++ and numpy agree with a big-integer reference, including the rejection path.


def ref_below(key: int, k: int, n: int) -> int:
    """Lemire's exact method with Python integers (the definition in csrc/sampler.hpp)."""
    a = 0
    while True:
        r = S._mix64_int(key + ((k + (a << 32)) + 1) * S._GOLDEN)
        m = r * n
        if (m & M64) >= (1 << 64) % n:
            return m >> 64
        a += 1


def test_rng_matches_reference():
    rng = np.random.default_rng(1)
    for _ in range(300):
        seed, step, task, slot = (int(x) for x in rng.integers(0, 2**63, 4, dtype=np.int64))
        stream = int(rng.integers(0, 6))
        key = S.stream_key(seed, step, task, slot, stream)
        assert C.stream_key(seed, step, task, slot, stream) == key
        k = int(rng.integers(0, 2**32))
        n = int(rng.choice([1, 2, 3, 255, 257, 2**31 + 11, 2**32 - 1, int(rng.integers(1, 2**32))]))
        want = ref_below(key, k, n)
        assert 0 <= want < n
        assert C.uniform_below(key, k, n) == want
        assert S.uniform_below(key, k, n) == want
    assert C.stream_key(M64, M64, M64, M64, M64) == S.stream_key(M64, M64, M64, M64, M64)


@pytest.mark.parametrize("n", [3, 1000003, 2**32 - 5])
def test_rng_rejection_path(n):
    # word(key, k) = mix64(key + (k+1) * GOLDEN) is 0 when key = -(k+1) * GOLDEN; r = 0 gives a low
    # product 0 < 2^64 mod n, so attempt 0 is rejected and attempt 1 decides.
    k = 7
    key = (-(k + 1) * S._GOLDEN) & M64
    assert (1 << 64) % n > 0
    want = S._mix64_int(key + (k + (1 << 32) + 1) * S._GOLDEN) * n >> 64
    assert ref_below(key, k, n) == want
    assert C.uniform_below(key, k, n) == want
    assert S.uniform_below(key, k, n) == want
    assert S._below_int(key, k, n) == want  # the twin's scalar path (few draws)


def test_distinct_rows_cpp_matches_twin():
    rng = np.random.default_rng(5)
    for n, b in [(1, 1), (5, 5), (17, 16), (17, 17), (1000, 3), (40, 39), (2**32 - 1, 300), (300, 256)]:
        kr, ks = (int(x) for x in rng.integers(0, 2**63, 2, dtype=np.int64))
        got = C.distinct_rows(kr, ks, n, b)
        np.testing.assert_array_equal(got, S._distinct_rows(kr, ks, n, b))
        assert len(set(got.tolist())) == b and got.min() >= 0 and got.max() < n
    with pytest.raises(ValueError, match="b: expected"):
        C.distinct_rows(1, 2, 5, 6)


def test_rng_argument_checks():
    with pytest.raises(ValueError, match="n: expected"):
        C.uniform_below(1, 0, 0)
    with pytest.raises(ValueError, match="n: expected"):
        S.uniform_below(1, 0, 2**32)
    with pytest.raises(ValueError, match="step"):
        S.stream_key(0, -1, 0, 0, 0)


# ------------------------------------------------------------------------------------------------
# C++ and the numpy twin: identical indices and identical data.


CASES = [
    # (row counts, task ids, B, obs_dim, act_dim, scalar (N, 1))
    ([300, 257, 1000], [2, 0, 1], 256, 20, 6, False),
    ([40, 41, 90, 33, 60], [4, 1, 3, 0, 2], 32, 3, 1, True),
    ([10], [0, 0, 0], 9, 1, 1, False),  # the same task in three slots
    ([2, 5], [1, 0], 1, 4, 3, True),
    ([777] * 7, [6, 5, 4, 3, 2, 1, 0], 35, 7, 2, False),
]


@pytest.mark.parametrize("mode", S.INNER_MODES)
@pytest.mark.parametrize("paper_window", [True, False])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_cpp_matches_numpy_twin(case, mode, paper_window):
    rows, ids, B, od, ad, s2 = CASES[case]
    tasks = [make_task(n, od, ad, s2, seed=i) for i, n in enumerate(rows)]
    for seed, step in [(0, 0), (1, 1), (12345, 999_999), (M64, 2**63)]:
        (ci, co), cin, cout = run("cpp", tasks, ids, B, seed, step, mode, paper_window, od, ad, num_threads=3)
        (ni, no), nin, nout = run("numpy", tasks, ids, B, seed, step, mode, paper_window, od, ad)
        np.testing.assert_array_equal(ci, ni)
        np.testing.assert_array_equal(co, no)
        for a, b in zip(cin + cout, nin + nout):
            np.testing.assert_array_equal(a, b)
        # The data are the rows the indices name, every field, both batches.
        for slot, t in enumerate(ids):
            for f, name in enumerate(FIELDS):
                src = tasks[t][name].reshape(rows[t], -1)
                np.testing.assert_array_equal(cin[f][slot].reshape(B, -1), src[ci[slot]])
                np.testing.assert_array_equal(cout[f][slot].reshape(B, -1), src[co[slot]])
        ki, ko = C.sample_indices(rows, ids, B, seed, step, mode, paper_window)
        np.testing.assert_array_equal(ki, ci)
        np.testing.assert_array_equal(ko, co)


def test_thread_count_does_not_change_output():
    tasks = [make_task(500, seed=i) for i in range(6)]
    ids = [5, 3, 1, 0, 2, 4]
    ref = run("cpp", tasks, ids, 64, 3, 17, "uniform", True, num_threads=1)
    for nt in (0, 2, 7, 100):
        got = run("cpp", tasks, ids, 64, 3, 17, "uniform", True, num_threads=nt)
        for a, b in zip(ref[0] + tuple(ref[1]) + tuple(ref[2]), got[0] + tuple(got[1]) + tuple(got[2])):
            np.testing.assert_array_equal(a, b)


def test_memmapped_readonly_inputs(tmp_path):
    task = make_task(400, seed=3)
    mapped = {}
    for f in FIELDS:
        np.save(tmp_path / f"{f}.npy", task[f])
        mapped[f] = np.load(tmp_path / f"{f}.npy", mmap_mode="r")
        assert not mapped[f].flags.writeable
    (ci, co), cin, _ = run("cpp", [mapped], [0], 100, 5, 6, "contiguous", True)
    (ni, no), nin, _ = run("numpy", [task], [0], 100, 5, 6, "contiguous", True)
    np.testing.assert_array_equal(ci, ni)
    for a, b in zip(cin, nin):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------------
# Properties of the indices.


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("paper_window", [True, False])
def test_windows_contiguous_and_in_range(backend, paper_window):
    B = 16
    rows = [B + 1, B + 2, 50, 400] if paper_window else [B, B + 1, 50, 400]
    fn = C.sample_indices if backend == "cpp" else sample_indices_numpy
    last_start = {n: n - B - 1 if paper_window else n - B for n in rows}
    seen_last = set()
    for step in range(200):
        inner, _ = fn(rows, [0, 1, 2, 3], B, 11, step, "contiguous", paper_window)
        for slot, n in enumerate(rows):
            w = inner[slot]
            np.testing.assert_array_equal(np.diff(w), np.ones(B - 1))
            assert 0 <= w[0] <= last_start[n]
            if w[0] == last_start[n]:
                seen_last.add(n)
    # The last allowed start is reached; with the paper's rule the row N-1 never is (checked above).
    assert seen_last == set(rows)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", S.INNER_MODES)
def test_outer_rows_distinct_and_in_range(backend, mode):
    fn = C.sample_indices if backend == "cpp" else sample_indices_numpy
    rows = [8, 9, 30, 5000]
    for step in range(50):
        inner, outer = fn(rows, [0, 1, 2, 3], 8, 2, step, mode, False)
        for slot, n in enumerate(rows):
            for idx in ([outer[slot]] + ([inner[slot]] if mode == "uniform" else [])):
                assert len(set(idx.tolist())) == 8
                assert idx.min() >= 0 and idx.max() < n
        assert sorted(outer[0].tolist()) == list(range(8))  # N == B: a permutation


def chi2_bound(dof: int, z: float = 4.753) -> float:
    """Upper (1 - 1e-6) quantile of chi-square(dof) by the Wilson-Hilferty approximation (z = Phi^-1(1 - 1e-6)).

    The seeds are fixed, so each test is deterministic; the bound says a correct sampler passes at
    any seed except with probability ~1e-6, while the biases this guards against (an off-by-one
    start range, modulo bias, Floyd's order without the shuffle) give statistics in the thousands.
    """
    c = 2.0 / (9.0 * dof)
    return dof * (1.0 - c + z * math.sqrt(c)) ** 3


def chi2(counts: np.ndarray) -> float:
    e = counts.sum() / counts.size
    return float(((counts - e) ** 2 / e).sum())


def test_window_start_uniform_chi_square():
    B, n, T, steps = 32, 32 + 60, 20, 1500  # 60 possible starts, 30,000 draws (500 per start)
    counts = np.zeros(n - B, dtype=np.int64)
    for step in range(steps):
        inner, _ = C.sample_indices([n], [0] * T, B, 2024, step, "contiguous", True)
        np.add.at(counts, inner[:, 0], 1)
    stat = chi2(counts)
    assert stat < chi2_bound(n - B - 1), (stat, counts)
    # Sensitivity: dropping one start (the off-by-one this rule is about) is far outside the bound.
    assert chi2(np.append(counts, 0)) > chi2_bound(n - B)


def test_outer_rows_uniform_per_position_chi_square():
    n, B, T, steps = 24, 8, 20, 600  # 12,000 samples of 8 rows
    first = np.zeros(n, dtype=np.int64)
    last = np.zeros(n, dtype=np.int64)
    every = np.zeros(n, dtype=np.int64)
    for step in range(steps):
        _, outer = C.sample_indices([n], [0] * T, B, 77, step, "uniform", True)
        np.add.at(first, outer[:, 0], 1)
        np.add.at(last, outer[:, -1], 1)
        np.add.at(every, outer.ravel(), 1)
    for counts in (first, last, every):
        assert chi2(counts) < chi2_bound(n - 1), counts


def test_choose_tasks():
    ids = list(range(100, 135))
    counts = np.zeros(35, dtype=np.int64)
    for step in range(2000):
        got = choose_tasks(ids, 5, 9, step)
        assert len(set(got)) == 5 and set(got) <= set(ids)
        assert got == choose_tasks(ids, 5, 9, step)
        np.add.at(counts, np.array(got) - 100, 1)
    assert chi2(counts) < chi2_bound(34)
    assert choose_tasks([3, 1], 5, 0, 0) == [3, 1]
    # The C++ draw and the numpy twin's choose the same tasks.
    with_cpp = [choose_tasks(ids, 5, 9, step) for step in range(20)]
    S._CPP_STATUS, saved = (False, "disabled by the test"), S._CPP_STATUS
    try:
        assert [choose_tasks(ids, 5, 9, step) for step in range(20)] == with_cpp
    finally:
        S._CPP_STATUS = saved
    assert choose_tasks(ids, 5, 1, 0) != choose_tasks(ids, 5, 2, 0)


# ------------------------------------------------------------------------------------------------
# The wrapper, determinism and resume.


@pytest.fixture
def tasks():
    return [make_task(n, 6, 3, seed=i) for i, n in enumerate([300, 400, 350, 280, 500, 320, 410])]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sampler_returns_batches_in_buffers(tasks, backend):
    s = MetaBatchSampler(tasks, 64, seed=4, backend=backend)
    assert (s.obs_dim, s.act_dim, s.backend) == (6, 3, backend)
    out = s.allocate(3)
    inner, outer, ii, oi = s.sample(10, [4, 0, 2], out=out, return_indices=True)
    assert inner is out[0] and outer is out[1]
    inner.validate(6, 3, "inner")
    outer.validate(6, 3, "outer")
    np.testing.assert_array_equal(inner.obs[0].numpy(), tasks[4]["obs"][ii[0]])
    np.testing.assert_array_equal(outer.mc_return[2].numpy(), tasks[2]["mc_return"][oi[2]])
    # Without `out` the sampler reuses one buffer pair per task-batch size.
    a = s.sample(11, [1, 2, 3])
    b = s.sample(12, [1, 2, 3])
    assert a[0].obs.data_ptr() == b[0].obs.data_ptr()
    # A field replaced in a buffer is written, not the old tensor.
    out[0].obs = torch.zeros_like(out[0].obs)
    _, _, ii, _ = s.sample(13, [4, 0, 2], out=out, return_indices=True)
    np.testing.assert_array_equal(out[0].obs[1].numpy(), tasks[0]["obs"][ii[1]])
    out[0].obs = torch.zeros(3, 64, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="float32"):
        s.sample(13, [4, 0, 2], out=out)


def test_sampler_backends_identical_and_deterministic(tasks):
    a = MetaBatchSampler(tasks, 32, seed=8, inner_mode="uniform", backend="cpp")
    b = MetaBatchSampler(tasks, 32, seed=8, inner_mode="uniform", backend="numpy")
    c = MetaBatchSampler(tasks, 32, seed=9, inner_mode="uniform", backend="cpp")
    for step in (0, 5, 123456):
        x = a.sample(step, [6, 1], out=a.allocate(2))
        y = b.sample(step, [6, 1], out=b.allocate(2))
        z = c.sample(step, [6, 1], out=c.allocate(2))
        for bx, by, bz in zip(x, y, z):
            for (k, vx), (_, vy), (_, vz) in zip(bx, by, bz):
                assert torch.equal(vx, vy), k
                assert not torch.equal(vx, vz), k


@pytest.mark.parametrize("prefetch", [True, False])
def test_loader_resume_equals_uninterrupted(tasks, prefetch):
    s = MetaBatchSampler(tasks, 16, seed=1)
    full = [
        (m.step, m.task_ids, m.inner.to(torch.float64), m.outer.to(torch.float64))  # copies
        for m in MetaBatchLoader(s, [0, 1, 2, 3, 4, 5], 5, num_steps=8, prefetch=prefetch)
    ]
    assert [f[0] for f in full] == list(range(8))
    assert all(len(set(f[1])) == 5 for f in full)
    resumed = list(MetaBatchLoader(s, [0, 1, 2, 3, 4, 5], 5, start_step=5, num_steps=3, prefetch=not prefetch, num_buffers=3))
    for got, (step, ids, inner, outer) in zip(resumed, full[5:]):
        assert got.step == step and got.task_ids == ids
        for (k, a), (_, b) in zip(got.inner, inner):
            assert torch.equal(a.to(torch.float64), b), k
        for (k, a), (_, b) in zip(got.outer, outer):
            assert torch.equal(a.to(torch.float64), b), k


def test_loader_few_tasks_and_early_exit(tasks):
    s = MetaBatchSampler(tasks, 16, seed=1)
    it = iter(MetaBatchLoader(s, [3, 1], 5))
    first = next(it)
    assert first.task_ids == [3, 1] and first.inner.num_tasks == 2
    next(it)
    it.close()  # stops and joins the background thread


def test_loader_propagates_errors(tasks, monkeypatch):
    s = MetaBatchSampler(tasks, 16)

    def boom(*a, **k):
        raise RuntimeError("sampler failed")

    monkeypatch.setattr(s, "sample", boom)
    with pytest.raises(RuntimeError, match="sampler failed"):
        next(iter(MetaBatchLoader(s, [0, 1])))


def test_fallback_to_numpy_twin_warns(tasks, monkeypatch):
    monkeypatch.setattr(S, "_CPP_STATUS", None)

    def missing():
        raise ImportError("no sampler in this build")

    monkeypatch.setattr(S, "_cpp_module", missing)
    with pytest.warns(RuntimeWarning, match="numpy twin"):
        s = MetaBatchSampler(tasks, 16)
    assert s.backend == "numpy"
    with pytest.raises(RuntimeError, match="unavailable"):
        MetaBatchSampler(tasks, 16, backend="cpp")


def test_pin_memory_without_cuda_warns(tasks):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.warns(RuntimeWarning, match="pin_memory"):
        s = MetaBatchSampler(tasks, 16, pin_memory=True)
    assert not s.pin_memory


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pinned_buffers(tasks):
    s = MetaBatchSampler(tasks, 16, pin_memory=True)
    inner, outer = s.sample(0, [0, 1])
    assert inner.obs.is_pinned() and outer.reward.is_pinned()


# ------------------------------------------------------------------------------------------------
# Malformed input: clear errors naming the task and field, from both backends.


def bad(kind: str, tasks: list[dict]) -> list[dict]:
    t = dict(tasks[1])
    if kind == "dtype":
        t["reward"] = t["reward"].astype(np.float64)
    elif kind == "noncontig":
        t["obs"] = np.asfortranarray(t["obs"])
    elif kind == "rows":
        t["next_obs"] = t["next_obs"][:-1].copy()
    elif kind == "dim":
        t["action"] = np.zeros((len(t["obs"]), 4), np.float32)
    elif kind == "scalar2":
        t["done"] = np.zeros((len(t["obs"]), 2), np.float32)
    elif kind == "vec1d":
        t["terminal_obs"] = np.zeros(len(t["obs"]), np.float32)
    elif kind == "short":
        t = {k: v[:16] for k, v in t.items()}
    elif kind == "notarray":
        t["mc_return"] = t["mc_return"].tolist()
    return [tasks[0], t, tasks[2]]


BAD = {
    "dtype": (TypeError, r"task 1: field 'reward': expected dtype float32, got float64"),
    "noncontig": (ValueError, r"task 1: field 'obs': expected a C-contiguous array"),
    "rows": (ValueError, r"task 1: field 'next_obs': has 299 rows but field 'obs' has 300"),
    "dim": (ValueError, r"task 1: field 'action': expected shape \(N, 2\)"),
    "scalar2": (ValueError, r"task 1: field 'done': expected shape \(N,\) or \(N, 1\), got \(300, 2\)"),
    "vec1d": (ValueError, r"task 1: field 'terminal_obs': expected shape \(N, 5\)"),
    "short": (ValueError, r"task 1: has 16 rows, fewer than the 17 needed for batch size 16"),
    "notarray": (TypeError, r"task 1: field 'mc_return': expected a numpy array, got list"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", sorted(BAD))
def test_malformed_task_arrays(backend, kind):
    tasks = bad(kind, [make_task(300, seed=i) for i in range(3)])
    exc, msg = BAD[kind]
    with pytest.raises(exc, match=msg):
        run(backend, tasks, [0, 1, 2], 16, 0, 0, "contiguous", True)
    if backend == "numpy":  # the wrapper checks every task up front
        with pytest.raises(exc, match=msg):
            MetaBatchSampler(tasks, 16, backend="cpp")


@pytest.mark.parametrize("backend", BACKENDS)
def test_malformed_arguments(backend):
    tasks = [make_task(50, seed=i) for i in range(2)]
    with pytest.raises(IndexError, match=r"task_ids\[1\]: task 2 out of range for 2 tasks"):
        run(backend, tasks, [0, 2], 8, 0, 0, "contiguous", True)
    with pytest.raises(IndexError, match="out of range"):
        run(backend, tasks, [-1], 8, 0, 0, "contiguous", True)
    with pytest.raises(ValueError, match="task_ids: expected at least one"):
        run(backend, tasks, [], 8, 0, 0, "contiguous", True)
    with pytest.raises(ValueError, match="inner_mode: expected 'contiguous' or 'uniform', got 'window'"):
        run(backend, tasks, [0], 8, 0, 0, "window", True)
    with pytest.raises(ValueError, match="batch_size"):
        run(backend, tasks, [0], 0, 0, 0, "contiguous", True)
    fn = C.sample_meta_batch if backend == "cpp" else sample_meta_batch_numpy
    t = [arrays(x) for x in tasks]
    good = outputs(1, 8)
    wrong_shape = outputs(1, 8)
    wrong_shape[3] = np.zeros((1, 8, 4), np.float32)
    with pytest.raises(ValueError, match=r"outer output 'next_obs': expected last dim 5 \(obs_dim\)"):
        fn(t, [0], 8, 0, 0, "contiguous", True, outputs(1, 8), wrong_shape, 1)
    readonly = outputs(1, 8)
    readonly[2].flags.writeable = False
    with pytest.raises(ValueError, match="inner output 'reward': expected a writeable array"):
        fn(t, [0], 8, 0, 0, "contiguous", True, readonly, good, 1)
    with pytest.raises(ValueError, match="inner: expected 8 output arrays"):
        fn(t, [0], 8, 0, 0, "contiguous", True, good[:7], good, 1)
    with pytest.raises(ValueError, match=r"inner output 'obs': expected shape \(2, 8, dim\)"):
        fn(t, [0, 1], 8, 0, 0, "contiguous", True, good, good, 1)


def test_wrapper_task_mapping_errors():
    t = make_task(50)
    del t["terminal_discount"]
    with pytest.raises(ValueError, match="task 0: field 'terminal_discount' is missing"):
        MetaBatchSampler([t], 8)
    with pytest.raises(ValueError, match="batch_size"):
        MetaBatchSampler([make_task(50)], -3)


# ------------------------------------------------------------------------------------------------
# slots= (a subset of the task batch's slots, as the data-parallel ranks use), batches=, the
# stateful C++ Sampler, the distinct-row draw's two set representations, the thread pool.


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", S.INNER_MODES)
def test_slots_sample_the_rows_of_the_full_batch(backend, mode):
    tasks = [make_task(n, seed=i) for i, n in enumerate([60, 45, 80, 50, 70])]
    ids, B = [3, 0, 4, 1, 0], 16  # task 0 twice: slot, not task, tells its two rows apart
    (fi, fo), fin, fout = run(backend, tasks, ids, B, 9, 21, mode, True)
    fn = C.sample_meta_batch if backend == "cpp" else sample_meta_batch_numpy
    for slots in ([0], [4, 1], [2, 3, 4], [1, 4], [0, 1, 2, 3, 4], [3, 3]):
        inner, outer = outputs(len(slots), B), outputs(len(slots), B)
        ii, oi = fn([arrays(t) for t in tasks], ids, B, 9, 21, mode, True, inner, outer, 2, slots)
        np.testing.assert_array_equal(ii, fi[slots])
        np.testing.assert_array_equal(oi, fo[slots])
        for a, b in zip(inner + outer, fin + fout):
            np.testing.assert_array_equal(a, b[slots])
    # One batch only: the other is neither drawn nor written (None in, None out).
    outer = outputs(2, B)
    ii, oi = fn([arrays(t) for t in tasks], ids, B, 9, 21, mode, True, None, outer, 1, [1, 2])
    assert ii is None
    np.testing.assert_array_equal(oi, fo[[1, 2]])
    inner = outputs(2, B)
    ii, oi = fn([arrays(t) for t in tasks], ids, B, 9, 21, mode, True, inner, None, 1, [1, 2])
    assert oi is None
    np.testing.assert_array_equal(ii, fi[[1, 2]])
    for a, b in zip(inner, fin):
        np.testing.assert_array_equal(a, b[[1, 2]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_slots_only_check_the_sampled_tasks_and_reject_bad_slots(backend):
    tasks = [make_task(60, seed=0), make_task(10, seed=1)]  # task 1 is too short for B=16
    fn = C.sample_meta_batch if backend == "cpp" else sample_meta_batch_numpy
    t = [arrays(x) for x in tasks]
    fn(t, [0, 1], 16, 0, 0, "contiguous", True, outputs(1, 16), outputs(1, 16), 1, [0])
    with pytest.raises(ValueError, match="task 1: has 10 rows"):
        fn(t, [0, 1], 16, 0, 0, "contiguous", True, outputs(1, 16), outputs(1, 16), 1, [1])
    with pytest.raises(IndexError, match=r"slots\[1\]: slot 2 out of range for 2 task ids"):
        fn(t, [0, 1], 16, 0, 0, "contiguous", True, outputs(2, 16), outputs(2, 16), 1, [0, 2])
    with pytest.raises(IndexError, match=r"slots\[0\]: slot -1 out of range"):
        fn(t, [0, 1], 16, 0, 0, "contiguous", True, outputs(1, 16), outputs(1, 16), 1, [-1])
    with pytest.raises(ValueError, match="slots: expected at least one slot"):
        fn(t, [0, 1], 16, 0, 0, "contiguous", True, outputs(0, 16), outputs(0, 16), 1, [])
    with pytest.raises(ValueError, match=r"inner output 'obs': expected shape \(1, 16, dim\)"):
        fn(t, [0, 1], 16, 0, 0, "contiguous", True, outputs(2, 16), outputs(2, 16), 1, [0])
    with pytest.raises(ValueError, match="inner_out, outer_out: both are None"):
        fn(t, [0, 1], 16, 0, 0, "contiguous", True, None, None, 1, [0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrapper_slots_and_batches(tasks, backend):
    s = MetaBatchSampler(tasks, 32, seed=8, backend=backend, inner_mode="uniform")
    ids = [6, 2, 2, 5, 0]
    full = s.sample(4, ids, return_indices=True)
    want = [{f: getattr(b, f).clone() for f in FIELDS} for b in full[:2]]
    inner, outer, ii, oi = s.sample(4, ids, slots=[4, 0, 2], return_indices=True)
    assert inner.obs.shape[0] == 3
    np.testing.assert_array_equal(ii, full[2][[4, 0, 2]])
    np.testing.assert_array_equal(oi, full[3][[4, 0, 2]])
    for f in FIELDS:
        assert torch.equal(getattr(inner, f), want[0][f][[4, 0, 2]])
        assert torch.equal(getattr(outer, f), want[1][f][[4, 0, 2]])
    buf = s.allocate(2)
    before = buf[0].obs.clone()
    got_in, got_out = s.sample(4, ids, out=(buf[0], None), slots=[1, 3], batches="inner")
    assert got_out is None and got_in is buf[0]
    assert torch.equal(got_in.obs, want[0]["obs"][[1, 3]]) and not torch.equal(before, got_in.obs)
    got_in, got_out, i_idx, o_idx = s.sample(4, ids, out=(None, buf[1]), slots=[1, 3], batches="outer",
                                             return_indices=True)
    assert got_in is None and i_idx is None
    np.testing.assert_array_equal(o_idx, full[3][[1, 3]])
    with pytest.raises(ValueError, match="batches: expected 'both', 'inner' or 'outer'"):
        s.sample(4, ids, batches="all")
    with pytest.raises(ValueError, match="out: a buffer is None"):
        s.sample(4, ids, out=(None, buf[1]), slots=[1, 3])
    with pytest.raises(IndexError, match="slot 5 out of range for 5 task ids"):
        s.sample(4, ids, slots=[5])


def test_cpp_sampler_object_validates_once_and_matches_the_function(tasks):
    t = [arrays(x) for x in tasks]
    core = C.Sampler(t, 40, "uniform", False, 77)
    assert (core.num_tasks, core.obs_dim, core.act_dim, core.batch_size) == (7, 6, 3, 40)
    assert core.n_rows == [len(x["obs"]) for x in tasks]
    ids = [1, 6, 3]
    a = run("cpp", tasks, ids, 40, 77, 5, "uniform", False, 6, 3)
    inner, outer = outputs(3, 40, 6, 3), outputs(3, 40, 6, 3)
    idx = core.sample(5, ids, inner, outer, None, 2, True)
    for x, y in zip(a[0] + tuple(a[1]) + tuple(a[2]), tuple(idx) + tuple(inner) + tuple(outer)):
        np.testing.assert_array_equal(x, y)
    assert core.sample(5, ids, inner, outer, None, 2, False) == (None, None)  # indices not returned
    bad_tasks = [list(x) for x in t]
    bad_tasks[4][2] = bad_tasks[4][2].astype(np.float64)
    with pytest.raises(TypeError, match="task 4: field 'reward': expected dtype float32"):
        C.Sampler(bad_tasks, 40, "uniform", False, 77)
    with pytest.raises(ValueError, match="tasks: expected at least one task"):
        C.Sampler([], 40, "uniform", False, 77)
    with pytest.raises(ValueError, match=r"inner output 'obs': expected shape \(2, 40, dim\)"):
        core.sample(5, ids, inner, outer, [0, 1], 1, True)


@pytest.mark.parametrize("n, b", [(5000, 4), (3000, 40), (24000, 256), (300, 256), (256, 256), (1, 1), (2**31, 7)])
def test_distinct_rows_bitmap_and_hash_paths_match_twin(n, b):
    # Small n/b ratios use a bitmap of n bits, large ones a hash set: both must give the twin's rows.
    for seed in range(3):
        kr, ks = S.stream_key(seed, 1, 2, 3, 3), S.stream_key(seed, 1, 2, 3, 4)
        got = C.distinct_rows(kr, ks, n, b)
        np.testing.assert_array_equal(got, S._distinct_rows(kr, ks, n, b))
        assert len(set(got.tolist())) == b and 0 <= got.min() and got.max() < n


def test_concurrent_callers_share_the_pool_safely(tasks):
    # Several Python threads sampling at once (the loader's thread and a second user, say) must each
    # get exactly the serial result: the pool serves one job at a time, the others run inline.
    import threading

    s = MetaBatchSampler(tasks, 48, seed=3, backend="cpp", num_threads=2)
    ids = [0, 1, 2, 3, 4, 5, 6]
    want = {step: s.sample(step, ids, out=s.allocate(7), return_indices=True)[2:] for step in range(12)}
    errors = []

    def worker(k: int) -> None:
        try:
            out = s.allocate(7)
            for step in range(12):
                got = s.sample(step, ids, out=out, return_indices=True)
                for g, w in zip(got[2:], want[step]):
                    np.testing.assert_array_equal(g, w)
                src = tasks[ids[k % 7]]["obs"]
                np.testing.assert_array_equal(got[1].obs[k % 7].numpy(), src[got[3][k % 7]])
        except BaseException as e:  # reported on the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_pool_works_in_a_forked_child(tasks):
    # The pool's threads do not survive fork(); the child must still sample (a fresh pool).
    import os

    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    s = MetaBatchSampler(tasks, 48, seed=3, backend="cpp", num_threads=2)
    ids = [0, 1, 2, 3, 4, 5, 6]
    want = s.sample(7, ids, out=s.allocate(7), return_indices=True)[2:]  # the parent's pool exists now
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "multi-threaded process ... fork()"
        pid = os.fork()
    if pid == 0:  # child: exit status says whether it sampled the parent's rows
        code = 1
        try:
            got = s.sample(7, ids, out=s.allocate(7), return_indices=True)[2:]
            code = 0 if all(np.array_equal(g, w) for g, w in zip(got, want)) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


def test_pool_measures_the_serial_cost_first_and_counts_its_calls(tasks):
    # A multi-threaded call runs inline until the serial cost per item is known (and while the pool
    # is switched off because helpers did not pay off); otherwise it is handed to the pool. Either
    # way the output is the serial output, and every call is counted once.
    s1 = MetaBatchSampler(tasks, 48, seed=3, backend="cpp", num_threads=1)
    s2 = MetaBatchSampler(tasks, 48, seed=3, backend="cpp", num_threads=2)
    before = C._pool_stats()
    for step in range(40):
        a = s1.sample(step, [0, 1, 2, 3], out=s1.allocate(4), return_indices=True)
        b = s2.sample(step, [0, 1, 2, 3], out=s2.allocate(4), return_indices=True)
        np.testing.assert_array_equal(a[3], b[3])
        for f in FIELDS:
            assert torch.equal(getattr(a[1], f), getattr(b[1], f))
    after = C._pool_stats()
    calls = (after["pooled"] - before["pooled"]) + (after["skipped"] - before["skipped"])
    assert calls == 40, (before, after)  # only the 2-thread sampler's calls reach the pool
    assert after["skipped"] > before["skipped"] or before["pooled"] > 0  # inline first, to time it
    assert after["paid"] - before["paid"] <= after["pooled"] - before["pooled"]
    assert 0 <= after["helped"] - before["helped"] <= 8 * (after["pooled"] - before["pooled"])


@pytest.mark.parametrize("obs_dim, act_dim", [(20, 6), (27, 8), (17, 6), (20, 8), (3, 1), (4, 4)])
@pytest.mark.parametrize("mode", S.INNER_MODES)
def test_compiled_row_layouts_match_twin(obs_dim, act_dim, mode):
    # The paper's environments' row lengths have copy loops compiled for them (csrc/sampler.cpp,
    # gather); these and the generic loop must all give the twin's rows.
    tasks = [make_task(n, obs_dim, act_dim, scalar_2d=bool(i % 2), seed=i) for i, n in enumerate([90, 70, 120])]
    ids = [2, 0, 1, 2]
    (ci, co), cin, cout = run("cpp", tasks, ids, 33, 5, 8, mode, True, obs_dim, act_dim, num_threads=2)
    (ni, no), nin, nout = run("numpy", tasks, ids, 33, 5, 8, mode, True, obs_dim, act_dim)
    np.testing.assert_array_equal(co, no)
    for a, b in zip(cin + cout, nin + nout):
        np.testing.assert_array_equal(a, b)
    for slot, t in enumerate(ids):
        for f, name in enumerate(FIELDS):
            src = tasks[t][name].reshape(len(tasks[t][name]), -1)
            np.testing.assert_array_equal(cout[f][slot].reshape(33, -1), src[co[slot]])


def test_wrong_argument_types_give_short_messages():
    """pybind11's own message lists every argument, the output buffers included (kilobytes)."""
    rng = np.random.default_rng(0)
    task = {f: rng.normal(size=(300, 3 if f in ("obs", "next_obs", "terminal_obs") else 2 if f == "action" else 1))
            .astype(np.float32) for f in ("obs", "action", "reward", "next_obs", "done", "mc_return", "terminal_obs",
                                          "terminal_discount")}
    from macaw_fast.data.sampler import MetaBatchSampler

    s = MetaBatchSampler([task, task], 32)
    for args, kw, err in ((("0", [0]), {}, "step"), ((0, "ab"), {}, "task_ids[0]"), ((0, [0, 1.5]), {}, "task_ids[1]"),
                          ((0, [0, 1]), {"slots": ["x"]}, "slots")):
        with pytest.raises((TypeError, ValueError)) as e:
            s.sample(*args, **kw)
        assert len(str(e.value)) < 300 and err in str(e.value), str(e.value)[:300]
