// Schedules (schedule.hpp): every example in exactly one contiguous node range per level,
// stable and deterministic; the level-by-level split agrees with the one-shot leaf sort.
#include "test_support.hpp"

#include <treegate/schedule.hpp>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

using treegate::group_range;
using treegate::index_t;
using treegate::leaf_t;

namespace {

std::vector<leaf_t> random_codes(index_t n, int depth, std::mt19937& g, bool skewed) {
    std::vector<leaf_t> codes(static_cast<std::size_t>(n));
    const leaf_t leaves = leaf_t{1} << depth;
    for (auto& c : codes) {
        // Skewed batches leave most leaves empty and pile examples on a few.
        c = skewed ? static_cast<leaf_t>(tg_test::uniform_index(g, 0, std::min<index_t>(3, leaves - 1)))
                   : static_cast<leaf_t>(tg_test::uniform_index(g, 0, static_cast<index_t>(leaves) - 1));
    }
    return codes;
}

/// The examples whose code starts with the `level`-bit prefix `k`, in increasing index.
std::vector<index_t> expected_members(const std::vector<leaf_t>& codes, int depth, int level, index_t k) {
    std::vector<index_t> m;
    for (std::size_t e = 0; e < codes.size(); ++e)
        if (static_cast<index_t>(codes[e] >> (depth - level)) == k) m.push_back(static_cast<index_t>(e));
    return m;
}

std::vector<index_t> members(const index_t* order, group_range r) { return {order + r.begin, order + r.end}; }

const index_t batch_sizes[] = {0, 1, 2, 7, 33, 300, 1001};

}  // namespace

TEST_CASE("leaf_schedule: each node of each level owns one contiguous, stable range", "[schedule]") {
    std::mt19937 g(12345);
    for (int depth = 0; depth <= 9; ++depth)
        for (index_t n : batch_sizes)
            for (bool skewed : {false, true}) {
                CAPTURE(depth, n, skewed);
                const auto codes = random_codes(n, depth, g, skewed);
                treegate::leaf_schedule s;
                s.build(codes.data(), n, depth);
                REQUIRE(s.depth() == depth);
                REQUIRE(s.size() == n);
                const index_t* order = s.order();

                // order() is a permutation of 0..n-1.
                std::vector<index_t> sorted(order, order + n);
                std::sort(sorted.begin(), sorted.end());
                for (index_t i = 0; i < n; ++i) REQUIRE(sorted[static_cast<std::size_t>(i)] == i);

                for (int level = 0; level <= depth; ++level) {
                    CAPTURE(level);
                    index_t expected_begin = 0;
                    for (index_t k = 0; k < (index_t{1} << level); ++k) {
                        const group_range r = s.node_range(level, k);
                        // Ranges tile [0, n) in node order: every example in exactly one node.
                        REQUIRE(r.begin == expected_begin);
                        REQUIRE(r.end >= r.begin);
                        CHECK(r.size() == r.end - r.begin);
                        CHECK(r.empty() == (r.size() == 0));
                        expected_begin = r.end;
                        auto got = members(order, r);
                        auto want = expected_members(codes, depth, level, k);
                        if (level == depth) {
                            // Leaves: exactly the examples of the leaf, in example order (stable).
                            REQUIRE(got == want);
                        } else {
                            // Inner nodes: the same set, sorted by (leaf, example).
                            REQUIRE(std::is_sorted(got.begin(), got.end(), [&](index_t a, index_t b) {
                                const auto ca = codes[static_cast<std::size_t>(a)], cb = codes[static_cast<std::size_t>(b)];
                                return ca != cb ? ca < cb : a < b;
                            }));
                            std::sort(got.begin(), got.end());
                            REQUIRE(got == want);
                        }
                    }
                    REQUIRE(expected_begin == n);
                }
            }
}

TEST_CASE("leaf_schedule: deterministic across runs and when a schedule object is reused", "[schedule]") {
    std::mt19937 g(777);
    const int depth = 6;
    const auto big = random_codes(500, depth, g, false);
    const auto small = random_codes(41, depth, g, false);

    treegate::leaf_schedule fresh;
    fresh.build(small.data(), 41, depth);
    const std::vector<index_t> first(fresh.order(), fresh.order() + 41);

    treegate::leaf_schedule reused;
    reused.build(big.data(), 500, depth);
    reused.build(small.data(), 41, depth + 2);  // a different depth in between (codes < 2^6 < 2^8)
    reused.build(small.data(), 41, depth);
    CHECK(std::vector<index_t>(reused.order(), reused.order() + 41) == first);
    for (int level = 0; level <= depth; ++level)
        for (index_t k = 0; k < (index_t{1} << level); ++k) {
            CHECK(reused.node_range(level, k).begin == fresh.node_range(level, k).begin);
            CHECK(reused.node_range(level, k).end == fresh.node_range(level, k).end);
        }
}

TEST_CASE("level_schedule: splits level by level, stable, agreeing with leaf_schedule", "[schedule]") {
    std::mt19937 g(2024);
    for (int depth = 0; depth <= 8; ++depth)
        for (index_t n : batch_sizes)
            for (bool skewed : {false, true}) {
                CAPTURE(depth, n, skewed);
                const auto codes = random_codes(n, depth, g, skewed);
                treegate::leaf_schedule ls;
                ls.build(codes.data(), n, depth);

                treegate::level_schedule s;
                s.reset(n);
                REQUIRE(s.level() == 0);
                REQUIRE(s.size() == n);
                // Root: everything, in example order.
                for (index_t p = 0; p < n; ++p) REQUIRE(s.order()[p] == p);
                CHECK(s.node_range(0).begin == 0);
                CHECK(s.node_range(0).end == n);

                std::vector<unsigned char> bit_at(static_cast<std::size_t>(n));
                for (int level = 1; level <= depth; ++level) {
                    CAPTURE(level);
                    // The router learns bit `level` of each example, in the schedule's current order.
                    for (index_t p = 0; p < n; ++p) {
                        const leaf_t c = codes[static_cast<std::size_t>(s.order()[p])];
                        bit_at[static_cast<std::size_t>(p)] = static_cast<unsigned char>((c >> (depth - level)) & 1u);
                    }
                    s.split(bit_at.data());
                    REQUIRE(s.level() == level);
                    index_t expected_begin = 0;
                    for (index_t k = 0; k < (index_t{1} << level); ++k) {
                        const group_range r = s.node_range(k);
                        REQUIRE(r.begin == expected_begin);
                        expected_begin = r.end;
                        // Same examples as the leaf schedule's node, each node in example order.
                        const auto got = members(s.order(), r);
                        REQUIRE(got == expected_members(codes, depth, level, k));
                        auto from_leaf = members(ls.order(), ls.node_range(level, k));
                        std::sort(from_leaf.begin(), from_leaf.end());
                        REQUIRE(got == from_leaf);
                    }
                    REQUIRE(expected_begin == n);
                }
                // After the last split both schedules hold the identical order.
                CHECK(std::vector<index_t>(s.order(), s.order() + n) == std::vector<index_t>(ls.order(), ls.order() + n));
            }
}

TEST_CASE("level_schedule: reset after use starts over and is deterministic", "[schedule]") {
    std::mt19937 g(99);
    const int depth = 5;
    const index_t n = 97;
    const auto codes = random_codes(n, depth, g, false);
    auto run = [&](treegate::level_schedule& s) {
        s.reset(n);
        std::vector<unsigned char> bit_at(static_cast<std::size_t>(n));
        for (int level = 1; level <= depth; ++level) {
            for (index_t p = 0; p < n; ++p)
                bit_at[static_cast<std::size_t>(p)] =
                    static_cast<unsigned char>((codes[static_cast<std::size_t>(s.order()[p])] >> (depth - level)) & 1u);
            s.split(bit_at.data());
        }
        return std::vector<index_t>(s.order(), s.order() + n);
    };
    treegate::level_schedule a, b;
    const auto first = run(a);
    b.reset(500);  // a larger history first
    const auto second = run(b);
    const auto third = run(a);
    CHECK(first == second);
    CHECK(first == third);
}
