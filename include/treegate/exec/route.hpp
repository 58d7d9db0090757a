// treegate/exec/route.hpp — batch routing by gating units: leaf codes for a whole batch, after
// the one gating-kind check. Part of the execution engine below layers/ (exec/).
#ifndef TREEGATE_EXEC_ROUTE_HPP
#define TREEGATE_EXEC_ROUTE_HPP

#include "../config.hpp"
#include "../error.hpp"
#include "../routing.hpp"

#include <cstddef>
#include <vector>

namespace treegate::exec {

/// Leaf codes of a layer gated by its input (or of depth 0), one per column of X (any
/// column-major Eigen view), for the entry point `call`. The caller has checked X's shape.
template <class XRef>
void route_batch(const char* layer, const char* call, const gating& gates, int depth, const XRef& X,
                 std::vector<leaf_t>& codes) {
    detail::check_gating_kind(layer, call, gates, depth, false);
    codes.resize(static_cast<std::size_t>(X.cols()));
    for (index_t e = 0; e < X.cols(); ++e)
        codes.data()[e] = route_by_indices(X.data() + e * X.outerStride(), gates.indices().data(), depth);
}

/// The same for an externally gated layer: column e of G holds example e's D gate values.
template <class XRef, class GRef>
void route_batch(const char* layer, const char* call, const gating& gates, int depth, const XRef& X, const GRef& G,
                 std::vector<leaf_t>& codes) {
    detail::check_gating_kind(layer, call, gates, depth, true);
    detail::check_shape(G.rows() == depth && G.cols() == X.cols(), layer, " ", call, ": gate matrix is ", G.rows(), " x ",
                        G.cols(), ", expected ", depth, " x ", X.cols());
    codes.resize(static_cast<std::size_t>(X.cols()));
    for (index_t e = 0; e < X.cols(); ++e) codes.data()[e] = route_by_gates(G.data() + e * G.outerStride(), 1, depth);
}

}  // namespace treegate::exec

#endif
