// treegate/kernels/reference.hpp — the `reference` kernel policy: plain loops, the tests' oracle.
// Every other policy must agree with it; it favours obviousness over speed.
#ifndef TREEGATE_KERNELS_REFERENCE_HPP
#define TREEGATE_KERNELS_REFERENCE_HPP

#include "../bf16.hpp"
#include "../config.hpp"

namespace treegate::kernels {

/// The kernel-policy interface, spelled out once. A policy is a stateless type with these static
/// functions; all matrices are column-major with the given leading dimension, and every kernel
/// accumulates into its output (y += ...), never overwrites it.
///
///   gemm(rows, cols, n, W, ldw, X, ldx, Y, ldy)   Y(rows x n) += W(rows x cols) * X(cols x n)
///   gemv(rows, cols, W, ldw, x, y)                y(rows) += W * x
///   path_sum(rows, cols, blocks, count, x, y)     y += sum_k blocks[k] * x   (each ld = rows)
///   dot(n, a, b) -> Scalar                        sum_i a[i] * b[i]
///   axpy(n, alpha, x, y)                          y += alpha * x
///   dot_many(n, count, a, b, out)                 out[k] = sum_i a[k][i] * b[k][i], k < count
///                                                 (overwrites out; count independent dots of
///                                                 length n, 0 <= count <= 16; SIMD policies
///                                                 interleave them so their latencies overlap)
///   axpy_many(n, count, alpha, x, y)              y[i] += sum_k alpha[k] * x[k][i], k < count
///                                                 (0 <= count <= 64; SIMD policies keep a chunk
///                                                 of y in registers across every k, so y is read
///                                                 and written once)
///
/// Reduced-precision storage: gemm, gemv and path_sum also take `const bf16*` weights with
/// `float` inputs and outputs. The weights are widened to float exactly and every product and
/// sum is done in float, so such a call computes the float kernel on the bf16-rounded weights.
struct reference {
    static constexpr const char* name() noexcept { return "reference"; }

    template <class Scalar>
    static void gemm(index_t rows, index_t cols, index_t n, const Scalar* W, index_t ldw, const Scalar* X, index_t ldx,
                     Scalar* Y, index_t ldy) noexcept {
        for (index_t e = 0; e < n; ++e) gemv(rows, cols, W, ldw, X + e * ldx, Y + e * ldy);
    }

    template <class Scalar>
    static void gemv(index_t rows, index_t cols, const Scalar* W, index_t ldw, const Scalar* x, Scalar* y) noexcept {
        for (index_t r = 0; r < rows; ++r) {
            Scalar s(0);
            for (index_t c = 0; c < cols; ++c) s += W[r + c * ldw] * x[c];
            y[r] += s;
        }
    }

    template <class Scalar>
    static void path_sum(index_t rows, index_t cols, const Scalar* const* blocks, int count, const Scalar* x,
                         Scalar* y) noexcept {
        for (int k = 0; k < count; ++k) gemv(rows, cols, blocks[k], rows, x, y);
    }

    static void gemm(index_t rows, index_t cols, index_t n, const bf16* W, index_t ldw, const float* X, index_t ldx,
                     float* Y, index_t ldy) noexcept {
        for (index_t e = 0; e < n; ++e) gemv(rows, cols, W, ldw, X + e * ldx, Y + e * ldy);
    }

    static void gemv(index_t rows, index_t cols, const bf16* W, index_t ldw, const float* x, float* y) noexcept {
        for (index_t r = 0; r < rows; ++r) {
            float s = 0;
            for (index_t c = 0; c < cols; ++c) s += to_float(W[r + c * ldw]) * x[c];
            y[r] += s;
        }
    }

    static void path_sum(index_t rows, index_t cols, const bf16* const* blocks, int count, const float* x,
                         float* y) noexcept {
        for (int k = 0; k < count; ++k) gemv(rows, cols, blocks[k], rows, x, y);
    }

    template <class Scalar>
    static Scalar dot(index_t n, const Scalar* a, const Scalar* b) noexcept {
        Scalar s(0);
        for (index_t i = 0; i < n; ++i) s += a[i] * b[i];
        return s;
    }

    template <class Scalar>
    static void axpy(index_t n, Scalar alpha, const Scalar* x, Scalar* y) noexcept {
        for (index_t i = 0; i < n; ++i) y[i] += alpha * x[i];
    }

    template <class Scalar>
    static void dot_many(index_t n, int count, const Scalar* const* a, const Scalar* const* b, Scalar* out) noexcept {
        for (int k = 0; k < count; ++k) out[k] = dot(n, a[k], b[k]);
    }

    template <class Scalar>
    static void axpy_many(index_t n, int count, const Scalar* alpha, const Scalar* const* x, Scalar* y) noexcept {
        for (index_t i = 0; i < n; ++i) {
            Scalar s(0);
            for (int k = 0; k < count; ++k) s += alpha[k] * x[k][i];
            y[i] += s;
        }
    }
};

}  // namespace treegate::kernels

#endif
