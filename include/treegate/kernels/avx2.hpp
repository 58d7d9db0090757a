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
//
// Layout: x86/avx2_vector.hpp (masks, loads, dot, axpy and their _many forms), x86/avx2_gemv.hpp
// (gemv, path_sum, small-group gemm), x86/avx2_gemm.hpp (packed GEMM, the gemm entry point).
#ifndef TREEGATE_KERNELS_AVX2_HPP
#define TREEGATE_KERNELS_AVX2_HPP

#include "../bf16.hpp"
#include "../config.hpp"
#include "cpu_features.hpp"
#include "eigen.hpp"
#include "paths.hpp"
#include "simd_policy.hpp"
#include "x86/avx2_gemm.hpp"
#include "x86/avx2_gemv.hpp"
#include "x86/avx2_vector.hpp"

#include <type_traits>

namespace treegate::kernels {

/// True when this build has the AVX2 kernels and the CPU it runs on can execute them
/// (AVX2 and FMA, with the OS saving the YMM state). Call it once and dispatch (kernels/dispatch.hpp
/// does); the `avx2` policy itself never checks.
inline bool cpu_supports_avx2() noexcept {
#if TREEGATE_DETAIL_AVX2_KERNELS
    return cpu_features().avx2_fma;
#else
    return false;
#endif
}

namespace detail {

/// The avx2 kernels as float_simd_policy wants them (kernels/simd_policy.hpp).
struct avx2_float_kernels {
    static constexpr bool available = TREEGATE_DETAIL_AVX2_KERNELS != 0;
#if TREEGATE_DETAIL_AVX2_KERNELS
    template <class T>
    static void gemm(index_t rows, index_t cols, index_t n, const T* W, index_t ldw, const float* X, index_t ldx,
                     float* Y, index_t ldy) noexcept {
        avx2_kernels::gemm(rows, cols, n, W, ldw, X, ldx, Y, ldy);
    }
    template <class T>
    static void gemv(index_t rows, index_t cols, const T* W, index_t ldw, const float* x, float* y) noexcept {
        avx2_kernels::gemv(rows, cols, W, ldw, x, y);
    }
    template <class T>
    static void path_sum(index_t rows, index_t cols, const T* const* blocks, int count, const float* x,
                         float* y) noexcept {
        avx2_kernels::path_sum(rows, cols, blocks, count, x, y);
    }
    static float dot(index_t n, const float* a, const float* b) noexcept { return avx2_kernels::dot(n, a, b); }
    static void axpy(index_t n, float alpha, const float* x, float* y) noexcept { avx2_kernels::axpy(n, alpha, x, y); }
    static void dot_many(index_t n, int count, const float* const* a, const float* const* b, float* out) noexcept {
        avx2_kernels::dot_many(n, count, a, b, out);
    }
    static void axpy_many(index_t n, int count, const float* alpha, const float* const* x, float* y) noexcept {
        avx2_kernels::axpy_many(n, count, alpha, x, y);
    }
    static void axpy_paths(index_t n, int m, int count, int shared, const float* alpha, const float* const* x, index_t ld,
                           float* const* ys) noexcept {
        // Holding several examples' y chunks leaves avx2's 16 registers too few: one example
        // at a time measured faster on UF-fff (README, "Benchmarks").
        (void)shared;
        axpy_paths_by_example<avx2_float_kernels>(n, m, count, alpha, x, ld, ys);
    }
#endif
};

}  // namespace detail

/// AVX2 + FMA kernels for `float` and bf16 weights (same interface as `reference`, see
/// kernels/reference.hpp); other scalars, and builds without the kernels (not x86-64, not
/// GCC/Clang), use `eigen`. Only call it where cpu_supports_avx2() is true.
struct avx2 : detail::float_simd_policy<detail::avx2_float_kernels> {
    static constexpr const char* name() noexcept { return "avx2"; }
};

}  // namespace treegate::kernels

#endif
