// treegate/routing.hpp — where gate bits come from and how they become a path (a leaf code).
// Gating-unit routers know all D bits up front; node routers (tree_feedforward) decide per level.
#ifndef TREEGATE_ROUTING_HPP
#define TREEGATE_ROUTING_HPP

#include "config.hpp"
#include "error.hpp"
#include "tree.hpp"

#include <utility>
#include <vector>

namespace treegate {

/// The D gating units of a layer: either designated entries of the input, or an external gate
/// vector supplied with every call (for example the pre-activations of the previous layer).
class gating {
public:
    /// Gating unit j (deciding level j + 1) is input entry `indices[j]`.
    static gating from_input(std::vector<index_t> indices) { return gating(std::move(indices), false); }

    /// Gate values are passed with each call, one per level (D x batch for batches).
    static gating external() { return gating({}, true); }

    /// No gating units: only valid for depth 0.
    gating() = default;

    bool is_external() const noexcept { return external_; }
    const std::vector<index_t>& indices() const noexcept { return indices_; }

private:
    gating(std::vector<index_t> indices, bool external) : indices_(std::move(indices)), external_(external) {}
    std::vector<index_t> indices_;
    bool external_ = false;
};

namespace detail {

/// Checks a depth against the library limit, naming the layer in the message.
inline void check_depth(const char* layer, int depth) {
    check_config(depth >= 0 && depth <= max_depth, layer, ": depth ", depth, " is outside [0, ", max_depth,
                 "] (the tree would have 2^(depth+1)-1 nodes)");
}

/// Checks that a gating configuration fits a layer of `depth` levels over `in` inputs.
inline void check_gating(const char* layer, const gating& g, int depth, index_t in) {
    if (g.is_external()) {
        check_config(g.indices().empty(), layer, ": external gating takes no indices");
        return;
    }
    check_config(static_cast<index_t>(g.indices().size()) == depth, layer, ": depth ", depth, " needs ", depth,
                 " gating indices, got ", g.indices().size());
    for (std::size_t j = 0; j < g.indices().size(); ++j) {
        const index_t i = g.indices()[j];
        check_config(i >= 0 && i < in, layer, ": gating index ", i, " (level ", j + 1, ") is outside the input [0, ",
                     in, ")");
    }
}

}  // namespace detail

/// Leaf code from gate values read at `index[0..depth)` of `x` (a strided view is allowed).
template <class Scalar>
inline leaf_t route_by_indices(const Scalar* x, const index_t* index, int depth) noexcept {
    leaf_t code = 0;
    for (int j = 0; j < depth; ++j) code = (code << 1) | static_cast<leaf_t>(tree::gate_bit(x[index[j]]));
    return code;
}

/// Leaf code from `depth` consecutive gate values g[0], g[stride], ... (g[0] decides level 1).
template <class Scalar>
inline leaf_t route_by_gates(const Scalar* g, index_t stride, int depth) noexcept {
    leaf_t code = 0;
    for (int j = 0; j < depth; ++j) code = (code << 1) | static_cast<leaf_t>(tree::gate_bit(g[j * stride]));
    return code;
}

}  // namespace treegate

#endif
