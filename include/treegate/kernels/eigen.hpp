// treegate/kernels/eigen.hpp — the `eigen` kernel policy: Eigen's GEMM and GEMV on mapped blocks.
// The portable fast policy and the default; needs no -march flag to be correct.
#ifndef TREEGATE_KERNELS_EIGEN_HPP
#define TREEGATE_KERNELS_EIGEN_HPP

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

    template <class Scalar>
    static void path_sum(index_t rows, index_t cols, const Scalar* const* blocks, int count, const Scalar* x,
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
};

}  // namespace treegate::kernels

#endif
