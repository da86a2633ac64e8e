// The value net's forward without a graph, for every task at once (`value_forward`):
//   out[t, r] = V_{theta_t}(x[t, r]),  V = ReLU MLP with one output, per-task generated parameters
// theta_t[k] = [W_k (in x out, row-major), b_k]. The meta-step runs it for the advantages
// (the adapted value function on three batches) and for the bootstrapped value target.
//
// torch runs this as one batched GEMM per layer, each writing a (T, rows, width) activation to
// memory and a ReLU reading it back: at T=35 and 768 rows a task that is 5.5 MB per layer, larger
// than the cache share this host gets, and the layer with 20 inputs is bound by that write (in a
// meta-step it took 1.2 ms against 0.38 ms standalone). Here each block of 32 rows of one task
// goes through all the layers while its activations (32 x width) stay in L1; the layer's weights
// (width x width) are read from L2. Only the final values are written.
//
// Each output is computed by one thread in a fixed order (sum over the inputs in order, bias
// first), so the result does not depend on the thread count.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "row_blocks.hpp"
#include "simd.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

using macaw::simd::load;
using macaw::simd::Vec;

constexpr int64_t kRows = 32;   // rows of one task that go through all layers together

// y[r, c0 : c0 + NV*N] = b + sum_k h[r, k] W[k, ...] for R rows, ReLU'd when `relu` (NaN kept).
template <typename S, int R, int NV>
MACAW_SIMD_INLINE void dense_tile(const S* __restrict h, int64_t ldh, int64_t K, const S* __restrict W, int64_t ldw,
                          const S* __restrict b, int64_t c0, S* __restrict y, int64_t ldy, bool relu) {
    using V = typename Vec<S>::type;
    constexpr int N = Vec<S>::N;
    V acc[R][NV];
#pragma GCC unroll 8
    for (int s = 0; s < NV; ++s) {
        const V bv = load<S>(b + c0 + s * N);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) acc[r][s] = bv;
    }
    for (int64_t k = 0; k < K; ++k) {
        V w[NV];
#pragma GCC unroll 8
        for (int s = 0; s < NV; ++s) w[s] = load<S>(W + k * ldw + c0 + s * N);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
            const S x = h[r * ldh + k];
#pragma GCC unroll 8
            for (int s = 0; s < NV; ++s) acc[r][s] += x * w[s];
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
        for (int s = 0; s < NV; ++s) {
            V v = acc[r][s];
            if (relu) v = v < V{} ? V{} : v;
            std::memcpy(y + r * ldy + c0 + s * N, &v, sizeof(V));
        }
}

// Rows [0, rows) of one layer, R rows at a time (the last few by a smaller tile).
template <typename S, int NV>
MACAW_SIMD_INLINE void dense_cols(const S* h, int64_t ldh, int64_t rows, int64_t K, const S* W, int64_t ldw, const S* b,
                          int64_t c0, S* y, int64_t ldy, bool relu) {
    constexpr int R = 6;
    int64_t r = 0;
    for (; r + R <= rows; r += R) dense_tile<S, R, NV>(h + r * ldh, ldh, K, W, ldw, b, c0, y + r * ldy, ldy, relu);
    const S* hr = h + r * ldh;
    S* yr = y + r * ldy;
    switch (rows - r) {
        case 5: dense_tile<S, 5, NV>(hr, ldh, K, W, ldw, b, c0, yr, ldy, relu); break;
        case 4: dense_tile<S, 4, NV>(hr, ldh, K, W, ldw, b, c0, yr, ldy, relu); break;
        case 3: dense_tile<S, 3, NV>(hr, ldh, K, W, ldw, b, c0, yr, ldy, relu); break;
        case 2: dense_tile<S, 2, NV>(hr, ldh, K, W, ldw, b, c0, yr, ldy, relu); break;
        case 1: dense_tile<S, 1, NV>(hr, ldh, K, W, ldw, b, c0, yr, ldy, relu); break;
        default: break;
    }
}

// y (rows x O) = [ReLU](h (rows x K) W (K x O) + b), O >= N: column chunks of 4, 2 and 1 vectors,
// and a last vector ending at column O (its leading lanes recompute columns already done, with the
// same operations in the same order: the same values are stored again).
template <typename S>
MACAW_SIMD_INLINE void dense(const S* h, int64_t ldh, int64_t rows, int64_t K, const S* W, const S* b, int64_t O, S* y,
                     bool relu) {
    constexpr int N = Vec<S>::N;
    int64_t c0 = 0;
    for (; c0 + 4 * N <= O; c0 += 4 * N) dense_cols<S, 4>(h, ldh, rows, K, W, O, b, c0, y, O, relu);
    for (; c0 + 2 * N <= O; c0 += 2 * N) dense_cols<S, 2>(h, ldh, rows, K, W, O, b, c0, y, O, relu);
    for (; c0 + N <= O; c0 += N) dense_cols<S, 1>(h, ldh, rows, K, W, O, b, c0, y, O, relu);
    if (c0 < O) dense_cols<S, 1>(h, ldh, rows, K, W, O, b, O - N, y, O, relu);
}

template <typename S>
struct Net {
    int64_t T, B;
    std::vector<int64_t> dims;        // d_0 .. d_L (d_L == 1)
    std::vector<const S*> thetas;     // per layer: (T, d_k * d_{k+1} + d_{k+1}), row-major
    const S* x;                       // (T, B, d_0)
    S* out;                           // (T, B)
};

// Rows [r0, r1) of task t through every layer; a and b: scratch of kRows x (widest hidden layer).
template <typename S>
MACAW_SIMD_CLONES void forward_block(const Net<S>& net, int64_t t, int64_t r0, int64_t r1, S* a, S* b) {
    const int64_t L = static_cast<int64_t>(net.dims.size()) - 1, rows = r1 - r0;
    const S* h = net.x + (t * net.B + r0) * net.dims[0];
    int64_t ldh = net.dims[0];
    S* bufs[2] = {a, b};
    for (int64_t k = 0; k + 1 < L; ++k) {
        const int64_t K = net.dims[k], O = net.dims[k + 1];
        const S* th = net.thetas[k] + t * (K * O + O);
        S* y = bufs[k % 2];
        dense<S>(h, ldh, rows, K, th, th + K * O, O, y, true);
        h = y;
        ldh = O;
    }
    // the output layer: one dot product per row, the inputs in order
    const int64_t K = net.dims[L - 1];
    const S* th = net.thetas[L - 1] + t * (K + 1);
    for (int64_t r = 0; r < rows; ++r) {
        S s = th[K];
        const S* hr = h + r * ldh;
        for (int64_t k = 0; k < K; ++k) s += hr[k] * th[k];
        net.out[t * net.B + r0 + r] = s;
    }
}

using macaw::shape_of;

template <typename S>
void forward_typed(const py::array& x, const std::vector<py::array>& thetas, py::array& out, int num_threads) {
    const auto dt = py::dtype::of<S>();
    constexpr int N = Vec<S>::N;
    auto check = [&](const py::array& a, const std::string& name, int ndim, bool writeable = false) {
        macaw::check_array(a, "value_forward", name, ndim, dt, "x's dtype", writeable);
    };
    check(x, "x", 3);
    check(out, "out", 2, true);
    Net<S> net;
    net.T = x.shape(0);
    net.B = x.shape(1);
    net.dims.push_back(x.shape(2));
    if (thetas.empty()) throw py::value_error("value_forward: expected at least one layer");
    for (size_t k = 0; k < thetas.size(); ++k) {
        const py::array& th = thetas[k];
        check(th, "thetas[" + std::to_string(k) + "]", 2);
        const int64_t K = net.dims.back(), P = th.shape(1);
        const bool last = k + 1 == thetas.size();
        // P = K * O + O, so O = P / (K + 1)
        const int64_t O = P % (K + 1) == 0 ? P / (K + 1) : -1;
        if (th.shape(0) != net.T || O <= 0 || (last && O != 1) || (!last && O < N))
            throw py::value_error("value_forward: thetas[" + std::to_string(k) + "] has shape " + shape_of(th) +
                                  ", expected (" + std::to_string(net.T) + ", in * out + out) with in = " +
                                  std::to_string(K) + " and out " +
                                  (last ? std::string("1 (the output layer)") : ">= " + std::to_string(N)));
        net.dims.push_back(O);
        net.thetas.push_back(static_cast<const S*>(th.data()));
    }
    if (out.shape(0) != net.T || out.shape(1) != net.B)
        throw py::value_error("value_forward: out must have shape (" + std::to_string(net.T) + ", " +
                              std::to_string(net.B) + "), got " + shape_of(out));
    net.x = static_cast<const S*>(x.data());
    net.out = static_cast<S*>(out.mutable_data());
    if (net.T == 0 || net.B == 0) return;
    int64_t widest = 1;
    for (size_t k = 1; k + 1 < net.dims.size(); ++k) widest = std::max(widest, net.dims[k]);
    py::gil_scoped_release release;
    macaw::for_row_blocks(std::vector<int64_t>(static_cast<size_t>(net.T), net.B), kRows, num_threads, [&]() {
        return [&, scratch = std::vector<S>(static_cast<size_t>(2 * kRows * widest))](
                   size_t t, int64_t, int64_t r0, int64_t r1) mutable {
            forward_block<S>(net, static_cast<int64_t>(t), r0, r1, scratch.data(), scratch.data() + kRows * widest);
        };
    });
}

void value_forward(const py::array& x, const std::vector<py::array>& thetas, py::array& out, int num_threads) {
    if (x.dtype().equal(py::dtype::of<double>())) return forward_typed<double>(x, thetas, out, num_threads);
    if (x.dtype().equal(py::dtype::of<float>())) return forward_typed<float>(x, thetas, out, num_threads);
    throw py::value_error("value_forward: x must be float32 or float64, got " + std::string(py::str(x.dtype())));
}

}  // namespace

void register_value_forward(py::module_& m) {
    m.def("value_forward", &value_forward, py::arg("x"), py::arg("thetas"), py::arg("out"), py::arg("num_threads") = 1,
          "out (T, B) = V(x) for x (T, B, d0): a ReLU MLP with one output and per-task parameters thetas[k] "
          "(T, d_k * d_{k+1} + d_{k+1}) ([W (in x out, row-major), b]); hidden widths >= 16 (float32) or 8 "
          "(float64); C-contiguous float32/float64 arrays; the same result for any num_threads.");
}
