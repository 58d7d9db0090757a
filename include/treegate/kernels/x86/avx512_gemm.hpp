// treegate/kernels/x86/avx512_gemm.hpp — AVX-512 GEMM traits, panel packing and the 32 x 12 micro-kernel; the driver is kernels/generic/gemm.hpp.
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
// The level's GEMM traits, read by the shared driver (kernels/generic/gemm.hpp).
struct traits {
    static constexpr int lanes = 16;
    static constexpr index_t mr = 32;  // rows of the packed panel (two registers)
    static constexpr index_t nr = 12;  // columns of the micro-kernel's register block
    static constexpr index_t kc = 256;  // k-block
    // Groups up to this many examples take gemm_small (memory-bound), larger ones the packed GEMM.
    static constexpr index_t small_max = 16;
    static constexpr index_t small_max_bf16 = 10;
};

// Copies W(r0 : r0 + mr, k0 : k0 + kc) into a 32-row panel (kc columns of 32 contiguous floats,
// bf16 widened), zero-padding rows mr..31, so the micro-kernel reads one contiguous stream
// whatever ldw is. The next panel's lines are requested by the micro-kernels (panel_prefetch).
template <class T>
TREEGATE_DETAIL_AVX512_TARGET inline void pack_panel(index_t mr, index_t kc, const T* W, index_t ldw, float* panel) noexcept {
    if (mr == traits::mr) {
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
    static_assert(NC >= 1 && NC <= traits::nr, "micro-kernel width");
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

// The driver (micro_tail, gemm_packed, the gemm entry point) is shared by every level.
#define TREEGATE_DETAIL_KERNEL_TARGET TREEGATE_DETAIL_AVX512_TARGET
#include "../generic/gemm.hpp"
#undef TREEGATE_DETAIL_KERNEL_TARGET

}  // namespace treegate::kernels::detail::avx512_kernels

#endif  // TREEGATE_DETAIL_AVX512_KERNELS

#endif
