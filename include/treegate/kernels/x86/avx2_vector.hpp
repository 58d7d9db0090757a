// treegate/kernels/x86/avx2_vector.hpp — AVX2 building blocks: masks, loads (float and bf16), dot, axpy.
// Part of the `avx2` policy (include kernels/avx2.hpp); everything here is detail.
#ifndef TREEGATE_KERNELS_X86_AVX2_VECTOR_HPP
#define TREEGATE_KERNELS_X86_AVX2_VECTOR_HPP

#include "../../bf16.hpp"
#include "../../config.hpp"
#include "../cpu_features.hpp"

#include <cstdint>
#include <cstring>

#if TREEGATE_DETAIL_X86_KERNELS
#define TREEGATE_DETAIL_AVX2_KERNELS 1
#include <immintrin.h>
#else
#define TREEGATE_DETAIL_AVX2_KERNELS 0
#endif

#if TREEGATE_DETAIL_AVX2_KERNELS

// Every function of the avx2 kernels carries this attribute (see kernels/avx2.hpp for why).
#define TREEGATE_DETAIL_AVX2_TARGET __attribute__((target("avx2,fma")))

namespace treegate::kernels::detail::avx2_kernels {

// Loading 8 entries at (table + 8 - n) gives a mask whose first n lanes are set.
alignas(64) inline constexpr std::int32_t mask_table[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

TREEGATE_DETAIL_AVX2_TARGET inline __m256i tail_mask(index_t n) noexcept {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(mask_table + 8 - n));
}

TREEGATE_DETAIL_AVX2_TARGET inline float hsum(__m256 v) noexcept {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

TREEGATE_DETAIL_AVX2_TARGET inline void prefetch_line(std::uintptr_t address) noexcept {
    // A prefetch never faults, so an address past a block's end is only a wasted hint; it is
    // kept an integer so that no out-of-range pointer is ever formed.
    _mm_prefetch(reinterpret_cast<const char*>(address), _MM_HINT_T0);
}

// The same into L2 only: streams that several sweeps then read from L1 gain from not waiting on
// the few L1 miss buffers (measured on the small-group gemm, README "Benchmarks").
TREEGATE_DETAIL_AVX2_TARGET inline void prefetch_line_l2(std::uintptr_t address) noexcept {
    _mm_prefetch(reinterpret_cast<const char*>(address), _MM_HINT_T1);
}

// Weight loads for both storage types: 8 floats, or 8 bf16 widened exactly to float (zero-extend
// each 16-bit value to 32 bits, shift it into the high half: VPMOVZXWD + VPSLLD). `load_part`
// reads only the first n (< 8) weights and zeroes the other lanes; `m` is tail_mask(n).
TREEGATE_DETAIL_AVX2_TARGET inline __m256 load8(const float* p) noexcept { return _mm256_loadu_ps(p); }
TREEGATE_DETAIL_AVX2_TARGET inline __m256 load8(const bf16* p) noexcept {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
TREEGATE_DETAIL_AVX2_TARGET inline __m256 load_part(const float* p, index_t, __m256i m) noexcept {
    return _mm256_maskload_ps(p, m);
}
TREEGATE_DETAIL_AVX2_TARGET inline __m256 load_part(const bf16* p, index_t n, __m256i) noexcept {
    // No 16-bit masked load in AVX2: copy the n values into a zeroed register-sized buffer.
    alignas(16) bf16 t[8] = {};
    std::memcpy(t, p, static_cast<std::size_t>(n) * sizeof(bf16));
    return load8(t);
}

TREEGATE_DETAIL_AVX2_TARGET inline float dot(index_t n, const float* a, const float* b) noexcept {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    index_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    if (i < n) {
        const __m256i m = tail_mask(n - i);
        s1 = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m), s1);
    }
    return hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

TREEGATE_DETAIL_AVX2_TARGET inline void axpy(index_t n, float alpha, const float* x, float* y) noexcept {
    const __m256 a = _mm256_set1_ps(alpha);
    index_t i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m256 y0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), a, _mm256_loadu_ps(y + i));
        const __m256 y1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), a, _mm256_loadu_ps(y + i + 8));
        const __m256 y2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), a, _mm256_loadu_ps(y + i + 16));
        const __m256 y3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), a, _mm256_loadu_ps(y + i + 24));
        _mm256_storeu_ps(y + i, y0);
        _mm256_storeu_ps(y + i + 8, y1);
        _mm256_storeu_ps(y + i + 16, y2);
        _mm256_storeu_ps(y + i + 24, y3);
    }
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(_mm256_loadu_ps(x + i), a, _mm256_loadu_ps(y + i)));
    if (i < n) {
        const __m256i m = tail_mask(n - i);
        _mm256_maskstore_ps(y + i, m, _mm256_fmadd_ps(_mm256_maskload_ps(x + i, m), a, _mm256_maskload_ps(y + i, m)));
    }
}

// K (1..4) dots at once: K independent FMA chains per 8 lanes, so K loads of each input are in
// flight together and the FMA latency of one chain hides behind the others.
template <int K>
TREEGATE_DETAIL_AVX2_TARGET inline void dot_group(index_t n, const float* const* a, const float* const* b,
                                                  float* out) noexcept {
    static_assert(K >= 1 && K <= 4, "dot_group handles 1 to 4 dots");
    __m256 s[K], t[K];
    for (int k = 0; k < K; ++k) s[k] = t[k] = _mm256_setzero_ps();
    index_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int k = 0; k < K; ++k) {
            s[k] = _mm256_fmadd_ps(_mm256_loadu_ps(a[k] + i), _mm256_loadu_ps(b[k] + i), s[k]);
            t[k] = _mm256_fmadd_ps(_mm256_loadu_ps(a[k] + i + 8), _mm256_loadu_ps(b[k] + i + 8), t[k]);
        }
    if (i + 8 <= n) {
        for (int k = 0; k < K; ++k) s[k] = _mm256_fmadd_ps(_mm256_loadu_ps(a[k] + i), _mm256_loadu_ps(b[k] + i), s[k]);
        i += 8;
    }
    if (i < n) {
        const __m256i m = tail_mask(n - i);
        for (int k = 0; k < K; ++k)
            t[k] = _mm256_fmadd_ps(_mm256_maskload_ps(a[k] + i, m), _mm256_maskload_ps(b[k] + i, m), t[k]);
    }
    for (int k = 0; k < K; ++k) out[k] = hsum(_mm256_add_ps(s[k], t[k]));
}

TREEGATE_DETAIL_AVX2_TARGET inline void dot_many(index_t n, int count, const float* const* a, const float* const* b,
                                                 float* out) noexcept {
    int k = 0;
    for (; k + 4 <= count; k += 4) dot_group<4>(n, a + k, b + k, out + k);
    switch (count - k) {
        case 1: dot_group<1>(n, a + k, b + k, out + k); break;
        case 2: dot_group<2>(n, a + k, b + k, out + k); break;
        case 3: dot_group<3>(n, a + k, b + k, out + k); break;
        default: break;
    }
}

// y(i0 : i0 + 8 R) += sum_k alpha[k] x[k](i0 : ...): R registers of y held across every k (R
// FMA chains, each one step per k), then stored once.
template <int R>
TREEGATE_DETAIL_AVX2_TARGET inline void axpy_chunk(index_t i0, int count, const float* alpha, const float* const* x,
                                                   float* y) noexcept {
    __m256 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm256_loadu_ps(y + i0 + 8 * r);
    for (int k = 0; k < count; ++k) {
        const __m256 a = _mm256_broadcast_ss(alpha + k);
        const float* xk = x[k] + i0;
        for (int r = 0; r < R; ++r) acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(xk + 8 * r), a, acc[r]);
    }
    for (int r = 0; r < R; ++r) _mm256_storeu_ps(y + i0 + 8 * r, acc[r]);
}

TREEGATE_DETAIL_AVX2_TARGET inline void axpy_many(index_t n, int count, const float* alpha, const float* const* x,
                                                  float* y) noexcept {
    if (count <= 0) return;
    index_t i = 0;
    for (; i + 64 <= n; i += 64) axpy_chunk<8>(i, count, alpha, x, y);
    for (; i + 8 <= n; i += 8) axpy_chunk<1>(i, count, alpha, x, y);
    if (i < n) {
        const __m256i m = tail_mask(n - i);
        __m256 acc = _mm256_maskload_ps(y + i, m);
        for (int k = 0; k < count; ++k)
            acc = _mm256_fmadd_ps(_mm256_maskload_ps(x[k] + i, m), _mm256_broadcast_ss(alpha + k), acc);
        _mm256_maskstore_ps(y + i, m, acc);
    }
}

}  // namespace treegate::kernels::detail::avx2_kernels

#endif  // TREEGATE_DETAIL_AVX2_KERNELS

#endif
