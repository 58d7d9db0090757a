// The thread pool, the threaded batched forward and the threaded soft-routing passes: for every
// thread count the output must be bit-identical to the serial call (the pieces do not depend on
// the thread count), for every policy, both tree modes, both gate sources and both feed-forward variants.
#include "test_support.hpp"

#include <treegate/kernels/avx2.hpp>
#include <treegate/kernels/avx512.hpp>
#include <treegate/kernels/dispatch.hpp>
#include <treegate/layers/tree_linear_bf16.hpp>
#include <treegate/parallel/thread_pool.hpp>
#include <treegate/train/gradients.hpp>
#include <treegate/train/soft_routing.hpp>
#include <treegate/treegate.hpp>

#include <atomic>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

using namespace tg_test;
using treegate::index_t;
namespace parallel = treegate::parallel;

namespace {

const int thread_counts[] = {1, 2, 3, 8};

// Serial output of a tree_linear, and the same call on pools of every size.
template <class Policy>
void check_tree_linear_threads(std::mt19937& g) {
    using layer_t = treegate::tree_linear<float, treegate::dynamic, treegate::dynamic, treegate::dynamic, Policy>;
    for (auto mode : {treegate::tree_mode::path_sum, treegate::tree_mode::leaf_only}) {
        for (bool external : {false, true}) {
            // Sizes large enough that the top levels are cut into row chunks (> 2^18 MACs).
            const index_t in = uniform_index(g, 100, 160), out = uniform_index(g, 130, 260), n = uniform_index(g, 300, 700);
            const int depth = static_cast<int>(uniform_index(g, 0, 6));
            CAPTURE(mode == treegate::tree_mode::path_sum, external, in, out, n, depth);
            const auto idx = random_gating_indices(depth, in, g);
            layer_t layer(in, out, depth, mode, external ? treegate::gating::external() : treegate::gating::from_input(idx));
            layer.initialize(static_cast<std::uint64_t>(g()));
            const mat<float> X = random_matrix<float>(in, n, g), G = random_gates<float>(depth, n, g);
            const treegate::tree_linear_bf16<Policy> half(layer);  // the bf16 serving copy runs the same pieces
            mat<float> expected(out, n), expected_half(out, n), Y(out, n);
            treegate::workspace<float> ws;
            if (external) {
                layer.forward_batch(X, G, expected, ws);
                half.forward_batch(X, G, expected_half, ws);
            } else {
                layer.forward_batch(X, expected, ws);
                half.forward_batch(X, expected_half, ws);
            }
            for (int threads : thread_counts) {
                CAPTURE(threads);
                parallel::thread_pool pool(threads);
                Y.setConstant(std::numeric_limits<float>::quiet_NaN());
                if (external)
                    layer.forward_batch(X, G, Y, ws, pool);
                else
                    layer.forward_batch(X, Y, ws, pool);
                CHECK(Y == expected);
                Y.setConstant(std::numeric_limits<float>::quiet_NaN());
                if (external)
                    half.forward_batch(X, G, Y, ws, pool);
                else
                    half.forward_batch(X, Y, ws, pool);
                CHECK(Y == expected_half);
            }
        }
    }
}

}  // namespace

TEST_CASE("thread_pool runs every piece exactly once and reports its workers", "[parallel]") {
    for (int threads : thread_counts) {
        parallel::thread_pool pool(threads);
        CHECK(pool.size() == threads);
        for (index_t pieces : {index_t{0}, index_t{1}, index_t{7}, index_t{1000}}) {
            std::vector<std::atomic<int>> runs(static_cast<std::size_t>(pieces));
            std::atomic<int> bad_worker{0};
            pool.run(pieces, [&](index_t p, int w) {
                runs[static_cast<std::size_t>(p)].fetch_add(1);
                if (w < 0 || w >= threads) bad_worker.fetch_add(1);
            });
            for (const auto& r : runs) CHECK(r.load() == 1);
            CHECK(bad_worker.load() == 0);
        }
    }
    CHECK(parallel::thread_pool::hardware_threads() >= 1);
}

TEST_CASE("thread_pool rethrows a piece's exception and stays usable", "[parallel][errors]") {
    parallel::thread_pool pool(3);
    std::atomic<int> ran{0};
    CHECK_THROWS_AS(pool.run(100, [&](index_t p, int) {
        ran.fetch_add(1);
        if (p == 10) throw std::runtime_error("piece 10 failed");
    }), std::runtime_error);
    CHECK(ran.load() >= 1);
    std::atomic<index_t> sum{0};
    pool.run(50, [&](index_t p, int) { sum.fetch_add(p); });
    CHECK(sum.load() == 50 * 49 / 2);
    TG_CHECK_THROWS_WITH(treegate::config_error, parallel::thread_pool(0), "thread_pool", "[1, 1024]", "got 0");
}

TEST_CASE("thread_pool takes turns when two threads call run at once", "[parallel]") {
    parallel::thread_pool pool(2);
    std::atomic<index_t> total{0};
    auto caller = [&] {
        for (int rep = 0; rep < 50; ++rep) pool.run(20, [&](index_t, int) { total.fetch_add(1); });
    };
    std::thread other(caller);
    caller();
    other.join();
    CHECK(total.load() == 2 * 50 * 20);
}

TEST_CASE("threaded tree_linear is bit-identical to the serial batch for any thread count", "[parallel]") {
    std::mt19937 g(501);
    check_tree_linear_threads<treegate::kernels::reference>(g);
    check_tree_linear_threads<treegate::kernels::eigen>(g);
    if (treegate::kernels::cpu_supports_avx2()) check_tree_linear_threads<treegate::kernels::avx2>(g);
    if (treegate::kernels::cpu_supports_avx512()) check_tree_linear_threads<treegate::kernels::avx512>(g);
    check_tree_linear_threads<treegate::kernels::dispatch>(g);
}

TEST_CASE("threaded tree_linear is close to the reference oracle and handles empty batches", "[parallel]") {
    std::mt19937 g(502);
    treegate::tree_linear<float> layer(150, 200, 5, treegate::tree_mode::path_sum,
                                       treegate::gating::from_input({0, 10, 20, 30, 40}));
    layer.initialize(3);
    const mat<float> X = random_matrix<float>(150, 400, g);
    std::vector<std::uint64_t> codes;
    for (index_t e = 0; e < X.cols(); ++e) codes.push_back(oracle_code_from_input(X.col(e), {0, 10, 20, 30, 40}));
    const auto oracle = oracle_tree_linear(layer, X, codes);
    parallel::thread_pool pool(2);
    treegate::workspace<float> ws;
    mat<float> Y(200, 400);
    layer.forward_batch(X, Y, ws, pool);
    // A computed sum of the path's 6 * (150 + 1) products and bias terms: the dot-product bound.
    CHECK(close_report<float>(Y, oracle.y, oracle.scale, 6.0 * 151.0) == "");
    mat<float> empty_x(150, 0), empty_y(200, 0);
    layer.forward_batch(empty_x, empty_y, ws, pool);
    TG_CHECK_THROWS_WITH(treegate::shape_error, layer.forward_batch(mat<float>(149, 3), Y, ws, pool), "tree_linear");
}

TEST_CASE("threaded tree_feedforward is bit-identical to the serial batch for any thread count", "[parallel]") {
    std::mt19937 g(503);
    for (auto variant : {treegate::tree_mode::path_sum, treegate::tree_mode::leaf_only}) {
        for (index_t width : {index_t{1}, index_t{5}}) {
            const index_t in = uniform_index(g, 20, 70), out = uniform_index(g, 10, 50), n = uniform_index(g, 100, 400);
            const int depth = static_cast<int>(uniform_index(g, 0, 6));
            CAPTURE(variant == treegate::tree_mode::path_sum, width, in, out, n, depth);
            treegate::tree_feedforward<float> layer(in, out, width, depth, 2, treegate::activation::gelu, variant);
            layer.initialize(static_cast<std::uint64_t>(g()));
            const mat<float> X = random_matrix<float>(in, n, g);
            mat<float> expected(out, n), Y(out, n);
            treegate::workspace<float> ws;
            layer.forward_batch(X, expected, ws);
            for (int threads : thread_counts) {
                CAPTURE(threads);
                parallel::thread_pool pool(threads);
                Y.setConstant(std::numeric_limits<float>::quiet_NaN());
                layer.forward_batch(X, Y, ws, pool);
                CHECK(Y == expected);
            }
        }
    }
}

TEST_CASE("threaded dense, activation, blocked trees and sequential models are bit-identical to serial", "[parallel]") {
    std::mt19937 g(504);
    using namespace treegate;
    const index_t n = 700;
    // Slices of 200 inputs, so the top levels of each tree are cut into row chunks.
    sliced_tree_linear<float> blocked(200, 150, 3, tree_mode::path_sum, slice_combine::sum,
                                       {{0, 5, 9}, {1, 2, 3}, {7, 100, 199}});
    for (index_t t = 0; t < blocked.tree_count(); ++t) blocked.tree(t).initialize(static_cast<std::uint64_t>(t + 1));
    sequential<dense<float>, activation_layer<float>, tree_linear<float>> model(
        dense<float>(120, 90), activation_layer<float>(activation::relu, 90),
        tree_linear<float>(90, 10, 3, tree_mode::path_sum, gating::from_input({0, 1, 2})));
    model.initialize(9);
    const mat<float> Xb = random_matrix<float>(blocked.in_size(), n, g), Xm = random_matrix<float>(120, n, g);
    workspace<float> ws;
    decltype(model)::workspace_type mws;
    mat<float> want_b(blocked.out_size(), n), want_m(10, n), Yb(blocked.out_size(), n), Ym(10, n);
    blocked.forward_batch(Xb, want_b, ws);
    model.forward_batch(Xm, want_m, mws);
    for (int threads : thread_counts) {
        CAPTURE(threads);
        parallel::thread_pool pool(threads);
        blocked.forward_batch(Xb, Yb, ws, pool);
        model.forward_batch(Xm, Ym, mws, pool);
        CHECK(Yb == want_b);
        CHECK(Ym == want_m);
    }
}

namespace {

// Every block of `got` has the visited flag and the gradient bits of the same block of `want`.
void check_same_gradients(const treegate::train::param_list<float>& got, const treegate::train::param_list<float>& want) {
    REQUIRE(got.size() == want.size());
    for (std::size_t k = 0; k < got.size(); ++k) {
        CHECK(got[k].visited == want[k].visited);
        for (index_t i = 0; i < got[k].size; ++i) CHECK(got[k].grad[i] == want[k].grad[i]);
    }
}

}  // namespace

// Soft-routed training on a pool: the soft forward's output and penalty, and the soft backward's
// every gradient block and dX, are bit-identical to the serial call for every thread count
// (pieces are nodes, units and fixed tiles of examples, none depends on the worker). Batches of
// 150 examples cross several 64-example tiles; both variants, several trees, with and without dX,
// and a sequential model whose other stages run their own forward on the pool.
TEST_CASE("soft forward and backward are bit-identical on any thread count", "[parallel][soft_routing]") {
    namespace tt = treegate::train;
    using ff = treegate::tree_feedforward<float>;
    std::mt19937 g(97);
    for (auto variant : {treegate::tree_mode::path_sum, treegate::tree_mode::leaf_only}) {
        const index_t in = uniform_index(g, 9, 17), out = uniform_index(g, 3, 7), width = uniform_index(g, 1, 5);
        const int depth = static_cast<int>(uniform_index(g, 0, 4));
        const index_t trees = uniform_index(g, 1, 3), n = 150;
        CAPTURE(treegate::to_string(variant), in, out, width, depth, trees);
        ff f(in, out, width, depth, trees, treegate::activation::gelu, variant, true);
        f.initialize(static_cast<std::uint64_t>(g()));
        const mat<float> X = random_matrix<float>(in, n, g), R = random_matrix<float>(out, n, g);
        const tt::soft_routing_options opt{0.7, 0.3};
        tt::soft_workspace<float> ws;
        mat<float> Y0(out, n), dX0(in, n);
        const float pen0 = tt::soft_forward(f, X, Y0, ws, opt);
        auto grad0 = tt::make_gradient(f);
        CHECK(tt::soft_backward(f, X, R, grad0, dX0, ws, opt) == pen0);
        tt::param_list<float> blocks0;
        grad0.collect(f, blocks0);
        for (int threads : thread_counts) {
            CAPTURE(threads);
            parallel::thread_pool pool(threads);
            tt::soft_workspace<float> pws;
            mat<float> Y(out, n), dX(in, n);
            Y.setConstant(std::numeric_limits<float>::quiet_NaN());
            CHECK(tt::soft_forward(f, X, Y, pws, opt, pool) == pen0);
            CHECK(Y == Y0);
            for (bool with_dx : {true, false}) {
                auto grad = tt::make_gradient(f);
                dX.setConstant(std::numeric_limits<float>::quiet_NaN());
                const float pen = with_dx ? tt::soft_backward(f, X, R, grad, dX, pws, opt, pool)
                                          : tt::soft_backward(f, X, R, grad, pws, opt, pool);
                CHECK(pen == pen0);
                if (with_dx) CHECK(dX == dX0);
                tt::param_list<float> blocks;
                grad.collect(f, blocks);
                check_same_gradients(blocks, blocks0);
                CHECK(grad.visited_units() == grad0.visited_units());
                CHECK(grad.visited_routers() == grad0.visited_routers());
            }
        }
    }
    // A dense stage in front of a soft tree: the dense forward and the tree both take the pool.
    auto model = treegate::sequential(treegate::dense<float>(11, 8), treegate::activation_layer<float>(treegate::activation::relu, 8),
                                      ff(8, 4, 3, 2, 2, treegate::activation::relu, treegate::tree_mode::leaf_only));
    model.initialize(5);
    const mat<float> X = random_matrix<float>(11, 150, g), R = random_matrix<float>(4, 150, g);
    const tt::soft_routing_options opt{0.5, 0.1};
    decltype(model)::workspace_type fws0;
    tt::soft_sequential_workspace<float> sws0;
    mat<float> Y0(4, 150), dX0(11, 150);
    const float pen0 = tt::soft_forward(model, X, Y0, fws0, sws0, opt);
    auto grad0 = tt::make_gradient(model);
    tt::soft_backward(model, X, fws0, R, grad0, dX0, sws0, opt);
    tt::param_list<float> blocks0;
    grad0.collect(model, blocks0);
    for (int threads : thread_counts) {
        CAPTURE(threads);
        parallel::thread_pool pool(threads);
        decltype(model)::workspace_type fws;
        tt::soft_sequential_workspace<float> sws;
        mat<float> Y(4, 150), dX(11, 150);
        CHECK(tt::soft_forward(model, X, Y, fws, sws, opt, pool) == pen0);
        CHECK(Y == Y0);
        auto grad = tt::make_gradient(model);
        tt::soft_backward(model, X, fws, R, grad, dX, sws, opt, pool);
        CHECK(dX == dX0);
        tt::param_list<float> blocks;
        grad.collect(model, blocks);
        check_same_gradients(blocks, blocks0);
    }
}
