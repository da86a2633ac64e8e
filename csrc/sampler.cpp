// Python bindings of the meta-batch sampler (definitions in sampler.hpp).
//
// Arguments are checked and raw pointers/shapes taken while the GIL is held; the index draws and
// the row copies then run with the GIL released, on up to `num_threads` threads of a persistent pool
// (the calling thread included), so no thread is created per call.
//
// Two entry points share one core (`fill`):
//   Sampler           validates the task arrays ONCE and keeps a per-task pointer table; each call
//                     then checks only its outputs and ids (the fast path MetaBatchSampler uses).
//   sample_meta_batch a stateless function validating everything per call (the numpy twin's twin).
#include "sampler.hpp"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <optional>
#include <exception>
#include <functional>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>

#include <unistd.h>

namespace py = pybind11;

namespace {

constexpr int kNumFields = 8;
const char* const kFieldNames[kNumFields] = {"obs",  "action",    "reward",       "next_obs",
                                             "done", "mc_return", "terminal_obs", "terminal_discount"};
// Which fields are vectors, and of which width: 0 = scalar, 1 = obs_dim, 2 = act_dim.
constexpr int kFieldKind[kNumFields] = {1, 2, 0, 1, 0, 0, 1, 0};

// Bit f set: field f is a scalar (one float a row).
constexpr uint32_t kScalarMask = (1u << 2) | (1u << 4) | (1u << 5) | (1u << 7);
static_assert(kFieldKind[2] == 0 && kFieldKind[4] == 0 && kFieldKind[5] == 0 && kFieldKind[7] == 0, "kScalarMask");

// One task's data: row count, and per field its first float and floats per row.
struct TaskView {
    uint64_t n = 0;
    const float* src[kNumFields] = {};
    uint64_t len[kNumFields] = {};
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

// Validates one task's 8 field arrays against the dims (set from this task when still < 0) and the
// batch size; fills view.
void check_task(const py::handle& task_obj, int64_t task, py::ssize_t& obs_dim, py::ssize_t& act_dim, uint64_t B,
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
            py::ssize_t& dim = kind == 1 ? obs_dim : act_dim;
            if (dim < 0 && a.ndim() == 2) dim = a.shape(1);  // the first task sets the dims
            if (a.ndim() != 2 || a.shape(1) != dim) {
                throw py::value_error(where + ": expected shape (N, " + std::to_string(dim) + ") (" +
                                      (kind == 1 ? "obs_dim" : "act_dim") + "), got " + shape_str(a));
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
        view.src[f] = static_cast<const float*>(a.data());
        view.len[f] = row_len;
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

// ------------------------------------------------------------------------------------------------
// A persistent thread pool. Workers sleep on a condition variable between calls (they never spin,
// so they cost nothing while training runs); the caller publishes a job and works on it itself.
// Items are claimed with an atomic counter, so the caller finishes the job alone when no worker
// wakes in time (a loaded machine, or a forked child whose pool threads did not survive the fork),
// and the call only waits for items a worker has actually claimed.

class Pool {
   public:
    // The process's pool (a new one after fork(): threads do not survive it). Never destroyed, so
    // no worker is joined during interpreter shutdown.
    static Pool& get() {
        static std::mutex m;
        static Pool* pool = nullptr;
        static pid_t owner = 0;
        std::lock_guard<std::mutex> lock(m);
        if (pool == nullptr || owner != getpid()) {
            pool = new Pool();
            owner = getpid();
        }
        return *pool;
    }

    // Runs fn(i) for every i in [0, n) on up to `threads` threads (the caller's included). The first
    // exception thrown by any call is rethrown once every claimed item has finished.
    void run(size_t n, int threads, const std::function<void(size_t)>& fn) {
        const size_t helpers = std::min<size_t>(static_cast<size_t>(std::max(threads, 1)), n) - (n > 0 ? 1 : 0);
        std::unique_lock<std::mutex> busy(busy_, std::defer_lock);
        if (helpers == 0 || !busy.try_lock()) {  // one job at a time; a concurrent caller runs alone
            for (size_t i = 0; i < n; ++i) fn(i);
            return;
        }
        using clock = std::chrono::steady_clock;
        const auto t0 = clock::now();
        if (skip_ > 0 || serial_item_s_ <= 0) {
            // The pool is off (helpers have not paid off lately, see below), or the serial cost per
            // item is not known yet: run inline, and time it.
            if (skip_ > 0) --skip_;
            ++stats_.skipped;
            for (size_t i = 0; i < n; ++i) fn(i);
            const double per_item = std::chrono::duration<double>(clock::now() - t0).count() / static_cast<double>(n);
            serial_item_s_ = serial_item_s_ <= 0 ? per_item : 0.75 * serial_item_s_ + 0.25 * per_item;
            return;
        }
        auto job = std::make_shared<Job>(&fn, n, static_cast<int>(helpers));
        {
            std::lock_guard<std::mutex> lock(m_);
            while (workers_.size() < helpers) workers_.emplace_back([this] { worker(); });
            job_ = job;
            ++generation_;
        }
        cv_.notify_all();
        const size_t mine = job->work();
        const auto t1 = clock::now();
        // Wait for the items helpers claimed: spin briefly (they are usually about to finish), then
        // sleep until the last one is done, so that a helper waiting for a CPU can have ours.
        for (unsigned spins = 0; job->done.load(std::memory_order_acquire) < n; ++spins) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
            if ((spins & 63) == 63 && clock::now() - t1 > std::chrono::microseconds(kSpinMicros)) {
                std::unique_lock<std::mutex> lock(job->done_mutex);
                job->done_cv.wait(lock, [&] { return job->done.load(std::memory_order_acquire) >= n; });
                break;
            }
        }
        const auto t2 = clock::now();
        {
            std::lock_guard<std::mutex> lock(m_);
            if (job_ == job) job_.reset();
        }
        // Did the helpers pay off? A call whose time per item is not clearly below the serial time per
        // item (a running average of the inline calls) is a strike: on a machine with no idle CPU the
        // woken helper takes the caller's CPU, or is descheduled holding an item, and the call ends up
        // slower than one thread alone. Two strikes in a row switch the pool off for `backoff_` calls
        // (16, doubling up to 1024 while it keeps failing; the inline calls refresh the serial
        // average); one good call resets the backoff.
        const double per_item = std::chrono::duration<double>(t2 - t0).count() / static_cast<double>(n);
        const bool paid = mine < n && per_item < 0.9 * serial_item_s_;
        ++stats_.pooled;
        stats_.helped += n - mine;
        stats_.wait_us += std::chrono::duration<double, std::micro>(t2 - t1).count();
        if (paid) {
            ++stats_.paid;
            strikes_ = 0;
            backoff_ = kMinBackoff;
        } else if (++strikes_ >= 2) {
            skip_ = backoff_;
            backoff_ = std::min<unsigned>(2 * backoff_, kMaxBackoff);
            strikes_ = 1;  // after the pause one more bad call pauses again
        }
        if (job->error) std::rethrow_exception(job->error);
    }

   private:
    struct Job {
        Job(const std::function<void(size_t)>* f, size_t count, int helpers) : fn(f), n(count), seats(helpers) {}
        const std::function<void(size_t)>* fn;  // valid while an item is claimed and unfinished
        const size_t n;
        std::atomic<size_t> next{0};
        std::atomic<size_t> done{0};
        std::atomic<int> seats;  // how many workers may still join
        std::atomic<bool> failed{false};
        std::mutex error_mutex;
        std::exception_ptr error;
        std::mutex done_mutex;  // with done_cv: the caller sleeps until done == n
        std::condition_variable done_cv;

        // Claims and runs items until none is left; returns how many this thread ran.
        size_t work() {
            for (size_t ran = 0;; ++ran) {
                const size_t i = next.fetch_add(1, std::memory_order_relaxed);
                if (i >= n) return ran;
                if (!failed.load(std::memory_order_relaxed)) {
                    try {
                        (*fn)(i);
                    } catch (...) {
                        std::lock_guard<std::mutex> lock(error_mutex);
                        if (!error) error = std::current_exception();
                        failed.store(true, std::memory_order_relaxed);
                    }
                }
                if (done.fetch_add(1, std::memory_order_acq_rel) + 1 == n) {  // the last item: wake the caller
                    std::lock_guard<std::mutex> lock(done_mutex);
                    done_cv.notify_all();
                }
            }
        }
    };

    void worker() {
        uint64_t seen = 0;
        for (;;) {
            std::shared_ptr<Job> job;
            {
                std::unique_lock<std::mutex> lock(m_);
                cv_.wait(lock, [&] { return generation_ != seen; });
                seen = generation_;
                job = job_;
            }
            if (job && job->seats.fetch_sub(1, std::memory_order_relaxed) > 0) job->work();
        }
    }

    static constexpr unsigned kMinBackoff = 16, kMaxBackoff = 1024;
    static constexpr int kSpinMicros = 20;
    // Adaptive switch-off, guarded by busy_: calls left to run inline, failed calls in a row, and
    // the next pause's length.
    unsigned skip_ = 0, strikes_ = 0, backoff_ = kMinBackoff;
    double serial_item_s_ = 0;  // running average of an inline call's seconds per item (0: none yet)

   public:
    // Counters since the pool started (read with busy_ free; for diagnostics and tests).
    struct Stats {
        uint64_t pooled = 0, paid = 0, skipped = 0, helped = 0;
        double wait_us = 0;
    } stats_;

   private:
    std::mutex busy_;  // held by the caller for the whole job
    std::mutex m_;     // guards job_, generation_, workers_
    std::condition_variable cv_;
    std::shared_ptr<Job> job_;
    uint64_t generation_ = 0;
    std::vector<std::thread> workers_;
};

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

void check_task_ids(const std::vector<int64_t>& task_ids, size_t num_tasks) {
    if (task_ids.empty()) throw py::value_error("task_ids: expected at least one task id");
    for (size_t i = 0; i < task_ids.size(); ++i) {
        if (task_ids[i] < 0 || static_cast<size_t>(task_ids[i]) >= num_tasks) {
            throw py::index_error("task_ids[" + std::to_string(i) + "]: task " + std::to_string(task_ids[i]) +
                                  " out of range for " + std::to_string(num_tasks) + " tasks");
        }
    }
}

// The global slots to sample: all of task_ids' slots, or the given subset (each in range).
std::vector<uint64_t> resolve_slots(const std::optional<std::vector<int64_t>>& slots, size_t num_slots) {
    std::vector<uint64_t> out;
    if (!slots) {
        out.resize(num_slots);
        for (size_t s = 0; s < num_slots; ++s) out[s] = s;
        return out;
    }
    if (slots->empty()) throw py::value_error("slots: expected at least one slot (or None for all)");
    out.reserve(slots->size());
    for (size_t j = 0; j < slots->size(); ++j) {
        const int64_t s = (*slots)[j];
        if (s < 0 || static_cast<uint64_t>(s) >= num_slots) {
            throw py::index_error("slots[" + std::to_string(j) + "]: slot " + std::to_string(s) + " out of range for " +
                                  std::to_string(num_slots) + " task ids");
        }
        out.push_back(static_cast<uint64_t>(s));
    }
    return out;
}

// One sampling request: output row j holds global slot slot[j] (task id task[j], data *view[j]).
struct Request {
    std::vector<const TaskView*> view;
    std::vector<uint64_t> task, slot;
    uint64_t B = 0, seed = 0, step = 0;
    bool contiguous = true, paper_window = true;
    const float* const* inner_ptr = nullptr;  // 8 field pointers, or null: skip the inner batch
    const float* const* outer_ptr = nullptr;  // likewise for the outer batch
    int64_t* inner_idx = nullptr;             // (rows, B) each; required for every batch sampled
    int64_t* outer_idx = nullptr;
};

// Copies one task's rows idx[0..B) of all fields into dst. The row lengths of the paper's
// environments (obs_dim, act_dim: HalfCheetah 20, 6; Ant 27, 8; Walker 17, 6) get copy loops
// compiled for them; any other shape takes the generic loop (same result).
void gather(const TaskView& v, const int64_t* idx, uint64_t B, float* const (&dst)[kNumFields]) {
    static_assert(kNumFields == 8 && kFieldKind[0] == 1 && kFieldKind[1] == 2 && kFieldKind[3] == 1 && kFieldKind[6] == 1,
                  "the fixed layouts below follow kFieldKind");
    const uint64_t od = v.len[0], ad = v.len[1];
    if (od == 20 && ad == 6) {
        macaw::gather_task_rows_with<kScalarMask>(macaw::FixedLens<20, 6, 1, 20, 1, 1, 20, 1>{}, v.src, v.len, v.n, idx, B, dst);
    } else if (od == 27 && ad == 8) {
        macaw::gather_task_rows_with<kScalarMask>(macaw::FixedLens<27, 8, 1, 27, 1, 1, 27, 1>{}, v.src, v.len, v.n, idx, B, dst);
    } else if (od == 17 && ad == 6) {
        macaw::gather_task_rows_with<kScalarMask>(macaw::FixedLens<17, 6, 1, 17, 1, 1, 17, 1>{}, v.src, v.len, v.n, idx, B, dst);
    } else {
        macaw::gather_task_rows<kScalarMask>(v.src, v.len, v.n, idx, B, dst);
    }
}

// Draws the indices and copies the rows of every (output row, batch): one pool item each.
// Called without the GIL.
void fill(const Request& r, int threads) {
    const size_t rows = r.view.size();
    const bool do_inner = r.inner_ptr != nullptr, do_outer = r.outer_ptr != nullptr;
    const size_t per_row = static_cast<size_t>(do_inner) + static_cast<size_t>(do_outer);
    const std::function<void(size_t)> item = [&](size_t i) {
        thread_local std::vector<uint64_t> scratch;
        // The outer batches (random rows: the slow items) come first, so the fast window copies fill
        // in at the end and the threads finish together.
        const bool is_outer = do_outer && i < rows;
        const size_t j = is_outer || !do_outer ? i : i - rows;
        const TaskView& v = *r.view[j];
        int64_t* idx = (is_outer ? r.outer_idx : r.inner_idx) + j * r.B;
        if (is_outer) {
            macaw::outer_indices(r.seed, r.step, r.task[j], r.slot[j], v.n, r.B, idx, scratch);
        } else {
            macaw::inner_indices(r.seed, r.step, r.task[j], r.slot[j], v.n, r.B, r.contiguous, r.paper_window, idx, scratch);
        }
        const float* const* out = is_outer ? r.outer_ptr : r.inner_ptr;
        float* dst[kNumFields];
        for (int f = 0; f < kNumFields; ++f) dst[f] = const_cast<float*>(out[f]) + j * r.B * v.len[f];
        gather(v, idx, r.B, dst);
    };
    Pool::get().run(rows * per_row, threads, item);
}

// Index arrays: returned numpy arrays, or per-thread scratch when the caller does not want them.
struct IndexBuffers {
    py::object inner = py::none(), outer = py::none();
    int64_t* inner_ptr = nullptr;
    int64_t* outer_ptr = nullptr;

    IndexBuffers(size_t rows, uint64_t B, bool want_inner, bool want_outer, bool returned) {
        const py::ssize_t shape[2] = {static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(B)};
        thread_local std::vector<int64_t> scratch;
        if (!returned) scratch.resize(2 * rows * B);
        if (want_inner) {
            if (returned) {
                py::array_t<int64_t> a(std::vector<py::ssize_t>(shape, shape + 2));
                inner_ptr = a.mutable_data();
                inner = a;
            } else {
                inner_ptr = scratch.data();
            }
        }
        if (want_outer) {
            if (returned) {
                py::array_t<int64_t> a(std::vector<py::ssize_t>(shape, shape + 2));
                outer_ptr = a.mutable_data();
                outer = a;
            } else {
                outer_ptr = scratch.data() + rows * B;
            }
        }
    }
};

// Draws both index arrays for every slot (GIL must be released by the caller if desired).
py::tuple sample_indices(const std::vector<int64_t>& n_rows, const std::vector<int64_t>& task_ids, int64_t batch_size,
                         uint64_t seed, uint64_t step, const std::string& inner_mode, bool paper_window, int num_threads) {
    const bool contiguous = parse_mode(inner_mode);
    const uint64_t B = check_batch_size(batch_size);
    check_task_ids(task_ids, n_rows.size());
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
        Pool::get().run(2 * T, threads, [&](size_t i) {
            thread_local std::vector<uint64_t> scratch;
            const size_t slot = i / 2;
            const uint64_t task = static_cast<uint64_t>(task_ids[slot]);
            if (i % 2 == 0) {
                macaw::inner_indices(seed, step, task, slot, rows[slot], B, contiguous, paper_window, pi + slot * B, scratch);
            } else {
                macaw::outer_indices(seed, step, task, slot, rows[slot], B, po + slot * B, scratch);
            }
        });
    }
    return py::make_tuple(inner, outer);
}

// Output pointers of one batch, or null when `outs` is None (that batch is not sampled).
const float* const* outputs_or_none(const py::object& outs, const char* which, size_t rows, uint64_t B,
                                    py::ssize_t& obs_dim, py::ssize_t& act_dim, std::vector<py::array>& keep,
                                    float** ptrs) {
    if (outs.is_none()) return nullptr;
    if (!py::isinstance<py::sequence>(outs) || py::isinstance<py::str>(outs)) {
        throw py::type_error(std::string(which) + ": expected a sequence of " + std::to_string(kNumFields) +
                             " output arrays or None");
    }
    check_outputs(py::reinterpret_borrow<py::sequence>(outs), which, static_cast<py::ssize_t>(rows),
                  static_cast<py::ssize_t>(B), obs_dim, act_dim, keep, ptrs);
    return ptrs;
}

py::tuple sample_meta_batch(const py::sequence& tasks, const std::vector<int64_t>& task_ids, int64_t batch_size,
                            uint64_t seed, uint64_t step, const std::string& inner_mode, bool paper_window,
                            const py::object& inner_out, const py::object& outer_out, int num_threads,
                            const std::optional<std::vector<int64_t>>& slots) {
    Request r;
    r.contiguous = parse_mode(inner_mode);
    r.paper_window = paper_window;
    r.B = check_batch_size(batch_size);
    r.seed = seed;
    r.step = step;
    check_task_ids(task_ids, static_cast<size_t>(py::len(tasks)));
    const int threads = resolve_threads(num_threads);
    r.slot = resolve_slots(slots, task_ids.size());
    const size_t rows = r.slot.size();
    if (inner_out.is_none() && outer_out.is_none()) throw py::value_error("inner_out, outer_out: both are None");

    std::vector<py::array> keep;  // holds every array alive (and its pointer valid) for the whole call
    keep.reserve(static_cast<size_t>(kNumFields) * (rows + 2));
    float* inner_ptr[kNumFields];
    float* outer_ptr[kNumFields];
    py::ssize_t obs_dim = -1, act_dim = -1;
    r.inner_ptr = outputs_or_none(inner_out, "inner", rows, r.B, obs_dim, act_dim, keep, inner_ptr);
    r.outer_ptr = outputs_or_none(outer_out, "outer", rows, r.B, obs_dim, act_dim, keep, outer_ptr);

    std::vector<TaskView> views(rows);
    r.view.resize(rows);
    r.task.resize(rows);
    for (size_t j = 0; j < rows; ++j) {
        const int64_t task = task_ids[r.slot[j]];
        check_task(tasks[static_cast<size_t>(task)], task, obs_dim, act_dim, r.B, r.contiguous, paper_window, keep, views[j]);
        r.view[j] = &views[j];
        r.task[j] = static_cast<uint64_t>(task);
    }
    IndexBuffers idx(rows, r.B, r.inner_ptr != nullptr, r.outer_ptr != nullptr, true);
    r.inner_idx = idx.inner_ptr;
    r.outer_idx = idx.outer_ptr;
    {
        py::gil_scoped_release release;
        fill(r, threads);
    }
    return py::make_tuple(idx.inner, idx.outer);
}

// The stateful sampler: task arrays validated once, a pointer table kept (see the file comment).
class Sampler {
   public:
    Sampler(const py::sequence& tasks, int64_t batch_size, const std::string& inner_mode, bool paper_window, uint64_t seed)
        : B_(check_batch_size(batch_size)), contiguous_(parse_mode(inner_mode)), paper_window_(paper_window), seed_(seed) {
        const size_t n = static_cast<size_t>(py::len(tasks));
        if (n == 0) throw py::value_error("tasks: expected at least one task");
        views_.resize(n);
        keep_.reserve(kNumFields * n);
        for (size_t t = 0; t < n; ++t) {
            check_task(tasks[t], static_cast<int64_t>(t), obs_dim_, act_dim_, B_, contiguous_, paper_window_, keep_, views_[t]);
        }
    }

    py::tuple sample(uint64_t step, const std::vector<int64_t>& task_ids, const py::object& inner_out,
                     const py::object& outer_out, const std::optional<std::vector<int64_t>>& slots, int num_threads,
                     bool return_indices) const {
        Request r;
        r.contiguous = contiguous_;
        r.paper_window = paper_window_;
        r.B = B_;
        r.seed = seed_;
        r.step = step;
        check_task_ids(task_ids, views_.size());
        const int threads = resolve_threads(num_threads);
        r.slot = resolve_slots(slots, task_ids.size());
        const size_t rows = r.slot.size();
        if (inner_out.is_none() && outer_out.is_none()) throw py::value_error("inner_out, outer_out: both are None");
        std::vector<py::array> keep;
        keep.reserve(2 * kNumFields);
        float* inner_ptr[kNumFields];
        float* outer_ptr[kNumFields];
        py::ssize_t obs_dim = obs_dim_, act_dim = act_dim_;
        r.inner_ptr = outputs_or_none(inner_out, "inner", rows, B_, obs_dim, act_dim, keep, inner_ptr);
        r.outer_ptr = outputs_or_none(outer_out, "outer", rows, B_, obs_dim, act_dim, keep, outer_ptr);
        r.view.resize(rows);
        r.task.resize(rows);
        for (size_t j = 0; j < rows; ++j) {
            const int64_t task = task_ids[r.slot[j]];
            r.view[j] = &views_[static_cast<size_t>(task)];
            r.task[j] = static_cast<uint64_t>(task);
        }
        IndexBuffers idx(rows, B_, r.inner_ptr != nullptr, r.outer_ptr != nullptr, return_indices);
        r.inner_idx = idx.inner_ptr;
        r.outer_idx = idx.outer_ptr;
        {
            py::gil_scoped_release release;
            fill(r, threads);
        }
        return py::make_tuple(idx.inner, idx.outer);
    }

    size_t num_tasks() const { return views_.size(); }
    std::vector<int64_t> n_rows() const {
        std::vector<int64_t> out;
        for (const TaskView& v : views_) out.push_back(static_cast<int64_t>(v.n));
        return out;
    }

    const uint64_t B_;
    const bool contiguous_, paper_window_;
    const uint64_t seed_;
    py::ssize_t obs_dim_ = -1, act_dim_ = -1;

   private:
    std::vector<TaskView> views_;
    std::vector<py::array> keep_;  // the task arrays, alive as long as the sampler
};

// The task batch of a step (spec §4): k of [0, num) without replacement, in random order (stream 5).
std::vector<int64_t> choose_positions(uint64_t seed, uint64_t step, int64_t num, int64_t k) {
    if (num < 1 || static_cast<uint64_t>(num) >= macaw::kMaxRows) {
        throw py::value_error("num: expected 1 <= num < 2^32, got " + std::to_string(num));
    }
    if (k < 1 || k > num) throw py::value_error("k: expected 1 <= k <= num, got " + std::to_string(k));
    std::vector<int64_t> out(static_cast<size_t>(k));
    std::vector<uint64_t> scratch;
    macaw::distinct_rows(macaw::stream_key(seed, step, 0, 0, macaw::kTaskChoice),
                         macaw::stream_key(seed, step, 0, 1, macaw::kTaskChoice), static_cast<uint64_t>(num),
                         static_cast<uint64_t>(k), out.data(), scratch);
    return out;
}

}  // namespace

void register_sampler(py::module_& m) {
    m.def("sample_meta_batch", &sample_meta_batch, py::arg("tasks"), py::arg("task_ids"), py::arg("batch_size"),
          py::arg("seed"), py::arg("step"), py::arg("inner_mode"), py::arg("paper_window"), py::arg("inner_out"),
          py::arg("outer_out"), py::arg("num_threads") = 1, py::arg("slots") = py::none(),
          "Sample one meta-batch into preallocated float32 arrays; returns (inner_idx, outer_idx), each (rows, B) "
          "int64. slots: the global slots of task_ids to sample (output row j = slot slots[j]); None: all. "
          "inner_out or outer_out None: that batch is not sampled (its index array is None).");
    py::class_<Sampler>(m, "Sampler",
                        "Meta-batch sampler over task arrays validated once at construction (kept alive).")
        .def(py::init<const py::sequence&, int64_t, const std::string&, bool, uint64_t>(), py::arg("tasks"),
             py::arg("batch_size"), py::arg("inner_mode"), py::arg("paper_window"), py::arg("seed"))
        .def("sample", &Sampler::sample, py::arg("step"), py::arg("task_ids"), py::arg("inner_out"),
             py::arg("outer_out"), py::arg("slots") = py::none(), py::arg("num_threads") = 1,
             py::arg("return_indices") = true,
             "Like sample_meta_batch with this sampler's tasks and settings; indices are None unless return_indices.")
        .def_property_readonly("num_tasks", &Sampler::num_tasks)
        .def_property_readonly("n_rows", &Sampler::n_rows)
        .def_property_readonly("obs_dim", [](const Sampler& s) { return s.obs_dim_; })
        .def_property_readonly("act_dim", [](const Sampler& s) { return s.act_dim_; })
        .def_property_readonly("batch_size", [](const Sampler& s) { return s.B_; });
    m.def("sample_indices", &sample_indices, py::arg("n_rows"), py::arg("task_ids"), py::arg("batch_size"),
          py::arg("seed"), py::arg("step"), py::arg("inner_mode"), py::arg("paper_window"), py::arg("num_threads") = 1,
          "Row indices of one meta-batch: (inner_idx, outer_idx), each (T, B) int64, for tasks with n_rows rows.");
    m.def(
        "_pool_stats",
        []() {
            const auto& st = Pool::get().stats_;
            py::dict d;
            d["pooled"] = st.pooled;    // calls that published a job to the helper threads
            d["paid"] = st.paid;        // ... of which the helpers made faster
            d["skipped"] = st.skipped;  // multi-threaded calls run inline while the pool was switched off
            d["helped"] = st.helped;    // items the helpers ran
            d["wait_us"] = st.wait_us;  // time callers waited for helpers after their own items
            return d;
        },
        "Diagnostics of the sampler's thread pool (counters since it started in this process).");
    m.def("choose_positions", &choose_positions, py::arg("seed"), py::arg("step"), py::arg("num"), py::arg("k"),
          "Positions of step's task batch: k distinct of [0, num) in random order (RNG stream 5).");
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
