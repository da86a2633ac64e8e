// Products of a WLinear weight W (P x D, P in the thousands, D ~ 100) with a few rows per task:
//   wlinear_left:  out (T, D) = X (T, P) @ W          (the inner step's G W, and dtheta' W)
//   wlinear_right: out (T, P) = add + alpha Z (T, D) @ W^T  (W z', dz' W^T, theta = W z + b)
// with T small (1 to a few dozen). These shapes read 4 MB of W for a few MFLOP, so they are bound
// by memory and by how well the arithmetic keeps up with it. Measured at the paper config, the
// BLAS takes 2-3x the time a plain pass over W needs (it packs W, and its small-T kernels run
// at a fraction of the core's FMA rate). Here each row block of W is read from memory once and
// then kept in L1 while register tiles of the result accumulate over it, and the blocks run on the
// OpenMP team of row_blocks.hpp (torch's own threads). In a paper-config meta-step (T=5, 2 threads)
// the 10100-row products took 343 us (left) and 205 us (right) against MKL's 459 and 344 (medians).
// With 16 tasks or more (float32; 8 float64) wlinear_right runs its vectors across tasks instead
// (right_tile_t): standalone at T=35, P=10100, 404 us against 680 for the dot products and MKL's 514.
// wlinear_left does the same (left_tile_t, X's columns transposed per block): 427 us against
// 509-602 for its column-vector tiles and MKL's 530-625.
// macaw_fast.nets.w_left / w_right decide when to call these (W of >= 1024 rows, T >= 2).
//
// Determinism: rows are cut into fixed blocks whatever the thread count; wlinear_left sums the
// blocks' partial results in block order, so every output is independent of the threads used.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "row_blocks.hpp"
#include "simd.hpp"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace {

using macaw::simd::load;
using macaw::simd::store;
using macaw::simd::Vec;

constexpr int64_t kBlockRows = 256;  // rows per partial result / per unit of work
constexpr int64_t kL1Rows = 32;      // rows of W kept in L1 while the register tiles sweep them

// One butterfly stage of an in-register N x N transpose: rows i and i + B (bit B of i clear)
// exchange their off-diagonal B x B sub-blocks.
template <int N, int B, bool Hi>
constexpr int butterfly_lane(int t) {
    return Hi ? ((t & B) == 0 ? t + B : N + t) : ((t & B) == 0 ? t : N + t - B);
}

template <typename S, int B, size_t... I>
MACAW_SIMD_INLINE void butterfly(typename Vec<S>::type* r, std::index_sequence<I...>) {
    constexpr int N = Vec<S>::N;
#pragma GCC unroll 16
    for (int i = 0; i < N; ++i)
        if ((i & B) == 0) {
            const auto lo = __builtin_shufflevector(r[i], r[i + B], butterfly_lane<N, B, false>(I)...);
            const auto hi = __builtin_shufflevector(r[i], r[i + B], butterfly_lane<N, B, true>(I)...);
            r[i] = lo;
            r[i + B] = hi;
        }
}

// r[i][j] -> r[j][i] for N vectors of N lanes (log2 N stages of N two-source permutes).
template <typename S>
MACAW_SIMD_INLINE void transpose(typename Vec<S>::type* r) {
    constexpr int N = Vec<S>::N;
    using Lanes = std::make_index_sequence<N>;
    butterfly<S, 1>(r, Lanes{});
    butterfly<S, 2>(r, Lanes{});
    butterfly<S, 4>(r, Lanes{});
    if constexpr (N == 16) butterfly<S, 8>(r, Lanes{});
}

// part[t, d0 : d0 + NV*N] (+)= sum over rows [r0, r1) of X[t0 + t, p] W[p, d0 : ...], t < TB; the
// first `skip` lanes (columns another tile owns) are neither read nor written.
template <typename S, int TB, int NV>
MACAW_SIMD_INLINE void left_tile(const S* __restrict X, const S* __restrict W, int64_t P, int64_t D, int64_t r0, int64_t r1,
                      int64_t t0, int64_t d0, S* __restrict part, bool first, int skip = 0) {
    using V = typename Vec<S>::type;
    constexpr int N = Vec<S>::N;
    V acc[TB][NV];
    for (int t = 0; t < TB; ++t)
        for (int s = 0; s < NV; ++s) {
            if (first) {
                acc[t][s] = V{};
            } else {
                V v = load<S>(part + (t0 + t) * D + d0 + s * N);
                if (s == 0)
                    for (int i = 0; i < skip; ++i) v[i] = 0;     // lanes another tile owns
                acc[t][s] = v;
            }
        }
    for (int64_t p = r0; p < r1; ++p) {
        if (first && d0 == 0)      // the first sweep of these rows fetches the next rows' lines
            for (int64_t c = 0; c < D * static_cast<int64_t>(sizeof(S)); c += 64)
                __builtin_prefetch(reinterpret_cast<const char*>(W + (p + kL1Rows) * D) + c);
        V w[NV];
        for (int s = 0; s < NV; ++s) w[s] = load<S>(W + p * D + d0 + s * N);
        for (int t = 0; t < TB; ++t) {
            const S x = X[(t0 + t) * P + p];
            for (int s = 0; s < NV; ++s) acc[t][s] += x * w[s];
        }
    }
    for (int t = 0; t < TB; ++t)
        for (int s = 0; s < NV; ++s) {
            if (skip == 0) {
                store<S>(part + (t0 + t) * D + d0 + s * N, acc[t][s]);
            } else {
                // lanes [from, N) of this vector; from is in [0, N) (callers pass skip < N), which
                // GCC cannot see: without the hint it warns of a read before `acc` (-Wstringop-overread)
                const int from = s == 0 ? skip : 0;
#if defined(__GNUC__)
                if (from < 0 || from >= N) __builtin_unreachable();
#endif
                for (int i = from; i < N; ++i) part[(t0 + t) * D + d0 + s * N + i] = acc[t][s][i];
            }
        }
}

// Tasks [t0, t0 + TB) of one block's partial: every column, two vectors at a time, the last
// (D % N) columns by one vector ending at column D whose leading lanes are skipped.
template <typename S, int TB>
MACAW_SIMD_INLINE void left_tasks(const S* X, const S* W, int64_t P, int64_t D, int64_t r0, int64_t r1, int64_t t0, S* part,
                       bool first) {
    constexpr int N = Vec<S>::N;
    int64_t d0 = 0;
    for (; d0 + 2 * N <= D; d0 += 2 * N) left_tile<S, TB, 2>(X, W, P, D, r0, r1, t0, d0, part, first);
    for (; d0 + N <= D; d0 += N) left_tile<S, TB, 1>(X, W, P, D, r0, r1, t0, d0, part, first);
    if (d0 < D) left_tile<S, TB, 1>(X, W, P, D, r0, r1, t0, D - N, part, first, static_cast<int>(d0 - (D - N)));
}

// XT[(p - r0) * N + j] = X[t0 + j, p] for rows [r0, r1): N tasks' columns of X as vectors.
template <typename S>
MACAW_SIMD_INLINE void gather_tasks(const S* __restrict X, int64_t P, int64_t r0, int64_t r1, int64_t t0,
                                S* __restrict XT) {
    using V = typename Vec<S>::type;
    constexpr int N = Vec<S>::N;
    int64_t p = r0;
    for (; p + N <= r1; p += N) {
        V r[N];
#pragma GCC unroll 16
        for (int j = 0; j < N; ++j) r[j] = load<S>(X + (t0 + j) * P + p);
        transpose<S>(r);
#pragma GCC unroll 16
        for (int i = 0; i < N; ++i) store<S>(XT + (p - r0 + i) * N, r[i]);
    }
    for (; p < r1; ++p)
        for (int j = 0; j < N; ++j) XT[(p - r0) * N + j] = X[(t0 + j) * P + p];
}

// part[t0 + i, d0 + c] = sum over rows [r0, r1) of X[t0 + i, p] W[p, d0 + c], i < N, c < DC: the
// vectors run across tasks (XT from gather_tasks), one accumulator per column, each FMA a
// broadcast W element times a vector of X^T; a whole chunk (DC == N) is stored through one
// in-register transpose, a narrower one lane by lane.
template <typename S, int DC>
MACAW_SIMD_INLINE void left_tile_t(const S* __restrict XT, const S* __restrict W, int64_t D, int64_t r0, int64_t r1,
                               int64_t t0, int64_t d0, S* __restrict part) {
    using V = typename Vec<S>::type;
    constexpr int N = Vec<S>::N;
    V acc[N];
#pragma GCC unroll 16
    for (int c = 0; c < N; ++c) acc[c] = V{};
    for (int64_t p = r0; p < r1; ++p) {
        const V x = load<S>(XT + (p - r0) * N);
        const S* w = W + p * D + d0;
#pragma GCC unroll 16
        for (int c = 0; c < DC; ++c) acc[c] += w[c] * x;
    }
    if constexpr (DC == N) {
        transpose<S>(acc);
#pragma GCC unroll 16
        for (int i = 0; i < N; ++i) store<S>(part + (t0 + i) * D + d0, acc[i]);
    } else {
        for (int c = 0; c < DC; ++c)
            for (int i = 0; i < N; ++i) part[(t0 + i) * D + d0 + c] = acc[c][i];
    }
}

// One block of rows: part (T, D) = X[:, r0:r1] @ W[r0:r1]. Needs D >= N. With XT (scratch of
// kBlockRows * N; T >= N) the tasks in whole groups of N go by left_tile_t over all the block's
// rows, the rest by register tiles of left_tasks over L1-sized sweeps.
template <typename S>
MACAW_SIMD_CLONES void left_block(const S* X, const S* W, int64_t T, int64_t P, int64_t D, int64_t r0, int64_t r1,
                              S* part, S* XT) {
    constexpr int N = Vec<S>::N;
    const int64_t Tt = XT != nullptr ? T / N * N : 0;
    for (int64_t t0 = 0; t0 < Tt; t0 += N) {
        gather_tasks<S>(X, P, r0, r1, t0, XT);
        int64_t d0 = 0;
        for (; d0 + N <= D; d0 += N) left_tile_t<S, N>(XT, W, D, r0, r1, t0, d0, part);
        if (D - d0 >= 8) left_tile_t<S, 8>(XT, W, D, r0, r1, t0, d0, part), d0 += 8;
        if (D - d0 >= 4) left_tile_t<S, 4>(XT, W, D, r0, r1, t0, d0, part), d0 += 4;
        if (D - d0 >= 2) left_tile_t<S, 2>(XT, W, D, r0, r1, t0, d0, part), d0 += 2;
        if (D - d0 >= 1) left_tile_t<S, 1>(XT, W, D, r0, r1, t0, d0, part);
    }
    if (Tt == T) return;
    for (int64_t q0 = r0; q0 < r1; q0 += kL1Rows) {
        const int64_t q1 = std::min(r1, q0 + kL1Rows);
        const bool first = q0 == r0;
        int64_t t0 = Tt;
        for (; t0 + 8 <= T; t0 += 8) left_tasks<S, 8>(X, W, P, D, q0, q1, t0, part, first);
        switch (T - t0) {
            case 7: left_tasks<S, 7>(X, W, P, D, q0, q1, t0, part, first); break;
            case 6: left_tasks<S, 6>(X, W, P, D, q0, q1, t0, part, first); break;
            case 5: left_tasks<S, 5>(X, W, P, D, q0, q1, t0, part, first); break;
            case 4: left_tasks<S, 4>(X, W, P, D, q0, q1, t0, part, first); break;
            case 3: left_tasks<S, 3>(X, W, P, D, q0, q1, t0, part, first); break;
            case 2: left_tasks<S, 2>(X, W, P, D, q0, q1, t0, part, first); break;
            case 1: left_tasks<S, 1>(X, W, P, D, q0, q1, t0, part, first); break;
            default: break;
        }
    }
}

// Sum of a vector's lanes by halving (log2 N vector adds).
template <typename S>
MACAW_SIMD_INLINE S hsum(typename Vec<S>::type v) {
    if constexpr (Vec<S>::N == 16) {
        v += __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
        v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
        v += __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
        v += __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
    } else {
        v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3);
        v += __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5);
        v += __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6);
    }
    return v[0];
}

// Rows [r0, r1): out[t, p] = add + alpha * Z[t] . W[p] for tasks [t0, t0 + TB). Zv holds each Z
// row as nv vectors, the last one aligned to the end of the row with the lanes already covered
// zeroed (plain scalars: no over-aligned allocation).
template <typename S, int TB>
MACAW_SIMD_INLINE void right_rows(const S* __restrict Zv, int nv, int64_t tail_at, const S* __restrict W,
                       int64_t P, int64_t D, int64_t r0, int64_t r1, int64_t t0, const S* add, int add_kind,
                       S alpha, S* __restrict out) {
    using V = typename Vec<S>::type;
    constexpr int N = Vec<S>::N;
    for (int64_t p = r0; p < r1; ++p) {
        const S* w = W + p * D;
        V acc[TB];
        for (int t = 0; t < TB; ++t) acc[t] = V{};
        for (int s = 0; s < nv; ++s) {
            const V wv = load<S>(w + (s < nv - 1 || tail_at < 0 ? s * N : tail_at));
            for (int t = 0; t < TB; ++t) acc[t] += load<S>(Zv + ((t0 + t) * nv + s) * N) * wv;
        }
        for (int t = 0; t < TB; ++t) {
            const int64_t o = (t0 + t) * P + p;
            const S base = add_kind == 0 ? S(0) : add_kind == 1 ? add[p] : add[o];
            out[o] = base + alpha * hsum<S>(acc[t]);
        }
    }
}

// Tasks [tb, te) of rows [r0, r1) by right_rows, six tasks at a time.
template <typename S>
MACAW_SIMD_INLINE void right_dots(const S* Zv, int nv, int64_t tail_at, const S* W, int64_t P, int64_t D, int64_t r0,
                              int64_t r1, int64_t tb, int64_t te, const S* add, int add_kind, S alpha, S* out) {
    int64_t t0 = tb;
    for (; t0 + 6 <= te; t0 += 6) right_rows<S, 6>(Zv, nv, tail_at, W, P, D, r0, r1, t0, add, add_kind, alpha, out);
    switch (te - t0) {
        case 5: right_rows<S, 5>(Zv, nv, tail_at, W, P, D, r0, r1, t0, add, add_kind, alpha, out); break;
        case 4: right_rows<S, 4>(Zv, nv, tail_at, W, P, D, r0, r1, t0, add, add_kind, alpha, out); break;
        case 3: right_rows<S, 3>(Zv, nv, tail_at, W, P, D, r0, r1, t0, add, add_kind, alpha, out); break;
        case 2: right_rows<S, 2>(Zv, nv, tail_at, W, P, D, r0, r1, t0, add, add_kind, alpha, out); break;
        case 1: right_rows<S, 1>(Zv, nv, tail_at, W, P, D, r0, r1, t0, add, add_kind, alpha, out); break;
        default: break;
    }
}

// Rows [p0, p0 + N) and tasks [t0, t0 + N): the vectors run across tasks (ZT holds Z transposed,
// D x T), one accumulator per row, each FMA a broadcast W element times a vector of Z^T: D FMAs
// per N x N outputs and no horizontal sums; one in-register transpose turns the accumulators
// into N stores along the rows of `out`.
template <typename S>
MACAW_SIMD_INLINE void right_tile_t(const S* __restrict ZT, int64_t T, const S* __restrict W, int64_t P, int64_t D,
                                int64_t p0, int64_t t0, const S* add, int add_kind, S alpha, S* __restrict out) {
    using V = typename Vec<S>::type;
    constexpr int N = Vec<S>::N;
    V acc[N];
#pragma GCC unroll 16
    for (int i = 0; i < N; ++i) acc[i] = V{};
    const S* w = W + p0 * D;
    for (int64_t d = 0; d < D; ++d) {
        const V z = load<S>(ZT + d * T + t0);
#pragma GCC unroll 16
        for (int i = 0; i < N; ++i) acc[i] += w[i * D + d] * z;
    }
    transpose<S>(acc);          // acc[j][i] = Z[t0 + j] . W[p0 + i]
#pragma GCC unroll 16
    for (int j = 0; j < N; ++j) {
        const int64_t o = (t0 + j) * P + p0;
        V v = alpha * acc[j];
        if (add_kind == 1) v += load<S>(add + p0);
        if (add_kind == 2) v += load<S>(add + o);
        store<S>(out + o, v);
    }
}

// Rows [r0, r1). With ZT (T >= N): whole N x N tiles by right_tile_t, the T % N other tasks of
// those rows and the rows past the last whole N by right_rows while the rows are still in L1.
template <typename S>
MACAW_SIMD_CLONES void right_block(const S* Zv, int nv, int64_t tail_at, const S* ZT, const S* W, int64_t T,
                               int64_t P, int64_t D, int64_t r0, int64_t r1, const S* add, int add_kind, S alpha,
                               S* out) {
    constexpr int N = Vec<S>::N;
    int64_t p0 = r0;
    if (ZT != nullptr) {
        const int64_t Tt = T / N * N;
        for (; p0 + N <= r1; p0 += N) {
            for (int64_t t0 = 0; t0 < Tt; t0 += N) right_tile_t<S>(ZT, T, W, P, D, p0, t0, add, add_kind, alpha, out);
            right_dots<S>(Zv, nv, tail_at, W, P, D, p0, p0 + N, Tt, T, add, add_kind, alpha, out);
        }
    }
    right_dots<S>(Zv, nv, tail_at, W, P, D, p0, r1, 0, T, add, add_kind, alpha, out);
}

using macaw::shape_of;

void check(const py::array& a, const char* fn, const char* name, int ndim, const py::dtype& dt, bool writeable) {
    macaw::check_array(a, fn, name, ndim, dt, "W's dtype", writeable);
}

template <typename S>
void left_typed(const py::array& x, const py::array& w, py::array& out, int num_threads) {
    const auto dt = py::dtype::of<S>();
    check(x, "wlinear_left", "X", 2, dt, false);
    check(w, "wlinear_left", "W", 2, dt, false);
    check(out, "wlinear_left", "out", 2, dt, true);
    const int64_t T = x.shape(0), P = x.shape(1), D = w.shape(1);
    if (w.shape(0) != P || out.shape(0) != T || out.shape(1) != D || D < Vec<S>::N)
        throw py::value_error("wlinear_left: expected X (T, P), W (P, D) with D >= " + std::to_string(Vec<S>::N) +
                              " and out (T, D), got X " + shape_of(x) + ", W " + shape_of(w) + ", out " + shape_of(out));
    const S* X = static_cast<const S*>(x.data());
    const S* W = static_cast<const S*>(w.data());
    S* O = static_cast<S*>(out.mutable_data());
    const int64_t nb = (P + kBlockRows - 1) / kBlockRows;
    if (T == 0 || D == 0) return;
    if (P == 0) {
        std::fill(O, O + T * D, S(0));
        return;
    }
    std::vector<S> parts(static_cast<size_t>(nb * T * D));
    {
        py::gil_scoped_release release;
        macaw::for_row_blocks({P}, kBlockRows, num_threads, [&]() {
            // with at least N tasks, each thread's scratch for N tasks' columns of a block of X
            return [&, XT = std::vector<S>(T >= Vec<S>::N ? kBlockRows * Vec<S>::N : 0)](
                       size_t, int64_t b, int64_t r0, int64_t r1) mutable {
                left_block<S>(X, W, T, P, D, r0, r1, parts.data() + b * T * D, XT.empty() ? nullptr : XT.data());
            };
        });
        std::copy(parts.begin(), parts.begin() + T * D, O);
        for (int64_t b = 1; b < nb; ++b) {
            const S* src = parts.data() + b * T * D;
            for (int64_t i = 0; i < T * D; ++i) O[i] += src[i];
        }
    }
}

template <typename S>
void right_typed(const py::array& z, const py::array& w, py::array& out, const py::object& add, double alpha,
                 int num_threads) {
    constexpr int N = Vec<S>::N;
    const auto dt = py::dtype::of<S>();
    check(z, "wlinear_right", "Z", 2, dt, false);
    check(w, "wlinear_right", "W", 2, dt, false);
    check(out, "wlinear_right", "out", 2, dt, true);
    const int64_t T = z.shape(0), D = z.shape(1), P = w.shape(0);
    if (w.shape(1) != D || out.shape(0) != T || out.shape(1) != P || D < N)
        throw py::value_error("wlinear_right: expected Z (T, D), W (P, D) with D >= " + std::to_string(N) +
                              " and out (T, P), got Z " + shape_of(z) + ", W " + shape_of(w) + ", out " + shape_of(out));
    int add_kind = 0;
    py::array add_arr;
    const S* A = nullptr;
    if (!add.is_none()) {
        add_arr = add.cast<py::array>();
        check(add_arr, "wlinear_right", "add", add_arr.ndim(), dt, false);
        if (add_arr.ndim() == 1 && add_arr.shape(0) == P) {
            add_kind = 1;
        } else if (add_arr.ndim() == 2 && add_arr.shape(0) == T && add_arr.shape(1) == P) {
            add_kind = 2;
        } else {
            throw py::value_error("wlinear_right: add must have shape (P,) or (T, P) = " + shape_of(out) + ", got " +
                                  shape_of(add_arr));
        }
        A = static_cast<const S*>(add_arr.data());
    }
    const S* Z = static_cast<const S*>(z.data());
    const S* W = static_cast<const S*>(w.data());
    S* O = static_cast<S*>(out.mutable_data());
    // Z as whole vectors per task; a last vector aligned to the row's end, its first lanes zeroed
    // where they repeat columns already covered.
    const int full = static_cast<int>(D / N);
    const bool tail = D % N != 0;
    const int nv = full + (tail ? 1 : 0);
    const int64_t tail_at = tail ? D - N : -1;
    std::vector<S> Zv(static_cast<size_t>(T * nv * N));
    for (int64_t t = 0; t < T; ++t) {
        std::copy(Z + t * D, Z + t * D + full * N, Zv.data() + t * nv * N);
        if (tail)
            for (int i = 0; i < N; ++i)
                Zv[static_cast<size_t>((t * nv + full) * N + i)] = tail_at + i < full * N ? S(0) : Z[t * D + tail_at + i];
    }
    // With at least N tasks, Z transposed (D x T) for the task-vector tiles.
    std::vector<S> ZT(T >= N ? static_cast<size_t>(D * T) : 0);
    for (int64_t t = 0; t < T && T >= N; ++t)
        for (int64_t d = 0; d < D; ++d) ZT[static_cast<size_t>(d * T + t)] = Z[t * D + d];
    py::gil_scoped_release release;
    macaw::for_row_blocks({P}, kBlockRows, num_threads, [&]() {
        return [&](size_t, int64_t, int64_t r0, int64_t r1) {
            right_block<S>(Zv.data(), nv, tail_at, ZT.empty() ? nullptr : ZT.data(), W, T, P, D, r0, r1, A, add_kind,
                           static_cast<S>(alpha), O);
        };
    });
}

void wlinear_left(const py::array& x, const py::array& w, py::array& out, int num_threads) {
    if (w.dtype().equal(py::dtype::of<double>())) return left_typed<double>(x, w, out, num_threads);
    if (w.dtype().equal(py::dtype::of<float>())) return left_typed<float>(x, w, out, num_threads);
    throw py::value_error("wlinear_left: W must be float32 or float64, got " + std::string(py::str(w.dtype())));
}

void wlinear_right(const py::array& z, const py::array& w, py::array& out, const py::object& add, double alpha,
                   int num_threads) {
    if (w.dtype().equal(py::dtype::of<double>())) return right_typed<double>(z, w, out, add, alpha, num_threads);
    if (w.dtype().equal(py::dtype::of<float>())) return right_typed<float>(z, w, out, add, alpha, num_threads);
    throw py::value_error("wlinear_right: W must be float32 or float64, got " + std::string(py::str(w.dtype())));
}

}  // namespace

void register_skinny(py::module_& m) {
    m.def("wlinear_left", &wlinear_left, py::arg("x"), py::arg("w"), py::arg("out"), py::arg("num_threads") = 1,
          "out (T, D) = X (T, P) @ W (P, D) for C-contiguous float32/float64 arrays (D >= 16 or 8), written "
          "in place; the same result for any num_threads.");
    m.def("wlinear_right", &wlinear_right, py::arg("z"), py::arg("w"), py::arg("out"), py::arg("add") = py::none(),
          py::arg("alpha") = 1.0, py::arg("num_threads") = 1,
          "out (T, P) = add + alpha * Z (T, D) @ W (P, D)^T, add None, (P,) or (T, P); C-contiguous "
          "float32/float64 arrays (D >= 16 or 8), written in place.");
}
