// treegate/train/ff_unit_backward.hpp — the backward of one tree_feedforward unit for one group of
// examples (train/), shared by tree_feedforward's backward and its sharded form's (mpi/).
#ifndef TREEGATE_TRAIN_FF_UNIT_BACKWARD_HPP
#define TREEGATE_TRAIN_FF_UNIT_BACKWARD_HPP

#include "../activation.hpp"
#include "../config.hpp"
#include "../exec/ff_units.hpp"
#include "../routing.hpp"
#include "../schedule.hpp"

#include <Eigen/Core>

#include <cmath>

namespace treegate::train {

/// d act(v) / dv at the pre-activation v. ReLU takes 0 at v = 0 (as PyTorch does) and NaN at
/// v = NaN, so a NaN forward value cannot turn into a finite (zero) gradient; the smooth
/// activations give NaN there by themselves, identity's derivative stays 1.
template <class Scalar>
inline Scalar activation_derivative(activation a, Scalar v) noexcept {
    using std::erf;
    using std::exp;
    using std::tanh;
    switch (a) {
        case activation::identity: return Scalar(1);
        case activation::relu: return v > Scalar(0) ? Scalar(1) : v <= Scalar(0) ? Scalar(0) : v;
        case activation::gelu: {
            // Phi(v) + v phi(v)
            const Scalar cdf = Scalar(0.5) * (Scalar(1) + erf(v * Scalar(0.70710678118654752440)));
            const Scalar pdf = Scalar(0.39894228040143267794) * exp(Scalar(-0.5) * v * v);  // 1/sqrt(2 pi)
            return cdf + v * pdf;
        }
        case activation::gelu_tanh: {
            const Scalar c = Scalar(0.79788456080286535588);  // sqrt(2 / pi)
            const Scalar k = Scalar(0.044715);
            const Scalar t = tanh(c * (v + k * v * v * v));
            return Scalar(0.5) * (Scalar(1) + t) + Scalar(0.5) * v * (Scalar(1) - t * t) * c * (Scalar(1) + Scalar(3) * k * v * v);
        }
        case activation::tanh: {
            const Scalar t = tanh(v);
            return Scalar(1) - t * t;
        }
    }
    return Scalar(1);
}

namespace detail {

/// Where one unit's gradients accumulate (the layouts of exec::ff_unit's blocks): U `width x
/// in`, a `width`, V `out x width`, the leaf bias `out` (null when the unit has none).
template <class Scalar>
struct ff_unit_grad {
    Scalar* U = nullptr;
    Scalar* a = nullptr;
    Scalar* V = nullptr;
    Scalar* b = nullptr;
};

/// Scratch of one group, column-major with the group's m columns: x and dx `in x m`, dy `out x
/// m`, pre, h and dpre `width x m`. Callers own it, so each keeps its own workspace type.
template <class Scalar>
struct ff_unit_scratch {
    Scalar* x = nullptr;
    Scalar* dy = nullptr;
    Scalar* pre = nullptr;
    Scalar* h = nullptr;
    Scalar* dpre = nullptr;
    Scalar* dx = nullptr;
};

/// Backward through unit u for the examples at positions [r.begin, r.end) of `order`. The
/// pre-activations are recomputed with the forward's policy calls (exec::ff_unit_group), so
/// the route bits written to `bits` are the forward's. dX (when given) gets U^T dpre added per
/// example. One step for both layers, so the sharded training takes the single-process bits.
template <class Policy, class Scalar, class XRef, class DYRef, class DXRef>
void ff_unit_backward(const exec::ff_unit<Scalar>& u, const ff_unit_grad<Scalar>& g, group_range r,
                      const index_t* order, unsigned char* bits, const XRef& X, const DYRef& dY, DXRef* dX,
                      const ff_unit_scratch<Scalar>& s) {
    using mmap = Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>>;
    using cmap = Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>>;
    using vmap = Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, 1>>;
    using cvec = Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>>;
    const index_t m = r.size();
    mmap xs(s.x, u.in, m), dys(s.dy, u.out, m), pre(s.pre, u.width, m), h(s.h, u.width, m), dp(s.dpre, u.width, m);
    for (index_t j = 0; j < m; ++j) {
        xs.col(j) = X.col(order[r.begin + j]);
        dys.col(j) = dY.col(order[r.begin + j]);
    }
    if (u.width == 1) {
        for (index_t j = 0; j < m; ++j)
            pre(0, j) = Policy::dot(u.in, u.U, X.data() + order[r.begin + j] * X.outerStride()) + u.a[0];
    } else {
        for (index_t j = 0; j < m; ++j) pre.col(j) = cvec(u.a, u.width);
        Policy::gemm(u.width, u.in, m, u.U, u.width, xs.data(), u.in, pre.data(), u.width);
    }
    for (index_t j = 0; j < m; ++j) {
        bits[r.begin + j] = static_cast<unsigned char>(unit_bit(&pre(0, j), u.tie));
        for (index_t i = 0; i < u.width; ++i) h(i, j) = apply(u.act, pre(i, j));
    }
    dp.noalias() = cmap(u.V, u.out, u.width).transpose() * dys;
    for (index_t j = 0; j < m; ++j)
        for (index_t i = 0; i < u.width; ++i) dp(i, j) *= activation_derivative(u.act, pre(i, j));
    mmap(g.V, u.out, u.width).noalias() += dys * h.transpose();
    mmap(g.U, u.width, u.in).noalias() += dp * xs.transpose();
    vmap(g.a, u.width) += dp.rowwise().sum();
    if (g.b != nullptr) vmap(g.b, u.out) += dys.rowwise().sum();  // the leaf bias is added to y as it is
    if (dX != nullptr) {
        mmap dxs(s.dx, u.in, m);
        dxs.noalias() = cmap(u.U, u.width, u.in).transpose() * dp;
        for (index_t j = 0; j < m; ++j) dX->col(order[r.begin + j]) += dxs.col(j);
    }
}

}  // namespace detail
}  // namespace treegate::train

#endif
