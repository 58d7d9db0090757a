// treegate/kernels/x86/avx512_gemm.hpp — AVX-512 packed GEMM (32 x 12 micro-kernel) and the gemm entry point.
// Part of the `avx512` policy (include kernels/avx512.hpp); float and bf16 weights, float activations.
#ifndef TREEGATE_KERNELS_X86_AVX512_GEMM_HPP
#define TREEGATE_KERNELS_X86_AVX512_GEMM_HPP

#include "avx512_gemv.hpp"

#include <type_traits>

#if TREEGATE_DETAIL_AVX512_KERNELS

namespace treegate::kernels::detail::avx512_kernels {

// The packed row panel: 32 rows (two registers) x 256 columns = 32 KiB, which with the 12
// input columns of one k-block (12 KiB) fits a 48 KiB L1. 2 x 12 accumulators, two panel
// registers and a broadcast use 27 of the 32 registers.
inline constexpr index_t gemm_mr = 32;
inline constexpr index_t gemm_nr = 12;
inline constexpr index_t gemm_kc = 256;
// Groups up to this many examples take gemm_small (memory-bound), larger ones the packed GEMM.
inline constexpr index_t gemm_small_max = 16;
inline constexpr index_t gemm_small_max_bf16 = 10;

// Copies W(r0 : r0 + mr, k0 : k0 + kc) into a 32-row panel (kc columns of 32 contiguous floats,
// bf16 widened), zero-padding rows mr..31, so the micro-kernel reads one contiguous stream
// whatever ldw is. The next panel's lines are requested by the micro-kernels (panel_prefetch).
template <class T>
TREEGATE_DETAIL_AVX512_TARGET inline void pack_panel(index_t mr, index_t kc, const T* W, index_t ldw, float* panel) noexcept {
    if (mr == gemm_mr) {
        for (index_t k = 0; k < kc; ++k) {
            _mm512_store_ps(panel + 32 * k, load16(W + k * ldw));
            _mm512_store_ps(panel + 32 * k + 16, load16(W + k * ldw + 16));
        }
        return;
    }
    const __mmask16 m0 = mask16(mr < 16 ? mr : 16);
    const __mmask16 m1 = mask16(mr > 16 ? mr - 16 : 0);
    for (index_t k = 0; k < kc; ++k) {
        _mm512_store_ps(panel + 32 * k, load_part(W + k * ldw, m0));
        _mm512_store_ps(panel + 32 * k + 16, load_part(W + k * ldw + 16, m1));
    }
}

// Y(0:mr, 0:NC) += panel(32 x kc) * X(0:kc, 0:NC): 2 x NC accumulators, one broadcast per
// (k, column), two FMAs per broadcast; the lines of `pf` are requested on the way.
// Batch invariance: the accumulators start from Y itself, so every element of Y takes its
// products as one FMA chain in k order across the k-blocks, exactly as gemm_small and the
// n = 1 kernels (avx512_gemv.hpp) do; a column's result does not depend on how many columns
// the call has, and an example's output does not depend on the group it is multiplied in.
template <int NC>
TREEGATE_DETAIL_AVX512_TARGET inline void micro(index_t mr, index_t kc, const float* panel, const float* X, index_t ldx,
                                                float* Y, index_t ldy, panel_prefetch pf = {}) noexcept {
    static_assert(NC >= 1 && NC <= gemm_nr, "micro-kernel width");
    const __mmask16 m0 = mask16(mr < 16 ? mr : 16);
    const __mmask16 m1 = mask16(mr > 16 ? mr - 16 : 0);
    __m512 a[NC], b[NC];
    const float* x[NC];
    TREEGATE_DETAIL_UNROLL
    for (int j = 0; j < NC; ++j) {
        a[j] = _mm512_maskz_loadu_ps(m0, Y + j * ldy);
        b[j] = _mm512_maskz_loadu_ps(m1, Y + j * ldy + 16);
        x[j] = X + j * ldx;
    }
    for (index_t k = 0; k < kc; ++k) {
        if (k < pf.cols) {
            const std::uintptr_t at = pf.address + static_cast<std::uintptr_t>(k) * pf.step;
            prefetch_line_l2(at);
            prefetch_line_l2(at + pf.last_line);
        }
        const __m512 p0 = _mm512_load_ps(panel + 32 * k);
        const __m512 p1 = _mm512_load_ps(panel + 32 * k + 16);
        TREEGATE_DETAIL_UNROLL
        for (int j = 0; j < NC; ++j) {
            const __m512 v = _mm512_set1_ps(x[j][k]);
            a[j] = _mm512_fmadd_ps(p0, v, a[j]);
            b[j] = _mm512_fmadd_ps(p1, v, b[j]);
        }
    }
    TREEGATE_DETAIL_UNROLL
    for (int j = 0; j < NC; ++j) {
        _mm512_mask_storeu_ps(Y + j * ldy, m0, a[j]);
        _mm512_mask_storeu_ps(Y + j * ldy + 16, m1, b[j]);
    }
}

template <int NC = 1>
TREEGATE_DETAIL_AVX512_TARGET inline void micro_tail(index_t nc, index_t mr, index_t kc, const float* panel,
                                                     const float* X, index_t ldx, float* Y, index_t ldy,
                                                     panel_prefetch pf) noexcept {
    if constexpr (NC < gemm_nr) {
        if (nc == NC) return micro<NC>(mr, kc, panel, X, ldx, Y, ldy, pf);
        micro_tail<NC + 1>(nc, mr, kc, panel, X, ldx, Y, ldy, pf);
    }
}

// Larger groups: k-blocked, a packed 32-row panel reused across every column block of 12.
template <class T>
TREEGATE_DETAIL_AVX512_TARGET inline void gemm_packed(index_t rows, index_t cols, index_t n, const T* W, index_t ldw,
                                                      const float* X, index_t ldx, float* Y, index_t ldy) noexcept {
    alignas(64) float panel[gemm_mr * gemm_kc];
    for (index_t k0 = 0; k0 < cols; k0 += gemm_kc) {
        const index_t kc = cols - k0 < gemm_kc ? cols - k0 : gemm_kc;
        for (index_t r0 = 0; r0 < rows; r0 += gemm_mr) {
            const index_t mr = rows - r0 < gemm_mr ? rows - r0 : gemm_mr;
            pack_panel(mr, kc, W + r0 + k0 * ldw, ldw, panel);
            // The next panel is requested during the first micro-kernel call on this one.
            panel_prefetch pf =
                prefetch_of<T>(next_panel_after(W, ldw, rows, cols, r0, k0, kc, gemm_mr, gemm_kc), ldw, gemm_mr);
            const float* Xk = X + k0;
            float* Yr = Y + r0;
            index_t j = 0;
            for (; j + gemm_nr <= n; j += gemm_nr, pf.cols = 0)
                micro<gemm_nr>(mr, kc, panel, Xk + j * ldx, ldx, Yr + j * ldy, ldy, pf);
            if (j < n) micro_tail(n - j, mr, kc, panel, Xk + j * ldx, ldx, Yr + j * ldy, ldy, pf);
        }
    }
}

template <class T>
TREEGATE_DETAIL_AVX512_TARGET inline void gemm(index_t rows, index_t cols, index_t n, const T* W, index_t ldw,
                                               const float* X, index_t ldx, float* Y, index_t ldy) noexcept {
    if (rows <= 0 || n <= 0) return;
    if (n == 1) {
        // A contiguous block takes the path-sum kernel, whose software prefetch runs ahead inside
        // the block (a short column is too few lines for the hardware prefetcher to ramp up).
        if (ldw == rows) return path_sum(rows, cols, &W, 1, X, Y);
        return gemv(rows, cols, W, ldw, X, Y);
    }
    if (n <= (std::is_same_v<T, bf16> ? gemm_small_max_bf16 : gemm_small_max))
        return gemm_small(rows, cols, n, W, ldw, X, ldx, Y, ldy);
    gemm_packed(rows, cols, n, W, ldw, X, ldx, Y, ldy);
}

}  // namespace treegate::kernels::detail::avx512_kernels

#endif  // TREEGATE_DETAIL_AVX512_KERNELS

#endif
