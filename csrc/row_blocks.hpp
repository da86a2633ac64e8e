// Shared by the kernels that stream the rows of several matrices (csrc/lowrank_adam.cpp,
// csrc/generate.cpp): error text for pybind11 arrays, and the threads that take the rows in blocks.
#pragma once

#include <pybind11/numpy.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace macaw {

inline std::string shape_of(const pybind11::array& a) {
    std::string s = "(";
    for (pybind11::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

// Throws ValueError "<fn>: <name> ..." unless `a` has dtype `dt` (named in the message as the dtype
// of `ref`, e.g. "W's dtype"), `ndim` dimensions and C order, and is writeable when asked.
inline void check_array(const pybind11::array& a, const std::string& fn, const std::string& name, int ndim,
                        const pybind11::dtype& dt, const char* ref, bool writeable) {
    auto fail = [&](const std::string& what) { throw pybind11::value_error(fn + ": " + name + " " + what); };
    if (!a.dtype().equal(dt))
        fail("has dtype " + std::string(pybind11::str(a.dtype())) + ", expected " + std::string(pybind11::str(dt)) +
             " (" + ref + ")");
    if (a.ndim() != ndim) fail("must be " + std::to_string(ndim) + "-D, got shape " + shape_of(a));
    if ((a.flags() & pybind11::array::c_style) == 0) fail("must be C-contiguous");
    if (writeable && !a.writeable()) fail("must be writeable");
}

// Throws ValueError(msg()) when !ok; the message is only built on failure.
template <typename Msg>
void require(bool ok, Msg&& msg) {
    if (!ok) throw pybind11::value_error(msg());
}

// Cuts matrix i's rows[i] rows into blocks of `block_rows` and runs them on up to `num_threads`
// threads (the caller's included; an OpenMP team where built with OpenMP), blocks taken in order.
// Each thread calls make_worker() once (for its own scratch) and the result as work(i, block of
// matrix i, first row, end row). The first exception a worker throws is rethrown here. Call
// without the GIL: nothing here touches Python.
template <typename MakeWorker>
void for_row_blocks(const std::vector<int64_t>& rows, int64_t block_rows, int num_threads, MakeWorker make_worker) {
    std::vector<int64_t> first(rows.size() + 1, 0);
    for (size_t i = 0; i < rows.size(); ++i) first[i + 1] = first[i] + (rows[i] + block_rows - 1) / block_rows;
    const int64_t total = first.back();
    std::atomic<int64_t> next{0};
    std::exception_ptr error;
    std::mutex error_mutex;
    auto body = [&]() {
        try {
            auto work = make_worker();
            size_t i = 0;
            for (int64_t blk; (blk = next.fetch_add(1)) < total;) {
                while (blk >= first[i + 1]) ++i;
                const int64_t local = blk - first[i], r0 = local * block_rows;
                work(i, local, r0, std::min(rows[i], r0 + block_rows));
            }
        } catch (...) {
            std::lock_guard<std::mutex> lock(error_mutex);
            if (!error) error = std::current_exception();
        }
    };
    // At least 4 blocks per thread and at most 16 threads: memory bandwidth saturates long before
    // that on any machine.
    //
    // Built with OpenMP (CMakeLists.txt links it where the compiler has it), the team comes from
    // the process's OpenMP pool. Torch's CPU wheels load their libgomp.so.1 first, and the loader
    // gives this module the already-loaded library of that soname, so these blocks run on torch's
    // own worker threads. Measured in a paper-config meta-step (2 cores): the low-rank Adam took
    // 4.8-5.0 ms this way against 7.3-8.6 ms with helpers started per call, which fought torch's
    // worker (it spins for a while after every parallel torch op) for the second core. Where torch
    // uses another OpenMP runtime, macaw_fast/_openmp.py passes num_threads = 1 (no second pool).
    const int64_t useful = std::max<int64_t>(1, std::min<int64_t>(total / 4, 16));
    const int team = static_cast<int>(std::min<int64_t>(std::max(num_threads, 1), useful));
#ifdef _OPENMP
    if (team > 1) {
#pragma omp parallel num_threads(team)
        body();
    } else {
        body();
    }
#else
    std::vector<std::thread> threads;
    threads.reserve(static_cast<size_t>(team - 1));
    for (int t = 1; t < team; ++t) threads.emplace_back(body);
    body();
    for (auto& th : threads) th.join();
#endif
    if (error) std::rethrow_exception(error);
}

}  // namespace macaw
