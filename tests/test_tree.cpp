// Topology (tree.hpp) and routing (routing.hpp) against the README's formula section, written independently.
#include "test_support.hpp"

#include <treegate/routing.hpp>
#include <treegate/tree.hpp>

#include <cstdint>
#include <limits>

namespace tree = treegate::tree;
using treegate::index_t;
using treegate::leaf_t;

// The topology is constexpr: these fail at compile time.
static_assert(tree::node_count(0) == 1 && tree::node_count(3) == 15);
static_assert(tree::leaf_count(0) == 1 && tree::leaf_count(3) == 8);
static_assert(tree::child(0, 0) == 1 && tree::child(0, 1) == 2 && tree::parent(6) == 2);
static_assert(tree::level_of(0) == 0 && tree::level_of(6) == 2 && tree::level_of(7) == 3);
static_assert(tree::leaf_node(5u, 3) == 12);
static_assert(tree::gate_bit(1.0) == 1 && tree::gate_bit(-0.0) == 0);

TEST_CASE("tree: node, leaf and level counts", "[tree]") {
    for (int d = 0; d <= treegate::max_depth; ++d) {
        CAPTURE(d);
        const index_t p = index_t{1} << d;
        CHECK(tree::node_count(d) == 2 * p - 1);
        CHECK(tree::leaf_count(d) == p);
        CHECK(tree::internal_count(d) == p - 1);
        CHECK(tree::level_begin(d) == p - 1);
        CHECK(tree::level_end(d) == 2 * p - 1);
        // Levels 0..d tile [0, node_count) in order.
        CHECK(tree::level_end(d) == tree::node_count(d));
        if (d > 0) CHECK(tree::level_begin(d) == tree::level_end(d - 1));
        CHECK(tree::level_end(d) - tree::level_begin(d) == tree::leaf_count(d));
    }
    CHECK(tree::level_begin(0) == 0);
    // Deepest tree: node indices must still fit an int32 (config.hpp's promise).
    CHECK(tree::node_count(treegate::max_depth) - 1 <= index_t{std::numeric_limits<std::int32_t>::max()});
}

TEST_CASE("tree: child, parent and level_of are consistent on every node", "[tree]") {
    for (int d = 0; d <= 12; ++d) {
        for (index_t node = 0; node < tree::node_count(d); ++node) {
            const int level = tree::level_of(node);
            CAPTURE(d, node, level);
            CHECK(tree::level_begin(level) <= node);
            CHECK(node < tree::level_end(level));
            for (int bit = 0; bit < 2; ++bit) {
                const index_t c = tree::child(node, bit);
                CHECK(c == 2 * node + 1 + bit);
                CHECK(tree::parent(c) == node);
                CHECK(tree::level_of(c) == level + 1);
            }
        }
    }
    // Spot values far from the root (level 30 is the deepest allowed).
    CHECK(tree::level_of(tree::level_begin(30)) == 30);
    CHECK(tree::level_of(tree::level_end(30) - 1) == 30);
    CHECK(tree::level_of(tree::level_end(30)) == 31);
}

TEST_CASE("tree: walking child() from the root reaches leaf 2^D - 1 + sum_j b_j 2^(D-j)", "[tree]") {
    for (int d = 0; d <= 10; ++d) {
        for (std::uint32_t code = 0; code < (1u << d); ++code) {
            CAPTURE(d, code);
            index_t node = 0;
            index_t formula = (index_t{1} << d) - 1;
            for (int j = 1; j <= d; ++j) {
                const int b = static_cast<int>((code >> (d - j)) & 1u);  // b_1 is the most significant bit
                const index_t parent = node;
                node = tree::child(node, b);
                formula += static_cast<index_t>(b) * (index_t{1} << (d - j));
                CHECK(tree::path_node(code, d, j) == node);
                CHECK(tree::parent(node) == parent);
                CHECK(tree::level_of(node) == j);
            }
            CHECK(tree::path_node(code, d, 0) == 0);
            CHECK(node == formula);
            CHECK(tree::leaf_node(code, d) == node);
            CHECK(tree::path_node(code, d, d) == node);
        }
    }
    // Deep spot check: all ones at depth 30 is the last node.
    const leaf_t ones = (leaf_t{1} << 30) - 1;
    CHECK(tree::leaf_node(ones, 30) == tree::node_count(30) - 1);
    CHECK(tree::path_node(ones, 30, 29) == tree::level_end(29) - 1);
}

TEMPLATE_TEST_CASE("tree: gate_bit is 1 exactly when g > 0", "[tree][routing]", float, double) {
    using S = TestType;
    using lim = std::numeric_limits<S>;
    CHECK(tree::gate_bit(lim::quiet_NaN()) == 0);
    CHECK(tree::gate_bit(-lim::quiet_NaN()) == 0);
    CHECK(tree::gate_bit(lim::signaling_NaN()) == 0);
    CHECK(tree::gate_bit(S(0)) == 0);
    CHECK(tree::gate_bit(-S(0)) == 0);
    CHECK(tree::gate_bit(lim::denorm_min()) == 1);
    CHECK(tree::gate_bit(lim::min()) == 1);
    CHECK(tree::gate_bit(-lim::denorm_min()) == 0);
    CHECK(tree::gate_bit(lim::infinity()) == 1);
    CHECK(tree::gate_bit(-lim::infinity()) == 0);
    CHECK(tree::gate_bit(S(1e-30)) == 1);
    CHECK(tree::gate_bit(S(-1)) == 0);
}

TEST_CASE("routing: codes are most significant bit first, read through indices or a stride", "[routing]") {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    //                 0     1      2    3     4      5
    const float x[] = {0.5f, -1.0f, nan, 0.0f, -0.0f, 1e-40f};
    const index_t idx1[] = {0, 1, 5};  // bits 1 0 1
    CHECK(treegate::route_by_indices(x, idx1, 3) == 5u);
    const index_t idx2[] = {2, 3, 4, 0};  // NaN, +0, -0 give 0; then 1
    CHECK(treegate::route_by_indices(x, idx2, 4) == 1u);
    const index_t idx3[] = {0, 0, 5, 1, 0};  // repeats allowed: 1 1 1 0 1
    CHECK(treegate::route_by_indices(x, idx3, 5) == 29u);
    CHECK(treegate::route_by_indices(x, idx3, 0) == 0u);

    // Gates with a stride: g[0], g[2], g[4] -> 0.5, nan, -0 -> 1 0 0.
    CHECK(treegate::route_by_gates(x, 2, 3) == 4u);
    CHECK(treegate::route_by_gates(x + 1, 1, 5) == 1u);  // -1 nan 0 -0 tiny -> 0 0 0 0 1
    CHECK(treegate::route_by_gates(x, 1, 0) == 0u);

    // 30 levels of ones fill a 30-bit code.
    const double ones[30] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    CHECK(treegate::route_by_gates(ones, 1, 30) == (leaf_t{1} << 30) - 1);
}

TEST_CASE("routing: gating configurations", "[routing]") {
    const auto g = treegate::gating::from_input({3, 1, 4});
    CHECK_FALSE(g.is_external());
    CHECK(g.indices() == std::vector<index_t>{3, 1, 4});
    const auto e = treegate::gating::external();
    CHECK(e.is_external());
    CHECK(e.indices().empty());
    const treegate::gating none;
    CHECK_FALSE(none.is_external());
    CHECK(none.indices().empty());
}
