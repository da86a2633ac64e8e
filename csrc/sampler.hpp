// The meta-batch sampler's core: a counter-based RNG, the index draws and the row gather.
//
// Nothing here knows Python; csrc/sampler.cpp validates the arrays and binds it. The numpy twin in
// macaw_fast/data/sampler.py implements the same definitions and must produce identical indices.
//
// Random numbers. Every draw is a pure function of (key, counter):
//   mix64(x)                 the SplitMix64 finaliser (a bijection on 64-bit words)
//   combine(k, v)            = mix64(k * GOLDEN + v + OFFSET)
//   key(seed, step, task, slot, stream)
//                            = combine(combine(combine(combine(mix64(seed), step), task), slot), stream)
//   word(key, c)             = mix64(key + (c + 1) * GOLDEN)   (SplitMix64's output at position c)
//   below(key, k, n)         uniform integer in [0, n), 1 <= n < 2^32: Lemire's multiply-shift on
//                            word(key, k + (a << 32)) for attempts a = 0, 1, ... with exact rejection.
// All arithmetic is modulo 2^64.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <utility>
#include <vector>

namespace macaw {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;
constexpr uint64_t kOffset = 0x632BE59BD9B4E019ULL;
constexpr uint64_t kMaxRows = 1ULL << 32;  // exclusive bound on rows per task

// Stream ids: which quantity a key draws.
enum Stream : uint64_t {
    kInnerStart = 0,    // the inner window's start
    kInnerRows = 1,     // the inner batch's rows (uniform mode), Floyd draws
    kInnerShuffle = 2,  // the inner batch's rows (uniform mode), Fisher-Yates draws
    kOuterRows = 3,     // the outer batch's rows, Floyd draws
    kOuterShuffle = 4,  // the outer batch's rows, Fisher-Yates draws
    kTaskChoice = 5,    // the task batch (drawn in Python only)
};

inline uint64_t mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBULL;
    x ^= x >> 31;
    return x;
}

inline uint64_t combine(uint64_t key, uint64_t v) { return mix64(key * kGolden + v + kOffset); }

inline uint64_t stream_key(uint64_t seed, uint64_t step, uint64_t task, uint64_t slot, uint64_t stream) {
    return combine(combine(combine(combine(mix64(seed), step), task), slot), stream);
}

inline uint64_t word(uint64_t key, uint64_t counter) { return mix64(key + (counter + 1) * kGolden); }

// Uniform integer in [0, n) for 1 <= n < 2^32, draw number k < 2^32 of the stream `key`.
inline uint64_t below(uint64_t key, uint64_t k, uint64_t n) {
    uint64_t r = word(key, k);
    unsigned __int128 m = static_cast<unsigned __int128>(r) * n;
    uint64_t lo = static_cast<uint64_t>(m);
    if (lo < n) {
        const uint64_t threshold = (0 - n) % n;  // 2^64 mod n
        uint64_t attempt = 0;
        while (lo < threshold) {
            ++attempt;
            r = word(key, k + (attempt << 32));
            m = static_cast<unsigned __int128>(r) * n;
            lo = static_cast<uint64_t>(m);
        }
    }
    return static_cast<uint64_t>(m >> 64);
}

// B distinct rows of [0, n), in uniformly random order: Floyd's algorithm (draw k picks from
// [0, n - b + k]) then a Fisher-Yates shuffle (draw k, k = b-1 .. 1, picks from [0, k]).
// `scratch` is reusable working memory (a bitmap of n bits when that is small, else an
// open-addressing hash set); out receives b indices. The draws do not depend on the set, so they are
// all computed first (independent multiplies that pipeline well), then the set pass runs.
inline void distinct_rows(uint64_t key_rows, uint64_t key_shuffle, uint64_t n, uint64_t b, int64_t* out,
                          std::vector<uint64_t>& scratch) {
    if (b > n) throw std::logic_error("distinct_rows: b > n");
    for (uint64_t k = 0; k < b; ++k) out[k] = static_cast<int64_t>(below(key_rows, k, n - b + k + 1));
    size_t cap = 16;
    while (cap < 4 * b) cap <<= 1;
    const size_t bitmap_words = static_cast<size_t>((n + 63) / 64);
    if (bitmap_words <= cap) {
        // Bitmap: one bit per row of [0, n).
        scratch.assign(bitmap_words, 0);
        uint64_t* bits = scratch.data();
        for (uint64_t k = 0; k < b; ++k) {
            uint64_t x = static_cast<uint64_t>(out[k]);
            if (bits[x >> 6] & (1ULL << (x & 63))) x = n - b + k;  // larger than every earlier pick: new
            bits[x >> 6] |= 1ULL << (x & 63);
            out[k] = static_cast<int64_t>(x);
        }
    } else {
        // Hash set (load factor <= 1/4), multiplicative hashing.
        const uint64_t empty = ~0ULL;
        scratch.assign(cap, empty);
        uint64_t* table = scratch.data();
        int shift = 64;
        for (size_t c = cap; c > 1; c >>= 1) --shift;
        const size_t mask = cap - 1;
        for (uint64_t k = 0; k < b; ++k) {
            const uint64_t t = static_cast<uint64_t>(out[k]);
            size_t h = static_cast<size_t>((t * kGolden) >> shift);
            bool seen = false;
            while (table[h] != empty) {
                if (table[h] == t) {
                    seen = true;
                    break;
                }
                h = (h + 1) & mask;
            }
            if (!seen) {
                table[h] = t;
                continue;
            }
            const uint64_t j = n - b + k;  // larger than every earlier pick, so it is new
            h = static_cast<size_t>((j * kGolden) >> shift);
            while (table[h] != empty) h = (h + 1) & mask;
            table[h] = j;
            out[k] = static_cast<int64_t>(j);
        }
    }
    for (uint64_t k = b; k-- > 1;) {
        const uint64_t s = below(key_shuffle, k, k + 1);
        const int64_t tmp = out[k];
        out[k] = out[s];
        out[s] = tmp;
    }
}

// Number of possible window starts: the paper's code draws randint(0, N - B), i.e. [0, N - B).
inline uint64_t window_starts(uint64_t n, uint64_t b, bool paper_window) { return paper_window ? n - b : n - b + 1; }

// Indices of one task slot's inner batch (b rows) into out.
inline void inner_indices(uint64_t seed, uint64_t step, uint64_t task, uint64_t slot, uint64_t n, uint64_t b,
                          bool contiguous, bool paper_window, int64_t* out, std::vector<uint64_t>& table) {
    if (contiguous) {
        const uint64_t starts = window_starts(n, b, paper_window);
        if (starts < 1) throw std::logic_error("inner_indices: no window start");
        const uint64_t start = below(stream_key(seed, step, task, slot, kInnerStart), 0, starts);
        for (uint64_t i = 0; i < b; ++i) out[i] = static_cast<int64_t>(start + i);
    } else {
        distinct_rows(stream_key(seed, step, task, slot, kInnerRows), stream_key(seed, step, task, slot, kInnerShuffle),
                      n, b, out, table);
    }
}

// Indices of one task slot's outer batch (b distinct rows) into out.
inline void outer_indices(uint64_t seed, uint64_t step, uint64_t task, uint64_t slot, uint64_t n, uint64_t b,
                          int64_t* out, std::vector<uint64_t>& table) {
    distinct_rows(stream_key(seed, step, task, slot, kOuterRows), stream_key(seed, step, task, slot, kOuterShuffle), n, b,
                  out, table);
}

// Copies one row of len floats without a libc call (rows are short: a call per row costs more than
// the copy): 16-byte moves, the last one overlapping the previous when len is not a multiple of 4.
inline void copy_row(float* __restrict dst, const float* __restrict src, uint64_t len) {
    if (len >= 4) {
        uint64_t j = 0;
        for (; j + 4 < len; j += 4) std::memcpy(dst + j, src + j, 4 * sizeof(float));
        std::memcpy(dst + len - 4, src + len - 4, 4 * sizeof(float));
    } else {
        for (uint64_t j = 0; j < len; ++j) dst[j] = src[j];
    }
}

// Row lengths (floats) of a task's fields, for gather_task_rows_with: known at run time, or fixed at
// compile time (the row copies then compile to a few constant-size moves: ~25% faster on 20-float
// rows, since the gather issues ~10 copies per row).
template <size_t kFields>
struct RuntimeLens {
    const uint64_t* len;
    template <size_t F>
    uint64_t get() const {
        return len[F];
    }
};

template <uint64_t... L>
struct FixedLens {
    template <size_t F>
    static constexpr uint64_t get() {
        constexpr uint64_t v[] = {L...};
        return v[F];
    }
};

namespace detail {

template <uint32_t kScalarMask, typename Lens, size_t... F>
inline void gather_random(const Lens& lens, const float* const* src, const int64_t* idx, uint64_t b, float* const* dst,
                          std::index_sequence<F...>) {
    // Row by row across all fields (rather than field by field), prefetching every field of the row
    // kAhead draws later: the cache and TLB misses of ~kAhead rows x all fields then overlap.
    constexpr uint64_t kAhead = 16;
    auto prefetch_row = [&](uint64_t r) {
        ((((kScalarMask >> F) & 1u)
              ? __builtin_prefetch(src[F] + r)
              : (__builtin_prefetch(src[F] + r * lens.template get<F>()),
                 __builtin_prefetch(reinterpret_cast<const char*>(src[F] + (r + 1) * lens.template get<F>()) - 1))),
         ...);
    };
    for (uint64_t i = 0; i < b && i < kAhead; ++i) prefetch_row(static_cast<uint64_t>(idx[i]));
    for (uint64_t i = 0; i < b; ++i) {
        if (i + kAhead < b) prefetch_row(static_cast<uint64_t>(idx[i + kAhead]));
        const uint64_t r = static_cast<uint64_t>(idx[i]);
        ((((kScalarMask >> F) & 1u) ? static_cast<void>(dst[F][i] = src[F][r])
                                    : copy_row(dst[F] + i * lens.template get<F>(), src[F] + r * lens.template get<F>(),
                                               lens.template get<F>())),
         ...);
    }
}

template <typename Lens, size_t... F>
inline bool lens_match(const Lens& lens, const uint64_t* len, std::index_sequence<F...>) {
    return ((lens.template get<F>() == len[F]) && ...);
}

}  // namespace detail

// Copies rows idx[0..b) of one task's kFields fields (field f: n rows of len[f] floats at src[f]) to
// dst[f] (b rows each). Bit f of kScalarMask marks a field whose rows are one float (len[f] must be 1).
// `lens` gives the same lengths to the random-row loop, possibly as compile-time constants (it must
// equal len). Every index is checked before any row is read. A run of consecutive indices (a window)
// is copied with one memcpy per field; random rows are copied row by row across the fields with
// prefetching.
template <uint32_t kScalarMask, typename Lens, size_t kFields>
inline void gather_task_rows_with(const Lens& lens, const float* const (&src)[kFields], const uint64_t (&len)[kFields],
                                  uint64_t n, const int64_t* idx, uint64_t b, float* const (&dst)[kFields]) {
    for (size_t f = 0; f < kFields; ++f) {
        if (((kScalarMask >> f) & 1u) && len[f] != 1) throw std::logic_error("gather_task_rows: scalar field with len != 1");
    }
    if (!detail::lens_match(lens, len, std::make_index_sequence<kFields>{})) {
        throw std::logic_error("gather_task_rows: lens differ from len");
    }
    for (uint64_t i = 0; i < b; ++i) {
        if (idx[i] < 0 || static_cast<uint64_t>(idx[i]) >= n) throw std::out_of_range("row index out of range");
    }
    if (b > 0 && static_cast<uint64_t>(idx[b - 1] - idx[0]) == b - 1) {
        bool run = true;
        for (uint64_t i = 1; i < b && run; ++i) run = idx[i] == idx[i - 1] + 1;
        if (run) {
            for (size_t f = 0; f < kFields; ++f) {
                std::memcpy(dst[f], src[f] + static_cast<uint64_t>(idx[0]) * len[f], b * len[f] * sizeof(float));
            }
            return;
        }
    }
    detail::gather_random<kScalarMask>(lens, src, idx, b, dst, std::make_index_sequence<kFields>{});
}

// gather_task_rows_with, the lengths known at run time only.
template <uint32_t kScalarMask, size_t kFields>
inline void gather_task_rows(const float* const (&src)[kFields], const uint64_t (&len)[kFields], uint64_t n,
                             const int64_t* idx, uint64_t b, float* const (&dst)[kFields]) {
    gather_task_rows_with<kScalarMask>(RuntimeLens<kFields>{len}, src, len, n, idx, b, dst);
}

}  // namespace macaw
