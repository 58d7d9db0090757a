// treegate/kernels/avx2.hpp — the `avx2` kernel policy: AVX2 + FMA kernels for `float` (and bf16 weights).
// Same interface as `reference`; other scalars, and non-x86-64 or non-GCC/Clang builds, use `eigen`.
//
// Why intrinsics inside `__attribute__((target("avx2,fma")))` functions rather than xsimd or
// -march: the header must compile in a portable build (no -march flag) so that several ISAs can
// live in one binary and the user's own source picks one at run time (cpu_supports_avx2() below
// is the check to use; calling this policy on a CPU without AVX2 and FMA is undefined). The target
// attribute gives exactly that with GCC and Clang, without a second translation unit and without
// a global macro; xsimd 8 enables `batch<float, avx2>` only in translation units compiled for
// AVX2 (its run-time dispatch wants one translation unit per ISA), which a header-only library
// used from a portable build cannot arrange. The kernels are few and small, so plain intrinsics
// cost little and keep the header free of dependencies beyond Eigen.
//
// GEMM: groups of 1 (gemv) and 2-4 examples stream each weight once for the whole group; larger
// groups use a packed 16 x 6 register-blocked kernel rather than Eigen's GEMM, because in a
// portable build Eigen's GEMM is SSE-only (about half of this machine's AVX2 peak).
//
// Tails: row tails use masked loads and stores (VMASKMOVPS never touches, and never faults on,
// masked-out lanes), column tails are done one column at a time, so no kernel ever reads or
// writes past the given sizes. Blocks start 64-byte aligned but ld * 4 bytes need not be a
// multiple of 32, so every load is unaligned (as fast as an aligned one when it is aligned).
//
// bf16 weights (gemm, gemv, path_sum with `const bf16*`): the same kernels, templated on the
// weight type, with each 8-weight load widened in registers (VPMOVZXWD + VPSLLD: the bf16 bits
// become the high half of a float) and float FMAs; groups of 2-10 examples instead widen each
// strip of four columns once into an L1 buffer (see the bf16 gemm_small). Row tails copy the
// few remaining bf16 values into a zeroed buffer, since AVX2 has no 16-bit masked load; a
// single example on a contiguous block takes the prefetching path-sum kernel. Only AVX2 is
// needed: this code does not use the AVX-512 BF16 instructions (VDPBF16PS), which the AVX2
// machines it is tuned for (AMD EPYC without AVX-512) cannot run, and which would round the
// inputs to bf16 as well.
#ifndef TREEGATE_KERNELS_AVX2_HPP
#define TREEGATE_KERNELS_AVX2_HPP

#include "../bf16.hpp"
#include "../config.hpp"
#include "eigen.hpp"

#include <cstdint>
#include <cstring>
#include <type_traits>

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define TREEGATE_DETAIL_AVX2_KERNELS 1
#include <immintrin.h>
#else
#define TREEGATE_DETAIL_AVX2_KERNELS 0
#endif

namespace treegate::kernels {

/// True when this build has the AVX2 kernels and the CPU it runs on can execute them
/// (AVX2 and FMA). Call it once and dispatch; the `avx2` policy itself never checks.
inline bool cpu_supports_avx2() noexcept {
#if TREEGATE_DETAIL_AVX2_KERNELS
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return false;
#endif
}

#if TREEGATE_DETAIL_AVX2_KERNELS

namespace detail::avx2_kernels {

#define TREEGATE_DETAIL_AVX2_TARGET __attribute__((target("avx2,fma")))

// Loading 8 entries at (table + 8 - n) gives a mask whose first n lanes are set.
alignas(64) inline constexpr std::int32_t mask_table[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

// Software prefetch distance of the fused path-sum kernel, in bytes of the concatenated stream
// of the path's blocks. The hardware prefetcher follows each block once it has seen a few
// misses; the software stream starts the next block's lines before the current one ends.
inline constexpr std::uintptr_t path_prefetch_bytes = 4096;

// k-blocking and the packed row panel of the GEMM kernel: 16 rows x 256 columns = 16 KiB.
inline constexpr index_t gemm_mr = 16;
inline constexpr index_t gemm_nr = 6;
inline constexpr index_t gemm_kc = 256;
// Groups up to this many examples take gemm_small (memory-bound), larger ones the packed GEMM.
// With bf16 weights the packed kernel takes over earlier (measured crossover near 10-12
// examples on 512 x 512 blocks from memory).
inline constexpr index_t gemm_small_max = 16;
inline constexpr index_t gemm_small_max_bf16 = 10;

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

// y(0:rows) += W(:, 0:4) * x(0:4), W column-major with leading dimension ld, T = float or bf16.
// Four columns at a time keep four sequential weight streams in flight and touch y once per four
// columns. With Prefetch, the lines from `pf` on are prefetched, 64 bytes per 64 bytes of
// weights read (4 lines per 16 rows of float, 2 of bf16).
template <bool Prefetch, class T>
TREEGATE_DETAIL_AVX2_TARGET inline void panel4(index_t rows, const T* w, index_t ld, const float* x, float* y,
                                               std::uintptr_t pf) noexcept {
    constexpr std::uintptr_t pf_step = 4 * 16 * sizeof(T);
    const __m256 x0 = _mm256_broadcast_ss(x), x1 = _mm256_broadcast_ss(x + 1);
    const __m256 x2 = _mm256_broadcast_ss(x + 2), x3 = _mm256_broadcast_ss(x + 3);
    const T* w0 = w;
    const T* w1 = w + ld;
    const T* w2 = w + 2 * ld;
    const T* w3 = w + 3 * ld;
    index_t r = 0;
    for (; r + 16 <= rows; r += 16) {
        if constexpr (Prefetch) {
            for (std::uintptr_t line = 0; line < pf_step; line += 64) prefetch_line(pf + line);
            pf += pf_step;
        }
        __m256 a = _mm256_fmadd_ps(load8(w0 + r), x0, _mm256_loadu_ps(y + r));
        __m256 b = _mm256_fmadd_ps(load8(w0 + r + 8), x0, _mm256_loadu_ps(y + r + 8));
        __m256 c = _mm256_mul_ps(load8(w1 + r), x1);
        __m256 d = _mm256_mul_ps(load8(w1 + r + 8), x1);
        a = _mm256_fmadd_ps(load8(w2 + r), x2, a);
        b = _mm256_fmadd_ps(load8(w2 + r + 8), x2, b);
        c = _mm256_fmadd_ps(load8(w3 + r), x3, c);
        d = _mm256_fmadd_ps(load8(w3 + r + 8), x3, d);
        _mm256_storeu_ps(y + r, _mm256_add_ps(a, c));
        _mm256_storeu_ps(y + r + 8, _mm256_add_ps(b, d));
    }
    if (r + 8 <= rows) {
        __m256 a = _mm256_fmadd_ps(load8(w0 + r), x0, _mm256_loadu_ps(y + r));
        __m256 c = _mm256_mul_ps(load8(w1 + r), x1);
        a = _mm256_fmadd_ps(load8(w2 + r), x2, a);
        c = _mm256_fmadd_ps(load8(w3 + r), x3, c);
        _mm256_storeu_ps(y + r, _mm256_add_ps(a, c));
        r += 8;
    }
    if (r < rows) {
        const index_t t = rows - r;
        const __m256i m = tail_mask(t);
        __m256 a = _mm256_fmadd_ps(load_part(w0 + r, t, m), x0, _mm256_maskload_ps(y + r, m));
        __m256 c = _mm256_mul_ps(load_part(w1 + r, t, m), x1);
        a = _mm256_fmadd_ps(load_part(w2 + r, t, m), x2, a);
        c = _mm256_fmadd_ps(load_part(w3 + r, t, m), x3, c);
        _mm256_maskstore_ps(y + r, m, _mm256_add_ps(a, c));
    }
}

// y(0:rows) += w * x0 for one column.
template <class T>
TREEGATE_DETAIL_AVX2_TARGET inline void panel1(index_t rows, const T* w, float xs, float* y) noexcept {
    const __m256 x0 = _mm256_set1_ps(xs);
    index_t r = 0;
    for (; r + 8 <= rows; r += 8)
        _mm256_storeu_ps(y + r, _mm256_fmadd_ps(load8(w + r), x0, _mm256_loadu_ps(y + r)));
    if (r < rows) {
        const __m256i m = tail_mask(rows - r);
        _mm256_maskstore_ps(y + r, m, _mm256_fmadd_ps(load_part(w + r, rows - r, m), x0, _mm256_maskload_ps(y + r, m)));
    }
}

template <class T>
TREEGATE_DETAIL_AVX2_TARGET inline void gemv(index_t rows, index_t cols, const T* W, index_t ldw, const float* x,
                                             float* y) noexcept {
    if (rows <= 0 || cols <= 0) return;
    // The column tail gets its own counter from full = cols rounded down to 4: GCC, with the
    // sizes known after inlining, otherwise warns (-Waggressive-loop-optimizations) on a
    // `for (; c < cols; ++c)` that follows a `c + 4 <= cols` loop.
    const index_t full = cols - cols % 4;
    for (index_t c = 0; c < full; c += 4) panel4<false>(rows, W + c * ldw, ldw, x + c, y, 0);
    for (index_t c = full; c < cols; ++c) panel1(rows, W + c * ldw, x[c], y);
}

// The blocks of one path, one after the other: each block is read once, front to back, while
// the software prefetch runs path_prefetch_bytes ahead in the concatenation of the blocks.
// T = float or bf16 (the distance is in bytes, so bf16 prefetches twice as many columns ahead).
template <class T>
TREEGATE_DETAIL_AVX2_TARGET inline void path_sum(index_t rows, index_t cols, const T* const* blocks, int count,
                                                 const float* x, float* y) noexcept {
    if (rows <= 0 || cols <= 0) return;
    const index_t full = cols - cols % 4;
    const index_t block_bytes = rows * cols * static_cast<index_t>(sizeof(T));
    const auto dist = static_cast<index_t>(path_prefetch_bytes);
    for (int k = 0; k < count; ++k) {
        const T* W = blocks[k];
        const auto here = reinterpret_cast<std::uintptr_t>(W);
        const std::uintptr_t next = k + 1 < count ? reinterpret_cast<std::uintptr_t>(blocks[k + 1]) : here;
        for (index_t c = 0; c < full; c += 4) {
            // The panel's prefetch stream covers [start, start + 16 rows) bytes of the stream.
            const index_t start = c * rows * static_cast<index_t>(sizeof(T)) + dist;
            const std::uintptr_t pf = start < block_bytes ? here + static_cast<std::uintptr_t>(start)
                                      : k + 1 < count   ? next + static_cast<std::uintptr_t>(start - block_bytes)
                                                        : here;
            panel4<true>(rows, W + c * rows, rows, x + c, y, pf);
        }
        for (index_t c = full; c < cols; ++c) panel1(rows, W + c * rows, x[c], y);
    }
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

// Y(:, 0:J) += W(:, c:c+4) X(c:c+4, 0:J) for J = 1 or 2 columns of the group, the 4 J inputs
// broadcast once into registers (4 J + 4 weight + 2 J accumulator registers fit the 16).
// With Prefetch, the four columns `ahead` columns further on are prefetched as this sweep
// streams its own (one line per column every 64 bytes of it): the sweeps of the other column
// pairs then run from L1 while the memory pipeline stays busy with the next columns.
// T = float or bf16 (bf16 widened in registers; gemm_small for bf16 runs the float sweeps on a
// widened buffer instead, see below).
template <int J, bool Prefetch = false, class T>
TREEGATE_DETAIL_AVX2_TARGET inline void sweep4(index_t rows, const T* w0, index_t ldw, const float* x, index_t ldx,
                                               float* y, index_t ldy, index_t ahead = 0) noexcept {
    static_assert(J == 1 || J == 2, "sweep4 handles 1 or 2 columns");
    constexpr index_t line_rows = static_cast<index_t>(64 / sizeof(T));
    const auto pf0 = reinterpret_cast<std::uintptr_t>(w0) + static_cast<std::uintptr_t>(ahead * ldw) * sizeof(T);
    const auto pstep = static_cast<std::uintptr_t>(ldw) * sizeof(T);
    const T* w1 = w0 + ldw;
    const T* w2 = w1 + ldw;
    const T* w3 = w2 + ldw;
    const float* xb = x + (J > 1 ? ldx : 0);
    float* yb = y + (J > 1 ? ldy : 0);
    const __m256 p0 = _mm256_broadcast_ss(x), p1 = _mm256_broadcast_ss(x + 1);
    const __m256 p2 = _mm256_broadcast_ss(x + 2), p3 = _mm256_broadcast_ss(x + 3);
    const __m256 q0 = _mm256_broadcast_ss(xb), q1 = _mm256_broadcast_ss(xb + 1);
    const __m256 q2 = _mm256_broadcast_ss(xb + 2), q3 = _mm256_broadcast_ss(xb + 3);
    index_t r = 0;
    for (; r + 8 <= rows; r += 8) {
        if constexpr (Prefetch) {
            if ((r & (line_rows - 1)) == 0) {
                const std::uintptr_t at = pf0 + static_cast<std::uintptr_t>(r) * sizeof(T);
                prefetch_line(at);
                prefetch_line(at + pstep);
                prefetch_line(at + 2 * pstep);
                prefetch_line(at + 3 * pstep);
            }
        }
        const __m256 a0 = load8(w0 + r), a1 = load8(w1 + r);
        const __m256 a2 = load8(w2 + r), a3 = load8(w3 + r);
        __m256 s = _mm256_fmadd_ps(a0, p0, _mm256_loadu_ps(y + r));
        s = _mm256_fmadd_ps(a1, p1, s);
        s = _mm256_fmadd_ps(a2, p2, s);
        _mm256_storeu_ps(y + r, _mm256_fmadd_ps(a3, p3, s));
        if constexpr (J > 1) {
            __m256 t = _mm256_fmadd_ps(a0, q0, _mm256_loadu_ps(yb + r));
            t = _mm256_fmadd_ps(a1, q1, t);
            t = _mm256_fmadd_ps(a2, q2, t);
            _mm256_storeu_ps(yb + r, _mm256_fmadd_ps(a3, q3, t));
        }
    }
    if (r < rows) {
        const index_t t = rows - r;
        const __m256i m = tail_mask(t);
        const __m256 a0 = load_part(w0 + r, t, m), a1 = load_part(w1 + r, t, m);
        const __m256 a2 = load_part(w2 + r, t, m), a3 = load_part(w3 + r, t, m);
        __m256 s = _mm256_fmadd_ps(a0, p0, _mm256_maskload_ps(y + r, m));
        s = _mm256_fmadd_ps(a1, p1, s);
        s = _mm256_fmadd_ps(a2, p2, s);
        _mm256_maskstore_ps(y + r, m, _mm256_fmadd_ps(a3, p3, s));
        if constexpr (J > 1) {
            __m256 t = _mm256_fmadd_ps(a0, q0, _mm256_maskload_ps(yb + r, m));
            t = _mm256_fmadd_ps(a1, q1, t);
            t = _mm256_fmadd_ps(a2, q2, t);
            _mm256_maskstore_ps(yb + r, m, _mm256_fmadd_ps(a3, q3, t));
        }
    }
}

// Small groups (2 .. gemm_small_max examples). Four weight columns at a time, swept once per
// pair of group columns: the first sweep streams them from memory (prefetching the columns
// 8 ahead), the others read them from L1 (4 columns of at most a few thousand rows), so the
// weights cross the memory bus once for the whole group, as sequential column streams. A
// packed panel would read them with a stride of ld instead, which costs half the bandwidth.
template <class T>
TREEGATE_DETAIL_AVX2_TARGET inline void gemm_small(index_t rows, index_t cols, index_t n, const T* W, index_t ldw,
                                                   const float* X, index_t ldx, float* Y, index_t ldy) noexcept {
    if (cols <= 0) return;
    const index_t full = cols - cols % 4;
    for (index_t c = 0; c < full; c += 4) {
        const T* w = W + c * ldw;
        // Prefetch only while columns 8 ahead exist (a hint past the end would be harmless,
        // but the address arithmetic is kept inside the block).
        const index_t ahead = c + 12 <= cols ? 8 : 0;
        index_t j = 0;
        if (ahead > 0 && n >= 2) {
            sweep4<2, true>(rows, w, ldw, X + c, ldx, Y, ldy, ahead);
            j = 2;
        }
        for (; j + 2 <= n; j += 2) sweep4<2>(rows, w, ldw, X + j * ldx + c, ldx, Y + j * ldy, ldy);
        if (j < n) sweep4<1>(rows, w, ldw, X + j * ldx + c, ldx, Y + j * ldy, ldy);
    }
    for (index_t c = full; c < cols; ++c)
        for (index_t j = 0; j < n; ++j) panel1(rows, W + c * ldw, X[j * ldx + c], Y + j * ldy);
}

// Small groups with bf16 weights: each strip of four columns is widened once into a float
// buffer (at most gemm_widen_rows rows at a time, 16 KiB, so it stays in L1), one column after
// the other with 32-byte loads, while the strip 8 columns ahead is prefetched; the float sweeps
// then run on the buffer. Measured from memory on 512 x 512 blocks, this beats widening in
// registers on every sweep by 30-40% for 2-8 examples: each column is one long sequential
// stream, and the conversion is paid once per weight rather than once per pair of examples.
inline constexpr index_t gemm_widen_rows = 1024;

TREEGATE_DETAIL_AVX2_TARGET inline void widen_strip(index_t mr, const bf16* w, index_t ldw, float* buf,
                                                    index_t ahead) noexcept {
    for (index_t j = 0; j < 4; ++j) {
        const bf16* wj = w + j * ldw;
        float* bj = buf + j * mr;
        const auto pf = reinterpret_cast<std::uintptr_t>(wj) + static_cast<std::uintptr_t>(ahead * ldw) * sizeof(bf16);
        index_t r = 0;
        for (; r + 16 <= mr; r += 16) {
            if (ahead > 0 && (r & 31) == 0) prefetch_line(pf + static_cast<std::uintptr_t>(r) * sizeof(bf16));
            const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wj + r));
            _mm256_storeu_ps(bj + r, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(v)), 16)));
            _mm256_storeu_ps(bj + r + 8,
                             _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(v, 1)), 16)));
        }
        for (; r < mr; ++r) bj[r] = to_float(wj[r]);
    }
}

TREEGATE_DETAIL_AVX2_TARGET inline void gemm_small(index_t rows, index_t cols, index_t n, const bf16* W, index_t ldw,
                                                   const float* X, index_t ldx, float* Y, index_t ldy) noexcept {
    if (cols <= 0) return;
    alignas(64) float buf[4 * gemm_widen_rows];
    const index_t full = cols - cols % 4;
    for (index_t c = 0; c < full; c += 4) {
        const index_t ahead = c + 12 <= cols ? 8 : 0;
        for (index_t r0 = 0; r0 < rows; r0 += gemm_widen_rows) {
            const index_t mr = rows - r0 < gemm_widen_rows ? rows - r0 : gemm_widen_rows;
            widen_strip(mr, W + r0 + c * ldw, ldw, buf, ahead);
            index_t j = 0;
            for (; j + 2 <= n; j += 2) sweep4<2>(mr, buf, mr, X + j * ldx + c, ldx, Y + r0 + j * ldy, ldy);
            if (j < n) sweep4<1>(mr, buf, mr, X + j * ldx + c, ldx, Y + r0 + j * ldy, ldy);
        }
    }
    for (index_t c = full; c < cols; ++c)
        for (index_t j = 0; j < n; ++j) panel1(rows, W + c * ldw, X[j * ldx + c], Y + j * ldy);
}

// Copies W(r0 : r0 + mr, k0 : k0 + kc) into a 16-row panel (kc columns of 16 contiguous floats),
// zero-padding rows mr..15, so the micro-kernel reads one contiguous stream whatever ldw is
// (a power-of-two ldw would otherwise map a row strip's lines onto a few L1 sets).
// While packing, the panel to be packed next (`next`, `next_kc` columns; 0 if none) is
// prefetched into L2 one line pair per column, so that its strided lines arrive while the
// micro-kernels run on this one instead of stalling the next pack.
TREEGATE_DETAIL_AVX2_TARGET inline void pack_panel(index_t mr, index_t kc, const float* W, index_t ldw, float* panel,
                                                   std::uintptr_t next, index_t next_kc) noexcept {
    const auto step = static_cast<std::uintptr_t>(ldw) * sizeof(float);
    for (index_t k = 0; k < next_kc; ++k, next += step) {
        _mm_prefetch(reinterpret_cast<const char*>(next), _MM_HINT_T1);
        _mm_prefetch(reinterpret_cast<const char*>(next + 15 * sizeof(float)), _MM_HINT_T1);
    }
    if (mr == gemm_mr) {
        for (index_t k = 0; k < kc; ++k) {
            _mm256_store_ps(panel + 16 * k, _mm256_loadu_ps(W + k * ldw));
            _mm256_store_ps(panel + 16 * k + 8, _mm256_loadu_ps(W + k * ldw + 8));
        }
        return;
    }
    const __m256i m0 = tail_mask(mr < 8 ? mr : 8);
    const __m256i m1 = tail_mask(mr > 8 ? mr - 8 : 0);
    for (index_t k = 0; k < kc; ++k) {
        _mm256_store_ps(panel + 16 * k, _mm256_maskload_ps(W + k * ldw, m0));
        _mm256_store_ps(panel + 16 * k + 8, _mm256_maskload_ps(W + k * ldw + 8, m1));
    }
}

// The same for bf16 weights, widened to float while packing (the micro-kernel is shared): each
// 16-row column segment is 32 bytes, one line pair prefetched per column of the next panel.
TREEGATE_DETAIL_AVX2_TARGET inline void pack_panel(index_t mr, index_t kc, const bf16* W, index_t ldw, float* panel,
                                                   std::uintptr_t next, index_t next_kc) noexcept {
    const auto step = static_cast<std::uintptr_t>(ldw) * sizeof(bf16);
    for (index_t k = 0; k < next_kc; ++k, next += step) {
        _mm_prefetch(reinterpret_cast<const char*>(next), _MM_HINT_T1);
        _mm_prefetch(reinterpret_cast<const char*>(next + 15 * sizeof(bf16)), _MM_HINT_T1);
    }
    if (mr == gemm_mr) {
        for (index_t k = 0; k < kc; ++k) {
            _mm256_store_ps(panel + 16 * k, load8(W + k * ldw));
            _mm256_store_ps(panel + 16 * k + 8, load8(W + k * ldw + 8));
        }
        return;
    }
    const index_t m0 = mr < 8 ? mr : 8;
    const index_t m1 = mr > 8 ? mr - 8 : 0;
    const __m256i k0 = tail_mask(m0);
    const __m256i k1 = tail_mask(m1);
    for (index_t k = 0; k < kc; ++k) {
        _mm256_store_ps(panel + 16 * k, load_part(W + k * ldw, m0, k0));
        _mm256_store_ps(panel + 16 * k + 8, m1 > 0 ? load_part(W + k * ldw + 8, m1, k1) : _mm256_setzero_ps());
    }
}

// Y(0:mr, 0:NC) += panel(16 x kc) * X(0:kc, 0:NC): 2 x NC accumulators, one broadcast per
// (k, column), two FMAs per broadcast. Written out by hand: GCC at -O2 does not unroll a loop
// over the columns and would keep the accumulators in memory.
template <int NC>
TREEGATE_DETAIL_AVX2_TARGET inline void micro(index_t mr, index_t kc, const float* panel, const float* X, index_t ldx,
                                              float* Y, index_t ldy) noexcept {
    static_assert(NC >= 1 && NC <= gemm_nr, "micro-kernel width");
    __m256 a0 = _mm256_setzero_ps(), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0;
    __m256 a3 = a0, b3 = a0, a4 = a0, b4 = a0, a5 = a0, b5 = a0;
    const float* x0 = X;
    const float* x1 = X + (NC > 1 ? ldx : 0);
    const float* x2 = X + (NC > 2 ? 2 * ldx : 0);
    const float* x3 = X + (NC > 3 ? 3 * ldx : 0);
    const float* x4 = X + (NC > 4 ? 4 * ldx : 0);
    const float* x5 = X + (NC > 5 ? 5 * ldx : 0);
    for (index_t k = 0; k < kc; ++k) {
        const __m256 p0 = _mm256_load_ps(panel + 16 * k);
        const __m256 p1 = _mm256_load_ps(panel + 16 * k + 8);
        __m256 x = _mm256_broadcast_ss(x0 + k);
        a0 = _mm256_fmadd_ps(p0, x, a0);
        b0 = _mm256_fmadd_ps(p1, x, b0);
        if constexpr (NC > 1) {
            x = _mm256_broadcast_ss(x1 + k);
            a1 = _mm256_fmadd_ps(p0, x, a1);
            b1 = _mm256_fmadd_ps(p1, x, b1);
        }
        if constexpr (NC > 2) {
            x = _mm256_broadcast_ss(x2 + k);
            a2 = _mm256_fmadd_ps(p0, x, a2);
            b2 = _mm256_fmadd_ps(p1, x, b2);
        }
        if constexpr (NC > 3) {
            x = _mm256_broadcast_ss(x3 + k);
            a3 = _mm256_fmadd_ps(p0, x, a3);
            b3 = _mm256_fmadd_ps(p1, x, b3);
        }
        if constexpr (NC > 4) {
            x = _mm256_broadcast_ss(x4 + k);
            a4 = _mm256_fmadd_ps(p0, x, a4);
            b4 = _mm256_fmadd_ps(p1, x, b4);
        }
        if constexpr (NC > 5) {
            x = _mm256_broadcast_ss(x5 + k);
            a5 = _mm256_fmadd_ps(p0, x, a5);
            b5 = _mm256_fmadd_ps(p1, x, b5);
        }
    }
    const __m256 top[gemm_nr] = {a0, a1, a2, a3, a4, a5};
    const __m256 bottom[gemm_nr] = {b0, b1, b2, b3, b4, b5};
    if (mr == gemm_mr) {
        for (int j = 0; j < NC; ++j) {
            float* yj = Y + j * ldy;
            _mm256_storeu_ps(yj, _mm256_add_ps(_mm256_loadu_ps(yj), top[j]));
            _mm256_storeu_ps(yj + 8, _mm256_add_ps(_mm256_loadu_ps(yj + 8), bottom[j]));
        }
        return;
    }
    const __m256i m0 = tail_mask(mr < 8 ? mr : 8);
    const __m256i m1 = tail_mask(mr > 8 ? mr - 8 : 0);
    for (int j = 0; j < NC; ++j) {
        float* yj = Y + j * ldy;
        _mm256_maskstore_ps(yj, m0, _mm256_add_ps(_mm256_maskload_ps(yj, m0), top[j]));
        _mm256_maskstore_ps(yj + 8, m1, _mm256_add_ps(_mm256_maskload_ps(yj + 8, m1), bottom[j]));
    }
}

// Larger groups: k-blocked, a packed 16-row panel reused across every column block of 6.
template <class T>
TREEGATE_DETAIL_AVX2_TARGET inline void gemm_packed(index_t rows, index_t cols, index_t n, const T* W, index_t ldw,
                                                    const float* X, index_t ldx, float* Y, index_t ldy) noexcept {
    alignas(64) float panel[gemm_mr * gemm_kc];
    for (index_t k0 = 0; k0 < cols; k0 += gemm_kc) {
        const index_t kc = cols - k0 < gemm_kc ? cols - k0 : gemm_kc;
        for (index_t r0 = 0; r0 < rows; r0 += gemm_mr) {
            const index_t mr = rows - r0 < gemm_mr ? rows - r0 : gemm_mr;
            // The next panel: the next 16 rows of this k-block, else the first rows of the next.
            std::uintptr_t next = 0;
            index_t next_kc = 0;
            if (r0 + gemm_mr < rows) {
                next = reinterpret_cast<std::uintptr_t>(W + r0 + gemm_mr + k0 * ldw);
                next_kc = kc;
            } else if (k0 + kc < cols) {
                next = reinterpret_cast<std::uintptr_t>(W + (k0 + kc) * ldw);
                next_kc = cols - k0 - kc < gemm_kc ? cols - k0 - kc : gemm_kc;
            }
            pack_panel(mr, kc, W + r0 + k0 * ldw, ldw, panel, next, next_kc);
            const float* Xk = X + k0;
            float* Yr = Y + r0;
            index_t j = 0;
            for (; j + gemm_nr <= n; j += gemm_nr) micro<6>(mr, kc, panel, Xk + j * ldx, ldx, Yr + j * ldy, ldy);
            switch (n - j) {
                case 1: micro<1>(mr, kc, panel, Xk + j * ldx, ldx, Yr + j * ldy, ldy); break;
                case 2: micro<2>(mr, kc, panel, Xk + j * ldx, ldx, Yr + j * ldy, ldy); break;
                case 3: micro<3>(mr, kc, panel, Xk + j * ldx, ldx, Yr + j * ldy, ldy); break;
                case 4: micro<4>(mr, kc, panel, Xk + j * ldx, ldx, Yr + j * ldy, ldy); break;
                case 5: micro<5>(mr, kc, panel, Xk + j * ldx, ldx, Yr + j * ldy, ldy); break;
                default: break;
            }
        }
    }
}

template <class T>
TREEGATE_DETAIL_AVX2_TARGET inline void gemm(index_t rows, index_t cols, index_t n, const T* W, index_t ldw,
                                             const float* X, index_t ldx, float* Y, index_t ldy) noexcept {
    if (rows <= 0 || n <= 0) return;
    if (n == 1) {
        // A contiguous block (ldw == rows, as in the layers) takes the path-sum kernel, whose
        // software prefetch runs ahead inside the block: a column of a few hundred rows is only
        // a few cache lines, too short for the hardware prefetcher to ramp up (measured on
        // 256 x 256 blocks from memory: bf16 14 us instead of 23 us, float 26 us instead of 32 us).
        if (ldw == rows) return path_sum(rows, cols, &W, 1, X, Y);
        return gemv(rows, cols, W, ldw, X, Y);
    }
    if (n <= (std::is_same_v<T, bf16> ? gemm_small_max_bf16 : gemm_small_max))
        return gemm_small(rows, cols, n, W, ldw, X, ldx, Y, ldy);
    gemm_packed(rows, cols, n, W, ldw, X, ldx, Y, ldy);
}

#undef TREEGATE_DETAIL_AVX2_TARGET

}  // namespace detail::avx2_kernels

#endif  // TREEGATE_DETAIL_AVX2_KERNELS

/// AVX2 + FMA kernels for `float` (same interface as `reference`, see kernels/reference.hpp);
/// other scalars, and builds without the kernels (not x86-64, not GCC/Clang), use `eigen`.
/// Only call it where cpu_supports_avx2() is true.
struct avx2 {
    static constexpr const char* name() noexcept { return "avx2"; }

    template <class Scalar>
    static void gemm(index_t rows, index_t cols, index_t n, const Scalar* W, index_t ldw, const Scalar* X, index_t ldx,
                     Scalar* Y, index_t ldy) noexcept {
#if TREEGATE_DETAIL_AVX2_KERNELS
        if constexpr (std::is_same_v<Scalar, float>)
            detail::avx2_kernels::gemm(rows, cols, n, W, ldw, X, ldx, Y, ldy);
        else
#endif
            eigen::gemm(rows, cols, n, W, ldw, X, ldx, Y, ldy);
    }

    template <class Scalar>
    static void gemv(index_t rows, index_t cols, const Scalar* W, index_t ldw, const Scalar* x, Scalar* y) noexcept {
#if TREEGATE_DETAIL_AVX2_KERNELS
        if constexpr (std::is_same_v<Scalar, float>)
            detail::avx2_kernels::gemv(rows, cols, W, ldw, x, y);
        else
#endif
            eigen::gemv(rows, cols, W, ldw, x, y);
    }

    template <class Scalar>
    static void path_sum(index_t rows, index_t cols, const Scalar* const* blocks, int count, const Scalar* x,
                         Scalar* y) noexcept {
#if TREEGATE_DETAIL_AVX2_KERNELS
        if constexpr (std::is_same_v<Scalar, float>)
            detail::avx2_kernels::path_sum(rows, cols, blocks, count, x, y);
        else
#endif
            eigen::path_sum(rows, cols, blocks, count, x, y);
    }

    // bf16 weights, float inputs and outputs (see kernels/reference.hpp): widened in registers,
    // products and sums in float. Without the kernels (not x86-64 GCC/Clang), eigen's versions.
    static void gemm(index_t rows, index_t cols, index_t n, const bf16* W, index_t ldw, const float* X, index_t ldx,
                     float* Y, index_t ldy) noexcept {
#if TREEGATE_DETAIL_AVX2_KERNELS
        detail::avx2_kernels::gemm(rows, cols, n, W, ldw, X, ldx, Y, ldy);
#else
        eigen::gemm(rows, cols, n, W, ldw, X, ldx, Y, ldy);
#endif
    }

    static void gemv(index_t rows, index_t cols, const bf16* W, index_t ldw, const float* x, float* y) noexcept {
#if TREEGATE_DETAIL_AVX2_KERNELS
        detail::avx2_kernels::gemv(rows, cols, W, ldw, x, y);
#else
        eigen::gemv(rows, cols, W, ldw, x, y);
#endif
    }

    static void path_sum(index_t rows, index_t cols, const bf16* const* blocks, int count, const float* x,
                         float* y) noexcept {
#if TREEGATE_DETAIL_AVX2_KERNELS
        detail::avx2_kernels::path_sum(rows, cols, blocks, count, x, y);
#else
        eigen::path_sum(rows, cols, blocks, count, x, y);
#endif
    }

    template <class Scalar>
    static Scalar dot(index_t n, const Scalar* a, const Scalar* b) noexcept {
#if TREEGATE_DETAIL_AVX2_KERNELS
        if constexpr (std::is_same_v<Scalar, float>)
            return detail::avx2_kernels::dot(n, a, b);
        else
#endif
            return eigen::dot(n, a, b);
    }

    template <class Scalar>
    static void axpy(index_t n, Scalar alpha, const Scalar* x, Scalar* y) noexcept {
#if TREEGATE_DETAIL_AVX2_KERNELS
        if constexpr (std::is_same_v<Scalar, float>)
            detail::avx2_kernels::axpy(n, alpha, x, y);
        else
#endif
            eigen::axpy(n, alpha, x, y);
    }
    template <class Scalar>
    static void dot_many(index_t n, int count, const Scalar* const* a, const Scalar* const* b, Scalar* out) noexcept {
#if TREEGATE_DETAIL_AVX2_KERNELS
        if constexpr (std::is_same_v<Scalar, float>)
            detail::avx2_kernels::dot_many(n, count, a, b, out);
        else
#endif
            eigen::dot_many(n, count, a, b, out);
    }

    template <class Scalar>
    static void axpy_many(index_t n, int count, const Scalar* alpha, const Scalar* const* x, Scalar* y) noexcept {
#if TREEGATE_DETAIL_AVX2_KERNELS
        if constexpr (std::is_same_v<Scalar, float>)
            detail::avx2_kernels::axpy_many(n, count, alpha, x, y);
        else
#endif
            eigen::axpy_many(n, count, alpha, x, y);
    }
};

}  // namespace treegate::kernels

#endif
