// treegate/tree.hpp — topology of the binary prefix tree: pure index arithmetic in heap order.
// Knows nothing of weights, inputs or kernels; every other part of treegate builds on it.
#ifndef TREEGATE_TREE_HPP
#define TREEGATE_TREE_HPP

#include "config.hpp"

namespace treegate::tree {

/// Nodes of a tree of depth D: 2^(D+1) - 1.
constexpr index_t node_count(int depth) noexcept { return (index_t{2} << depth) - 1; }

/// Leaves of a tree of depth D: 2^D.
constexpr index_t leaf_count(int depth) noexcept { return index_t{1} << depth; }

/// Internal (non-leaf) nodes: 2^D - 1.
constexpr index_t internal_count(int depth) noexcept { return leaf_count(depth) - 1; }

/// First node of level j (the root is level 0).
constexpr index_t level_begin(int level) noexcept { return (index_t{1} << level) - 1; }

/// One past the last node of level j.
constexpr index_t level_end(int level) noexcept { return (index_t{2} << level) - 1; }

/// Child of `node` taken by gate bit `bit` (0 or 1).
constexpr index_t child(index_t node, int bit) noexcept { return 2 * node + 1 + bit; }

/// Parent of a non-root node.
constexpr index_t parent(index_t node) noexcept { return (node - 1) / 2; }

/// Level of a node: floor(log2(node + 1)).
constexpr int level_of(index_t node) noexcept {
    int level = 0;
    for (index_t n = node + 1; n > 1; n >>= 1) ++level;
    return level;
}

/// Node at `level` on the path whose D bits are `code` (most significant bit = level 1).
constexpr index_t path_node(leaf_t code, int depth, int level) noexcept {
    return level_begin(level) + static_cast<index_t>(code >> (depth - level));
}

/// Leaf node reached by `code`: 2^D - 1 + code.
constexpr index_t leaf_node(leaf_t code, int depth) noexcept { return level_begin(depth) + code; }

/// Gate value to bit: 1 iff g > 0, so NaN, -0 and +0 all give 0.
template <class Scalar>
constexpr int gate_bit(Scalar g) noexcept {
    return g > Scalar(0) ? 1 : 0;
}

}  // namespace treegate::tree

#endif
