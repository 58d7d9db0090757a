// treegate/kernels/simd_policy.hpp — the policy interface of the float SIMD policies (avx2, avx512).
// Forwards float (and bf16-weight) calls to an ISA's kernels and every other scalar to `eigen`.
#ifndef TREEGATE_KERNELS_SIMD_POLICY_HPP
#define TREEGATE_KERNELS_SIMD_POLICY_HPP

#include "../bf16.hpp"
#include "../config.hpp"
#include "eigen.hpp"
#include "paths.hpp"

#include <type_traits>

namespace treegate::kernels::detail {

/// The whole policy interface (kernels/reference.hpp) on top of `Kernels`, which provides the
/// float kernels: gemm, gemv and path_sum templated on the weight type (float or bf16), and
/// dot, axpy, dot_many, axpy_many on float. `Kernels::available` is false in builds without
/// the kernels (not x86-64, not GCC/Clang); then every call, float included, goes to `eigen`,
/// and `Kernels` need declare nothing else.
template <class Kernels>
struct float_simd_policy {
    template <class Scalar>
    static constexpr bool simd = Kernels::available && std::is_same_v<Scalar, float>;

    template <class Scalar>
    static void gemm(index_t rows, index_t cols, index_t n, const Scalar* W, index_t ldw, const Scalar* X, index_t ldx,
                     Scalar* Y, index_t ldy) noexcept {
        if constexpr (simd<Scalar>)
            Kernels::gemm(rows, cols, n, W, ldw, X, ldx, Y, ldy);
        else
            eigen::gemm(rows, cols, n, W, ldw, X, ldx, Y, ldy);
    }

    template <class Scalar>
    static void gemv(index_t rows, index_t cols, const Scalar* W, index_t ldw, const Scalar* x, Scalar* y) noexcept {
        if constexpr (simd<Scalar>)
            Kernels::gemv(rows, cols, W, ldw, x, y);
        else
            eigen::gemv(rows, cols, W, ldw, x, y);
    }

    template <class Scalar>
    static void path_sum(index_t rows, index_t cols, const Scalar* const* blocks, int count, const Scalar* x,
                         Scalar* y) noexcept {
        if constexpr (simd<Scalar>)
            Kernels::path_sum(rows, cols, blocks, count, x, y);
        else
            eigen::path_sum(rows, cols, blocks, count, x, y);
    }

    // bf16 weights, float inputs and outputs (see kernels/reference.hpp): widened in registers,
    // products and sums in float.
    static void gemm(index_t rows, index_t cols, index_t n, const bf16* W, index_t ldw, const float* X, index_t ldx,
                     float* Y, index_t ldy) noexcept {
        if constexpr (simd<float>)
            Kernels::gemm(rows, cols, n, W, ldw, X, ldx, Y, ldy);
        else
            eigen::gemm(rows, cols, n, W, ldw, X, ldx, Y, ldy);
    }

    static void gemv(index_t rows, index_t cols, const bf16* W, index_t ldw, const float* x, float* y) noexcept {
        if constexpr (simd<float>)
            Kernels::gemv(rows, cols, W, ldw, x, y);
        else
            eigen::gemv(rows, cols, W, ldw, x, y);
    }

    static void path_sum(index_t rows, index_t cols, const bf16* const* blocks, int count, const float* x,
                         float* y) noexcept {
        if constexpr (simd<float>)
            Kernels::path_sum(rows, cols, blocks, count, x, y);
        else
            eigen::path_sum(rows, cols, blocks, count, x, y);
    }

    template <class Scalar>
    static Scalar dot(index_t n, const Scalar* a, const Scalar* b) noexcept {
        if constexpr (simd<Scalar>)
            return Kernels::dot(n, a, b);
        else
            return eigen::dot(n, a, b);
    }

    template <class Scalar>
    static void axpy(index_t n, Scalar alpha, const Scalar* x, Scalar* y) noexcept {
        if constexpr (simd<Scalar>)
            Kernels::axpy(n, alpha, x, y);
        else
            eigen::axpy(n, alpha, x, y);
    }

    template <class Scalar>
    static void dot_many(index_t n, int count, const Scalar* const* a, const Scalar* const* b, Scalar* out) noexcept {
        if constexpr (simd<Scalar>)
            Kernels::dot_many(n, count, a, b, out);
        else
            eigen::dot_many(n, count, a, b, out);
    }

    template <class Scalar>
    static void axpy_many(index_t n, int count, const Scalar* alpha, const Scalar* const* x, Scalar* y) noexcept {
        if constexpr (simd<Scalar>)
            Kernels::axpy_many(n, count, alpha, x, y);
        else
            eigen::axpy_many(n, count, alpha, x, y);
    }

    template <class Scalar>
    static void axpy_paths(index_t n, int m, int count, int shared, const Scalar* alpha, const Scalar* const* x,
                           index_t ld, Scalar* const* ys) noexcept {
        if constexpr (simd<Scalar>)
            Kernels::axpy_paths(n, m, count, shared, alpha, x, ld, ys);
        else
            kernels::axpy_paths<eigen>(n, m, count, shared, alpha, x, ld, ys);
    }
};

}  // namespace treegate::kernels::detail

#endif
