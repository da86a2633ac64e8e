// 64-byte vectors (GCC/Clang vector extensions) for the compiled kernels that tile their work in
// registers (csrc/skinny.cpp, csrc/value_forward.cpp): 16 float32 or 8 float64 lanes, unaligned
// loads and stores, and function clones for AVX-512 / AVX2 machines picked at load time.
#pragma once

#include <cstring>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MACAW_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MACAW_SIMD_CLONES
#endif

#if defined(__GNUC__)
#define MACAW_SIMD_INLINE inline __attribute__((always_inline))
#else
#define MACAW_SIMD_INLINE inline
#endif

namespace macaw::simd {

template <typename S>
struct Vec {
    typedef S type __attribute__((vector_size(64)));
    static constexpr int N = static_cast<int>(64 / sizeof(S));
};

template <typename S>
MACAW_SIMD_INLINE typename Vec<S>::type load(const S* p) {
    typename Vec<S>::type v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

template <typename S>
MACAW_SIMD_INLINE void store(S* p, const typename Vec<S>::type& v) {
    std::memcpy(p, &v, sizeof(v));
}

}  // namespace macaw::simd
