// tree_feedforward (the FFF / UltraFastBERT family) against a naive per-example oracle
// transcribed from the README's formula section, and UltraFastBERT's layer against a transcription of its formula.
#include "test_support.hpp"

#include <treegate/kernels/dispatch.hpp>
#include <treegate/layers/tree_feedforward.hpp>
#include <treegate/parallel/thread_pool.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <tuple>
#include <vector>

using treegate::activation;
using treegate::tree_mode;
using treegate::index_t;
using namespace tg_test;

namespace {

template <class S, class P>
using ff_t = treegate::tree_feedforward<S, treegate::dynamic, treegate::dynamic, treegate::dynamic, treegate::dynamic, P>;

struct ff_shape {
    index_t in, out, width, trees;
    int depth;
};

/// Batch and single-example outputs of `layer` on X, both checked against the oracle.
template <class Layer, class S>
void check_against_oracle(const Layer& layer, const mat<S>& X, treegate::workspace<S>& ws) {
    const auto want = oracle_tree_feedforward(layer, X);
    // Ties within rounding are rare with random data: at most 5% of examples (plus one).
    CHECK(want.ambiguous <= X.cols() / 20 + 1);
    mat<S> Y(layer.out_size(), X.cols());
    layer.forward_batch(X, Y, ws);
    CHECK(bound_report(Y, want.y, want.bound) == "");
    CHECK(bound_report(layer.forward_batch(X), want.y, want.bound) == "");
    mat<S> Y1(layer.out_size(), X.cols());
    vec<S> y(layer.out_size());
    for (index_t e = 0; e < X.cols(); ++e) {
        layer.forward(X.col(e), y);
        Y1.col(e) = y;
    }
    CHECK(bound_report(Y1, want.y, want.bound) == "");
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("tree_feedforward matches the per-example oracle", "[tree_feedforward][oracle]", scalar_policy_list) {
    using S = typename TestType::scalar;
    using P = typename TestType::policy;
    const tree_mode variant = GENERATE(tree_mode::path_sum, tree_mode::leaf_only);
    const activation act = GENERATE(activation::gelu, activation::relu, activation::gelu_tanh, activation::tanh,
                                    activation::identity);
    // Output bias on for some activations, off for others (it is added once, outside the trees).
    const bool bias = act != activation::relu && act != activation::identity;
    CAPTURE(treegate::to_string(variant), treegate::to_string(act), bias);
    std::mt19937 g(static_cast<unsigned>(1000 + 10 * static_cast<int>(act) + (bias ? 1 : 0)));
    treegate::workspace<S> ws;  // shared by every layer below, as a sequential model would
    const ff_shape shapes[] = {
        {1, 1, 1, 1, 0},  {7, 3, 1, 1, 3},   {23, 17, 1, 4, 5}, {33, 9, 2, 1, 4},
        {16, 16, 5, 2, 2}, {9, 70, 3, 1, 8}, {30, 11, 67, 1, 2}, {19, 5, 130, 2, 1},
    };
    for (const auto& sh : shapes) {
        CAPTURE(sh.in, sh.out, sh.width, sh.trees, sh.depth);
        ff_t<S, P> layer(sh.in, sh.out, sh.width, sh.depth, sh.trees, act, variant, bias);
        fill_random_ff(layer, g);
        for (index_t n : {index_t{0}, index_t{1}, index_t{2}, index_t{37}, index_t{160}}) {
            CAPTURE(n);
            const mat<S> X = random_matrix<S>(sh.in, n, g);
            check_against_oracle(layer, X, ws);
        }
    }
}

TEMPLATE_LIST_TEST_CASE("tree_feedforward: UltraFastBERT's layer equals a transcription of its formula",
                        "[tree_feedforward][ultrafastbert]", scalar_policy_list) {
    using S = typename TestType::scalar;
    using P = typename TestType::policy;
    // UltraFastBERT: width-1 nodes, exact-erf GELU, depth 11 (4095 nodes, 12 visited), K trees summed.
    const index_t in = 24, out = 20, K = 3;
    const int D = 11;
    ff_t<S, P> layer(in, out, 1, D, K, activation::gelu, tree_mode::path_sum, false);
    layer.initialize(2023);
    REQUIRE(layer.unit_count() == 4095);

    // The parameters as UltraFastBERT stores them: per tree, U[node] (in) and a[node], V[node] (out).
    std::vector<std::vector<Eigen::VectorXd>> U(K), V(K);
    std::vector<std::vector<double>> a(K);
    for (index_t t = 0; t < K; ++t)
        for (index_t node = 0; node < 4095; ++node) {
            U[static_cast<std::size_t>(t)].push_back(layer.hidden_weight(t, node).row(0).transpose().template cast<double>());
            a[static_cast<std::size_t>(t)].push_back(static_cast<double>(layer.hidden_bias(t, node)(0)));
            V[static_cast<std::size_t>(t)].push_back(layer.output_weight(t, node).col(0).template cast<double>());
        }
    auto gelu = [](double v) { return 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))); };

    std::mt19937 g(11);
    const mat<S> X = random_matrix<S>(in, 200, g);
    const auto want_oracle = oracle_tree_feedforward(layer, X);
    const mat<S> Y = layer.forward_batch(X);
    index_t compared = 0;
    for (index_t e = 0; e < X.cols(); ++e) {
        if (!std::isfinite(want_oracle.bound(0, e))) continue;  // a route within rounding of a tie
        ++compared;
        const Eigen::VectorXd x = X.col(e).template cast<double>();
        Eigen::VectorXd y = Eigen::VectorXd::Zero(out);
        for (index_t t = 0; t < K; ++t) {
            const auto ts = static_cast<std::size_t>(t);
            std::size_t node = 0;
            for (int level = 0; level <= D; ++level) {
                const double l = U[ts][node].dot(x) + a[ts][node];
                y += gelu(l) * V[ts][node];
                node = 2 * node + 1 + (l > 0 ? 1 : 0);
            }
        }
        CAPTURE(e);
        CHECK(bound_report(Y.col(e), y, want_oracle.bound.col(e)) == "");
        vec<S> ys(out);
        layer.forward(X.col(e), ys);
        CHECK(bound_report(ys, y, want_oracle.bound.col(e)) == "");
    }
    CHECK(compared >= 190);
    // The work is 12 nodes per tree, of 4095 stored.
    CHECK(layer.macs_per_example() == K * 12 * (in + out));
    CHECK(layer.parameter_count() == K * 4095 * (in + 1 + out));
}

TEMPLATE_TEST_CASE("tree_feedforward reference and eigen policies agree", "[tree_feedforward][policy]", float, double) {
    using S = TestType;
    for (auto variant : {tree_mode::path_sum, tree_mode::leaf_only})
        for (index_t width : {index_t{1}, index_t{4}, index_t{65}}) {
            CAPTURE(treegate::to_string(variant), width);
            ff_t<S, treegate::kernels::reference> a(29, 13, width, 4, 2, activation::gelu, variant);
            ff_t<S, treegate::kernels::eigen> b(29, 13, width, 4, 2, activation::gelu, variant);
            a.initialize(17);
            b.initialize(17);  // initialize is policy independent: same seed, same weights
            for (index_t t = 0; t < 2; ++t)
                for (index_t u = 0; u < a.unit_count(); ++u) REQUIRE(a.hidden_weight(t, u) == b.hidden_weight(t, u));
            std::mt19937 g(static_cast<unsigned>(width));
            const mat<S> X = random_matrix<S>(29, 150, g);
            const auto want = oracle_tree_feedforward(a, X);
            // Both are within the bound of the exact result, hence within twice it of each other.
            const Eigen::MatrixXd bound2 = 2 * want.bound;
            CHECK(bound_report(a.forward_batch(X), b.forward_batch(X).template cast<double>(), bound2) == "");
        }
}

TEST_CASE("tree_feedforward with K trees is the sum of K one-tree layers plus the output bias", "[tree_feedforward]") {
    for (auto variant : {tree_mode::path_sum, tree_mode::leaf_only}) {
        CAPTURE(treegate::to_string(variant));
        const index_t in = 14, out = 6, w = 3, K = 4;
        const int D = 3;
        treegate::tree_feedforward<double> all(in, out, w, D, K, activation::relu, variant, true);
        std::mt19937 g(5);
        fill_random_ff(all, g);
        const mat<double> X = random_matrix<double>(in, 60, g);
        Eigen::MatrixXd sum = all.output_bias().replicate(1, 60);
        for (index_t t = 0; t < K; ++t) {
            treegate::tree_feedforward<double> one(in, out, w, D, 1, activation::relu, variant, false);
            for (index_t u = 0; u < one.unit_count(); ++u) {
                one.hidden_weight(0, u) = all.hidden_weight(t, u);
                one.hidden_bias(0, u) = all.hidden_bias(t, u);
                one.output_weight(0, u) = all.output_weight(t, u);
            }
            for (index_t i = 0; i < one.router_count(); ++i) {
                one.router_weight(0, i) = all.router_weight(t, i);
                one.router_bias(0, i) = all.router_bias(t, i);
            }
            sum += one.forward_batch(X);
        }
        const auto want = oracle_tree_feedforward(all, X);
        CHECK(bound_report(all.forward_batch(X), sum, 2 * want.bound) == "");
    }
}

TEST_CASE("tree_feedforward node_sum at depth 0 is a two-layer MLP", "[tree_feedforward]") {
    treegate::tree_feedforward<double> layer(10, 4, 6, 0, 1, activation::tanh);
    layer.initialize(3);
    const Eigen::MatrixXd U = layer.hidden_weight(0, 0), V = layer.output_weight(0, 0);
    const Eigen::VectorXd a = layer.hidden_bias(0, 0), c = layer.output_bias();
    std::mt19937 g(1);
    const mat<double> X = random_matrix<double>(10, 25, g);
    const Eigen::MatrixXd want = (V * ((U * X).colwise() + a).array().tanh().matrix()).colwise() + c;
    CHECK((layer.forward_batch(X) - want).cwiseAbs().maxCoeff() <= 1e-13);
    // leaf_mlp at depth 0 is the same MLP.
    treegate::tree_feedforward<double> leaf(10, 4, 6, 0, 1, activation::tanh, tree_mode::leaf_only);
    leaf.hidden_weight(0, 0) = U;
    leaf.hidden_bias(0, 0) = a;
    leaf.output_weight(0, 0) = V;
    leaf.output_bias() = c;
    CHECK((leaf.forward_batch(X) - want).cwiseAbs().maxCoeff() <= 1e-13);
}

TEST_CASE("tree_feedforward parameter_count, macs_per_example and unit counts", "[tree_feedforward]") {
    for (int D : {0, 1, 5})
        for (index_t K : {index_t{1}, index_t{3}})
            for (bool bias : {true, false}) {
                const index_t in = 11, out = 7, w = 4;
                const index_t nodes = (index_t{2} << D) - 1, leaves = index_t{1} << D;
                CAPTURE(D, K, bias);
                treegate::tree_feedforward<float> ns(in, out, w, D, K, activation::gelu, tree_mode::path_sum, bias);
                treegate::tree_feedforward<float> lm(in, out, w, D, K, activation::gelu, tree_mode::leaf_only, bias);
                const index_t mlp_params = w * in + w + out * w;
                CHECK(ns.unit_count() == nodes);
                CHECK(ns.router_count() == 0);
                CHECK(lm.unit_count() == leaves);
                CHECK(lm.router_count() == leaves - 1);
                CHECK(ns.parameter_count() == K * nodes * mlp_params + (bias ? out : 0));
                CHECK(lm.parameter_count() == K * (leaves * mlp_params + (leaves - 1) * (in + 1)) + (bias ? out : 0));
                CHECK(ns.macs_per_example() == K * (D + 1) * (w * in + out * w));
                CHECK(lm.macs_per_example() == K * (D * in + w * in + out * w));
                CHECK(ns.tree_count() == K);
                CHECK(ns.width() == w);
                CHECK(ns.depth() == D);
                CHECK(ns.activation_kind() == activation::gelu);
            }
}

TEST_CASE("tree_feedforward initialize(seed) is deterministic, seed dependent and bounded", "[tree_feedforward][init]") {
    for (auto variant : {tree_mode::path_sum, tree_mode::leaf_only}) {
        CAPTURE(treegate::to_string(variant));
        const index_t in = 16, out = 5, w = 4, K = 2;
        const int D = 3;
        treegate::tree_feedforward<float> a(in, out, w, D, K, activation::gelu, variant);
        treegate::tree_feedforward<float> b(in, out, w, D, K, activation::gelu, variant);
        treegate::tree_feedforward<float> c(in, out, w, D, K, activation::gelu, variant);
        a.initialize(100);
        b.initialize(100);
        c.initialize(101);
        const double b_in = 1.0 / std::sqrt(double(in));
        const double b_out = 1.0 / std::sqrt(double(w)) / (variant == tree_mode::path_sum ? std::sqrt(D + 1.0) : 1.0);
        bool differs = false;
        for (index_t t = 0; t < K; ++t) {
            for (index_t u = 0; u < a.unit_count(); ++u) {
                CHECK(a.hidden_weight(t, u) == b.hidden_weight(t, u));
                CHECK(a.output_weight(t, u) == b.output_weight(t, u));
                CHECK(a.hidden_bias(t, u) == b.hidden_bias(t, u));
                if (a.hidden_weight(t, u) != c.hidden_weight(t, u)) differs = true;
                CHECK(a.hidden_weight(t, u).cwiseAbs().maxCoeff() <= b_in);
                CHECK(a.hidden_bias(t, u).cwiseAbs().maxCoeff() <= b_in);
                CHECK(a.output_weight(t, u).cwiseAbs().maxCoeff() <= b_out);
                CHECK(a.hidden_weight(t, u).cwiseAbs().maxCoeff() > 0.3 * b_in);
            }
            for (index_t i = 0; i < a.router_count(); ++i) {
                CHECK(a.router_weight(t, i) == b.router_weight(t, i));
                CHECK(a.router_bias(t, i) == b.router_bias(t, i));
                CHECK(a.router_weight(t, i).cwiseAbs().maxCoeff() <= b_in);
                CHECK(a.router_weight(t, i).cwiseAbs().maxCoeff() > 0.0f);
            }
        }
        CHECK(differs);
        CHECK(a.output_bias() == b.output_bias());
        CHECK(a.output_bias().cwiseAbs().maxCoeff() <= b_out);
        // Different trees and units get different draws.
        CHECK(a.hidden_weight(0, 0) != a.hidden_weight(1, 0));
        CHECK(a.hidden_weight(0, 0) != a.hidden_weight(0, 1));
    }
}

TEST_CASE("tree_feedforward routes a NaN or zero pre-activation to child 0", "[tree_feedforward][routing]") {
    // Depth 1, width 1, identity: the root's pre-activation U x + a decides. With U = 0 and a = 0
    // (or -0) it is exactly zero; with a = NaN it is NaN. Both must take child 1 (bit 0).
    for (double a0 : {0.0, -0.0, std::numeric_limits<double>::quiet_NaN()}) {
        CAPTURE(a0);
        treegate::tree_feedforward<double> layer(3, 2, 1, 1, 1, activation::identity, tree_mode::path_sum, false);
        layer.hidden_bias(0, 0)(0) = a0;
        layer.output_weight(0, 0).setZero();  // NaN * 0 is NaN; keep the root's output out of y
        layer.hidden_weight(0, 1) << 1, 0, 0;  // child 1 (bit 0): y = x0 * [1, 1]
        layer.output_weight(0, 1) << 1, 1;
        layer.hidden_weight(0, 2) << 0, 1, 0;  // child 2 (bit 1): y = x1 * [1, 1]
        layer.output_weight(0, 2) << 1, 1;
        Eigen::VectorXd x(3), y(2);
        x << 0.25, 0.75, 0;
        layer.forward(x, y);
        if (std::isnan(a0)) {
            CHECK(std::isnan(y(0)));  // the root's NaN output reaches y (0 * NaN), whatever the route
        } else {
            CHECK(y(0) == 0.25);
            CHECK(y(1) == 0.25);
            const Eigen::MatrixXd Y = layer.forward_batch(x);
            CHECK(Y(0, 0) == 0.25);
        }
    }
    // leaf_mlp with a NaN router: leaf 0.
    treegate::tree_feedforward<double> leaf(2, 1, 1, 1, 1, activation::identity, tree_mode::leaf_only, false);
    leaf.router_bias(0, 0) = std::numeric_limits<double>::quiet_NaN();
    leaf.hidden_weight(0, 0) << 1, 0;
    leaf.output_weight(0, 0) << 1;
    leaf.hidden_weight(0, 1) << 0, 1;
    leaf.output_weight(0, 1) << 1;
    Eigen::VectorXd x(2), y(1);
    x << 0.5, 2.0;
    leaf.forward(x, y);
    CHECK(y(0) == 0.5);
    CHECK(leaf.forward_batch(x)(0, 0) == 0.5);
}

TEST_CASE("tree_feedforward fixed sizes match the dynamic layer", "[tree_feedforward][fixed]") {
    treegate::tree_feedforward<float, 12, 6, 3, 4> f(2, activation::gelu, tree_mode::path_sum);
    treegate::tree_feedforward<float> d(12, 6, 3, 4, 2, activation::gelu, tree_mode::path_sum);
    f.initialize(8);
    d.initialize(8);
    std::mt19937 g(8);
    const mat<float> X = random_matrix<float>(12, 50, g);
    CHECK(f.forward_batch(X) == d.forward_batch(X));
    Eigen::Matrix<float, 12, 1> x = X.col(0);
    Eigen::Matrix<float, 6, 1> yf;
    vec<float> yd(6);
    f.forward(x, yf);
    d.forward(X.col(0), yd);
    CHECK(yf == yd);
    CHECK(f.parameter_count() == d.parameter_count());
}

// The fused width-1 node_sum forward on trees too large for one pass in L2: the batch path that
// sorts examples by subtree, against the oracle, the single-example path and threads.
namespace {

using fused_policy_list =
    std::tuple<sp<float, treegate::kernels::reference>, sp<float, treegate::kernels::eigen>,
               sp<float, treegate::kernels::dispatch>, sp<double, treegate::kernels::eigen>>;

}  // namespace

TEMPLATE_LIST_TEST_CASE("fused tree_feedforward: sorted batches match the oracle and the single-example path",
                        "[tree_feedforward][fused]", fused_policy_list) {
    using S = typename TestType::scalar;
    using P = typename TestType::policy;
    std::mt19937 g(4242);
    // Depth 11 and 10 with 60-90 features: the trees' weights exceed the subtree budget of the
    // sorted path (512 KiB), and a few hundred examples reach its batch threshold; the odd
    // batch sizes leave partial groups in the subtrees; batch 20 takes the tiled path instead.
    struct shape {
        index_t in, out, trees, n;
        int depth;
        bool bias;
        activation act;
    };
    for (const shape sh : {shape{77, 61, 1, 1500, 11, true, activation::gelu}, shape{90, 65, 2, 701, 10, false, activation::relu},
                           shape{64, 64, 1, 20, 11, true, activation::gelu_tanh}}) {
        CAPTURE(sh.in, sh.out, sh.trees, sh.n, sh.depth, sh.bias);
        ff_t<S, P> layer(sh.in, sh.out, 1, sh.depth, sh.trees, sh.act, tree_mode::path_sum, sh.bias);
        layer.initialize(static_cast<std::uint64_t>(g()));
        const mat<S> X = random_matrix<S>(sh.in, sh.n, g);
        const auto want = oracle_tree_feedforward(layer, X);
        CHECK(want.ambiguous <= sh.n / 20 + 1);
        treegate::workspace<S> ws;
        mat<S> Y(sh.out, sh.n);
        Y.setConstant(std::numeric_limits<S>::quiet_NaN());  // every column must be written
        layer.forward_batch(X, Y, ws);
        CHECK(bound_report(Y, want.y, want.bound) == "");
        // Every path computes an example's output with the same kernel calls: the batch (sorted
        // or tiled) and the single-example forward agree bit for bit.
        vec<S> y(sh.out);
        index_t same = 0;
        for (index_t e = 0; e < sh.n; ++e) {
            layer.forward(X.col(e), y);
            same += y == Y.col(e) ? 1 : 0;
        }
        CHECK(same == sh.n);
        // Threads: bit-identical to the serial batch.
        for (int threads : {2, 3}) {
            CAPTURE(threads);
            treegate::parallel::thread_pool pool(threads);
            mat<S> Yt(sh.out, sh.n);
            Yt.setConstant(std::numeric_limits<S>::quiet_NaN());
            layer.forward_batch(X, Yt, ws, pool);
            CHECK(Yt == Y);
        }
    }
}
