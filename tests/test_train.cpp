// The training core: losses against hand computations, the lazy per-block Adam and SGD, the
// depth-scaled weight decay, seeded shuffling, bit-identical reruns and a small end-to-end fit.
#include "test_support.hpp"

#include <treegate/layers/activation_layer.hpp>
#include <treegate/layers/dense.hpp>
#include <treegate/layers/sequential.hpp>
#include <treegate/layers/tree_feedforward.hpp>
#include <treegate/layers/tree_linear.hpp>
#include <treegate/train/backward.hpp>
#include <treegate/train/data.hpp>
#include <treegate/train/gradients.hpp>
#include <treegate/train/loss.hpp>
#include <treegate/train/optimizer.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

using treegate::activation;
using treegate::gating;
using treegate::index_t;
using treegate::tree_mode;
using namespace tg_test;
namespace tt = treegate::train;

namespace {

using M = Eigen::MatrixXd;

/// A copy of every stored weight and bias of a tree_linear, block by block.
template <class Layer>
std::vector<mat<typename Layer::scalar_type>> snapshot(const Layer& layer) {
    std::vector<mat<typename Layer::scalar_type>> s;
    for (index_t b = 0; b < layer.block_count(); ++b) {
        s.push_back(layer.weight(b));
        s.push_back(layer.bias(b));
    }
    return s;
}

template <class A, class B>
bool bitwise_equal(const A& a, const B& b) {
    return a.rows() == b.rows() && a.cols() == b.cols() &&
           std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.size()) * sizeof(*a.data())) == 0;
}

}  // namespace

// ---- losses ----------------------------------------------------------------------------------------

TEST_CASE("softmax cross-entropy matches a hand computation", "[train][loss]") {
    M logits(3, 2);
    logits << 1, 0, 2, 0, 3, 0;
    const int labels[] = {2, 0};
    M grad(3, 2);
    const double loss = tt::softmax_cross_entropy(logits, labels, grad);
    // Example 0: softmax(1,2,3) = (e^-2, e^-1, 1) / Z with Z = 1 + e^-1 + e^-2; loss log Z.
    // Example 1: uniform over 3 classes; loss log 3.
    const double Z = 1 + std::exp(-1.0) + std::exp(-2.0);
    CHECK(loss == Catch::Approx((std::log(Z) + std::log(3.0)) / 2).epsilon(1e-14));
    CHECK(grad(0, 0) == Catch::Approx(std::exp(-2.0) / Z / 2).epsilon(1e-14));
    CHECK(grad(1, 0) == Catch::Approx(std::exp(-1.0) / Z / 2).epsilon(1e-14));
    CHECK(grad(2, 0) == Catch::Approx((1 / Z - 1) / 2).epsilon(1e-14));
    CHECK(grad(0, 1) == Catch::Approx((1.0 / 3 - 1) / 2).epsilon(1e-14));
    CHECK(grad(1, 1) == Catch::Approx(1.0 / 6).epsilon(1e-14));
    CHECK(tt::softmax_cross_entropy(logits, labels) == loss);

    // Large logits: no overflow, the loss is the margin and the gradient saturates.
    M big(2, 1);
    big << 1000, 0;
    const std::uint8_t wrong[] = {1};
    M gbig(2, 1);
    CHECK(tt::softmax_cross_entropy(big, wrong, gbig) == Catch::Approx(1000.0).epsilon(1e-15));
    CHECK(gbig(0, 0) == 1.0);
    CHECK(gbig(1, 0) == -1.0);

    // float works and agrees.
    const Eigen::MatrixXf lf = logits.cast<float>();
    Eigen::MatrixXf gf(3, 2);
    CHECK(static_cast<double>(tt::softmax_cross_entropy(lf, labels, gf)) == Catch::Approx(loss).epsilon(1e-6));

    const int bad[] = {2, 3};
    TG_CHECK_THROWS_WITH(treegate::shape_error, tt::softmax_cross_entropy(logits, bad, grad), "label 3", "example 1");
    // Example 0 predicts class 2 (correct); example 1 ties at 0, the first maximum: class 0 (correct).
    CHECK(tt::count_correct(logits, labels) == 2);
    const int other[] = {1, 0};
    CHECK(tt::count_correct(logits, other) == 1);

    M wrong_shape(3, 3);
    TG_CHECK_THROWS_WITH(treegate::shape_error, tt::softmax_cross_entropy(logits, labels, wrong_shape), "3 x 3");
}

TEST_CASE("mean squared error matches a hand computation", "[train][loss]") {
    M Y(2, 2), T(2, 2);
    Y << 1, 2, 3, 4;
    T << 0, 2, 5, 4;
    M grad(2, 2);
    // Differences (1, 0; -2, 0): sum of squares 5 over 4 entries.
    CHECK(tt::mean_squared_error(Y, T, grad) == 1.25);
    M want(2, 2);
    want << 0.5, 0, -1, 0;
    CHECK(grad == want);
    CHECK(tt::mean_squared_error(Y, T) == 1.25);
    TG_CHECK_THROWS_WITH(treegate::shape_error, tt::mean_squared_error(Y, M(2, 3)), "2 x 2", "2 x 3");
}

// ---- optimizers ------------------------------------------------------------------------------------

TEST_CASE("sgd with momentum matches a hand computation", "[train][optimizer]") {
    treegate::dense<double> layer(2, 1, false);
    layer.weight() << 1.0, -2.0;
    auto grad = tt::make_gradient(layer);
    tt::sgd<double> opt({0.1, 0.5, {}});
    grad.weight() << 0.5, 1.0;
    grad.mark();
    opt.step(layer, grad);  // v = g; w -= 0.1 v
    CHECK(layer.weight()(0, 0) == Catch::Approx(1.0 - 0.05).epsilon(1e-15));
    CHECK(layer.weight()(0, 1) == Catch::Approx(-2.0 - 0.1).epsilon(1e-15));
    grad.weight() << -1.0, 0.0;
    opt.step(layer, grad);  // v = 0.5 v + g = (-0.75, 0.5)
    CHECK(layer.weight()(0, 0) == Catch::Approx(0.95 + 0.075).epsilon(1e-15));
    CHECK(layer.weight()(0, 1) == Catch::Approx(-2.1 - 0.05).epsilon(1e-15));
    grad.zero();
    const Eigen::MatrixXd before = layer.weight();
    opt.step(layer, grad);  // not visited: no momentum step either
    CHECK(bitwise_equal(before, Eigen::MatrixXd(layer.weight())));

    treegate::dense<double> other(3, 1, false);
    auto other_grad = tt::make_gradient(other);
    other_grad.mark();
    TG_CHECK_THROWS_WITH(treegate::config_error, opt.step(other, other_grad), "block 0", "3 entries", "built for 2");
}

TEST_CASE("adam touches only visited blocks and counts steps per block", "[train][optimizer]") {
    // D = 3, gated by inputs 0, 1, 2. The first batch has x0 < 0 (left subtree only), the second
    // x0 > 0 (right subtree only).
    using layer_t = treegate::tree_linear<float>;
    layer_t layer(4, 2, 3, tree_mode::path_sum, gating::from_input({0, 1, 2}));
    layer.initialize(3);
    std::mt19937 g(5);
    auto make_batch = [&](float sign) {
        mat<float> X = random_matrix<float>(4, 6, g);
        for (index_t e = 0; e < 6; ++e) X(0, e) = sign * (0.1f + std::abs(X(0, e)));
        return X;
    };
    tt::adam<float>::options o;
    o.lr = 0.01;
    o.decay = {0.1, 2.0};
    tt::adam<float> opt(o);
    auto grad = tt::make_gradient(layer);
    tt::backward_workspace<float> ws;

    auto train_step = [&](const mat<float>& X) {
        const mat<float> T = random_matrix<float>(2, X.cols(), g);
        const mat<float> Y = layer.forward_batch(X);
        mat<float> dY(2, X.cols());
        tt::mean_squared_error(Y, T, dY);
        grad.zero();
        tt::backward(layer, X, dY, grad, ws);
        opt.step(layer, grad);
    };

    const auto s0 = snapshot(layer);
    train_step(make_batch(-1.0f));
    const auto s1 = snapshot(layer);
    std::vector<bool> left(static_cast<std::size_t>(layer.block_count()));
    for (index_t b = 0; b < layer.block_count(); ++b) {
        CAPTURE(b);
        const bool in_left = b == 0 || b == 1 || b == 3 || b == 4 || b == 7 || b == 8 || b == 9 || b == 10;
        left[static_cast<std::size_t>(b)] = in_left;
        const std::size_t k = static_cast<std::size_t>(2 * b);
        if (!grad.visited(b)) {
            CHECK(bitwise_equal(s0[k], s1[k]));
            CHECK(bitwise_equal(s0[k + 1], s1[k + 1]));
            CHECK(opt.steps(2 * b) == 0);
        } else {
            CHECK(in_left);
            CHECK(!bitwise_equal(s0[k], s1[k]));
            CHECK(opt.steps(2 * b) == 1);
        }
    }
    CHECK(grad.visited(0));
    CHECK(grad.visited(1));
    CHECK(!grad.visited(2));  // the right child of the root

    // Second batch: the right subtree. Left blocks other than the root stay bitwise unchanged.
    const mat<float> X2 = make_batch(1.0f);
    const mat<float> T2 = random_matrix<float>(2, 6, g);
    const mat<float> Y2 = layer.forward_batch(X2);
    mat<float> dY2(2, 6);
    tt::mean_squared_error(Y2, T2, dY2);
    grad.zero();
    tt::backward(layer, X2, dY2, grad, ws);
    const auto before = snapshot(layer);
    opt.step(layer, grad);
    const auto after = snapshot(layer);
    CHECK(opt.steps(0) == 2);
    CHECK(grad.visited(2));
    CHECK(opt.steps(2 * 2) == 1);
    for (index_t b = 1; b < layer.block_count(); ++b)
        if (left[static_cast<std::size_t>(b)]) CHECK(bitwise_equal(before[static_cast<std::size_t>(2 * b)], after[static_cast<std::size_t>(2 * b)]));

    // Node 2 (level 1) took its first Adam step: m^ = g, v^ = g^2, so the step is
    // lr * g / (|g| + eps) after the decay factor 1 - lr * 0.1 * 2^1, whatever the root's count.
    const double keep = 1.0 - 0.01 * 0.1 * 2.0;
    for (index_t c = 0; c < 4; ++c)
        for (index_t r = 0; r < 2; ++r) {
            const double w0 = before[4](r, c), gr = grad.weight(2)(r, c);
            const double want = keep * w0 - 0.01 * gr / (std::abs(gr) + 1e-8);
            CHECK(static_cast<double>(after[4](r, c)) == Catch::Approx(want).margin(1e-6));
        }
}

TEST_CASE("depth-scaled weight decay is lambda * scale^level", "[train][optimizer]") {
    CHECK(tt::weight_decay{0.5, 3.0}.at_level(0) == 0.5);
    CHECK(tt::weight_decay{0.5, 3.0}.at_level(2) == Catch::Approx(4.5).epsilon(1e-15));

    // A zero upstream gradient with every block but leaf 7 visited: Adam's step is exactly 0, so a
    // visited weight block at level j becomes w (1 - lr lambda scale^j); biases and unvisited
    // blocks do not move.
    for (tree_mode mode : {tree_mode::path_sum, tree_mode::leaf_only}) {
        CAPTURE(treegate::to_string(mode));
        treegate::tree_linear<double> layer(3, 2, 3, mode, gating::from_input({0, 1, 2}));
        layer.initialize(1);
        M X(3, 7);
        for (index_t e = 0; e < 7; ++e)
            for (index_t j = 0; j < 3; ++j) X(j, e) = ((e >> (2 - j)) & 1) != 0 ? 0.5 : -0.5;  // leaves 0..6
        auto grad = tt::make_gradient(layer);
        tt::backward_workspace<double> ws;
        tt::backward(layer, X, M::Zero(2, 7), grad, ws);
        const auto before = snapshot(layer);
        for (int kind = 0; kind < 2; ++kind) {
            const double lr = 0.1, lambda = 0.01, scale = 3.0;
            auto reset = [&] {
                for (index_t b = 0; b < layer.block_count(); ++b) {
                    layer.weight(b) = before[static_cast<std::size_t>(2 * b)];
                    layer.bias(b) = before[static_cast<std::size_t>(2 * b + 1)];
                }
            };
            reset();
            if (kind == 0) {
                tt::adam<double>::options o;
                o.lr = lr;
                o.decay = {lambda, scale};
                tt::adam<double> opt(o);
                opt.step(layer, grad);
            } else {
                tt::sgd<double> opt({lr, 0.9, {lambda, scale}});
                opt.step(layer, grad);
            }
            for (index_t b = 0; b < layer.block_count(); ++b) {
                CAPTURE(kind, b);
                const int level = mode == tree_mode::path_sum ? treegate::tree::level_of(b) : 3;
                const std::size_t k = static_cast<std::size_t>(2 * b);
                const bool unvisited = mode == tree_mode::path_sum ? b == 14 : b == 7;
                const double factor = unvisited ? 1.0 : 1.0 - lr * lambda * std::pow(scale, level);
                CHECK(grad.visited(b) == !unvisited);
                const M want = before[k] * factor;
                CHECK((M(layer.weight(b)) - want).cwiseAbs().maxCoeff() <= 1e-15);
                CHECK(bitwise_equal(before[k + 1], M(layer.bias(b))));
            }
        }
    }
}

// ---- data ------------------------------------------------------------------------------------------

TEST_CASE("seeded shuffling gives reproducible permutations", "[train][data]") {
    const auto a = tt::shuffled_indices(100, 7, 0);
    const auto b = tt::shuffled_indices(100, 7, 0);
    CHECK(a == b);
    CHECK(a != tt::shuffled_indices(100, 7, 1));
    CHECK(a != tt::shuffled_indices(100, 8, 0));
    std::vector<index_t> sorted = a;
    std::sort(sorted.begin(), sorted.end());
    for (index_t i = 0; i < 100; ++i) CHECK(sorted[static_cast<std::size_t>(i)] == i);
    CHECK(tt::shuffled_indices(0, 1, 1).empty());
    CHECK(tt::shuffled_indices(1, 1, 1) == std::vector<index_t>{0});

    // Every element lands in every position about equally often (5 positions, 20000 shuffles:
    // expected 4000 per cell, standard deviation ~57; the bound is 7 deviations).
    index_t counts[5][5] = {};
    for (std::uint64_t s = 0; s < 20000; ++s) {
        const auto p = tt::shuffled_indices(5, 42, s);
        for (index_t pos = 0; pos < 5; ++pos) ++counts[p[static_cast<std::size_t>(pos)]][pos];
    }
    for (const auto& row : counts)
        for (index_t c : row) CHECK(std::abs(c - 4000) < 400);

    M X(2, 4);
    X << 1, 2, 3, 4, 5, 6, 7, 8;
    const index_t idx[] = {3, 0};
    M out(2, 2);
    tt::gather_columns(X, idx, 2, out);
    M want(2, 2);
    want << 4, 1, 8, 5;
    CHECK(out == want);
}

// ---- determinism and an end-to-end fit -------------------------------------------------------------

namespace {

/// A small mixed model trained for a few epochs on shuffled mini-batches; returns every parameter.
std::vector<float> train_mixed_model(std::uint64_t seed) {
    using S = float;
    treegate::sequential model(treegate::dense<S>(6, 8), treegate::activation_layer<S>(activation::gelu, 8),
                               treegate::tree_linear<S>(8, 5, 2, tree_mode::path_sum, gating::from_input({0, 1})),
                               treegate::activation_layer<S>(activation::relu, 5),
                               treegate::tree_feedforward<S>(5, 3, 2, 2, 2, activation::gelu));
    model.initialize(seed);
    std::mt19937 g(static_cast<unsigned>(seed));
    const index_t n = 96, batch = 16;
    const mat<S> X = random_matrix<S>(6, n, g);
    const mat<S> T = random_matrix<S>(3, n, g);
    auto grad = tt::make_gradient(model);
    tt::adam<S>::options o;
    o.lr = 3e-3;
    o.decay = {1e-2, 2.0};
    tt::adam<S> opt(o);
    decltype(model)::workspace_type fws;
    tt::sequential_backward_workspace<S> bws;
    mat<S> Xb(6, batch), Tb(3, batch), Yb(3, batch), dY(3, batch);
    for (std::uint64_t epoch = 0; epoch < 4; ++epoch) {
        const auto order = tt::shuffled_indices(n, seed, epoch);
        for (index_t b = 0; b + batch <= n; b += batch) {
            tt::gather_columns(X, order.data() + b, batch, Xb);
            tt::gather_columns(T, order.data() + b, batch, Tb);
            model.forward_batch(Xb, Yb, fws);
            tt::mean_squared_error(Yb, Tb, dY);
            grad.zero();
            tt::backward(model, Xb, fws, dY, grad, bws);
            opt.step(model, grad);
        }
    }
    tt::param_list<S> blocks;
    grad.collect(model, blocks);
    std::vector<float> all;
    for (const auto& blk : blocks) all.insert(all.end(), blk.value, blk.value + blk.size);
    return all;
}

}  // namespace

TEST_CASE("training is bit-identical for a seed", "[train][determinism]") {
    const auto a = train_mixed_model(17);
    const auto b = train_mixed_model(17);
    REQUIRE(a.size() == b.size());
    CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
    const auto c = train_mixed_model(18);
    CHECK(std::memcmp(a.data(), c.data(), a.size() * sizeof(float)) != 0);
}

TEST_CASE("tree_linear path_sum fits a piecewise-linear target from a random tree", "[train][end_to_end]") {
    // Teacher: a D = 3 path-sum tree gated by inputs 0..2 with unit-scale weights; the student has
    // the same gating, so the target is realisable and the MSE must fall far below its start.
    using S = float;
    const index_t in = 6, out = 2, n = 1024, batch = 64;
    treegate::tree_linear<S> teacher(in, out, 3, tree_mode::path_sum, gating::from_input({0, 1, 2}));
    std::mt19937 g(2024);
    fill_random(teacher, g);
    treegate::tree_linear<S> student(in, out, 3, tree_mode::path_sum, gating::from_input({0, 1, 2}));
    student.initialize(7);
    const mat<S> X = random_matrix<S>(in, n, g);
    const mat<S> T = teacher.forward_batch(X);

    const S start = tt::mean_squared_error(student.forward_batch(X), T);
    auto grad = tt::make_gradient(student);
    tt::adam<S>::options o;
    o.lr = 0.02;
    tt::adam<S> opt(o);
    tt::backward_workspace<S> bws;
    treegate::workspace<S> fws;
    mat<S> Xb(in, batch), Tb(out, batch), Yb(out, batch), dY(out, batch);
    int steps = 0;
    for (std::uint64_t epoch = 0; steps < 400; ++epoch) {
        const auto order = tt::shuffled_indices(n, 99, epoch);
        for (index_t b = 0; b + batch <= n && steps < 400; b += batch, ++steps) {
            tt::gather_columns(X, order.data() + b, batch, Xb);
            tt::gather_columns(T, order.data() + b, batch, Tb);
            student.forward_batch(Xb, Yb, fws);
            tt::mean_squared_error(Yb, Tb, dY);
            grad.zero();
            tt::backward(student, Xb, dY, grad, bws);
            opt.step(student, grad);
        }
    }
    const S end = tt::mean_squared_error(student.forward_batch(X), T);
    CAPTURE(start, end);
    CHECK(end < start / 100);
}
