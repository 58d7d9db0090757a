// treegate/layers/layer_common.hpp — size checks and type aliases shared by every layer.
// Only layers include it; it holds no math.
#ifndef TREEGATE_LAYERS_LAYER_COMMON_HPP
#define TREEGATE_LAYERS_LAYER_COMMON_HPP

#include "../config.hpp"
#include "../error.hpp"
#include "../workspace.hpp"

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

namespace treegate {

/// A batch: features x examples, column-major, one example per column.
template <class Scalar>
using matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

/// Which nodes on an input's root-to-leaf path contribute, one vocabulary for every tree layer.
/// path_sum: every node on the path adds its term (tree_linear: y = sum over the path of
/// (W x + c); tree_feedforward: every node's MLP). leaf_only: only the reached leaf does
/// (tree_linear: y = W_leaf x + c_leaf, a flat table indexed by the bit pattern;
/// tree_feedforward: routers pick the leaf whose MLP alone answers).
enum class tree_mode { path_sum, leaf_only };

inline const char* to_string(tree_mode m) noexcept { return m == tree_mode::path_sum ? "path_sum" : "leaf_only"; }

namespace detail {

/// Resolves a size given at run time against a compile-time one (dynamic accepts anything > 0).
inline index_t resolve_size(const char* layer, const char* what, int fixed, index_t given) {
    check_config(given > 0, layer, ": ", what, " must be positive, got ", given);
    check_config(fixed == dynamic || given == fixed, layer, ": ", what, " is fixed at ", fixed, " but ", given,
                 " was given");
    return given;
}

inline int resolve_depth(const char* layer, int fixed, int given) {
    check_config(given >= 0 && given <= max_depth, layer, ": depth ", given, " is outside [0, ", max_depth,
                 "] (the tree would have 2^(depth+1)-1 nodes)");
    check_config(fixed == dynamic || given == fixed, layer, ": depth is fixed at ", fixed, " but ", given,
                 " was given");
    return given;
}

/// Moving a layer leaves the source empty (sizes zero); every call on it then raises this.
inline void check_live(const char* layer, bool live) {
    if (!live) raise<usage_error>(layer, ": the layer is empty (moved from); assign a layer to it before use");
}

/// An accessor's index, checked in every build (accessors are not hot paths).
inline void check_index(const char* layer, const char* what, index_t i, index_t count) {
    if (i < 0 || i >= count) raise<usage_error>(layer, ": ", what, " ", i, " is outside [0, ", count, ")");
}

/// A (code, level) pair of a tree layer's block_on_path: levels [first, depth], a depth-bit code.
inline void check_path(const char* layer, leaf_t code, int level, int depth, int first, const char* mode) {
    if (level < first || level > depth)
        raise<usage_error>(layer, ": level ", level, " is outside [", first, ", ", depth, "] (", mode, ")");
    if (depth < 32 && (code >> depth) != 0) raise<usage_error>(layer, ": code ", code, " has more than ", depth, " bits");
}

/// The checks every batched forward makes before touching data.
inline void check_batch(const char* layer, index_t in, index_t x_rows, index_t x_cols, index_t out, index_t y_rows,
                        index_t y_cols) {
    check_shape(x_rows == in, layer, ": input batch has ", x_rows, " rows, expected ", in);
    check_shape(y_rows == out && y_cols == x_cols, layer, ": output batch is ", y_rows, " x ", y_cols, ", expected ", out,
                " x ", x_cols);
}

/// Whether two column-major views (inner stride 1) may share scalars: their address ranges, from
/// the first scalar to one past the last, intersect. Exact for vectors; for strided matrices
/// whose columns interleave it may say yes without a shared scalar (the callers then only
/// copy, or refuse a single-example call, which is contiguous).
template <class A, class B>
bool overlaps(const A& a, const B& b) noexcept {
    if (a.size() == 0 || b.size() == 0) return false;
    const auto range = [](const auto& v) {
        const auto lo = reinterpret_cast<std::uintptr_t>(v.data());
        const auto count = static_cast<std::size_t>((v.cols() - 1) * v.outerStride() + v.rows());
        return std::pair<std::uintptr_t, std::uintptr_t>(lo, lo + count * sizeof(*v.data()));
    };
    const auto ra = range(a), rb = range(b);
    return ra.first < rb.second && rb.first < ra.second;
}

/// Single-example calls write y while they still read x and never allocate, so they refuse an
/// output that overlaps the input (the batched calls accept it, see the README's "Errors").
template <class X, class Y>
void check_no_overlap(const char* layer, const X& x, const Y& y) {
    if (overlaps(x, y))
        raise<usage_error>(layer, ": the output overlaps the input (", x.size(), " and ", y.size(),
                           " entries); forward(x, y) needs separate storage, forward_batch accepts it");
}

/// Batched calls accept an output that overlaps the input: when it does, X is copied to the
/// workspace and `again(copy)` runs the call on the copy (which no longer overlaps). Returns
/// whether it did; call it after the shape checks and before anything writes Y.
template <class Scalar, class F>
bool rerun_on_copy(const Eigen::Ref<const matrix<Scalar>>& X, const Eigen::Ref<matrix<Scalar>>& Y, workspace<Scalar>& ws,
                   F&& again) {
    if (!overlaps(X, Y)) return false;
    auto copy = ws.input.view(X.rows(), X.cols());
    copy = X;
    again(copy);
    return true;
}

inline void check_vector(const char* layer, const char* what, index_t size, index_t expected) {
    check_shape(size == expected, layer, ": ", what, " has ", size, " entries, expected ", expected);
}

}  // namespace detail
}  // namespace treegate

#endif
