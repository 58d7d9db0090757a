// treegate/kernels/avx512.hpp — the `avx512` kernel policy: AVX-512 (F, BW, VL, DQ) kernels for `float` and bf16 weights.
// Same interface as `reference`; other scalars, and non-x86-64 or non-GCC/Clang builds, use `eigen`.
//
// The structure of the avx2 kernels (kernels/avx2.hpp) at twice the width, compiled the same
// way: intrinsics inside `__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))`
// functions, so a portable build (no -m flag) holds them next to the avx2 and eigen policies and
// the choice is made at run time (kernels/dispatch.hpp, or cpu_supports_avx512() below).
// Calling this policy on a CPU without those extensions is undefined.
//
// Differences from avx2 that the wider ISA allows:
// - Tails: every row tail is a masked load or store (`__mmask16`), for bf16 weights too
//   (VMOVDQU16 with a mask, AVX-512 BW + VL), so no copy into a zeroed buffer; masked-out lanes
//   are never accessed and never fault, so no kernel reads or writes past the given sizes.
// - GEMM: a 32 x 12 register block (24 accumulators of the 32 registers) on a packed 32-row
//   panel; groups of 2..16 examples (2..10 with bf16 weights) take the small-group kernel,
//   which sweeps each strip of four weight columns over four group columns at a time.
// - bf16 widening: VPMOVZXWD + VPSLLD on 16 values at a time, in registers in every kernel
//   (the small-group kernel too, unlike avx2: see x86/avx512_gemv.hpp).
// Like avx2, the bf16 kernels compute in float on exactly widened weights; they do not use
// AVX512_BF16's VDPBF16PS, which would also round the activations to bf16.
//
// Layout: x86/avx512_vector.hpp (masks, loads, dot, axpy and their _many forms),
// x86/avx512_gemv.hpp (gemv, path_sum, small-group gemm), x86/avx512_gemm.hpp (packed GEMM).
#ifndef TREEGATE_KERNELS_AVX512_HPP
#define TREEGATE_KERNELS_AVX512_HPP

#include "../bf16.hpp"
#include "../config.hpp"
#include "cpu_features.hpp"
#include "simd_policy.hpp"
#include "x86/avx512_gemm.hpp"
#include "x86/avx512_gemv.hpp"
#include "x86/avx512_vector.hpp"

namespace treegate::kernels {

/// True when this build has the AVX-512 kernels and the CPU and OS support AVX-512 F, BW, VL
/// and DQ (and AVX2 + FMA). The `avx512` policy itself never checks.
inline bool cpu_supports_avx512() noexcept {
#if TREEGATE_DETAIL_AVX512_KERNELS
    return cpu_features().avx512();
#else
    return false;
#endif
}

namespace detail {

/// The avx512 kernels as float_simd_policy wants them (kernels/simd_policy.hpp).
struct avx512_float_kernels {
    static constexpr bool available = TREEGATE_DETAIL_AVX512_KERNELS != 0;
#if TREEGATE_DETAIL_AVX512_KERNELS
    template <class T>
    static void gemm(index_t rows, index_t cols, index_t n, const T* W, index_t ldw, const float* X, index_t ldx,
                     float* Y, index_t ldy) noexcept {
        avx512_kernels::gemm(rows, cols, n, W, ldw, X, ldx, Y, ldy);
    }
    template <class T>
    static void gemv(index_t rows, index_t cols, const T* W, index_t ldw, const float* x, float* y) noexcept {
        avx512_kernels::gemv(rows, cols, W, ldw, x, y);
    }
    template <class T>
    static void path_sum(index_t rows, index_t cols, const T* const* blocks, int count, const float* x,
                         float* y) noexcept {
        avx512_kernels::path_sum(rows, cols, blocks, count, x, y);
    }
    static float dot(index_t n, const float* a, const float* b) noexcept { return avx512_kernels::dot(n, a, b); }
    static void axpy(index_t n, float alpha, const float* x, float* y) noexcept { avx512_kernels::axpy(n, alpha, x, y); }
    static void dot_many(index_t n, int count, const float* const* a, const float* const* b, float* out) noexcept {
        avx512_kernels::dot_many(n, count, a, b, out);
    }
    static void axpy_many(index_t n, int count, const float* alpha, const float* const* x, float* y) noexcept {
        avx512_kernels::axpy_many(n, count, alpha, x, y);
    }
    static void axpy_paths(index_t n, int m, int count, int shared, const float* alpha, const float* const* x, index_t ld,
                           float* const* ys) noexcept {
        avx512_kernels::axpy_paths(n, m, count, shared, alpha, x, ld, ys);
    }
#endif
};

}  // namespace detail

/// AVX-512 kernels for `float` and bf16 weights (same interface as `reference`, see
/// kernels/reference.hpp); other scalars, and builds without the kernels, use `eigen`.
/// Only call it where cpu_supports_avx512() is true.
struct avx512 : detail::float_simd_policy<detail::avx512_float_kernels> {
    static constexpr const char* name() noexcept { return "avx512"; }
};

}  // namespace treegate::kernels

#endif
