// flatten(): a path_sum tree_linear and its leaf_only table give the same outputs within the
// rounding of one dense product, at depths 0..8, for both gating kinds, with and without bias.
#include "test_support.hpp"

#include <treegate/layers/flatten.hpp>
#include <treegate/layers/tree_linear.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

using treegate::gating;
using treegate::index_t;
using treegate::tree_mode;
using namespace tg_test;

TEMPLATE_LIST_TEST_CASE("flatten gives the leaf_only layer equal to a path_sum tree", "[flatten]", scalar_policy_list) {
    using S = typename TestType::scalar;
    using P = typename TestType::policy;
    using layer_t = treegate::tree_linear<S, treegate::dynamic, treegate::dynamic, treegate::dynamic, P>;
    const bool external = GENERATE(false, true);
    const bool bias = GENERATE(true, false);
    CAPTURE(external, bias);
    std::mt19937 g(31u + (external ? 1u : 0u) + (bias ? 2u : 0u));
    const double eps = static_cast<double>(std::numeric_limits<S>::epsilon());
    for (int depth = 0; depth <= 8; ++depth) {
        const index_t budget = (index_t{1} << 17) >> depth;  // in * out, keeps depth 8 small
        const index_t in = uniform_index(g, 1, std::min<index_t>(70, budget));
        const index_t out = uniform_index(g, 1, std::min<index_t>(70, std::max<index_t>(1, budget / in)));
        CAPTURE(depth, in, out);
        const auto idx = random_gating_indices(depth, in, g);
        layer_t tree(in, out, depth, tree_mode::path_sum, external ? gating::external() : gating::from_input(idx), bias);
        fill_random(tree, g);

        const layer_t flat = treegate::flatten(tree);
        REQUIRE(flat.mode() == tree_mode::leaf_only);
        REQUIRE(flat.block_count() == (index_t{1} << depth));
        CHECK(flat.in_size() == in);
        CHECK(flat.out_size() == out);
        CHECK(flat.depth() == depth);
        CHECK(flat.has_bias() == bias);
        CHECK(flat.gates().is_external() == external);
        CHECK(flat.gates().indices() == tree.gates().indices());
        CHECK(flat.macs_per_example() * (depth + 1) == tree.macs_per_example());

        // Each leaf is the path's sum rounded once: within half an ulp of the exact sum, plus
        // the (D+1)-term double summation error, tiny against the float rounding.
        double worst = 0;
        for (index_t l = 0; l < flat.block_count(); ++l) {
            Eigen::MatrixXd sum = Eigen::MatrixXd::Zero(out, in), abs_sum = Eigen::MatrixXd::Zero(out, in);
            for (int j = 0; j <= depth; ++j) {
                const index_t node = oracle_path_node(static_cast<std::uint64_t>(l), depth, j);
                sum += tree.weight(node).template cast<double>();
                abs_sum += tree.weight(node).template cast<double>().cwiseAbs();
            }
            const Eigen::MatrixXd err = (flat.weight(l).template cast<double>() - sum).cwiseAbs();
            const Eigen::MatrixXd tol = 0.5 * eps * sum.cwiseAbs() + (depth + 1.0) * 0x1.0p-52 * abs_sum;
            worst = std::max(worst, (err - tol).maxCoeff());
        }
        CHECK(worst <= 0.0);

        for (index_t n : {index_t{1}, index_t{5}, index_t{300}}) {
            CAPTURE(n);
            mat<S> X = random_matrix<S>(in, n, g);
            const mat<S> G = random_gates<S>(depth, n, g);
            if (!external) sprinkle_zero_gates(X, idx, g);
            std::vector<std::uint64_t> codes(static_cast<std::size_t>(n));
            for (index_t e = 0; e < n; ++e)
                codes[static_cast<std::size_t>(e)] = external ? oracle_code_from_gates(G.col(e)) : oracle_code_from_input(X.col(e), idx);
            const auto want = oracle_tree_linear(tree, X, codes);  // exact tree output and sum|W||x| + |c|
            const mat<S> Yt = external ? tree.forward_batch(X, G) : tree.forward_batch(X);
            const mat<S> Yf = external ? flat.forward_batch(X, G) : flat.forward_batch(X);
            // The tree sums (D+1)(in+1) terms. The flat layer sums in + 1 terms of weights that
            // each carry one extra rounding (<= eps/2 of the path's sum|W|, counted as one more
            // term of the same scale), so it is held to in + 2 terms: one dense product's bound.
            CHECK(close_report<S>(Yt, want.y, want.scale, (depth + 1.0) * (static_cast<double>(in) + 1.0)) == "");
            CHECK(close_report<S>(Yf, want.y, want.scale, static_cast<double>(in) + 2.0) == "");
            // Single examples take the fused path (one block) and agree as well.
            vec<S> y(out);
            for (index_t e = 0; e < n; e += 3) {
                if (external) {
                    const vec<S> gate = G.col(e);
                    flat.forward(X.col(e), gate, y);
                } else {
                    flat.forward(X.col(e), y);
                }
                CHECK(close_report<S>(y, want.y.col(e), want.scale.col(e), static_cast<double>(in) + 2.0) == "");
            }
        }
    }
}

TEST_CASE("flatten works with compile-time sizes", "[flatten]") {
    treegate::tree_linear<float, 6, 5, 3> tree(tree_mode::path_sum, gating::from_input({0, 2, 4}));
    tree.initialize(9);
    const auto flat = treegate::flatten(tree);
    STATIC_REQUIRE(std::is_same_v<std::remove_const_t<decltype(flat)>, treegate::tree_linear<float, 6, 5, 3>>);
    Eigen::Matrix<float, 6, 1> x;
    x << 0.5f, -0.25f, 0.75f, 0.125f, -1.0f, 0.3f;
    Eigen::Matrix<float, 5, 1> yt, yf;
    tree.forward(x, yt);
    flat.forward(x, yf);
    CHECK((yt - yf).cwiseAbs().maxCoeff() <= 1e-5f);
}

TEST_CASE("flatten rejects a leaf_only layer", "[flatten][errors]") {
    treegate::tree_linear<float> table(4, 3, 2, tree_mode::leaf_only, gating::from_input({0, 1}));
    TG_CHECK_THROWS_WITH(treegate::config_error, treegate::flatten(table), "flatten", "leaf_only", "path_sum");
}
