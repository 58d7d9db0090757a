// treegate/routing.hpp — where gate bits come from and how they become a path (a leaf code).
// Gating-unit routers know all D bits up front; node routers (tree_feedforward) decide per level.
// Below layers/ and exec/: the layers and the execution engine route through these functions.
#ifndef TREEGATE_ROUTING_HPP
#define TREEGATE_ROUTING_HPP

#include "config.hpp"
#include "error.hpp"
#include "tree.hpp"

#include <utility>
#include <vector>

namespace treegate {

/// Where a gate value of exactly zero goes: `greater`, bit 1 iff g > 0 (the README's rule, so
/// +0 and -0 go left; the default), or `greater_equal`, bit 1 iff g >= 0 (+0 and -0 go right:
/// the `fastfeedforward` package's nodes). NaN gives 0 under both, so a NaN never reaches a
/// right child by accident of the rule.
enum class tie_rule { greater, greater_equal };

inline const char* to_string(tie_rule r) noexcept { return r == tie_rule::greater ? "greater" : "greater_equal"; }

/// The gate bit of g under a tie rule; with the default it is tree::gate_bit.
template <class Scalar>
constexpr int gate_bit(Scalar g, tie_rule tie = tie_rule::greater) noexcept {
    return tie == tie_rule::greater ? tree::gate_bit(g) : (g >= Scalar(0) ? 1 : 0);
}

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

/// Checks that a call brings gate values exactly when the layer takes them: an externally
/// gated layer of depth > 0 needs them, a layer gated by its input refuses them. `call` names
/// the entry point in the message ("forward", "forward_batch", "backward", ...). Every
/// single-example, batch and backward entry point of every gated layer makes this one check.
inline void check_gating_kind(const char* layer, const char* call, const gating& g, int depth, bool external_given) {
    if (external_given)
        check_config(g.is_external(), layer, " ", call, ": this layer is gated by its input; call ", call,
                     " without gate values");
    else
        check_config(!g.is_external() || depth == 0, layer, " ", call, ": this layer is gated externally (depth ",
                     depth, "); pass the gate values to ", call);
}

}  // namespace detail

/// Leaf code from gate values read at `index[0..depth)` of `x` (a strided view is allowed).
template <class Scalar>
inline leaf_t route_by_indices(const Scalar* x, const index_t* index, int depth,
                               tie_rule tie = tie_rule::greater) noexcept {
    leaf_t code = 0;
    for (int j = 0; j < depth; ++j) code = (code << 1) | static_cast<leaf_t>(gate_bit(x[index[j]], tie));
    return code;
}

/// Leaf code from `depth` consecutive gate values g[0], g[stride], ... (g[0] decides level 1).
template <class Scalar>
inline leaf_t route_by_gates(const Scalar* g, index_t stride, int depth, tie_rule tie = tie_rule::greater) noexcept {
    leaf_t code = 0;
    for (int j = 0; j < depth; ++j) code = (code << 1) | static_cast<leaf_t>(gate_bit(g[j * stride], tie));
    return code;
}

/// A node router's bit: the sign of the hyperplane r.x + s (leaf_only's internal nodes), with
/// the dot product taken by the layer's kernel Policy so that every pass sees the same bit.
template <class Policy, class Scalar>
inline int hyperplane_bit(index_t in, const Scalar* r, Scalar s, const Scalar* x,
                          tie_rule tie = tie_rule::greater) noexcept {
    return gate_bit(Policy::dot(in, r, x) + s, tie);
}

/// A unit router's bit (path_sum): the sign of the unit's first pre-activation, pre[0] of
/// U x + a, so the node's own MLP decides where the example goes next.
template <class Scalar>
inline int unit_bit(const Scalar* pre, tie_rule tie = tie_rule::greater) noexcept {
    return gate_bit(pre[0], tie);
}

}  // namespace treegate

#endif
