// treegate/kernels/x86/avx512_vector.hpp — AVX-512 building blocks: masks, loads (float and bf16), dot, axpy.
// Part of the `avx512` policy (include kernels/avx512.hpp); everything here is detail.
#ifndef TREEGATE_KERNELS_X86_AVX512_VECTOR_HPP
#define TREEGATE_KERNELS_X86_AVX512_VECTOR_HPP

#include "../../bf16.hpp"
#include "../../config.hpp"
#include "../cpu_features.hpp"

#include <cstddef>
#include <cstdint>

#if TREEGATE_DETAIL_X86_KERNELS
#define TREEGATE_DETAIL_AVX512_KERNELS 1
#include <immintrin.h>
#else
#define TREEGATE_DETAIL_AVX512_KERNELS 0
#endif

#if TREEGATE_DETAIL_AVX512_KERNELS

// Every function of the avx512 kernels carries this attribute: the kernels compile in a
// portable build and run only where cpu_features().avx512() holds (see kernels/avx512.hpp).
#define TREEGATE_DETAIL_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))

// GCC and Clang both read this spelling. The small fixed-trip loops over registers below must be
// unrolled completely, or the accumulators would live in memory (GCC at -O2 does not unroll
// them on its own).
#define TREEGATE_DETAIL_UNROLL _Pragma("GCC unroll 16")

namespace treegate::kernels::detail::avx512_kernels {

/// The first n (0..16) lanes. Masked-out lanes of a masked load or store are never accessed and
/// never fault, so a tail is read and written in place, without a copy.
TREEGATE_DETAIL_AVX512_TARGET inline __mmask16 mask16(index_t n) noexcept {
    return static_cast<__mmask16>((1u << static_cast<unsigned>(n)) - 1u);
}

TREEGATE_DETAIL_AVX512_TARGET inline void prefetch_line(std::uintptr_t address) noexcept {
    // A prefetch never faults; the address stays an integer so that no out-of-range pointer is formed.
    _mm_prefetch(reinterpret_cast<const char*>(address), _MM_HINT_T0);
}

// The same into L2 only: streams that several sweeps then read from L1 gain from not waiting on
// the few L1 miss buffers (measured on the small-group gemm, README "Benchmarks").
TREEGATE_DETAIL_AVX512_TARGET inline void prefetch_line_l2(std::uintptr_t address) noexcept {
    _mm_prefetch(reinterpret_cast<const char*>(address), _MM_HINT_T1);
}

// Weight loads for both storage types: 16 floats, or 16 bf16 widened exactly to float (VPMOVZXWD
// puts each 16-bit value in a 32-bit lane, VPSLLD moves it to the high half). `load_part` reads
// only the lanes of `m` and zeroes the others.
// The zero-masked forms with a full mask are the same instructions; the unmasked intrinsics of
// GCC 12 start from an "undefined" register that -Wmaybe-uninitialized reports.
inline constexpr __mmask16 all16 = 0xffff;
TREEGATE_DETAIL_AVX512_TARGET inline __m512 widen(__m256i h) noexcept {
    return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(all16, _mm512_maskz_cvtepu16_epi32(all16, h), 16));
}
TREEGATE_DETAIL_AVX512_TARGET inline __m512 load16(const float* p) noexcept { return _mm512_loadu_ps(p); }
TREEGATE_DETAIL_AVX512_TARGET inline __m512 load16(const bf16* p) noexcept {
    return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
TREEGATE_DETAIL_AVX512_TARGET inline __m512 load_part(const float* p, __mmask16 m) noexcept {
    return _mm512_maskz_loadu_ps(m, p);
}
TREEGATE_DETAIL_AVX512_TARGET inline __m512 load_part(const bf16* p, __mmask16 m) noexcept {
    return widen(_mm256_maskz_loadu_epi16(m, p));
}

TREEGATE_DETAIL_AVX512_TARGET inline float hsum(__m512 v) noexcept {
    const __m512d d = _mm512_castps_pd(v);
    const __m256 h = _mm256_add_ps(_mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xff, d, 0)),
                                   _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xff, d, 1)));
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

TREEGATE_DETAIL_AVX512_TARGET inline float dot(index_t n, const float* a, const float* b) noexcept {
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    index_t i = 0;
    for (; i + 64 <= n; i += 64) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
        s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), s2);
        s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), s3);
    }
    for (; i + 16 <= n; i += 16) s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    if (i < n) {
        const __mmask16 m = mask16(n - i);
        s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s1);
    }
    return hsum(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

TREEGATE_DETAIL_AVX512_TARGET inline void axpy(index_t n, float alpha, const float* x, float* y) noexcept {
    const __m512 a = _mm512_set1_ps(alpha);
    index_t i = 0;
    for (; i + 64 <= n; i += 64) {
        const __m512 y0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), a, _mm512_loadu_ps(y + i));
        const __m512 y1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), a, _mm512_loadu_ps(y + i + 16));
        const __m512 y2 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 32), a, _mm512_loadu_ps(y + i + 32));
        const __m512 y3 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 48), a, _mm512_loadu_ps(y + i + 48));
        _mm512_storeu_ps(y + i, y0);
        _mm512_storeu_ps(y + i + 16, y1);
        _mm512_storeu_ps(y + i + 32, y2);
        _mm512_storeu_ps(y + i + 48, y3);
    }
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_fmadd_ps(_mm512_loadu_ps(x + i), a, _mm512_loadu_ps(y + i)));
    if (i < n) {
        const __mmask16 m = mask16(n - i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + i), a, _mm512_maskz_loadu_ps(m, y + i)));
    }
}

// K (1..4) dots at once, two FMA chains each: 2 K independent chains cover the FMA latency.
template <int K>
TREEGATE_DETAIL_AVX512_TARGET inline void dot_group(index_t n, const float* const* a, const float* const* b,
                                                    float* out) noexcept {
    static_assert(K >= 1 && K <= 4, "dot_group handles 1 to 4 dots");
    __m512 s[K], t[K];
    TREEGATE_DETAIL_UNROLL
    for (int k = 0; k < K; ++k) s[k] = t[k] = _mm512_setzero_ps();
    index_t i = 0;
    for (; i + 32 <= n; i += 32) {
        TREEGATE_DETAIL_UNROLL
        for (int k = 0; k < K; ++k) {
            s[k] = _mm512_fmadd_ps(_mm512_loadu_ps(a[k] + i), _mm512_loadu_ps(b[k] + i), s[k]);
            t[k] = _mm512_fmadd_ps(_mm512_loadu_ps(a[k] + i + 16), _mm512_loadu_ps(b[k] + i + 16), t[k]);
        }
    }
    if (i + 16 <= n) {
        TREEGATE_DETAIL_UNROLL
        for (int k = 0; k < K; ++k) s[k] = _mm512_fmadd_ps(_mm512_loadu_ps(a[k] + i), _mm512_loadu_ps(b[k] + i), s[k]);
        i += 16;
    }
    if (i < n) {
        const __mmask16 m = mask16(n - i);
        TREEGATE_DETAIL_UNROLL
        for (int k = 0; k < K; ++k)
            t[k] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a[k] + i), _mm512_maskz_loadu_ps(m, b[k] + i), t[k]);
    }
    TREEGATE_DETAIL_UNROLL
    for (int k = 0; k < K; ++k) out[k] = hsum(_mm512_add_ps(s[k], t[k]));
}

TREEGATE_DETAIL_AVX512_TARGET inline void dot_many(index_t n, int count, const float* const* a, const float* const* b,
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

// y(i0 : i0 + 16 R) += sum_k alpha[k] x[k](i0 : ...), the R registers of y held across every k;
// lanes outside `m` (last register only) are neither read nor written.
template <int R>
TREEGATE_DETAIL_AVX512_TARGET inline void axpy_chunk(index_t i0, int count, const float* alpha, const float* const* x,
                                                     float* y, __mmask16 m = 0xffff) noexcept {
    __m512 acc[R];
    TREEGATE_DETAIL_UNROLL
    for (int r = 0; r < R; ++r) acc[r] = _mm512_maskz_loadu_ps(r + 1 < R ? __mmask16(0xffff) : m, y + i0 + 16 * r);
    for (int k = 0; k < count; ++k) {
        const __m512 a = _mm512_set1_ps(alpha[k]);
        const float* xk = x[k] + i0;
        TREEGATE_DETAIL_UNROLL
        for (int r = 0; r < R; ++r)
            acc[r] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(r + 1 < R ? __mmask16(0xffff) : m, xk + 16 * r), a, acc[r]);
    }
    TREEGATE_DETAIL_UNROLL
    for (int r = 0; r < R; ++r) _mm512_mask_storeu_ps(y + i0 + 16 * r, r + 1 < R ? __mmask16(0xffff) : m, acc[r]);
}

TREEGATE_DETAIL_AVX512_TARGET inline void axpy_many(index_t n, int count, const float* alpha, const float* const* x,
                                                    float* y) noexcept {
    if (count <= 0) return;
    index_t i = 0;
    for (; i + 128 <= n; i += 128) axpy_chunk<8>(i, count, alpha, x, y);
    for (; i + 16 <= n; i += 16) axpy_chunk<1>(i, count, alpha, x, y);
    if (i < n) axpy_chunk<1>(i, count, alpha, x, y, mask16(n - i));
}

// Accumulators of axpy_paths: M examples x R registers, at most 24 of the 32 zmm registers, so
// that the shared vectors' R registers and the broadcasts have room.
constexpr int paths_registers(int m) noexcept { return 24 / m < 8 ? 24 / m : 8; }

// ys[k](i0 : i0 + 16 R) += sum_j alpha[k ld + j] x[k ld + j](i0 : ...) for k < M: every example's
// registers take its columns in order j = 0, 1, ..., exactly as axpy_chunk does, so each y gets
// the bits axpy_many gives it; the first `shared` vectors (the same for every k) are loaded once
// and used M times. Lanes outside `m` (last register only) are neither read nor written.
template <int M, int R>
TREEGATE_DETAIL_AVX512_TARGET inline void paths_chunk(index_t i0, int count, int shared, const float* alpha, index_t ld,
                                                      const float* const* x, float* const* ys,
                                                      __mmask16 m = 0xffff) noexcept {
    __m512 acc[M][R];
    TREEGATE_DETAIL_UNROLL
    for (int k = 0; k < M; ++k) {
        TREEGATE_DETAIL_UNROLL
        for (int r = 0; r < R; ++r) acc[k][r] = _mm512_maskz_loadu_ps(r + 1 < R ? all16 : m, ys[k] + i0 + 16 * r);
    }
    for (int j = 0; j < shared; ++j) {
        __m512 v[R];
        TREEGATE_DETAIL_UNROLL
        for (int r = 0; r < R; ++r) v[r] = _mm512_maskz_loadu_ps(r + 1 < R ? all16 : m, x[j] + i0 + 16 * r);
        TREEGATE_DETAIL_UNROLL
        for (int k = 0; k < M; ++k) {
            const __m512 a = _mm512_set1_ps(alpha[k * ld + j]);
            TREEGATE_DETAIL_UNROLL
            for (int r = 0; r < R; ++r) acc[k][r] = _mm512_fmadd_ps(v[r], a, acc[k][r]);
        }
    }
    for (int j = shared; j < count; ++j) {
        TREEGATE_DETAIL_UNROLL
        for (int k = 0; k < M; ++k) {
            const __m512 a = _mm512_set1_ps(alpha[k * ld + j]);
            const float* xk = x[k * ld + j] + i0;
            TREEGATE_DETAIL_UNROLL
            for (int r = 0; r < R; ++r)
                acc[k][r] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(r + 1 < R ? all16 : m, xk + 16 * r), a, acc[k][r]);
        }
    }
    TREEGATE_DETAIL_UNROLL
    for (int k = 0; k < M; ++k) {
        TREEGATE_DETAIL_UNROLL
        for (int r = 0; r < R; ++r) _mm512_mask_storeu_ps(ys[k] + i0 + 16 * r, r + 1 < R ? all16 : m, acc[k][r]);
    }
}

template <int M>
TREEGATE_DETAIL_AVX512_TARGET inline void paths_examples(index_t n, int count, int shared, const float* alpha, index_t ld,
                                                         const float* const* x, float* const* ys) noexcept {
    constexpr int R = paths_registers(M);
    index_t i = 0;
    for (; i + 16 * R <= n; i += 16 * R) paths_chunk<M, R>(i, count, shared, alpha, ld, x, ys);
    for (; i + 16 <= n; i += 16) paths_chunk<M, 1>(i, count, shared, alpha, ld, x, ys);
    if (i < n) paths_chunk<M, 1>(i, count, shared, alpha, ld, x, ys, mask16(n - i));
}

/// For k < m: ys[k] += sum_j alpha[k ld + j] x[k ld + j], with the bits of axpy_many on each
/// example; x[k ld + j] must equal x[j] for j < shared (read once for every example).
TREEGATE_DETAIL_AVX512_TARGET inline void axpy_paths(index_t n, int m, int count, int shared, const float* alpha,
                                                     const float* const* x, index_t ld, float* const* ys) noexcept {
    if (count <= 0) return;
    for (int k = 0; k < m; k += 8) {
        const auto at = static_cast<std::ptrdiff_t>(k) * ld;
        switch (m - k < 8 ? m - k : 8) {
            case 1: paths_examples<1>(n, count, shared, alpha + at, ld, x + at, ys + k); break;
            case 2: paths_examples<2>(n, count, shared, alpha + at, ld, x + at, ys + k); break;
            case 3: paths_examples<3>(n, count, shared, alpha + at, ld, x + at, ys + k); break;
            case 4: paths_examples<4>(n, count, shared, alpha + at, ld, x + at, ys + k); break;
            case 5: paths_examples<5>(n, count, shared, alpha + at, ld, x + at, ys + k); break;
            case 6: paths_examples<6>(n, count, shared, alpha + at, ld, x + at, ys + k); break;
            case 7: paths_examples<7>(n, count, shared, alpha + at, ld, x + at, ys + k); break;
            default: paths_examples<8>(n, count, shared, alpha + at, ld, x + at, ys + k); break;
        }
    }
}

}  // namespace treegate::kernels::detail::avx512_kernels

#endif  // TREEGATE_DETAIL_AVX512_KERNELS

#endif
