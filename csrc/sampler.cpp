// Python bindings of the meta-batch sampler (definitions in sampler.hpp).
//
// Arguments are checked and raw pointers/shapes taken while the GIL is held; the index draws and
// the row copies then run with the GIL released, on up to `num_threads` threads.
#include "sampler.hpp"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <functional>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>

namespace py = pybind11;

namespace {

constexpr int kNumFields = 8;
const char* const kFieldNames[kNumFields] = {"obs",  "action",    "reward",       "next_obs",
                                             "done", "mc_return", "terminal_obs", "terminal_discount"};
// Which fields are vectors, and of which width: 0 = scalar, 1 = obs_dim, 2 = act_dim.
const int kFieldKind[kNumFields] = {1, 2, 0, 1, 0, 0, 1, 0};

struct FieldView {
    const float* data = nullptr;
    uint64_t row_len = 1;  // floats per row
};

struct TaskView {
    uint64_t n = 0;
    FieldView fields[kNumFields];
};

std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

bool is_float32(const py::array& a) { return a.dtype().is(py::dtype::of<float>()) || a.dtype().equal(py::dtype::of<float>()); }

bool is_c_contiguous(const py::array& a) { return (a.flags() & py::array::c_style) != 0; }

py::array as_array(const py::handle& obj, const std::string& where) {
    if (!py::isinstance<py::array>(obj)) {
        throw py::type_error(where + ": expected a numpy array, got " + std::string(py::str(py::type::of(obj).attr("__name__"))));
    }
    return py::reinterpret_borrow<py::array>(obj);
}

void check_dtype_layout(const py::array& a, const std::string& where) {
    if (!is_float32(a)) throw py::type_error(where + ": expected dtype float32, got " + std::string(py::str(a.dtype())));
    if (!is_c_contiguous(a)) throw py::value_error(where + ": expected a C-contiguous array");
}

// Validates one batch's 8 output arrays; returns (obs_dim, act_dim) and the data pointers.
void check_outputs(const py::sequence& outs, const char* which, py::ssize_t T, py::ssize_t B, py::ssize_t& obs_dim,
                   py::ssize_t& act_dim, std::vector<py::array>& keep, float** ptrs) {
    if (py::len(outs) != kNumFields) {
        throw py::value_error(std::string(which) + ": expected " + std::to_string(kNumFields) + " output arrays (" +
                              "obs, action, reward, next_obs, done, mc_return, terminal_obs, terminal_discount), got " +
                              std::to_string(py::len(outs)));
    }
    for (int f = 0; f < kNumFields; ++f) {
        const std::string where = std::string(which) + " output '" + kFieldNames[f] + "'";
        py::array a = as_array(outs[f], where);
        check_dtype_layout(a, where);
        if (!a.writeable()) throw py::value_error(where + ": expected a writeable array");
        const int kind = kFieldKind[f];
        if (kind == 0) {
            if (a.ndim() != 2 || a.shape(0) != T || a.shape(1) != B) {
                throw py::value_error(where + ": expected shape (" + std::to_string(T) + ", " + std::to_string(B) +
                                      "), got " + shape_str(a));
            }
        } else {
            if (a.ndim() != 3 || a.shape(0) != T || a.shape(1) != B) {
                throw py::value_error(where + ": expected shape (" + std::to_string(T) + ", " + std::to_string(B) +
                                      ", dim), got " + shape_str(a));
            }
            py::ssize_t& dim = kind == 1 ? obs_dim : act_dim;
            if (dim < 0) dim = a.shape(2);
            if (a.shape(2) != dim) {
                throw py::value_error(where + ": expected last dim " + std::to_string(dim) + " (" +
                                      (kind == 1 ? "obs_dim" : "act_dim") + "), got " + shape_str(a));
            }
        }
        ptrs[f] = static_cast<float*>(a.mutable_data());
        keep.push_back(a);
    }
}

// Validates one task's 8 field arrays against the dims and batch size; fills view.
void check_task(const py::handle& task_obj, int64_t task, py::ssize_t obs_dim, py::ssize_t act_dim, uint64_t B,
                bool contiguous, bool paper_window, std::vector<py::array>& keep, TaskView& view) {
    const std::string tname = "task " + std::to_string(task);
    if (!py::isinstance<py::sequence>(task_obj) || py::isinstance<py::str>(task_obj)) {
        throw py::type_error(tname + ": expected a sequence of " + std::to_string(kNumFields) + " field arrays");
    }
    py::sequence seq = py::reinterpret_borrow<py::sequence>(task_obj);
    if (py::len(seq) != kNumFields) {
        throw py::value_error(tname + ": expected " + std::to_string(kNumFields) + " field arrays, got " +
                              std::to_string(py::len(seq)));
    }
    py::ssize_t n = -1;
    const char* n_field = nullptr;
    for (int f = 0; f < kNumFields; ++f) {
        const std::string where = tname + ": field '" + kFieldNames[f] + "'";
        py::array a = as_array(seq[f], where);
        check_dtype_layout(a, where);
        const int kind = kFieldKind[f];
        uint64_t row_len = 1;
        if (kind == 0) {
            if (!(a.ndim() == 1 || (a.ndim() == 2 && a.shape(1) == 1))) {
                throw py::value_error(where + ": expected shape (N,) or (N, 1), got " + shape_str(a));
            }
        } else {
            const py::ssize_t dim = kind == 1 ? obs_dim : act_dim;
            if (a.ndim() != 2 || a.shape(1) != dim) {
                throw py::value_error(where + ": expected shape (N, " + std::to_string(dim) + ") (" +
                                      (kind == 1 ? "obs_dim" : "act_dim") + " from the outputs), got " + shape_str(a));
            }
            row_len = static_cast<uint64_t>(dim);
        }
        if (n < 0) {
            n = a.shape(0);
            n_field = kFieldNames[f];
        } else if (a.shape(0) != n) {
            throw py::value_error(where + ": has " + std::to_string(a.shape(0)) + " rows but field '" + n_field +
                                  "' has " + std::to_string(n));
        }
        view.fields[f].data = static_cast<const float*>(a.data());
        view.fields[f].row_len = row_len;
        keep.push_back(a);
    }
    if (static_cast<uint64_t>(n) >= macaw::kMaxRows) {
        throw py::value_error(tname + ": " + std::to_string(n) + " rows; at most 2^32 - 1 are supported");
    }
    const uint64_t need = (contiguous && paper_window) ? B + 1 : B;
    if (static_cast<uint64_t>(n) < need) {
        throw py::value_error(tname + ": has " + std::to_string(n) + " rows, fewer than the " + std::to_string(need) +
                              " needed for batch size " + std::to_string(B) +
                              (need > B ? " (the paper's window start is uniform in [0, N - B))" : ""));
    }
    view.n = static_cast<uint64_t>(n);
}

// Runs fn(i) for i in [0, n) on up to num_threads threads (the caller's thread included).
// The first exception thrown by any call is rethrown after all threads have joined.
void parallel_for(size_t n, int num_threads, const std::function<void(size_t)>& fn) {
    const size_t workers = std::max<size_t>(1, std::min<size_t>(static_cast<size_t>(std::max(num_threads, 1)), n));
    std::atomic<size_t> next{0};
    std::exception_ptr error;
    std::mutex error_mutex;
    auto loop = [&]() {
        for (;;) {
            const size_t i = next.fetch_add(1);
            if (i >= n) return;
            try {
                fn(i);
            } catch (...) {
                std::lock_guard<std::mutex> lock(error_mutex);
                if (!error) error = std::current_exception();
                next.store(n);
                return;
            }
        }
    };
    std::vector<std::thread> threads;
    threads.reserve(workers - 1);
    for (size_t t = 1; t < workers; ++t) threads.emplace_back(loop);
    loop();
    for (auto& t : threads) t.join();
    if (error) std::rethrow_exception(error);
}

int resolve_threads(int num_threads) {
    if (num_threads < 0) throw py::value_error("num_threads: expected >= 0 (0 = all hardware threads), got " + std::to_string(num_threads));
    if (num_threads == 0) {
        const unsigned hw = std::thread::hardware_concurrency();
        return hw == 0 ? 1 : static_cast<int>(hw);
    }
    return num_threads;
}

bool parse_mode(const std::string& inner_mode) {
    if (inner_mode == "contiguous") return true;
    if (inner_mode == "uniform") return false;
    throw py::value_error("inner_mode: expected 'contiguous' or 'uniform', got '" + inner_mode + "'");
}

uint64_t check_batch_size(int64_t batch_size) {
    if (batch_size < 1 || static_cast<uint64_t>(batch_size) >= macaw::kMaxRows) {
        throw py::value_error("batch_size: expected 1 <= batch_size < 2^32, got " + std::to_string(batch_size));
    }
    return static_cast<uint64_t>(batch_size);
}

std::vector<int64_t> check_task_ids(const std::vector<int64_t>& task_ids, size_t num_tasks) {
    if (task_ids.empty()) throw py::value_error("task_ids: expected at least one task id");
    for (size_t i = 0; i < task_ids.size(); ++i) {
        if (task_ids[i] < 0 || static_cast<size_t>(task_ids[i]) >= num_tasks) {
            throw py::index_error("task_ids[" + std::to_string(i) + "]: task " + std::to_string(task_ids[i]) +
                                  " out of range for " + std::to_string(num_tasks) + " tasks");
        }
    }
    return task_ids;
}

// Draws both index arrays for every slot (GIL must be released by the caller if desired).
void draw_indices(const std::vector<int64_t>& task_ids, const std::vector<uint64_t>& rows, uint64_t B, uint64_t seed,
                  uint64_t step, bool contiguous, bool paper_window, int64_t* inner, int64_t* outer, int num_threads) {
    const size_t T = task_ids.size();
    parallel_for(2 * T, num_threads, [&](size_t i) {
        std::vector<uint64_t> table;
        const size_t slot = i / 2;
        const uint64_t task = static_cast<uint64_t>(task_ids[slot]);
        const uint64_t n = rows[slot];
        if (i % 2 == 0) {
            macaw::inner_indices(seed, step, task, slot, n, B, contiguous, paper_window, inner + slot * B, table);
        } else {
            macaw::outer_indices(seed, step, task, slot, n, B, outer + slot * B, table);
        }
    });
}

py::tuple sample_indices(const std::vector<int64_t>& n_rows, const std::vector<int64_t>& task_ids_in, int64_t batch_size,
                         uint64_t seed, uint64_t step, const std::string& inner_mode, bool paper_window, int num_threads) {
    const bool contiguous = parse_mode(inner_mode);
    const uint64_t B = check_batch_size(batch_size);
    const std::vector<int64_t> task_ids = check_task_ids(task_ids_in, n_rows.size());
    const int threads = resolve_threads(num_threads);
    const size_t T = task_ids.size();
    std::vector<uint64_t> rows(T);
    for (size_t s = 0; s < T; ++s) {
        const int64_t task = task_ids[s];
        const int64_t n = n_rows[static_cast<size_t>(task)];
        const int64_t need = (contiguous && paper_window) ? batch_size + 1 : batch_size;
        if (n < need || static_cast<uint64_t>(n) >= macaw::kMaxRows) {
            throw py::value_error("task " + std::to_string(task) + ": has " + std::to_string(n) + " rows; expected " +
                                  std::to_string(need) + " <= N < 2^32 for batch size " + std::to_string(batch_size));
        }
        rows[s] = static_cast<uint64_t>(n);
    }
    py::array_t<int64_t> inner({static_cast<py::ssize_t>(T), static_cast<py::ssize_t>(B)});
    py::array_t<int64_t> outer({static_cast<py::ssize_t>(T), static_cast<py::ssize_t>(B)});
    int64_t* pi = inner.mutable_data();
    int64_t* po = outer.mutable_data();
    {
        py::gil_scoped_release release;
        draw_indices(task_ids, rows, B, seed, step, contiguous, paper_window, pi, po, threads);
    }
    return py::make_tuple(inner, outer);
}

py::tuple sample_meta_batch(const py::sequence& tasks, const std::vector<int64_t>& task_ids_in, int64_t batch_size,
                            uint64_t seed, uint64_t step, const std::string& inner_mode, bool paper_window,
                            const py::sequence& inner_out, const py::sequence& outer_out, int num_threads) {
    const bool contiguous = parse_mode(inner_mode);
    const uint64_t B = check_batch_size(batch_size);
    const std::vector<int64_t> task_ids = check_task_ids(task_ids_in, static_cast<size_t>(py::len(tasks)));
    const int threads = resolve_threads(num_threads);
    const size_t T = task_ids.size();

    std::vector<py::array> keep;  // holds every array alive (and its pointer valid) for the whole call
    keep.reserve(static_cast<size_t>(kNumFields) * (T + 2));
    float* inner_ptr[kNumFields];
    float* outer_ptr[kNumFields];
    py::ssize_t obs_dim = -1, act_dim = -1;
    check_outputs(inner_out, "inner", static_cast<py::ssize_t>(T), static_cast<py::ssize_t>(B), obs_dim, act_dim, keep,
                  inner_ptr);
    check_outputs(outer_out, "outer", static_cast<py::ssize_t>(T), static_cast<py::ssize_t>(B), obs_dim, act_dim, keep,
                  outer_ptr);

    std::vector<TaskView> views(T);
    for (size_t s = 0; s < T; ++s) {
        check_task(tasks[static_cast<size_t>(task_ids[s])], task_ids[s], obs_dim, act_dim, B, contiguous, paper_window,
                   keep, views[s]);
    }

    py::array_t<int64_t> inner_idx({static_cast<py::ssize_t>(T), static_cast<py::ssize_t>(B)});
    py::array_t<int64_t> outer_idx({static_cast<py::ssize_t>(T), static_cast<py::ssize_t>(B)});
    int64_t* pi = inner_idx.mutable_data();
    int64_t* po = outer_idx.mutable_data();
    {
        py::gil_scoped_release release;
        // One work item per (slot, batch): draw its indices, then copy its rows of all 8 fields.
        // A thread costs tens of microseconds to start, so each one gets at least ~1 MiB to copy.
        uint64_t row_bytes = 0;
        for (int f = 0; f < kNumFields; ++f) {
            row_bytes += sizeof(float) * static_cast<uint64_t>(kFieldKind[f] == 0 ? 1 : (kFieldKind[f] == 1 ? obs_dim : act_dim));
        }
        const uint64_t total = 2 * T * B * row_bytes;
        const int useful = static_cast<int>(std::min<uint64_t>(threads, 1 + total / (1u << 20)));
        parallel_for(2 * T, useful, [&](size_t i) {
            std::vector<uint64_t> table;
            const size_t slot = i / 2;
            const bool is_outer = i % 2 == 1;
            const TaskView& v = views[slot];
            const uint64_t task = static_cast<uint64_t>(task_ids[slot]);
            int64_t* idx = (is_outer ? po : pi) + slot * B;
            if (is_outer) {
                macaw::outer_indices(seed, step, task, slot, v.n, B, idx, table);
            } else {
                macaw::inner_indices(seed, step, task, slot, v.n, B, contiguous, paper_window, idx, table);
            }
            for (int f = 0; f < kNumFields; ++f) {
                const uint64_t len = v.fields[f].row_len;
                float* dst = (is_outer ? outer_ptr[f] : inner_ptr[f]) + slot * B * len;
                macaw::gather_rows(v.fields[f].data, v.n, len, idx, B, dst);
            }
        });
    }
    return py::make_tuple(inner_idx, outer_idx);
}

}  // namespace

void register_sampler(py::module_& m) {
    m.def("sample_meta_batch", &sample_meta_batch, py::arg("tasks"), py::arg("task_ids"), py::arg("batch_size"),
          py::arg("seed"), py::arg("step"), py::arg("inner_mode"), py::arg("paper_window"), py::arg("inner_out"),
          py::arg("outer_out"), py::arg("num_threads") = 1,
          "Sample one meta-batch into preallocated float32 arrays; returns (inner_idx, outer_idx), each (T, B) int64.");
    m.def("sample_indices", &sample_indices, py::arg("n_rows"), py::arg("task_ids"), py::arg("batch_size"),
          py::arg("seed"), py::arg("step"), py::arg("inner_mode"), py::arg("paper_window"), py::arg("num_threads") = 1,
          "Row indices of one meta-batch: (inner_idx, outer_idx), each (T, B) int64, for tasks with n_rows rows.");
    m.def("stream_key", &macaw::stream_key, py::arg("seed"), py::arg("step"), py::arg("task"), py::arg("slot"),
          py::arg("stream"), "The counter-based RNG's key for (seed, step, task, slot, stream).");
    m.def(
        "uniform_below",
        [](uint64_t key, uint64_t k, uint64_t n) {
            if (n < 1 || n >= macaw::kMaxRows) throw py::value_error("n: expected 1 <= n < 2^32, got " + std::to_string(n));
            if (k >= macaw::kMaxRows) throw py::value_error("k: expected k < 2^32, got " + std::to_string(k));
            return macaw::below(key, k, n);
        },
        py::arg("key"), py::arg("k"), py::arg("n"), "Draw k of stream `key`: a uniform integer in [0, n).");
    m.def(
        "distinct_rows",
        [](uint64_t key_rows, uint64_t key_shuffle, int64_t n, int64_t b) {
            if (n < 1 || static_cast<uint64_t>(n) >= macaw::kMaxRows) throw py::value_error("n: expected 1 <= n < 2^32, got " + std::to_string(n));
            if (b < 1 || b > n) throw py::value_error("b: expected 1 <= b <= n, got " + std::to_string(b));
            py::array_t<int64_t> out(static_cast<py::ssize_t>(b));
            std::vector<uint64_t> table;
            macaw::distinct_rows(key_rows, key_shuffle, static_cast<uint64_t>(n), static_cast<uint64_t>(b), out.mutable_data(), table);
            return out;
        },
        py::arg("key_rows"), py::arg("key_shuffle"), py::arg("n"), py::arg("b"),
        "b distinct rows of [0, n) in uniformly random order (Floyd's algorithm, then a Fisher-Yates shuffle).");
#if defined(__SANITIZE_ADDRESS__)
    m.attr("_asan") = true;
#else
    m.attr("_asan") = false;
#endif
}
