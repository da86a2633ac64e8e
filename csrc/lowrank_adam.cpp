// Adam on weight-transform matrices whose gradient is low rank, without forming the gradient.
//
// In MACAW's batched meta-step every use of a WLinear layer's W (P x D) is a matrix product, so
// dL/dW = sum_k a_k b_k^T = A^T B with A (K, P), B (K, D) and K = 1 + 2T at most. The plain way
// forms that P x D gradient with one GEMM (writing 4 MB per paper-sized layer), reads W again for
// z's gradient W^T dtheta, and then Adam reads the gradient, W and both moments and writes W and
// the moments back. `lowrank_adam_step` does it in ONE pass over W's rows: it builds the gradient
// rows from the factors in a small buffer (four rows at a time, see grad_tile), and per row adds the row's share of W^T a_0 (row 0 of A is
// dL/dtheta, so that is z's gradient) using W BEFORE the update, and applies torch.optim.Adam's
// update (no weight decay, amsgrad or maximize) to W and its moments in place.
//
// Rows are split in blocks over up to `num_threads` threads (the caller's included), with the GIL
// released. Each block's share of W^T a_0 is summed in double into its own slot and the slots are
// added in block order, so z's gradient does not depend on the thread count.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "row_blocks.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

constexpr int64_t kRowsPerBlock = 256;

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MACAW_ISA_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define MACAW_ISA_CLONES
#endif

struct AdamConsts {
    double c1;         // 1 - beta1 (lerp weight)
    double beta2, c2;  // beta2, 1 - beta2
    double step_size;  // lr / (1 - beta1^step)
    double bc2_sqrt;   // sqrt(1 - beta2^step)
    double eps;
};

template <typename T>
struct Layer {
    T* w;
    T* m;
    T* v;
    const T* a;  // (K, P)
    const T* b;  // (K, D)
    int64_t P, D, K;
    AdamConsts c;
    std::vector<double> z_part;  // (blocks, D)
    int64_t blocks;
};

#if defined(__GNUC__)
#define MACAW_INLINE inline __attribute__((always_inline))
#else
#define MACAW_INLINE inline
#endif

// Gradient rows are formed kRowTile at a time: for a factor count K in the dozens (T = 35: K = 71)
// the K-term sums are most of the kernel's work, and a register tile of kRowTile rows x three
// vectors of columns reads each B row once for all of them (the row-at-a-time loop re-read and
// re-wrote its gradient row once per factor). Measured in-step at T=35: 21 -> 11-14 ms.
constexpr int64_t kRowTile = 4;     // grad_tile's rows

template <typename T>
struct Vec {  // one AVX2 register (the kernel's clones are x86-64-v3 and baseline)
    typedef T type __attribute__((vector_size(32)));
    static constexpr int64_t N = static_cast<int64_t>(32 / sizeof(T));
};

// g[r, d0 : d0 + NV*N] = sum_k A[k, i0 + r] B[k, d0 : d0 + NV*N] for r < kRowTile (g: kRowTile x D):
// up to 12 accumulators and 3 B vectors, within AVX2's 16 registers. Every entry is the same FMA
// chain over k whatever NV, so tiles that overlap write the same values.
template <typename T, int NV>
MACAW_INLINE void grad_tile(const Layer<T>& L, int64_t i0, int64_t d0, T* __restrict g) {
    using V = typename Vec<T>::type;
    constexpr int64_t N = Vec<T>::N;
    const T* __restrict A = L.a + i0;
    const T* __restrict B = L.b + d0;
    const int64_t P = L.P, D = L.D, K = L.K;
    V c[kRowTile][NV];
#pragma GCC unroll 4
    for (int r = 0; r < kRowTile; ++r)
#pragma GCC unroll 3
        for (int j = 0; j < NV; ++j) c[r][j] = V{};
    for (int64_t k = 0; k < K; ++k) {
        V b[NV];
#pragma GCC unroll 3
        for (int j = 0; j < NV; ++j) std::memcpy(&b[j], B + k * D + j * N, sizeof(V));
        const T* a = A + k * P;
#pragma GCC unroll 4
        for (int r = 0; r < kRowTile; ++r) {
            const T ar = a[r];
#pragma GCC unroll 3
            for (int j = 0; j < NV; ++j) c[r][j] += ar * b[j];
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < kRowTile; ++r)
#pragma GCC unroll 3
        for (int j = 0; j < NV; ++j) std::memcpy(g + r * D + d0 + j * N, &c[r][j], sizeof(V));
}

// Rows [r0, r1) of one layer; `g` is a scratch of kRowTile x D values, `zacc` this block's z slot.
template <typename T>
MACAW_ISA_CLONES void update_rows(const Layer<T>& L, int64_t r0, int64_t r1, T* __restrict g,
                                  double* __restrict zacc) {
    const int64_t D = L.D, K = L.K, P = L.P;
    constexpr int64_t N = Vec<T>::N;
    const T c1 = static_cast<T>(L.c.c1), beta2 = static_cast<T>(L.c.beta2), c2 = static_cast<T>(L.c.c2);
    const T step_size = static_cast<T>(L.c.step_size), bc2_sqrt = static_cast<T>(L.c.bc2_sqrt);
    const T eps = static_cast<T>(L.c.eps);
    for (int64_t i = r0; i < r1; ++i) {
        T* __restrict w = L.w + i * D;
        T* __restrict m = L.m + i * D;
        T* __restrict v = L.v + i * D;
        const T a0 = L.a[i];
        const int64_t r = (i - r0) % kRowTile;
        T* __restrict gr = g + r * D;
        if (r == 0 && D >= 3 * N && i + kRowTile <= r1) {
            // the next kRowTile rows' gradients, 3N columns at a time; the last D % 3N columns by a
            // tile of as few vectors as cover them, ending at column D (it may recompute a few
            // columns, to the same values)
            int64_t d0 = 0;
            for (; d0 + 3 * N <= D; d0 += 3 * N) grad_tile<T, 3>(L, i, d0, g);
            const int64_t rest = D - d0;
            if (rest > 2 * N) grad_tile<T, 3>(L, i, D - 3 * N, g);
            else if (rest > N) grad_tile<T, 2>(L, i, D - 2 * N, g);
            else if (rest > 0) grad_tile<T, 1>(L, i, D - N, g);
        }
        if (D < 3 * N || i - r + kRowTile > r1) {    // rows outside a whole tile: one at a time
            const T* __restrict b0 = L.b;
            for (int64_t d = 0; d < D; ++d) gr[d] = a0 * b0[d];
            for (int64_t k = 1; k < K; ++k) {
                const T ak = L.a[k * P + i];
                const T* __restrict bk = L.b + k * D;
                for (int64_t d = 0; d < D; ++d) gr[d] += ak * bk[d];
            }
        }
        for (int64_t d = 0; d < D; ++d) zacc[d] += static_cast<double>(w[d]) * static_cast<double>(a0);
        for (int64_t d = 0; d < D; ++d) {
            const T gd = gr[d];
            const T md = m[d] + c1 * (gd - m[d]);
            const T vd = beta2 * v[d] + c2 * gd * gd;
            m[d] = md;
            v[d] = vd;
            w[d] = w[d] - step_size * md / (std::sqrt(vd) / bc2_sqrt + eps);
        }
    }
}

template <typename T>
void run(std::vector<Layer<T>>& layers, int num_threads) {
    std::vector<int64_t> rows;
    int64_t max_d = 0;
    for (auto& L : layers) {
        L.blocks = (L.P + kRowsPerBlock - 1) / kRowsPerBlock;
        L.z_part.assign(static_cast<size_t>(L.blocks * L.D), 0.0);
        rows.push_back(L.P);
        max_d = std::max(max_d, L.D);
    }
    macaw::for_row_blocks(rows, kRowsPerBlock, num_threads, [&]() {
        return [&layers, g = std::vector<T>(static_cast<size_t>(max_d * kRowTile))](
                   size_t i, int64_t block, int64_t r0, int64_t r1) mutable {
            Layer<T>& L = layers[i];
            update_rows<T>(L, r0, r1, g.data(), L.z_part.data() + block * L.D);
        };
    });
}

using macaw::require;
using macaw::shape_of;

template <typename T>
py::list step_typed(const py::list& specs, int num_threads) {
    std::vector<Layer<T>> layers;
    std::vector<py::array> keep;  // the arrays stay referenced while the GIL is released
    for (size_t n = 0; n < specs.size(); ++n) {
        const py::tuple spec = specs[n].cast<py::tuple>();
        require(spec.size() == 10, [&] { return "lowrank_adam_step: layer " + std::to_string(n) +
                                       ": expected (W, exp_avg, exp_avg_sq, A, B, lr, beta1, beta2, eps, step)"; });
        const std::string where = "lowrank_adam_step: layer " + std::to_string(n) + ": ";
        py::array arrs[5];
        const char* names[5] = {"W", "exp_avg", "exp_avg_sq", "A", "B"};
        for (int j = 0; j < 5; ++j) {
            arrs[j] = spec[j].cast<py::array>();
            require(arrs[j].dtype().equal(py::dtype::of<T>()), [&] { return where + names[j] + " has dtype " + std::string(py::str(arrs[j].dtype())) + ", expected " +
                        std::string(py::str(py::dtype::of<T>())); });
            require(arrs[j].ndim() == 2, [&] { return where + names[j] + " must be 2-D, got shape " + shape_of(arrs[j]); });
            require((arrs[j].flags() & py::array::c_style) != 0, [&] { return where + names[j] + " must be C-contiguous"; });
            if (j < 3) require(arrs[j].writeable(), [&] { return where + names[j] + " must be writeable"; });
        }
        const int64_t P = arrs[0].shape(0), D = arrs[0].shape(1), K = arrs[3].shape(0);
        for (int j = 1; j < 3; ++j)
            require(arrs[j].shape(0) == P && arrs[j].shape(1) == D, [&] { return where + names[j] + " has shape " + shape_of(arrs[j]) + ", expected W's " + shape_of(arrs[0]); });
        require(K >= 1 && arrs[3].shape(1) == P, [&] { return where + "A has shape " + shape_of(arrs[3]) + ", expected (K >= 1, " +
                                                     std::to_string(P) + ")"; });
        require(arrs[4].shape(0) == K && arrs[4].shape(1) == D, [&] { return where + "B has shape " + shape_of(arrs[4]) + ", expected (" + std::to_string(K) + ", " +
                    std::to_string(D) + ")"; });
        const double lr = spec[5].cast<double>(), beta1 = spec[6].cast<double>(), beta2 = spec[7].cast<double>();
        const double eps = spec[8].cast<double>(), step = spec[9].cast<double>();
        require(step >= 1, [&] { return where + "step must be >= 1 (the step count after this update)"; });
        Layer<T> L;
        L.w = static_cast<T*>(arrs[0].mutable_data());
        L.m = static_cast<T*>(arrs[1].mutable_data());
        L.v = static_cast<T*>(arrs[2].mutable_data());
        L.a = static_cast<const T*>(arrs[3].data());
        L.b = static_cast<const T*>(arrs[4].data());
        L.P = P;
        L.D = D;
        L.K = K;
        L.c = AdamConsts{1.0 - beta1, beta2, 1.0 - beta2, lr / (1.0 - std::pow(beta1, step)),
                         std::sqrt(1.0 - std::pow(beta2, step)), eps};
        layers.push_back(std::move(L));
        for (auto& a : arrs) keep.push_back(a);
    }
    {
        py::gil_scoped_release release;
        run<T>(layers, num_threads);
    }
    py::list out;
    for (auto& L : layers) {
        py::array_t<T> gz(L.D);
        T* dst = gz.mutable_data();
        for (int64_t d = 0; d < L.D; ++d) {
            double s = 0.0;
            for (int64_t blk = 0; blk < L.blocks; ++blk) s += L.z_part[static_cast<size_t>(blk * L.D + d)];
            dst[d] = static_cast<T>(s);
        }
        out.append(gz);
    }
    return out;
}

py::list lowrank_adam_step(const py::list& specs, int num_threads) {
    if (specs.size() == 0) return py::list();
    const py::array w = specs[0].cast<py::tuple>()[0].cast<py::array>();
    if (w.dtype().equal(py::dtype::of<double>())) return step_typed<double>(specs, num_threads);
    if (w.dtype().equal(py::dtype::of<float>())) return step_typed<float>(specs, num_threads);
    throw py::value_error("lowrank_adam_step: W must be float32 or float64, got " + std::string(py::str(w.dtype())));
}

}  // namespace

void register_lowrank_adam(py::module_& m) {
    m.def("lowrank_adam_step", &lowrank_adam_step, py::arg("layers"), py::arg("num_threads") = 1,
          "One Adam step (torch.optim.Adam's rule, no weight decay/amsgrad/maximize) of matrices W whose "
          "gradient is A^T B, in place, without forming it. layers: list of (W (P, D), exp_avg, exp_avg_sq, "
          "A (K, P), B (K, D), lr, beta1, beta2, eps, step) with C-contiguous float32 or float64 arrays "
          "(all of one dtype) and step the count after this update. Returns, per layer, W_old^T A[0] (D,), "
          "computed with W before the update.");
}
