// Misuse must never give a silent wrong answer (README, "Errors"): NaN inputs stay NaN through
// every activation, outputs that overlap inputs are either handled or refused, moved-from
// layers and bad indices raise treegate errors, and size arithmetic is checked to the end.
#include "test_support.hpp"

#include <treegate/treegate.hpp>
#include <treegate/train/backward.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <utility>

using treegate::activation;
using treegate::ff_variant;
using treegate::gating;
using treegate::index_t;
using treegate::tree_mode;
using tg_test::mat;
using tg_test::vec;

namespace {

const activation all_activations[] = {activation::identity, activation::relu, activation::gelu, activation::gelu_tanh,
                                      activation::tanh};

template <class S>
S nan_v() {
    return std::numeric_limits<S>::quiet_NaN();
}

}  // namespace

// ---- 1. NaN propagates through activations ------------------------------------------------------

TEMPLATE_TEST_CASE("misuse: every activation keeps NaN, in apply and apply_inplace", "[misuse][nan]", float, double) {
    using S = TestType;
    for (activation a : all_activations) {
        CAPTURE(treegate::to_string(a));
        CHECK(std::isnan(treegate::apply(a, nan_v<S>())));
        // An odd length with NaNs at the start, in the middle and at the end (vector tails).
        vec<S> v = vec<S>::LinSpaced(19, S(-3), S(3));
        v(0) = v(9) = v(18) = nan_v<S>();
        treegate::apply_inplace(a, v.data(), v.size());
        CHECK(std::isnan(v(0)));
        CHECK(std::isnan(v(9)));
        CHECK(std::isnan(v(18)));
        for (index_t i = 1; i < 18; ++i)
            if (i != 9) CHECK(std::isfinite(v(i)));
        // The derivative used by the backward pass carries the NaN as well (identity's is the
        // constant 1).
        if (a != activation::identity) CHECK(std::isnan(treegate::train::activation_derivative(a, nan_v<S>())));
    }
    // The non-NaN behaviour of ReLU is unchanged: -0 and negatives give +0, positives pass.
    CHECK(treegate::apply(activation::relu, -S(0)) == S(0));
    CHECK(!std::signbit(treegate::apply(activation::relu, -S(0))));
    CHECK(treegate::apply(activation::relu, S(-2)) == S(0));
    CHECK(treegate::apply(activation::relu, S(2)) == S(2));
    CHECK(treegate::apply(activation::relu, std::numeric_limits<S>::infinity()) == std::numeric_limits<S>::infinity());
    CHECK(treegate::train::activation_derivative(activation::relu, S(0)) == S(0));
    CHECK(treegate::train::activation_derivative(activation::relu, S(3)) == S(1));
}

TEST_CASE("misuse: activation_layer outputs NaN for a NaN input", "[misuse][nan]") {
    for (activation a : all_activations) {
        CAPTURE(treegate::to_string(a));
        treegate::activation_layer<float> layer(a, 5);
        vec<float> x(5), y(5);
        x << 1, -1, nan_v<float>(), 0, 2;
        layer.forward(x, y);
        CHECK(std::isnan(y(2)));
        CHECK(std::isfinite(y(1)));
        const mat<float> Y = layer.forward_batch(x);
        CHECK(std::isnan(Y(2, 0)));
    }
}

TEST_CASE("misuse: tree_feedforward units carry a NaN (or 0 * inf) pre-activation to the output", "[misuse][nan]") {
    // Depth 1, every unit's hidden weights 1 so that a NaN input makes every pre-activation NaN;
    // widths 1 (the fused path) and 3 (the chunked path), single and batch. The NaN gate routes
    // to child 1 (bit 0, documented); the NaN itself must reach y.
    for (index_t width : {index_t{1}, index_t{3}, index_t{70}})
        for (activation a : all_activations)
            for (ff_variant variant : {ff_variant::node_sum, ff_variant::leaf_mlp}) {
                CAPTURE(width, treegate::to_string(a), treegate::to_string(variant));
                treegate::tree_feedforward<double> layer(3, 2, width, 1, 1, a, variant, false);
                for (index_t u = 0; u < layer.unit_count(); ++u) {
                    layer.hidden_weight(0, u).setOnes();
                    layer.output_weight(0, u).setOnes();
                }
                vec<double> x(3), y(2);
                x << 0.5, nan_v<double>(), 0.25;
                layer.forward(x, y);
                CHECK(std::isnan(y(0)));
                CHECK(std::isnan(y(1)));
                const mat<double> Y = layer.forward_batch(x);
                CHECK(std::isnan(Y(0, 0)));
                // 0 * inf inside the unit: a zero weight meets an infinite input.
                for (index_t u = 0; u < layer.unit_count(); ++u) layer.hidden_weight(0, u).col(1).setZero();
                x(1) = std::numeric_limits<double>::infinity();
                layer.forward(x, y);
                CHECK(std::isnan(y(0)));
                CHECK(std::isnan(layer.forward_batch(x)(1, 0)));
            }
}
