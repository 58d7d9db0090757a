// tree_feedforward's per-leaf output bias (leaf_only; the fastfeedforward package's b2s): the
// forward against the README's formula plus the reached leaf's bias, its gradient against a hand
// sum and central differences, an optimizer step, and safetensors round trips and old files.
#include "test_support.hpp"

#include <treegate/layers/parameters.hpp>
#include <treegate/layers/tree_feedforward.hpp>
#include <treegate/train/backward.hpp>
#include <treegate/train/gradients.hpp>
#include <treegate/train/optimizer.hpp>
#include <treegate/train/soft_routing.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#if defined(TREEGATE_HAS_IO)
#include "io_test_support.hpp"

#include <treegate/io/safetensors.hpp>

#include <nlohmann/json.hpp>
#endif

using treegate::activation;
using treegate::index_t;
using treegate::tie_rule;
using treegate::tree_mode;
using namespace tg_test;
namespace tt = treegate::train;

namespace {

template <class Scalar, class Policy = treegate::kernels::default_policy>
using ff = treegate::tree_feedforward<Scalar, treegate::dynamic, treegate::dynamic, treegate::dynamic, treegate::dynamic,
                                      Policy>;

/// The leaf tree t sends x to, walked in double from the README: right iff r.x + s > 0.
template <class Layer>
index_t reached_leaf(const Layer& layer, index_t t, const Eigen::VectorXd& x) {
    index_t node = 0;
    for (int level = 0; level < layer.depth(); ++level) {
        const double z = layer.router_weight(t, node).template cast<double>().dot(x) +
                         static_cast<double>(layer.router_bias(t, node));
        node = 2 * node + 1 + (z > 0 ? 1 : 0);
    }
    return node - ((index_t{1} << layer.depth()) - 1);
}

/// Random leaf biases, so that every leaf's differs from the others'.
template <class Layer>
void fill_leaf_biases(Layer& layer, std::mt19937& g) {
    using S = typename Layer::scalar_type;
    for (index_t t = 0; t < layer.tree_count(); ++t)
        for (index_t l = 0; l < layer.unit_count(); ++l)
            for (index_t o = 0; o < layer.out_size(); ++o) layer.leaf_bias(t, l)(o) = static_cast<S>(uniform(g));
}

/// The README formula (oracle_tree_feedforward, which knows no leaf biases) plus, per tree, the
/// bias of the reached leaf; one more rounded addition per tree in the bound.
template <class Layer, class Scalar>
ff_oracle_result oracle_with_leaf_bias(const Layer& layer, const mat<Scalar>& X) {
    ff_oracle_result r = oracle_tree_feedforward(layer, X);
    const double eps = static_cast<double>(std::numeric_limits<Scalar>::epsilon());
    for (index_t e = 0; e < X.cols(); ++e) {
        const Eigen::VectorXd x = X.col(e).template cast<double>();
        for (index_t t = 0; t < layer.tree_count(); ++t) {
            const Eigen::VectorXd b = layer.leaf_bias(t, reached_leaf(layer, t, x)).template cast<double>();
            r.y.col(e) += b;
            r.bound.col(e) += 4.0 * eps * (b.cwiseAbs() + r.y.col(e).cwiseAbs());
        }
    }
    return r;
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("tree_feedforward leaf biases: forward and forward_batch match the formula plus the leaf's bias",
                        "[tree_feedforward][leaf_bias]", scalar_policy_list) {
    using S = typename TestType::scalar;
    using P = typename TestType::policy;
    std::mt19937 g(41);
    for (int depth = 0; depth <= 4; ++depth) {
        for (index_t width : {index_t{1}, index_t{3}, index_t{70}}) {  // 70: the single path's chunks of 64
            const index_t in = uniform_index(g, 1, 9), out = uniform_index(g, 1, 5), trees = uniform_index(g, 1, 3);
            const bool output_bias = depth % 2 == 0;
            CAPTURE(depth, width, in, out, trees, output_bias);
            ff<S, P> layer(in, out, width, depth, trees, activation::gelu, tree_mode::leaf_only, output_bias,
                           tie_rule::greater, true);
            CHECK(layer.has_leaf_bias());
            fill_random_ff(layer, g);
            fill_leaf_biases(layer, g);
            const index_t n = 37;
            const mat<S> X = random_matrix<S>(in, n, g);
            const auto want = oracle_with_leaf_bias(layer, X);
            CHECK(want.ambiguous <= n / 4);
            const mat<S> Y = layer.forward_batch(X);
            CHECK(bound_report(Y, want.y, want.bound) == "");
            vec<S> y(out);
            for (index_t e = 0; e < n; ++e) {
                layer.forward(X.col(e), y);
                CHECK(bound_report(y, want.y.col(e), want.bound.col(e)) == "");
            }
            // An empty batch is fine.
            CHECK(layer.forward_batch(mat<S>(in, 0)).cols() == 0);
        }
    }
}

TEST_CASE("tree_feedforward leaf biases: off by default; zero biases give the bias-free layer's bits",
          "[tree_feedforward][leaf_bias]") {
    std::mt19937 g(42);
    const index_t in = 7, out = 4, width = 5, trees = 2;
    const int depth = 3;
    ff<float> plain(in, out, width, depth, trees, activation::relu, tree_mode::leaf_only);
    CHECK_FALSE(plain.has_leaf_bias());
    ff<float> biased(in, out, width, depth, trees, activation::relu, tree_mode::leaf_only, true, tie_rule::greater, true);
    plain.initialize(9);
    biased.initialize(9);  // the leaf biases draw from their own streams: the other blocks are plain's
    for (index_t t = 0; t < trees; ++t)
        for (index_t l = 0; l < plain.unit_count(); ++l) {
            CHECK(biased.hidden_weight(t, l) == plain.hidden_weight(t, l));
            CHECK(biased.output_weight(t, l) == plain.output_weight(t, l));
            CHECK(biased.leaf_bias(t, l).cwiseAbs().maxCoeff() > 0.0f);
            biased.leaf_bias(t, l).setZero();
        }
    CHECK(biased.output_bias() == plain.output_bias());
    const mat<float> X = random_matrix<float>(in, 200, g);
    CHECK(biased.forward_batch(X) == plain.forward_batch(X));
    const index_t leaf_params = trees * plain.unit_count() * out;
    CHECK(biased.parameter_count() == plain.parameter_count() + leaf_params);
    CHECK(biased.memory_bytes() >= plain.memory_bytes() + leaf_params * static_cast<index_t>(sizeof(float)));
    CHECK(treegate::parameters(plain).size() + 1 == treegate::parameters(biased).size());

    TG_CHECK_THROWS_WITH(treegate::usage_error, plain.leaf_bias(0, 0), "tree_feedforward", "no leaf biases");
    TG_CHECK_THROWS_WITH(treegate::usage_error, biased.leaf_bias(0, plain.unit_count()), "tree_feedforward", "unit");
    TG_CHECK_THROWS_WITH(treegate::config_error,
                         ff<float>(in, out, 1, depth, 1, activation::gelu, tree_mode::path_sum, true, tie_rule::greater, true),
                         "tree_feedforward", "leaf biases need mode leaf_only");
    // A moved-from layer has none.
    ff<float> moved = std::move(biased);
    CHECK(moved.has_leaf_bias());
    CHECK_FALSE(biased.has_leaf_bias());  // NOLINT(bugprone-use-after-move): the documented empty state
}

TEST_CASE("tree_feedforward leaf biases: the gradient is the sum of dY over each leaf's examples",
          "[tree_feedforward][leaf_bias][grad]") {
    std::mt19937 g(43);
    for (int depth : {0, 1, 3}) {
        const index_t in = 5, out = 3, width = 4, trees = 2, n = 23;
        CAPTURE(depth);
        ff<double> biased(in, out, width, depth, trees, activation::tanh, tree_mode::leaf_only, true, tie_rule::greater,
                          true);
        biased.initialize(static_cast<std::uint64_t>(100 + depth));
        ff<double> plain(in, out, width, depth, trees, activation::tanh, tree_mode::leaf_only, true);
        plain.initialize(static_cast<std::uint64_t>(100 + depth));
        const Eigen::MatrixXd X = random_matrix<double>(in, n, g);
        const Eigen::MatrixXd R = random_matrix<double>(out, n, g);  // dY of L = sum(R .* Y)

        tt::backward_workspace<double> ws;
        auto grad = tt::make_gradient(biased);
        auto plain_grad = tt::make_gradient(plain);
        Eigen::MatrixXd dX(in, n), plain_dX(in, n);
        tt::backward(biased, X, R, grad, dX, ws);
        tt::backward(plain, X, R, plain_grad, plain_dX, ws);
        const index_t k = grad.find("leaf_bias");
        REQUIRE(k >= 0);
        CHECK(plain_grad.find("leaf_bias") == -1);

        // Hand sum, per tree and leaf; the leaf is reached iff some example goes there.
        std::vector<Eigen::VectorXd> want(static_cast<std::size_t>(trees * biased.unit_count()),
                                          Eigen::VectorXd::Zero(out));
        std::vector<bool> reached(want.size(), false);
        for (index_t e = 0; e < n; ++e)
            for (index_t t = 0; t < trees; ++t) {
                const auto u = static_cast<std::size_t>(t * biased.unit_count() + reached_leaf(biased, t, X.col(e)));
                want[u] += R.col(e);
                reached[u] = true;
            }
        for (index_t t = 0; t < trees; ++t)
            for (index_t l = 0; l < biased.unit_count(); ++l) {
                const auto u = static_cast<std::size_t>(t * biased.unit_count() + l);
                const Eigen::Map<const Eigen::VectorXd> got(grad.block(k, static_cast<index_t>(u)), out);
                CHECK((got - want[u]).cwiseAbs().maxCoeff() <= 1e-12);
                CHECK(grad.visited(t, l) == reached[u]);
                // The rest of the gradient is the bias-free layer's, bit for bit.
                CHECK(grad.hidden_weight(t, l) == plain_grad.hidden_weight(t, l));
                CHECK(grad.output_weight(t, l) == plain_grad.output_weight(t, l));
            }
        CHECK(dX == plain_dX);

        // Central differences of L in every leaf bias entry: L is linear in them, so the
        // difference quotient is exact up to the rounding of L (a few ulps of sum |R .* Y|).
        treegate::workspace<double> fws;
        Eigen::MatrixXd Y(out, n);
        const auto loss = [&] {
            biased.forward_batch(X, Y, fws);
            return (R.array() * Y.array()).sum();
        };
        const double h = 1e-3, scale = (R.array() * biased.forward_batch(X).array()).abs().sum() + 1.0;
        for (index_t t = 0; t < trees; ++t)
            for (index_t l = 0; l < biased.unit_count(); ++l)
                for (index_t o = 0; o < out; ++o) {
                    double& b = biased.leaf_bias(t, l)(o);
                    const double saved = b;
                    b = saved + h;
                    const double lp = loss();
                    b = saved - h;
                    const double lm = loss();
                    b = saved;
                    const double numeric = (lp - lm) / (2 * h);
                    CHECK(std::abs(numeric - grad.block(k, t * biased.unit_count() + l)[o]) <= 64 * 1.2e-16 * scale / h);
                }

        // A gradient container of the bias-free layer does not fit the biased one.
        TG_CHECK_THROWS_WITH(treegate::shape_error, tt::backward(biased, X, R, plain_grad, dX, ws), "tree_feedforward",
                             "does not match the layer");

        // An optimizer step reaches the leaf biases through the gradient's collect list.
        const double lr = 0.25;
        const ff<double> before = biased;
        tt::sgd<double> opt({lr, 0.0, {}});
        opt.step(biased, grad);
        for (index_t t = 0; t < trees; ++t)
            for (index_t l = 0; l < biased.unit_count(); ++l) {
                const Eigen::Map<const Eigen::VectorXd> gl(grad.block(k, t * biased.unit_count() + l), out);
                const Eigen::VectorXd expect = before.leaf_bias(t, l) - lr * gl;
                CHECK((biased.leaf_bias(t, l) - expect).cwiseAbs().maxCoeff() <= 1e-15);
            }
    }
}

TEST_CASE("tree_feedforward leaf biases: soft routing refuses them instead of leaving them out",
          "[tree_feedforward][leaf_bias][soft]") {
    ff<double> layer(3, 2, 2, 2, 1, activation::relu, tree_mode::leaf_only, true, tie_rule::greater, true);
    layer.initialize(3);
    const Eigen::MatrixXd X = Eigen::MatrixXd::Ones(3, 4);
    Eigen::MatrixXd Y(2, 4), dX(3, 4);
    tt::soft_workspace<double> ws;
    auto grad = tt::make_gradient(layer);
    TG_CHECK_THROWS_WITH(treegate::config_error, tt::soft_forward(layer, X, Y, ws), "soft routing", "leaf biases");
    TG_CHECK_THROWS_WITH(treegate::config_error, tt::soft_backward(layer, X, Y, grad, dX, ws), "soft routing",
                         "leaf biases");
}

#if defined(TREEGATE_HAS_IO)

namespace st = treegate::safetensors;

TEST_CASE("tree_feedforward leaf biases: safetensors round trip, load_into checks, the metadata-free path",
          "[tree_feedforward][leaf_bias][io]") {
    std::mt19937 g(44);
    ff<float> layer(6, 3, 4, 2, 2, activation::gelu, tree_mode::leaf_only, false, tie_rule::greater, true);
    layer.initialize(5);
    fill_leaf_biases(layer, g);
    const auto bytes = st::save_to_memory(layer);
    const auto p = split(bytes);
    CHECK(p.header["__metadata__"]["has_leaf_bias"] == "true");
    CHECK(p.header["leaf_bias"]["shape"] == std::vector<std::uint64_t>{2, 4, 3});
    const auto again = st::load_from_memory<ff<float>>(bytes.data(), bytes.size());
    CHECK(again.has_leaf_bias());
    CHECK(st::save_to_memory(again) == bytes);
    const mat<float> X = random_matrix<float>(6, 50, g);
    CHECK(again.forward_batch(X) == layer.forward_batch(X));

    // Into a layer without leaf biases: refused, the layer unchanged.
    ff<float> plain(6, 3, 4, 2, 2, activation::gelu, tree_mode::leaf_only, false);
    plain.initialize(6);
    const auto plain_bytes = st::save_to_memory(plain);
    TG_CHECK_THROWS_WITH(treegate::file_error, st::load_into_from_memory(plain, bytes.data(), bytes.size()),
                         "has_leaf_bias is true in the file, false in the layer");
    CHECK(st::save_to_memory(plain) == plain_bytes);

    // Without metadata: the layer's description asks for leaf_bias by name and shape.
    st::load_options by_layer;
    by_layer.require_metadata = false;
    ff<float> target(6, 3, 4, 2, 2, activation::gelu, tree_mode::leaf_only, false, tie_rule::greater, true);
    st::load_into_from_memory(target, bytes.data(), bytes.size(), "<memory>", by_layer);
    CHECK(target.forward_batch(X) == layer.forward_batch(X));
    TG_CHECK_THROWS_WITH(treegate::file_error, st::load_into_from_memory(plain, bytes.data(), bytes.size(), "<memory>", by_layer),
                         "tensors the layer does not use", "'leaf_bias' [2, 4, 3]");
    TG_CHECK_THROWS_WITH(treegate::file_error,
                         st::load_into_from_memory(target, plain_bytes.data(), plain_bytes.size(), "<memory>", by_layer),
                         "tensor 'leaf_bias' is missing");

    // The key without its tensor, or the tensor without the key, is refused.
    auto q = split(bytes);
    q.header["__metadata__"].erase("has_leaf_bias");
    const auto no_key = join(q.header, q.data);
    TG_CHECK_THROWS_WITH(treegate::file_error, st::load_from_memory<ff<float>>(no_key.data(), no_key.size()),
                         "unexpected tensor 'leaf_bias'");
    q.header["__metadata__"]["has_leaf_bias"] = "yes";
    const auto bad = join(q.header, q.data);
    TG_CHECK_THROWS_WITH(treegate::file_error, st::load_from_memory<ff<float>>(bad.data(), bad.size()),
                         "metadata 'has_leaf_bias' is \"yes\"");
}

TEST_CASE("tree_feedforward files of default layers carry no new keys, and files without them load as before",
          "[tree_feedforward][leaf_bias][tie_rule][io]") {
    for (const tree_mode mode : {tree_mode::path_sum, tree_mode::leaf_only}) {
        ff<double> layer(4, 2, 3, 2, 1, activation::relu, mode);
        layer.initialize(7);
        const auto bytes = st::save_to_memory(layer, st::dtype::f64);
        const auto p = split(bytes);
        // The key set of files written before leaf biases and tie rules existed.
        std::vector<std::string> keys;
        for (const auto& item : p.header["__metadata__"].items()) keys.push_back(item.key());
        // (split() takes data_crc32 out.)
        CHECK(keys == std::vector<std::string>{"activation", "depth", "format", "has_bias", "in", "kind", "mode", "out",
                                               "treegate_version", "trees", "width"});
        const auto loaded = st::load_from_memory<ff<double>>(bytes.data(), bytes.size());
        CHECK_FALSE(loaded.has_leaf_bias());
        CHECK(loaded.tie() == tie_rule::greater);
    }
}

#endif
