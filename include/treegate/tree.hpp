// treegate/tree.hpp — topology of the binary prefix tree: pure index arithmetic in heap order.
// Knows nothing of weights, inputs or kernels; every other part of treegate builds on it.
#ifndef TREEGATE_TREE_HPP
#define TREEGATE_TREE_HPP

#include "config.hpp"
#include "error.hpp"

#include <cstdint>
#include <limits>

namespace treegate::tree {

/// Deepest tree whose node count, 2^(D+1) - 1, still fits index_t.
inline constexpr int max_representable_depth = 62;

namespace detail {

// Out of line and not constexpr: reached only by bad arguments, which makes such a call fail
// to compile in a constant expression and throw at run time; valid calls stay constexpr.
[[noreturn]] inline void bad_argument(const char* fn, const char* what, index_t value, index_t hi) {
    treegate::detail::raise<config_error>("tree::", fn, ": ", what, " ", value, " is outside [0, ", hi, "]");
}

constexpr void check_level(const char* fn, const char* what, int level) {
    if (level < 0 || level > max_representable_depth) bad_argument(fn, what, level, max_representable_depth);
}

// A leaf code of `depth` bits: depth at most 32 (leaf_t) and no bit at or above `depth`.
constexpr void check_code(const char* fn, leaf_t code, int depth) {
    if (depth < 0 || depth > 32) bad_argument(fn, "depth", depth, 32);
    if (depth < 32 && (code >> depth) != 0)
        treegate::detail::raise<config_error>("tree::", fn, ": code ", code, " has more than ", depth, " bits");
}

}  // namespace detail

/// Nodes of a tree of depth D: 2^(D+1) - 1 (D in [0, 62]).
constexpr index_t node_count(int depth) {
    detail::check_level("node_count", "depth", depth);
    return ((index_t{1} << depth) - 1) * 2 + 1;
}

/// Leaves of a tree of depth D: 2^D.
constexpr index_t leaf_count(int depth) {
    detail::check_level("leaf_count", "depth", depth);
    return index_t{1} << depth;
}

/// Internal (non-leaf) nodes: 2^D - 1.
constexpr index_t internal_count(int depth) {
    detail::check_level("internal_count", "depth", depth);
    return (index_t{1} << depth) - 1;
}

/// First node of level j (the root is level 0).
constexpr index_t level_begin(int level) {
    detail::check_level("level_begin", "level", level);
    return (index_t{1} << level) - 1;
}

/// One past the last node of level j.
constexpr index_t level_end(int level) {
    detail::check_level("level_end", "level", level);
    return ((index_t{1} << level) - 1) * 2 + 1;
}

/// Child of `node` taken by gate bit `bit` (0 or 1). Unchecked: the routing hot path.
constexpr index_t child(index_t node, int bit) noexcept { return 2 * node + 1 + bit; }

/// Parent of a non-root node.
constexpr index_t parent(index_t node) noexcept { return (node - 1) / 2; }

/// Level of a node: floor(log2(node + 1)).
constexpr int level_of(index_t node) {
    if (node < 0) detail::bad_argument("level_of", "node", node, std::numeric_limits<index_t>::max() - 1);
    int level = 0;
    for (index_t n = node + 1; n > 1; n >>= 1) ++level;
    return level;
}

/// Node at `level` on the path whose D bits are `code` (most significant bit = level 1).
constexpr index_t path_node(leaf_t code, int depth, int level) {
    detail::check_code("path_node", code, depth);
    if (level < 0 || level > depth) detail::bad_argument("path_node", "level", level, depth);
    return level_begin(level) + static_cast<index_t>(static_cast<std::uint64_t>(code) >> (depth - level));
}

/// Leaf node reached by `code`: 2^D - 1 + code.
constexpr index_t leaf_node(leaf_t code, int depth) {
    detail::check_code("leaf_node", code, depth);
    return level_begin(depth) + code;
}

/// Gate value to bit: 1 iff g > 0, so NaN, -0 and +0 all give 0.
template <class Scalar>
constexpr int gate_bit(Scalar g) noexcept {
    return g > Scalar(0) ? 1 : 0;
}

}  // namespace treegate::tree

#endif
