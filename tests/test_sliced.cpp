// sliced_tree_linear: K independent trees over K input slices equal K separate tree_linear
// layers run on the slices, outputs summed or concatenated.
#include "test_support.hpp"

#include <treegate/layers/sliced_tree_linear.hpp>

#include <random>
#include <vector>

using treegate::slice_combine;
using treegate::gating;
using treegate::index_t;
using treegate::tree_mode;
using namespace tg_test;

TEMPLATE_LIST_TEST_CASE("sliced_tree_linear equals K independent trees on the slices", "[blocked]", scalar_policy_list) {
    using S = typename TestType::scalar;
    using P = typename TestType::policy;
    using blocked_t = treegate::sliced_tree_linear<S, treegate::dynamic, treegate::dynamic, treegate::dynamic, P>;
    using tree_t = treegate::tree_linear<S, treegate::dynamic, treegate::dynamic, treegate::dynamic, P>;
    const slice_combine combine = GENERATE(slice_combine::sum, slice_combine::concat);
    const tree_mode mode = GENERATE(tree_mode::path_sum, tree_mode::leaf_only);
    CAPTURE(combine == slice_combine::sum ? "sum" : "concat", treegate::to_string(mode));
    std::mt19937 g(static_cast<unsigned>(31 + 2 * static_cast<int>(combine) + static_cast<int>(mode)));
    struct shape {
        index_t K, si, so;
        int depth;
    };
    for (const shape sh : {shape{1, 5, 3, 2}, shape{3, 7, 4, 3}, shape{5, 13, 17, 1}, shape{2, 16, 9, 0}, shape{4, 3, 2, 5}}) {
        CAPTURE(sh.K, sh.si, sh.so, sh.depth);
        std::vector<std::vector<index_t>> idx;
        for (index_t t = 0; t < sh.K; ++t) idx.push_back(random_gating_indices(sh.depth, sh.si, g));
        blocked_t b(sh.si, sh.so, sh.depth, mode, combine, idx);
        CHECK(b.tree_count() == sh.K);
        CHECK(b.in_size() == sh.K * sh.si);
        CHECK(b.out_size() == (combine == slice_combine::sum ? sh.so : sh.K * sh.so));
        CHECK(b.depth() == sh.depth);

        std::vector<tree_t> trees;
        for (index_t t = 0; t < sh.K; ++t) {
            fill_random(b.tree(t), g);
            trees.emplace_back(sh.si, sh.so, sh.depth, mode, gating::from_input(idx[static_cast<std::size_t>(t)]));
            copy_weights(trees.back(), b.tree(t));
        }
        index_t params = 0, macs = 0;
        for (const auto& t : trees) {
            params += t.parameter_count();
            macs += t.macs_per_example();
        }
        CHECK(b.parameter_count() == params);
        CHECK(b.macs_per_example() == macs);

        treegate::workspace<S> ws;
        for (index_t n : {index_t{0}, index_t{1}, index_t{2}, index_t{57}}) {
            CAPTURE(n);
            mat<S> X = random_matrix<S>(sh.K * sh.si, n, g);
            // Oracle: each tree on its slice (exact materialised-weight oracle), then combine.
            // An empty batch's oracle is the empty matrix: Eigen 3.4 slices an empty matrix by
            // offsetting its null data pointer, undefined behaviour that clang's UBSan stops at.
            Eigen::MatrixXd want = Eigen::MatrixXd::Zero(b.out_size(), n), scale = want;
            for (index_t t = 0; n > 0 && t < sh.K; ++t) {
                const mat<S> Xt = X.middleRows(t * sh.si, sh.si);
                std::vector<std::uint64_t> codes;
                for (index_t e = 0; e < n; ++e)
                    codes.push_back(oracle_code_from_input(Xt.col(e), idx[static_cast<std::size_t>(t)]));
                const auto o = oracle_tree_linear(trees[static_cast<std::size_t>(t)], Xt, codes);
                if (combine == slice_combine::sum) {
                    want += o.y;
                    scale += o.scale;
                } else {
                    want.middleRows(t * sh.so, sh.so) = o.y;
                    scale.middleRows(t * sh.so, sh.so) = o.scale;
                }
            }
            const double terms =
                (mode == tree_mode::path_sum ? sh.depth + 1.0 : 1.0) * (static_cast<double>(sh.si) + 1.0) *
                    (combine == slice_combine::sum ? static_cast<double>(sh.K) : 1.0) + 1.0;
            CHECK(close_report<S>(b.forward_batch(X), want, scale, terms) == "");
            mat<S> Y(b.out_size(), n);
            b.forward_batch(X, Y, ws);
            CHECK(close_report<S>(Y, want, scale, terms) == "");
            vec<S> y(b.out_size());
            for (index_t e = 0; e < n; ++e) {
                b.forward(X.col(e), y);
                CHECK(close_report<S>(y, want.col(e), scale.col(e), terms) == "");
            }
            // Concatenation runs each tree exactly as the standalone layer does.
            if (combine == slice_combine::concat && n > 0) {
                for (index_t t = 0; t < sh.K; ++t)
                    CHECK(Y.middleRows(t * sh.so, sh.so) ==
                          trees[static_cast<std::size_t>(t)].forward_batch(X.middleRows(t * sh.si, sh.si)));
            }
        }
    }
}

TEST_CASE("sliced_tree_linear initialize seeds tree t with seed + t", "[blocked][init]") {
    treegate::sliced_tree_linear<float> b(6, 4, 2, tree_mode::path_sum, slice_combine::sum, {{0, 1}, {2, 3}, {4, 5}});
    b.initialize(50);
    for (index_t t = 0; t < 3; ++t) {
        treegate::tree_linear<float> one(6, 4, 2, tree_mode::path_sum, gating::from_input({0, 1}));
        one.initialize(50 + static_cast<std::uint64_t>(t));
        for (index_t i = 0; i < one.block_count(); ++i) {
            CHECK(b.tree(t).weight(i) == one.weight(i));
            CHECK(b.tree(t).bias(i) == one.bias(i));
        }
    }
    CHECK(b.tree(0).weight(0) != b.tree(1).weight(0));
}
