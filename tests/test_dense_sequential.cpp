// The plain parts: dense against Eigen, the activations against their formulas, activation_layer,
// and sequential against the manual composition of its layers. Also the umbrella header.
#include "test_support.hpp"

#include <treegate/treegate.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <string>

using treegate::activation;
using treegate::gating;
using treegate::index_t;
using treegate::tree_mode;
using namespace tg_test;

TEMPLATE_LIST_TEST_CASE("dense equals W x + b computed by Eigen", "[dense]", scalar_policy_list) {
    using S = typename TestType::scalar;
    using P = typename TestType::policy;
    std::mt19937 g(42);
    for (index_t in : {index_t{1}, index_t{16}, index_t{33}, index_t{70}})
        for (index_t out : {index_t{1}, index_t{7}, index_t{64}})
            for (bool bias : {true, false}) {
                CAPTURE(in, out, bias);
                treegate::dense<S, treegate::dynamic, treegate::dynamic, P> d(in, out, bias);
                auto W = d.weight();
                for (index_t c = 0; c < in; ++c)
                    for (index_t r = 0; r < out; ++r) W(r, c) = static_cast<S>(uniform(g));
                if (bias) d.bias() = random_matrix<S>(out, 1, g);
                CHECK(d.parameter_count() == in * out + (bias ? out : 0));
                CHECK(d.macs_per_example() == in * out);
                const Eigen::MatrixXd Wd = d.weight().template cast<double>();
                const Eigen::VectorXd b = bias ? Eigen::VectorXd(d.bias().template cast<double>()) : Eigen::VectorXd::Zero(out);
                for (index_t n : {index_t{0}, index_t{1}, index_t{2}, index_t{45}}) {
                    CAPTURE(n);
                    const mat<S> X = random_matrix<S>(in, n, g);
                    const Eigen::MatrixXd Xd = X.template cast<double>();
                    const Eigen::MatrixXd want = (Wd * Xd).colwise() + b;
                    const Eigen::MatrixXd scale = (Wd.cwiseAbs() * Xd.cwiseAbs()).colwise() + b.cwiseAbs();
                    CHECK(close_report<S>(d.forward_batch(X), want, scale, static_cast<double>(in + 1)) == "");
                    vec<S> y(out);
                    for (index_t e = 0; e < n; ++e) {
                        d.forward(X.col(e), y);
                        CHECK(close_report<S>(y, want.col(e), scale.col(e), static_cast<double>(in + 1)) == "");
                    }
                }
            }
}

TEST_CASE("dense initialize, fixed sizes and strided batches", "[dense]") {
    treegate::dense<float> a(20, 9), b(20, 9), c(20, 9);
    a.initialize(1);
    b.initialize(1);
    c.initialize(2);
    CHECK(a.weight() == b.weight());
    CHECK(a.bias() == b.bias());
    CHECK(a.weight() != c.weight());
    CHECK(a.weight().cwiseAbs().maxCoeff() <= 1.0f / std::sqrt(20.0f));
    CHECK(a.weight().cwiseAbs().maxCoeff() > 0.1f);

    treegate::dense<float, 20, 9> f;
    f.weight() = a.weight();
    f.bias() = a.bias();
    std::mt19937 g(3);
    const mat<float> big = random_matrix<float>(25, 40, g);
    const mat<float> X = big.block(2, 3, 20, 30);
    CHECK(f.forward_batch(X) == a.forward_batch(X));
    // Strided input and output views give the same numbers as contiguous copies.
    mat<float> Ybig = mat<float>::Constant(12, 33, -5.0f);
    treegate::workspace<float> ws;
    a.forward_batch(big.block(2, 3, 20, 30), Ybig.block(1, 2, 9, 30), ws);
    CHECK(Ybig.block(1, 2, 9, 30) == a.forward_batch(X));
    CHECK((Ybig.row(0).array() == -5.0f).all());
    CHECK((Ybig.col(0).array() == -5.0f).all());
}

TEMPLATE_TEST_CASE("activations match their formulas", "[activation]", float, double) {
    using S = TestType;
    const double eps = static_cast<double>(std::numeric_limits<S>::epsilon());
    const double sqrt2 = std::sqrt(2.0), pi = 3.14159265358979323846;
    for (int i = -800; i <= 800; ++i) {
        const double v = i / 100.0;
        const S vs = static_cast<S>(v);
        const double vd = static_cast<double>(vs);
        CAPTURE(vd);
        const double gelu = 0.5 * vd * (1.0 + std::erf(vd / sqrt2));
        const double gelu_tanh = 0.5 * vd * (1.0 + std::tanh(std::sqrt(2.0 / pi) * (vd + 0.044715 * vd * vd * vd)));
        // A few ulps of the inputs' magnitude: erf/tanh are accurate to ~1 ulp and 0.5 v (1 + .)
        // adds three roundings; |v| + |result| bounds every intermediate.
        const double tol_g = 8 * eps * (std::abs(vd) + std::abs(gelu)) + 1e-300;
        CHECK(std::abs(static_cast<double>(treegate::apply(activation::gelu, vs)) - gelu) <= tol_g);
        const double tol_t = 8 * eps * (std::abs(vd) + std::abs(gelu_tanh)) + 1e-300;
        CHECK(std::abs(static_cast<double>(treegate::apply(activation::gelu_tanh, vs)) - gelu_tanh) <= tol_t);
        CHECK(std::abs(static_cast<double>(treegate::apply(activation::tanh, vs)) - std::tanh(vd)) <= 4 * eps);
        CHECK(treegate::apply(activation::relu, vs) == (vs > 0 ? vs : S(0)));
        CHECK(treegate::apply(activation::identity, vs) == vs);
    }
    // Known values: GELU(1) = 0.8413447460685429..., and the erf and tanh forms differ there.
    CHECK(static_cast<double>(treegate::apply(activation::gelu, S(1))) == Catch::Approx(0.8413447460685429).epsilon(4 * eps));
    CHECK(static_cast<double>(treegate::apply(activation::gelu_tanh, S(1))) ==
          Catch::Approx(0.8411919906082768).epsilon(4 * eps));
    CHECK(treegate::apply(activation::gelu, S(0)) == S(0));
    CHECK(treegate::apply(activation::relu, -S(0)) == S(0));
    CHECK(std::string(treegate::to_string(activation::gelu)) == "gelu");
    CHECK(std::string(treegate::to_string(activation::gelu_tanh)) == "gelu_tanh");

    // apply_inplace agrees with apply, element by element, on an odd length.
    for (auto a : {activation::identity, activation::relu, activation::gelu, activation::gelu_tanh, activation::tanh}) {
        CAPTURE(treegate::to_string(a));
        std::mt19937 g(static_cast<unsigned>(a) + 1u);
        vec<S> v = S(4) * random_matrix<S>(37, 1, g);
        const vec<S> orig = v;
        treegate::apply_inplace(a, v.data(), v.size());
        for (index_t i = 0; i < v.size(); ++i) CHECK(v(i) == treegate::apply(a, orig(i)));
    }
}

TEST_CASE("activation_layer applies its activation to batches and single examples", "[activation]") {
    std::mt19937 g(9);
    const mat<float> X = 3.0f * random_matrix<float>(13, 21, g);
    for (auto a : {activation::identity, activation::relu, activation::gelu, activation::gelu_tanh, activation::tanh}) {
        CAPTURE(treegate::to_string(a));
        treegate::activation_layer<float> layer(a, 13);
        CHECK(layer.kind() == a);
        CHECK(layer.parameter_count() == 0);
        CHECK(layer.macs_per_example() == 0);
        const mat<float> want = X.unaryExpr([a](float v) { return treegate::apply(a, v); });
        CHECK(layer.forward_batch(X) == want);
        vec<float> y(13);
        layer.forward(X.col(4), y);
        CHECK(y == want.col(4));
    }
}

TEMPLATE_LIST_TEST_CASE("sequential dense -> activation -> tree_linear equals the manual composition",
                        "[sequential]", scalar_policy_list) {
    using S = typename TestType::scalar;
    using P = typename TestType::policy;
    using dense_t = treegate::dense<S, treegate::dynamic, treegate::dynamic, P>;
    using tree_t = treegate::tree_linear<S, treegate::dynamic, treegate::dynamic, treegate::dynamic, P>;
    const index_t in = 23, hidden = 17, out = 9;
    dense_t d(in, hidden);
    treegate::activation_layer<S> act(activation::gelu, hidden);
    tree_t t(hidden, out, 3, tree_mode::path_sum, gating::from_input({0, 8, 16}));
    d.initialize(1);
    t.initialize(2);
    treegate::sequential model(d, act, t);
    CHECK(model.in_size() == in);
    CHECK(model.out_size() == out);
    CHECK(model.parameter_count() == d.parameter_count() + t.parameter_count());
    CHECK(model.macs_per_example() == d.macs_per_example() + t.macs_per_example());

    std::mt19937 g(6);
    typename decltype(model)::workspace_type ws;
    for (index_t n : {index_t{0}, index_t{1}, index_t{50}, index_t{7}}) {
        CAPTURE(n);
        const mat<S> X = random_matrix<S>(in, n, g);
        // The same layers, called by hand on the same data, run the same operations in the same
        // order: the results are identical.
        const mat<S> manual = t.forward_batch(act.forward_batch(d.forward_batch(X)));
        CHECK(model.forward_batch(X) == manual);
        mat<S> Y(out, n);
        model.forward_batch(X, Y, ws);
        CHECK(Y == manual);
        vec<S> y(out), h(hidden), z(hidden), y_manual(out);
        for (index_t e = 0; e < n; ++e) {
            model.forward(X.col(e), y, ws);
            d.forward(X.col(e), h);
            act.forward(h, z);
            t.forward(z, y_manual);
            CHECK(y == y_manual);
        }
    }
    // The model holds copies: changing the originals does not change it, layer<I>() does.
    const mat<S> X = random_matrix<S>(in, 5, g);
    const mat<S> before = model.forward_batch(X);
    d.weight().setZero();
    CHECK(model.forward_batch(X) == before);
    model.template layer<0>().weight().setZero();
    CHECK(model.forward_batch(X) != before);
}

TEST_CASE("sequential with tree_feedforward and blocked trees; initialize seeds layer i with seed + i", "[sequential]") {
    treegate::dense<float> d(12, 8);
    treegate::tree_feedforward<float> ff(8, 8, 2, 3, 2, activation::gelu);
    treegate::sliced_tree_linear<float> b(4, 5, 1, tree_mode::leaf_only, treegate::slice_combine::concat, {{0}, {1}});
    treegate::sequential model(d, ff, b);
    model.initialize(10);
    d.initialize(10);
    ff.initialize(11);
    b.initialize(12);
    std::mt19937 g(4);
    const mat<float> X = random_matrix<float>(12, 33, g);
    const mat<float> manual = b.forward_batch(ff.forward_batch(d.forward_batch(X)));
    CHECK(model.forward_batch(X) == manual);
    decltype(model)::workspace_type ws;
    vec<float> y(10), ym(10), h(8), z(8);
    for (index_t e = 0; e < 33; e += 4) {
        model.forward(X.col(e), y, ws);
        d.forward(X.col(e), h);
        ff.forward(h, z);
        b.forward(z, ym);
        CHECK(y == ym);
    }
    CHECK(model.out_size() == 10);
    CHECK(model.parameter_count() == d.parameter_count() + ff.parameter_count() + b.parameter_count());
}

TEST_CASE("umbrella header and version", "[packaging]") {
    CHECK(std::string(treegate::version_string()) ==
          std::to_string(TREEGATE_VERSION_MAJOR) + "." + std::to_string(TREEGATE_VERSION_MINOR) + "." +
              std::to_string(TREEGATE_VERSION_PATCH));
    CHECK(treegate::max_depth == 30);
    CHECK(std::string(treegate::kernels::reference::name()) == "reference");
    CHECK(std::string(treegate::kernels::eigen::name()) == "eigen");
    CHECK(std::is_same_v<treegate::kernels::default_policy, treegate::kernels::dispatch>);
    CHECK(std::string(treegate::to_string(tree_mode::path_sum)) == "path_sum");
    CHECK(std::string(treegate::to_string(tree_mode::leaf_only)) == "leaf_only");
}
