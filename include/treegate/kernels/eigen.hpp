// treegate/kernels/eigen.hpp — the `eigen` kernel policy: Eigen's GEMM and GEMV on mapped blocks.
// The portable fast policy and the default; needs no -march flag to be correct.
#ifndef TREEGATE_KERNELS_EIGEN_HPP
#define TREEGATE_KERNELS_EIGEN_HPP

#include "../bf16.hpp"
#include "../config.hpp"

namespace treegate::kernels {

/// Same interface as `reference` (see kernels/reference.hpp), computed by Eigen.
struct eigen {
    static constexpr const char* name() noexcept { return "eigen"; }

    template <class Scalar>
    using cmat = Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>, 0, Eigen::OuterStride<>>;
    template <class Scalar>
    using mmat = Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>, 0, Eigen::OuterStride<>>;
    template <class Scalar>
    using cvec = Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>>;
    template <class Scalar>
    using mvec = Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, 1>>;

    template <class Scalar>
    static void gemm(index_t rows, index_t cols, index_t n, const Scalar* W, index_t ldw, const Scalar* X, index_t ldx,
                     Scalar* Y, index_t ldy) noexcept {
        if (n == 1) return gemv(rows, cols, W, ldw, X, Y);
        mmat<Scalar>(Y, rows, n, Eigen::OuterStride<>(ldy)).noalias() +=
            cmat<Scalar>(W, rows, cols, Eigen::OuterStride<>(ldw)) * cmat<Scalar>(X, cols, n, Eigen::OuterStride<>(ldx));
    }

    template <class Scalar>
    static void gemv(index_t rows, index_t cols, const Scalar* W, index_t ldw, const Scalar* x, Scalar* y) noexcept {
        mvec<Scalar>(y, rows).noalias() += cmat<Scalar>(W, rows, cols, Eigen::OuterStride<>(ldw)) * cvec<Scalar>(x, cols);
    }

    // bf16 weights (see kernels/reference.hpp): widened tile by tile into a 16 KiB stack buffer
    // (at most 256 rows, as many columns as fit), each tile multiplied by Eigen in float. The
    // tile stays in L1/L2 for the product, so the weights cross the memory bus once, as bf16.
    static void gemm(index_t rows, index_t cols, index_t n, const bf16* W, index_t ldw, const float* X, index_t ldx,
                     float* Y, index_t ldy) noexcept {
        constexpr index_t tile = 4096;
        alignas(64) float buf[tile];
        for (index_t r0 = 0; r0 < rows; r0 += 256) {
            const index_t mr = rows - r0 < 256 ? rows - r0 : 256;
            const index_t kc_max = tile / mr;
            for (index_t c0 = 0; c0 < cols; c0 += kc_max) {
                const index_t kc = cols - c0 < kc_max ? cols - c0 : kc_max;
                for (index_t c = 0; c < kc; ++c)
                    for (index_t r = 0; r < mr; ++r) buf[r + c * mr] = to_float(W[r0 + r + (c0 + c) * ldw]);
                const Eigen::Map<const Eigen::MatrixXf> T(buf, mr, kc);
                if (n == 1)
                    mvec<float>(Y + r0, mr).noalias() += T * cvec<float>(X + c0, kc);
                else
                    mmat<float>(Y + r0, mr, n, Eigen::OuterStride<>(ldy)).noalias() +=
                        T * cmat<float>(X + c0, kc, n, Eigen::OuterStride<>(ldx));
            }
        }
    }

    static void gemv(index_t rows, index_t cols, const bf16* W, index_t ldw, const float* x, float* y) noexcept {
        gemm(rows, cols, 1, W, ldw, x, cols, y, rows);
    }

    // One block after another through gemv, for both weight types (Scalar, or bf16 with float
    // activations): Eigen has no multi-block product, and a gemv reads each block once.
    template <class W, class Scalar>
    static void path_sum(index_t rows, index_t cols, const W* const* blocks, int count, const Scalar* x,
                         Scalar* y) noexcept {
        for (int k = 0; k < count; ++k) gemv(rows, cols, blocks[k], rows, x, y);
    }

    template <class Scalar>
    static Scalar dot(index_t n, const Scalar* a, const Scalar* b) noexcept {
        return cvec<Scalar>(a, n).dot(cvec<Scalar>(b, n));
    }

    template <class Scalar>
    static void axpy(index_t n, Scalar alpha, const Scalar* x, Scalar* y) noexcept {
        mvec<Scalar>(y, n) += alpha * cvec<Scalar>(x, n);
    }

    template <class Scalar>
    static void dot_many(index_t n, int count, const Scalar* const* a, const Scalar* const* b, Scalar* out) noexcept {
        for (int k = 0; k < count; ++k) out[k] = dot(n, a[k], b[k]);
    }

    // Blocks of y small enough to stay in L1 while every x[k] is added to them, so y crosses
    // the memory bus once however large count is.
    template <class Scalar>
    static void axpy_many(index_t n, int count, const Scalar* alpha, const Scalar* const* x, Scalar* y) noexcept {
        constexpr index_t chunk = 1024;
        for (index_t i0 = 0; i0 < n; i0 += chunk) {
            const index_t m = n - i0 < chunk ? n - i0 : chunk;
            for (int k = 0; k < count; ++k) mvec<Scalar>(y + i0, m) += alpha[k] * cvec<Scalar>(x[k] + i0, m);
        }
    }
};

}  // namespace treegate::kernels

#endif
