// treegate/kernels/x86/avx512_gemv.hpp — AVX-512 streaming kernels: gemv, path_sum, small-group gemm.
// Part of the `avx512` policy (include kernels/avx512.hpp); float and bf16 weights, float activations.
#ifndef TREEGATE_KERNELS_X86_AVX512_GEMV_HPP
#define TREEGATE_KERNELS_X86_AVX512_GEMV_HPP

#include "avx512_vector.hpp"
#include "stream_plan.hpp"

#if TREEGATE_DETAIL_AVX512_KERNELS

namespace treegate::kernels::detail::avx512_kernels {

// Software prefetch distance of the fused path-sum kernel, in bytes of the concatenated stream
// of the path's blocks (as in the avx2 kernels: the next block's first lines are requested
// before the current block ends, where the hardware prefetcher has not yet found them).
inline constexpr std::uintptr_t path_prefetch_bytes = 4096;

// A second, farther prefetch stream of the path-sum kernel, into L2, for bf16 weights only: at
// 4 KiB ahead alone a bf16 stream from memory had too few lines in flight. Both streams stop
// at the path's end (stream_plan.hpp, path_far_address) instead of requesting its start again.
// Measured on a Sapphire Rapids VM (one thread, CPU time, passes alternated in one process,
// 256 single-example calls on 512 x 512 blocks from memory): bf16 12.2 -> 10.5 ms; float
// weights 18.2 ms with the far stream against 18.0 without (noise), so float keeps one stream.
template <class T>
inline constexpr std::uintptr_t path_far_prefetch_bytes = sizeof(T) == 2 ? 16384 : 0;

// y(0:rows) += W(:, 0:4) * x(0:4), W column-major with leading dimension ld, T = float or bf16:
// four sequential weight streams, y touched once per four columns, 32 rows per step. Each y
// element takes its four products as one FMA chain in column order, as gemm_small and the
// packed GEMM do (kernels/x86/avx512_gemm.hpp: batch invariance). With
// Prefetch, the lines from `pf` on are prefetched into L1, and those from `far` on (unless it
// is 0) into L2, 64 bytes each per 64 bytes of weights read.
template <bool Prefetch, class T>
TREEGATE_DETAIL_AVX512_TARGET inline void panel4(index_t rows, const T* w, index_t ld, const float* x, float* y,
                                                 std::uintptr_t pf, std::uintptr_t far = 0) noexcept {
    constexpr std::uintptr_t pf_step = 4 * 32 * sizeof(T);
    const __m512 x0 = _mm512_set1_ps(x[0]), x1 = _mm512_set1_ps(x[1]);
    const __m512 x2 = _mm512_set1_ps(x[2]), x3 = _mm512_set1_ps(x[3]);
    const T* w0 = w;
    const T* w1 = w + ld;
    const T* w2 = w + 2 * ld;
    const T* w3 = w + 3 * ld;
    index_t r = 0;
    for (; r + 32 <= rows; r += 32) {
        if constexpr (Prefetch) {
            if (pf != 0) {
                for (std::uintptr_t line = 0; line < pf_step; line += 64) prefetch_line(pf + line);
                pf += pf_step;
            }
            if (far != 0) {
                for (std::uintptr_t line = 0; line < pf_step; line += 64) prefetch_line_l2(far + line);
                far += pf_step;
            }
        }
        __m512 a = _mm512_fmadd_ps(load16(w0 + r), x0, _mm512_loadu_ps(y + r));
        __m512 b = _mm512_fmadd_ps(load16(w0 + r + 16), x0, _mm512_loadu_ps(y + r + 16));
        a = _mm512_fmadd_ps(load16(w1 + r), x1, a);
        b = _mm512_fmadd_ps(load16(w1 + r + 16), x1, b);
        a = _mm512_fmadd_ps(load16(w2 + r), x2, a);
        b = _mm512_fmadd_ps(load16(w2 + r + 16), x2, b);
        _mm512_storeu_ps(y + r, _mm512_fmadd_ps(load16(w3 + r), x3, a));
        _mm512_storeu_ps(y + r + 16, _mm512_fmadd_ps(load16(w3 + r + 16), x3, b));
    }
    // At most two more steps of 16 rows, the last one masked.
    for (; r < rows; r += 16) {
        const __mmask16 m = mask16(rows - r < 16 ? rows - r : 16);
        __m512 a = _mm512_fmadd_ps(load_part(w0 + r, m), x0, _mm512_maskz_loadu_ps(m, y + r));
        a = _mm512_fmadd_ps(load_part(w1 + r, m), x1, a);
        a = _mm512_fmadd_ps(load_part(w2 + r, m), x2, a);
        _mm512_mask_storeu_ps(y + r, m, _mm512_fmadd_ps(load_part(w3 + r, m), x3, a));
    }
}

// y(0:rows) += w * xs for one column.
template <class T>
TREEGATE_DETAIL_AVX512_TARGET inline void panel1(index_t rows, const T* w, float xs, float* y) noexcept {
    const __m512 x0 = _mm512_set1_ps(xs);
    index_t r = 0;
    for (; r + 16 <= rows; r += 16) _mm512_storeu_ps(y + r, _mm512_fmadd_ps(load16(w + r), x0, _mm512_loadu_ps(y + r)));
    if (r < rows) {
        const __mmask16 m = mask16(rows - r);
        _mm512_mask_storeu_ps(y + r, m, _mm512_fmadd_ps(load_part(w + r, m), x0, _mm512_maskz_loadu_ps(m, y + r)));
    }
}

template <class T>
TREEGATE_DETAIL_AVX512_TARGET inline void gemv(index_t rows, index_t cols, const T* W, index_t ldw, const float* x,
                                               float* y) noexcept {
    if (rows <= 0 || cols <= 0) return;
    const index_t full = cols - cols % 4;
    for (index_t c = 0; c < full; c += 4) panel4<false>(rows, W + c * ldw, ldw, x + c, y, 0);
    for (index_t c = full; c < cols; ++c) panel1(rows, W + c * ldw, x[c], y);
}

// The blocks of one path, path_streams<T> of them side by side (panel by panel, see
// stream_plan.hpp), each read once front to back, while the software prefetch runs
// path_prefetch_bytes ahead in each stream.
template <class T>
TREEGATE_DETAIL_AVX512_TARGET inline void path_sum(index_t rows, index_t cols, const T* const* blocks, int count,
                                                   const float* x, float* y) noexcept {
    if (rows <= 0 || cols <= 0) return;
    const index_t full = cols - cols % 4;
    const auto dist = static_cast<index_t>(path_prefetch_bytes);
    constexpr auto far_dist = static_cast<index_t>(path_far_prefetch_bytes<T>);
    constexpr int streams = path_streams<T>;
    for (int k0 = 0; k0 < count; k0 += streams) {
        const int g = count - k0 < streams ? count - k0 : streams;
        for (index_t c = 0; c < full; c += 4)
            for (int k = k0; k < k0 + g; ++k)
                panel4<true>(rows, blocks[k] + c * rows, rows, x + c, y,
                             path_far_address(blocks, k, count, c, rows, cols, dist, streams),
                             far_dist == 0 ? 0 : path_far_address(blocks, k, count, c, rows, cols, far_dist, streams));
        for (int k = k0; k < k0 + g; ++k)
            for (index_t c = full; c < cols; ++c) panel1(rows, blocks[k] + c * rows, x[c], y);
    }
}

// Rows r .. r + 16 (the lanes of m) of Y(:, 0:J) += W(:, 0:4) X(0:4, 0:J), the inputs p broadcast.
template <int J, class T>
TREEGATE_DETAIL_AVX512_TARGET inline void sweep_rows(const T* const* w, const __m512 (*p)[4], float* y, index_t ldy,
                                                     index_t r, __mmask16 m) noexcept {
    __m512 a[4];
    TREEGATE_DETAIL_UNROLL
    for (int i = 0; i < 4; ++i) a[i] = load_part(w[i] + r, m);
    TREEGATE_DETAIL_UNROLL
    for (int j = 0; j < J; ++j) {
        float* yj = y + j * ldy + r;
        __m512 s = _mm512_fmadd_ps(a[0], p[j][0], _mm512_maskz_loadu_ps(m, yj));
        s = _mm512_fmadd_ps(a[1], p[j][1], s);
        s = _mm512_fmadd_ps(a[2], p[j][2], s);
        _mm512_mask_storeu_ps(yj, m, _mm512_fmadd_ps(a[3], p[j][3], s));
    }
}

// Y(:, 0:J) += W(:, c:c+4) X(c:c+4, 0:J) for J = 1..4 columns of the group: 4 J broadcast
// inputs, 4 weight registers and J accumulators fit the 32 registers. With Prefetch, the four
// columns `ahead` further on are prefetched, one line per column every 64 bytes streamed.
template <int J, bool Prefetch = false, class T>
TREEGATE_DETAIL_AVX512_TARGET inline void sweep4(index_t rows, const T* w0, index_t ldw, const float* x, index_t ldx,
                                                 float* y, index_t ldy, index_t ahead = 0) noexcept {
    static_assert(J >= 1 && J <= 4, "sweep4 handles 1 to 4 columns");
    constexpr index_t line_rows = static_cast<index_t>(64 / sizeof(T));
    const auto pf0 = reinterpret_cast<std::uintptr_t>(w0) + static_cast<std::uintptr_t>(ahead * ldw) * sizeof(T);
    const auto pstep = static_cast<std::uintptr_t>(ldw) * sizeof(T);
    const T* w[4] = {w0, w0 + ldw, w0 + 2 * ldw, w0 + 3 * ldw};
    __m512 p[J][4];
    TREEGATE_DETAIL_UNROLL
    for (int j = 0; j < J; ++j) {
        TREEGATE_DETAIL_UNROLL
        for (int i = 0; i < 4; ++i) p[j][i] = _mm512_set1_ps(x[j * ldx + i]);
    }
    index_t r = 0;
    for (; r + 16 <= rows; r += 16) {
        if constexpr (Prefetch) {
            if ((r & (line_rows - 1)) == 0) {
                const std::uintptr_t at = pf0 + static_cast<std::uintptr_t>(r) * sizeof(T);
                prefetch_line_l2(at);
                prefetch_line_l2(at + pstep);
                prefetch_line_l2(at + 2 * pstep);
                prefetch_line_l2(at + 3 * pstep);
            }
        }
        sweep_rows<J>(w, p, y, ldy, r, all16);
    }
    if (r < rows) sweep_rows<J>(w, p, y, ldy, r, mask16(rows - r));
}

// The sweeps of one strip of four weight columns over all n group columns, four at a time; the
// first (with Prefetch, while columns `ahead` further on exist) streams the strip from memory
// and requests the next strips, the others read it from L1.
template <bool Prefetch, class T>
TREEGATE_DETAIL_AVX512_TARGET inline void sweep_group(index_t rows, const T* w, index_t ldw, index_t n, const float* X,
                                                      index_t ldx, float* Y, index_t ldy, index_t ahead) noexcept {
    index_t j = 0;
    if constexpr (Prefetch) {
        if (ahead > 0) {
            j = n < 4 ? n : 4;
            switch (j) {
                case 1: sweep4<1, true>(rows, w, ldw, X, ldx, Y, ldy, ahead); break;
                case 2: sweep4<2, true>(rows, w, ldw, X, ldx, Y, ldy, ahead); break;
                case 3: sweep4<3, true>(rows, w, ldw, X, ldx, Y, ldy, ahead); break;
                default: sweep4<4, true>(rows, w, ldw, X, ldx, Y, ldy, ahead); break;
            }
        }
    }
    for (; j + 4 <= n; j += 4) sweep4<4>(rows, w, ldw, X + j * ldx, ldx, Y + j * ldy, ldy);
    switch (n - j) {
        case 1: sweep4<1>(rows, w, ldw, X + j * ldx, ldx, Y + j * ldy, ldy); break;
        case 2: sweep4<2>(rows, w, ldw, X + j * ldx, ldx, Y + j * ldy, ldy); break;
        case 3: sweep4<3>(rows, w, ldw, X + j * ldx, ldx, Y + j * ldy, ldy); break;
        default: break;
    }
}

// Small groups (2 .. gemm_small_max examples): each strip of four weight columns crosses the
// memory bus once for the whole group, as four sequential column streams (see the avx2 kernels).
// bf16 weights are widened in registers on every sweep, not once into an L1 buffer as the avx2
// kernels do: a sweep covers four examples, so up to 4 examples widen each weight once anyway,
// and the buffer's stores and reloads cost more than re-widening. Measured on a Sapphire Rapids
// VM (one thread, 256 blocks of 512 x 512 from memory, thread CPU time): 11.6 against 15.2-16.0
// ms for 4 examples per block, 17.3 against 21.2 ms for 8, 10.5 against 13.1 ms for 2.
template <class T>
TREEGATE_DETAIL_AVX512_TARGET inline void gemm_small(index_t rows, index_t cols, index_t n, const T* W, index_t ldw,
                                                     const float* X, index_t ldx, float* Y, index_t ldy) noexcept {
    if (cols <= 0) return;
    const index_t full = cols - cols % 4;
    for (index_t c = 0; c < full; c += 4) {
        const index_t ahead = c + 12 <= cols ? 8 : 0;
        sweep_group<true>(rows, W + c * ldw, ldw, n, X + c, ldx, Y, ldy, ahead);
    }
    for (index_t c = full; c < cols; ++c)
        for (index_t j = 0; j < n; ++j) panel1(rows, W + c * ldw, X[j * ldx + c], Y + j * ldy);
}

}  // namespace treegate::kernels::detail::avx512_kernels

#endif  // TREEGATE_DETAIL_AVX512_KERNELS

#endif
