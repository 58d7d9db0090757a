// treegate/exec/ff_units.hpp — the grouped unit step of the execution engine (exec/, below layers/
// and mpi/): one group of examples through one tree_feedforward MLP unit, y += V act(U x + a).
#ifndef TREEGATE_EXEC_FF_UNITS_HPP
#define TREEGATE_EXEC_FF_UNITS_HPP

#include "../activation.hpp"
#include "../config.hpp"
#include "../routing.hpp"
#include "../schedule.hpp"
#include "../workspace.hpp"

#include <Eigen/Core>

namespace treegate::exec {

/// One MLP unit's blocks as tree_feedforward stores them (column-major): U `width x in`,
/// a `width`, V `out x width`, and the leaf's output bias b `out` (null when it has none).
template <class Scalar>
struct ff_unit {
    const Scalar* U = nullptr;
    const Scalar* a = nullptr;
    const Scalar* V = nullptr;
    const Scalar* b = nullptr;
    index_t in = 0, out = 0, width = 0;
    activation act = activation::gelu;
    tie_rule tie = tie_rule::greater;
};

/// The examples at positions [r.begin, r.end) of `order` all use unit u: Y.col(e) += V act(U
/// x_e + a) (+ b), its blocks multiplied once for the whole group, and each example's route
/// bit (the sign of its first pre-activation under u.tie) written at its position in `bits`.
/// Both tree_feedforward and its sharded form (mpi/) run their units through this one step,
/// so a path gives the same bits in both wherever a kernel's column does not depend on the
/// others. Width 1 keeps dot, activation and axpy per example: the unit's two vectors stay in
/// cache for the whole group, and a GEMM would not pay for itself.
template <class Policy, class Scalar, class XRef, class YRef>
void ff_unit_group(const ff_unit<Scalar>& u, group_range r, const index_t* order, unsigned char* bits, const XRef& X,
                   YRef& Y, workspace<Scalar>& ws) {
    using cvec = Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>>;
    if (u.width == 1) {
        for (index_t p = r.begin; p < r.end; ++p) {
            const index_t e = order[p];
            const Scalar pre = Policy::dot(u.in, u.U, X.data() + e * X.outerStride()) + u.a[0];
            bits[p] = static_cast<unsigned char>(unit_bit(&pre, u.tie));
            Policy::axpy(u.out, apply(u.act, pre), u.V, Y.data() + e * Y.outerStride());
            if (u.b != nullptr) Y.col(e) += cvec(u.b, u.out);
        }
        return;
    }
    const index_t m = r.size();
    auto Xg = ws.gathered_input.view(u.in, m);
    auto H = ws.hidden.view(u.width, m);
    auto Yg = ws.permuted_output.view(u.out, m);
    for (index_t j = 0; j < m; ++j) {
        Xg.col(j) = X.col(order[r.begin + j]);
        H.col(j) = cvec(u.a, u.width);
    }
    Policy::gemm(u.width, u.in, m, u.U, u.width, Xg.data(), u.in, H.data(), u.width);
    for (index_t j = 0; j < m; ++j) {
        bits[r.begin + j] = static_cast<unsigned char>(unit_bit(H.col(j).data(), u.tie));
        apply_inplace(u.act, H.col(j).data(), u.width);
    }
    Yg.setZero();
    Policy::gemm(u.out, u.width, m, u.V, u.out, H.data(), u.width, Yg.data(), u.out);
    for (index_t j = 0; j < m; ++j) Y.col(order[r.begin + j]) += Yg.col(j);
    if (u.b != nullptr)
        for (index_t j = 0; j < m; ++j) Y.col(order[r.begin + j]) += cvec(u.b, u.out);
}

}  // namespace treegate::exec

#endif
