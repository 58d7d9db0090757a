// treegate/kernels/x86/avx2_gemm.hpp — AVX2 GEMM traits, panel packing and the 16 x 6 micro-kernel; the driver is kernels/generic/gemm.hpp.
// Part of the `avx2` policy (include kernels/avx2.hpp); float and bf16 weights, float activations.
#ifndef TREEGATE_KERNELS_X86_AVX2_GEMM_HPP
#define TREEGATE_KERNELS_X86_AVX2_GEMM_HPP

#include "avx2_gemv.hpp"

#include <type_traits>

#if TREEGATE_DETAIL_AVX2_KERNELS

namespace treegate::kernels::detail::avx2_kernels {

// k-blocking and the packed row panel of the GEMM kernel: 16 rows x 256 columns = 16 KiB.
// The level's GEMM traits, read by the shared driver (kernels/generic/gemm.hpp).
struct traits {
    static constexpr int lanes = 8;
    static constexpr index_t mr = 16;  // rows of the packed panel (two registers)
    static constexpr index_t nr = 6;  // columns of the micro-kernel's register block
    static constexpr index_t kc = 256;  // k-block
    // Groups up to this many examples take gemm_small (memory-bound), larger ones the packed GEMM.
    // With bf16 weights the packed kernel takes over earlier (measured crossover near 10-12
    // examples on 512 x 512 blocks from memory).
    static constexpr index_t small_max = 16;
    static constexpr index_t small_max_bf16 = 10;
};

// Copies W(r0 : r0 + mr, k0 : k0 + kc) into a 16-row panel (kc columns of 16 contiguous floats),
// zero-padding rows mr..15, so the micro-kernel reads one contiguous stream whatever ldw is
// (a power-of-two ldw would otherwise map a row strip's lines onto a few L1 sets).
// The panel to be packed next is requested by the micro-kernels (panel_prefetch), so that its
// strided lines arrive while they run on this one instead of stalling the next pack.
TREEGATE_DETAIL_AVX2_TARGET inline void pack_panel(index_t mr, index_t kc, const float* W, index_t ldw, float* panel) noexcept {
    if (mr == traits::mr) {
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

// The same for bf16 weights, widened to float while packing (the micro-kernel is shared).
TREEGATE_DETAIL_AVX2_TARGET inline void pack_panel(index_t mr, index_t kc, const bf16* W, index_t ldw, float* panel) noexcept {
    if (mr == traits::mr) {
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
// (k, column), two FMAs per broadcast. Batch invariance: the accumulators start from Y itself,
// so every element of Y takes its products as one FMA chain in k order across the k-blocks,
// exactly as gemm_small and the n = 1 kernels (avx2_gemv.hpp) do; a column's result does not
// depend on how many columns the call has, so an example's output does not depend on its group.
// Written out by hand: GCC at -O2 does not unroll a loop over the columns and would keep the
// accumulators in memory.
template <int NC>
TREEGATE_DETAIL_AVX2_TARGET inline void micro(index_t mr, index_t kc, const float* panel, const float* X, index_t ldx,
                                              float* Y, index_t ldy, panel_prefetch pf = {}) noexcept {
    static_assert(NC >= 1 && NC <= traits::nr, "micro-kernel width");
    const __m256i m0 = tail_mask(mr < 8 ? mr : 8);
    const __m256i m1 = tail_mask(mr > 8 ? mr - 8 : 0);
    // Batch invariance: the accumulators start from Y (columns past NC are never read).
    __m256 a0 = _mm256_maskload_ps(Y, m0), b0 = _mm256_maskload_ps(Y + 8, m1);
    __m256 a1 = _mm256_setzero_ps(), b1 = a1, a2 = a1, b2 = a1, a3 = a1, b3 = a1, a4 = a1, b4 = a1, a5 = a1, b5 = a1;
    if constexpr (NC > 1) a1 = _mm256_maskload_ps(Y + ldy, m0), b1 = _mm256_maskload_ps(Y + ldy + 8, m1);
    if constexpr (NC > 2) a2 = _mm256_maskload_ps(Y + 2 * ldy, m0), b2 = _mm256_maskload_ps(Y + 2 * ldy + 8, m1);
    if constexpr (NC > 3) a3 = _mm256_maskload_ps(Y + 3 * ldy, m0), b3 = _mm256_maskload_ps(Y + 3 * ldy + 8, m1);
    if constexpr (NC > 4) a4 = _mm256_maskload_ps(Y + 4 * ldy, m0), b4 = _mm256_maskload_ps(Y + 4 * ldy + 8, m1);
    if constexpr (NC > 5) a5 = _mm256_maskload_ps(Y + 5 * ldy, m0), b5 = _mm256_maskload_ps(Y + 5 * ldy + 8, m1);
    const float* x0 = X;
    const float* x1 = X + (NC > 1 ? ldx : 0);
    const float* x2 = X + (NC > 2 ? 2 * ldx : 0);
    const float* x3 = X + (NC > 3 ? 3 * ldx : 0);
    const float* x4 = X + (NC > 4 ? 4 * ldx : 0);
    const float* x5 = X + (NC > 5 ? 5 * ldx : 0);
    for (index_t k = 0; k < kc; ++k) {
        if (k < pf.cols) {
            const std::uintptr_t at = pf.address + static_cast<std::uintptr_t>(k) * pf.step;
            prefetch_line_l2(at);
            prefetch_line_l2(at + pf.last_line);
        }
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
    const __m256 top[traits::nr] = {a0, a1, a2, a3, a4, a5};
    const __m256 bottom[traits::nr] = {b0, b1, b2, b3, b4, b5};
    if (mr == traits::mr) {
        for (int j = 0; j < NC; ++j) {
            _mm256_storeu_ps(Y + j * ldy, top[j]);
            _mm256_storeu_ps(Y + j * ldy + 8, bottom[j]);
        }
        return;
    }
    for (int j = 0; j < NC; ++j) {
        _mm256_maskstore_ps(Y + j * ldy, m0, top[j]);
        _mm256_maskstore_ps(Y + j * ldy + 8, m1, bottom[j]);
    }
}

// The driver (micro_tail, gemm_packed, the gemm entry point) is shared by every level.
#define TREEGATE_DETAIL_KERNEL_TARGET TREEGATE_DETAIL_AVX2_TARGET
#include "../generic/gemm.hpp"
#undef TREEGATE_DETAIL_KERNEL_TARGET

}  // namespace treegate::kernels::detail::avx2_kernels

#endif  // TREEGATE_DETAIL_AVX2_KERNELS

#endif
