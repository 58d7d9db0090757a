// treegate/kernels/x86/avx2_gemv.hpp — AVX2 streaming kernels: gemv, path_sum, small-group gemm.
// Part of the `avx2` policy (include kernels/avx2.hpp); float and bf16 weights, float activations.
#ifndef TREEGATE_KERNELS_X86_AVX2_GEMV_HPP
#define TREEGATE_KERNELS_X86_AVX2_GEMV_HPP

#include "avx2_vector.hpp"
#include "stream_plan.hpp"

#if TREEGATE_DETAIL_AVX2_KERNELS

namespace treegate::kernels::detail::avx2_kernels {

// Software prefetch distance of the fused path-sum kernel, in bytes of the concatenated stream
// of the path's blocks. The hardware prefetcher follows each block once it has seen a few
// misses; the software stream starts the next block's lines before the current one ends.
inline constexpr std::uintptr_t path_prefetch_bytes = 4096;

// y(0:rows) += W(:, 0:4) * x(0:4), W column-major with leading dimension ld, T = float or bf16.
// Four columns at a time keep four sequential weight streams in flight and touch y once per four
// columns. With Prefetch, the lines from `pf` on are prefetched, 64 bytes per 64 bytes of
// weights read (4 lines per 16 rows of float, 2 of bf16). Each y element takes its four
// products as one FMA chain in column order, as the sweeps and the packed GEMM do (batch
// invariance, kernels/x86/avx2_gemm.hpp).
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
        a = _mm256_fmadd_ps(load8(w1 + r), x1, a);
        b = _mm256_fmadd_ps(load8(w1 + r + 8), x1, b);
        a = _mm256_fmadd_ps(load8(w2 + r), x2, a);
        b = _mm256_fmadd_ps(load8(w2 + r + 8), x2, b);
        _mm256_storeu_ps(y + r, _mm256_fmadd_ps(load8(w3 + r), x3, a));
        _mm256_storeu_ps(y + r + 8, _mm256_fmadd_ps(load8(w3 + r + 8), x3, b));
    }
    if (r + 8 <= rows) {
        __m256 a = _mm256_fmadd_ps(load8(w0 + r), x0, _mm256_loadu_ps(y + r));
        a = _mm256_fmadd_ps(load8(w1 + r), x1, a);
        a = _mm256_fmadd_ps(load8(w2 + r), x2, a);
        _mm256_storeu_ps(y + r, _mm256_fmadd_ps(load8(w3 + r), x3, a));
        r += 8;
    }
    if (r < rows) {
        const index_t t = rows - r;
        const __m256i m = tail_mask(t);
        __m256 a = _mm256_fmadd_ps(load_part(w0 + r, t, m), x0, _mm256_maskload_ps(y + r, m));
        a = _mm256_fmadd_ps(load_part(w1 + r, t, m), x1, a);
        a = _mm256_fmadd_ps(load_part(w2 + r, t, m), x2, a);
        _mm256_maskstore_ps(y + r, m, _mm256_fmadd_ps(load_part(w3 + r, t, m), x3, a));
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

// The blocks of one path, path_streams<T> of them side by side (panel by panel, see
// stream_plan.hpp): each block is read once, front to back, while the software prefetch runs
// path_prefetch_bytes ahead in each stream. T = float or bf16 (the distance is in bytes, so bf16 prefetches twice as many columns ahead).
template <class T>
TREEGATE_DETAIL_AVX2_TARGET inline void path_sum(index_t rows, index_t cols, const T* const* blocks, int count,
                                                 const float* x, float* y) noexcept {
    if (rows <= 0 || cols <= 0) return;
    const index_t full = cols - cols % 4;
    const auto dist = static_cast<index_t>(path_prefetch_bytes);
    constexpr int streams = path_streams<T>;
    for (int k0 = 0; k0 < count; k0 += streams) {
        const int g = count - k0 < streams ? count - k0 : streams;
        for (index_t c = 0; c < full; c += 4)
            for (int k = k0; k < k0 + g; ++k)
                panel4<true>(rows, blocks[k] + c * rows, rows, x + c, y,
                             path_prefetch_address(blocks, k, count, c, rows, cols, dist, streams));
        for (int k = k0; k < k0 + g; ++k)
            for (index_t c = full; c < cols; ++c) panel1(rows, blocks[k] + c * rows, x[c], y);
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
                prefetch_line_l2(at);
                prefetch_line_l2(at + pstep);
                prefetch_line_l2(at + 2 * pstep);
                prefetch_line_l2(at + 3 * pstep);
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

}  // namespace treegate::kernels::detail::avx2_kernels

#endif  // TREEGATE_DETAIL_AVX2_KERNELS

#endif
