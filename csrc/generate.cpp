// theta = W z + b for every WLinear layer of a meta-step in one call (`wlinear_generate`).
//
// Each layer's W (P x D) is read once per meta-step to generate its parameters; at the paper
// config that is 4.9 M weights (20 MB in float32) for a few MFLOP, so the pass is bound by memory.
// The BLAS matrix-vector product reaches about half of the machine's read bandwidth on these
// shapes (measured: 264-321 us for a 4 MB W, against 161 us for a plain read on one core), and
// runs once per layer; here the rows of all layers are cut into blocks that up to `num_threads`
// threads stream through in one call. Each output is a dot product of one row with z, summed in
// the same order whatever the thread count.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "row_blocks.hpp"

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define GENERATE_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define GENERATE_CLONES
#endif

constexpr int64_t kBlockRows = 1024;

template <typename T>
struct Job {
    const T* w;
    const T* z;
    const T* b;
    T* out;
    int64_t P, D;
};

// out[p] = b[p] + W[p] . z for rows [r0, r1): four partial sums of 32 bytes each, then the lanes.
template <typename T>
GENERATE_CLONES void generate_rows(const Job<T>& J, int64_t r0, int64_t r1) {
    typedef T V __attribute__((vector_size(32)));
    constexpr int64_t N = static_cast<int64_t>(32 / sizeof(T));
    const int64_t D = J.D, full = D / (4 * N) * (4 * N);
    for (int64_t p = r0; p < r1; ++p) {
        const T* __restrict w = J.w + p * D;
        V a0{}, a1{}, a2{}, a3{};
        for (int64_t d = 0; d < full; d += 4 * N) {
            V w0, w1, w2, w3, z0, z1, z2, z3;
            std::memcpy(&w0, w + d, sizeof(V));
            std::memcpy(&w1, w + d + N, sizeof(V));
            std::memcpy(&w2, w + d + 2 * N, sizeof(V));
            std::memcpy(&w3, w + d + 3 * N, sizeof(V));
            std::memcpy(&z0, J.z + d, sizeof(V));
            std::memcpy(&z1, J.z + d + N, sizeof(V));
            std::memcpy(&z2, J.z + d + 2 * N, sizeof(V));
            std::memcpy(&z3, J.z + d + 3 * N, sizeof(V));
            a0 += w0 * z0;
            a1 += w1 * z1;
            a2 += w2 * z2;
            a3 += w3 * z3;
        }
        const V a = (a0 + a1) + (a2 + a3);
        T s = 0;
        for (int64_t i = 0; i < N; ++i) s += a[i];
        for (int64_t d = full; d < D; ++d) s += w[d] * J.z[d];
        J.out[p] = J.b[p] + s;
    }
}

template <typename T>
void run(const std::vector<Job<T>>& jobs, int num_threads) {
    std::vector<int64_t> rows;
    for (auto& J : jobs) rows.push_back(J.P);
    macaw::for_row_blocks(rows, kBlockRows, num_threads, [&]() {
        return [&jobs](size_t i, int64_t, int64_t r0, int64_t r1) { generate_rows<T>(jobs[i], r0, r1); };
    });
}

using macaw::shape_of;

template <typename T>
void generate_typed(const py::list& layers, int num_threads) {
    std::vector<Job<T>> jobs;
    std::vector<py::array> keep;
    const auto dt = py::dtype::of<T>();
    for (size_t n = 0; n < layers.size(); ++n) {
        const py::tuple spec = layers[n].cast<py::tuple>();
        const std::string where = "wlinear_generate: layer " + std::to_string(n) + ": ";
        if (spec.size() != 4) throw py::value_error(where + "expected (W, z, b, out)");
        py::array arrs[4];
        const char* names[4] = {"W", "z", "b", "out"};
        for (int j = 0; j < 4; ++j) {
            arrs[j] = spec[j].cast<py::array>();
            if (!arrs[j].dtype().equal(dt))
                throw py::value_error(where + names[j] + " has dtype " + std::string(py::str(arrs[j].dtype())) +
                                      ", expected " + std::string(py::str(dt)));
            if (arrs[j].ndim() != (j == 0 ? 2 : 1))
                throw py::value_error(where + names[j] + " must be " + (j == 0 ? "2" : "1") + "-D, got shape " +
                                      shape_of(arrs[j]));
            if ((arrs[j].flags() & py::array::c_style) == 0)
                throw py::value_error(where + names[j] + " must be C-contiguous");
        }
        const int64_t P = arrs[0].shape(0), D = arrs[0].shape(1);
        if (arrs[1].shape(0) != D || arrs[2].shape(0) != P || arrs[3].shape(0) != P)
            throw py::value_error(where + "expected W (P, D), z (D,), b (P,), out (P,), got W " + shape_of(arrs[0]) +
                                  ", z " + shape_of(arrs[1]) + ", b " + shape_of(arrs[2]) + ", out " +
                                  shape_of(arrs[3]));
        if (!arrs[3].writeable()) throw py::value_error(where + "out must be writeable");
        Job<T> J{static_cast<const T*>(arrs[0].data()), static_cast<const T*>(arrs[1].data()),
                 static_cast<const T*>(arrs[2].data()), static_cast<T*>(arrs[3].mutable_data()), P, D};
        jobs.push_back(J);
        for (auto& a : arrs) keep.push_back(a);
    }
    py::gil_scoped_release release;
    run<T>(jobs, num_threads);
}

void wlinear_generate(const py::list& layers, int num_threads) {
    if (layers.size() == 0) return;
    const py::array w = layers[0].cast<py::tuple>()[0].cast<py::array>();
    if (w.dtype().equal(py::dtype::of<double>())) return generate_typed<double>(layers, num_threads);
    if (w.dtype().equal(py::dtype::of<float>())) return generate_typed<float>(layers, num_threads);
    throw py::value_error("wlinear_generate: W must be float32 or float64, got " + std::string(py::str(w.dtype())));
}

}  // namespace

void register_generate(py::module_& m) {
    m.def("wlinear_generate", &wlinear_generate, py::arg("layers"), py::arg("num_threads") = 1,
          "out = W z + b for each (W (P, D), z (D,), b (P,), out (P,)) in layers: C-contiguous float32 or "
          "float64 arrays, all of one dtype; out is written in place. Rows are split in blocks over up to "
          "num_threads threads; the result does not depend on the thread count.");
}
