// Gradient checks: every backward pass (dense, activations, tree_linear in both modes and both
// gating kinds, tree_feedforward node_sum / leaf_mlp, sequential) against central finite
// differences in double, with inputs drawn away from every gate flip and ReLU kink.
#include "test_support.hpp"

#include <treegate/layers/activation_layer.hpp>
#include <treegate/layers/dense.hpp>
#include <treegate/layers/sequential.hpp>
#include <treegate/layers/tree_feedforward.hpp>
#include <treegate/layers/tree_linear.hpp>
#include <treegate/layers/sliced_tree_linear.hpp>
#include <treegate/train/backward.hpp>
#include <treegate/train/gradients.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

using treegate::activation;
using treegate::tree_mode;
using treegate::gating;
using treegate::index_t;
using namespace tg_test;
namespace tt = treegate::train;

namespace {

using M = Eigen::MatrixXd;
using V = Eigen::VectorXd;

// Gate values, route pre-activations and ReLU inputs are kept at least this far from 0, so no
// perturbation of size h (times weights of size <= 1 and inputs of size <= 1) can flip them.
constexpr double margin = 0.05;
constexpr double h = 1e-6;

/// L = sum(R .* Y): its gradient with respect to Y is R, so backward(dY = R) must reproduce the
/// finite differences of L.
struct probe {
    M R;
    double loss(const M& Y) const { return (R.array() * Y.array()).sum(); }
    /// sum |R .* Y| + 1, the size of the terms L sums.
    double scale(const M& Y) const { return (R.array() * Y.array()).abs().sum() + 1.0; }
};

/// Central differences in double: L(p + h) - L(p - h) carries a rounding error of a few ulps of
/// the terms of L (<= 8 u S / h with S = sum |R .* Y|, u = 2^-53, i.e. about 1e-9 for S ~ 10);
/// the truncation error is h^2 / 6 |L'''| (0 for the linear layers, < 1e-11 for GELU and tanh
/// units here). The tolerance takes those two bounds plus 1e-6 of the derivative itself; a
/// wrong gradient (a missing block, a transposed product, a dropped bias) is off by O(1).
struct fd_tolerance {
    double abs;
    double check(double analytic, double numeric) const { return std::abs(analytic - numeric) / (abs + 1e-6 * std::abs(numeric)); }
};

inline fd_tolerance tolerance_for(double loss_scale) {
    const double u = std::numeric_limits<double>::epsilon() / 2;
    return {8 * u * loss_scale / h + h * h * loss_scale};
}

/// Compares analytic[i] with the central difference of `loss()` in the entry p[i], i < n;
/// returns "" or a description of the worst entry.
template <class Loss>
std::string fd_compare(double* p, const double* analytic, index_t n, const Loss& loss, const fd_tolerance& tol,
                       const std::string& what) {
    double worst = 0;
    index_t worst_i = -1;
    double worst_a = 0, worst_n = 0;
    for (index_t i = 0; i < n; ++i) {
        const double saved = p[i];
        p[i] = saved + h;
        const double lp = loss();
        p[i] = saved - h;
        const double lm = loss();
        p[i] = saved;
        const double numeric = (lp - lm) / (2 * h);
        const double ratio = tol.check(analytic[i], numeric);
        if (!(ratio <= worst)) {
            worst = ratio;
            worst_i = i;
            worst_a = analytic[i];
            worst_n = numeric;
        }
    }
    if (worst <= 1.0) return {};
    std::ostringstream os;
    os.precision(12);
    os << what << ": entry " << worst_i << " analytic " << worst_a << " numeric " << worst_n << " error/tolerance "
       << worst;
    return os.str();
}

/// Finite-difference check of every parameter the gradient container exposes (its collect list).
template <class Layer, class Grad, class Forward>
std::string check_params(Layer& layer, const Grad& grad, const probe& pr, const Forward& forward) {
    tt::param_list<double> blocks;
    grad.collect(layer, blocks);
    const fd_tolerance tol = tolerance_for(pr.scale(forward()));
    const auto loss = [&] { return pr.loss(forward()); };
    for (std::size_t k = 0; k < blocks.size(); ++k) {
        const auto& b = blocks[k];
        std::string r = fd_compare(b.value, b.grad, b.size, loss, tol, "parameter block " + std::to_string(k));
        if (!r.empty()) return r;
        // A block nobody visited must have an exactly zero gradient.
        if (!b.visited)
            for (index_t i = 0; i < b.size; ++i)
                if (b.grad[i] != 0.0) return "unvisited block " + std::to_string(k) + " has a nonzero gradient";
    }
    return {};
}

/// Finite-difference check of dX.
template <class Forward>
std::string check_input(M& X, const M& dX, const probe& pr, const Forward& forward) {
    const fd_tolerance tol = tolerance_for(pr.scale(forward()));
    return fd_compare(X.data(), dX.data(), X.size(), [&] { return pr.loss(forward()); }, tol, "input");
}

/// Uniform(-1, 1) with |value| >= margin.
double away_from_zero(std::mt19937& g) {
    double v = 0;
    do v = uniform(g);
    while (std::abs(v) < margin);
    return v;
}

M random_away(index_t rows, index_t cols, std::mt19937& g) {
    M m(rows, cols);
    for (index_t c = 0; c < cols; ++c)
        for (index_t r = 0; r < rows; ++r) m(r, c) = away_from_zero(g);
    return m;
}

// ---- tree_feedforward oracle (the README's formula section): routes, margins, units reached ---------------

/// Smallest |value| among the route decisions of column x (and among every hidden
/// pre-activation when the activation is ReLU); appends the units reached as t * units + i.
template <class FF>
double ff_margin(const FF& f, const V& x, std::vector<index_t>* reached) {
    double m = std::numeric_limits<double>::infinity();
    const int D = f.depth();
    const bool relu = f.activation_kind() == activation::relu;
    for (index_t t = 0; t < f.tree_count(); ++t) {
        index_t node = 0;
        if (f.mode() == tree_mode::path_sum) {
            for (int level = 0; level <= D; ++level) {
                const V pre = f.hidden_weight(t, node) * x + f.hidden_bias(t, node);
                if (level < D) m = std::min(m, std::abs(pre(0)));
                if (relu) m = std::min(m, pre.cwiseAbs().minCoeff());
                if (reached) reached->push_back(t * f.unit_count() + node);
                node = 2 * node + 1 + (pre(0) > 0 ? 1 : 0);
            }
        } else {
            for (int level = 0; level < D; ++level) {
                const double g = f.router_weight(t, node).dot(x) + f.router_bias(t, node);
                m = std::min(m, std::abs(g));
                node = 2 * node + 1 + (g > 0 ? 1 : 0);
            }
            const index_t leaf = node - ((index_t{1} << D) - 1);
            const V pre = f.hidden_weight(t, leaf) * x + f.hidden_bias(t, leaf);
            if (relu) m = std::min(m, pre.cwiseAbs().minCoeff());
            if (reached) reached->push_back(t * f.unit_count() + leaf);
        }
    }
    return m;
}

/// Redraws each column of X until every route decision (and ReLU input) is >= margin from 0.
template <class FF>
void ff_redraw(const FF& f, M& X, std::mt19937& g) {
    for (index_t c = 0; c < X.cols(); ++c) {
        int tries = 0;
        while (ff_margin(f, X.col(c), nullptr) < margin) {
            REQUIRE(++tries < 100000);
            for (index_t r = 0; r < X.rows(); ++r) X(r, c) = uniform(g);
        }
    }
}

}  // namespace

// ---- activations -----------------------------------------------------------------------------------

TEST_CASE("activation derivatives match central differences", "[grad][activation]") {
    const activation acts[] = {activation::identity, activation::relu, activation::gelu, activation::gelu_tanh,
                               activation::tanh};
    for (activation a : acts) {
        CAPTURE(treegate::to_string(a));
        for (int k = -400; k <= 400; ++k) {
            const double v = k * 0.01 + 0.00123;  // never exactly 0: ReLU stays away from its kink
            if (a == activation::relu && std::abs(v) < margin) continue;
            const double numeric = (treegate::apply(a, v + h) - treegate::apply(a, v - h)) / (2 * h);
            const double analytic = tt::activation_derivative(a, v);
            CAPTURE(v, analytic, numeric);
            // |act| <= |v| + 1 <= 5 here: rounding <= 8 u 5 / h ~ 5e-9; truncation h^2 |act'''| / 6 < 1e-12.
            CHECK(std::abs(analytic - numeric) <= 1e-8);
        }
    }
    CHECK(tt::activation_derivative(activation::relu, 0.0) == 0.0);
    CHECK(tt::activation_derivative(activation::gelu, 0.0) == Catch::Approx(0.5));
    CHECK(tt::activation_derivative(activation::tanh, 0.0) == 1.0);
}

TEST_CASE("activation_layer backward matches finite differences", "[grad][activation]") {
    std::mt19937 g(11);
    const activation acts[] = {activation::identity, activation::relu, activation::gelu, activation::gelu_tanh,
                               activation::tanh};
    for (activation a : acts) {
        CAPTURE(treegate::to_string(a));
        treegate::activation_layer<double> layer(a, 7);
        M X = 2.0 * random_away(7, 9, g);
        const probe pr{random_matrix<double>(7, 9, g)};
        tt::backward_workspace<double> ws;
        tt::no_gradient grad(layer);
        M dX(7, 9);
        tt::backward(layer, X, pr.R, grad, dX, ws);
        CHECK(check_input(X, dX, pr, [&] { return M(layer.forward_batch(X)); }) == "");
    }
}

// ---- dense -----------------------------------------------------------------------------------------

TEST_CASE("dense backward matches finite differences", "[grad][dense]") {
    std::mt19937 g(12);
    const index_t sizes[][2] = {{1, 1}, {3, 5}, {7, 2}, {9, 11}};
    for (const auto& s : sizes)
        for (bool bias : {true, false}) {
            CAPTURE(s[0], s[1], bias);
            treegate::dense<double> layer(s[0], s[1], bias);
            layer.initialize(5);
            const index_t n = 13;
            M X = random_matrix<double>(s[0], n, g);
            const probe pr{random_matrix<double>(s[1], n, g)};
            tt::backward_workspace<double> ws;
            auto grad = tt::make_gradient(layer);
            M dX(s[0], n);
            tt::backward(layer, X, pr.R, grad, dX, ws);
            CHECK(grad.visited());
            const auto fwd = [&] { return M(layer.forward_batch(X)); };
            CHECK(check_params(layer, grad, pr, fwd) == "");
            CHECK(check_input(X, dX, pr, fwd) == "");
            // Accumulation: a second pass doubles the gradient; zero() clears it.
            const M first = grad.weight();
            tt::backward(layer, X, pr.R, grad, ws);
            CHECK((grad.weight() - 2 * first).cwiseAbs().maxCoeff() <= 1e-12 * (first.cwiseAbs().maxCoeff() + 1));
            grad.zero();
            CHECK(grad.weight().isZero(0));
            CHECK(!grad.visited());
        }
}

// ---- tree_linear -----------------------------------------------------------------------------------

TEST_CASE("tree_linear backward matches finite differences", "[grad][tree_linear]") {
    const tree_mode mode = GENERATE(tree_mode::path_sum, tree_mode::leaf_only);
    const bool external = GENERATE(false, true);
    CAPTURE(treegate::to_string(mode), external);
    std::mt19937 g(100 + static_cast<unsigned>(mode) * 2 + (external ? 1 : 0));
    const index_t sizes[][2] = {{1, 1}, {5, 3}, {3, 7}};
    for (int depth = 0; depth <= 4; ++depth)
        for (const auto& s : sizes) {
            const index_t in = std::max<index_t>(s[0], depth > 0 && !external ? 2 : 1), out = s[1];
            const bool bias = (depth + s[0]) % 2 == 0;
            const index_t n = 17;
            CAPTURE(depth, in, out, bias);
            const std::vector<index_t> idx = external ? std::vector<index_t>{} : random_gating_indices(depth, in, g);
            treegate::tree_linear<double> layer(in, out, depth, mode, external ? gating::external() : gating::from_input(idx),
                                                bias);
            fill_random(layer, g);
            M X = random_matrix<double>(in, n, g);
            for (index_t e = 0; e < n; ++e)
                for (index_t i : idx) X(i, e) = away_from_zero(g);
            const M G = random_away(external ? depth : 0, n, g);
            const probe pr{random_matrix<double>(out, n, g)};

            tt::backward_workspace<double> ws;
            auto grad = tt::make_gradient(layer);
            M dX(in, n);
            if (external)
                tt::backward(layer, X, G, pr.R, grad, dX, ws);
            else
                tt::backward(layer, X, pr.R, grad, dX, ws);

            // Visited blocks are exactly those on some example's path.
            std::set<index_t> reached;
            for (index_t e = 0; e < n; ++e) {
                const std::uint64_t code = external ? oracle_code_from_gates(G.col(e)) : oracle_code_from_input(X.col(e), idx);
                if (mode == tree_mode::path_sum)
                    for (int j = 0; j <= depth; ++j) reached.insert(oracle_path_node(code, depth, j));
                else
                    reached.insert(static_cast<index_t>(code));
            }
            for (index_t b = 0; b < layer.block_count(); ++b) CHECK(grad.visited(b) == (reached.count(b) == 1));
            CHECK(grad.visited_blocks().size() == reached.size());

            treegate::workspace<double> fws;
            M Y(out, n);
            const auto fwd = [&] {
                if (external)
                    layer.forward_batch(X, G, Y, fws);
                else
                    layer.forward_batch(X, Y, fws);
                return Y;
            };
            CHECK(check_params(layer, grad, pr, fwd) == "");
            CHECK(check_input(X, dX, pr, fwd) == "");

            // zero() clears exactly the visited blocks.
            grad.zero();
            CHECK(grad.visited_blocks().empty());
            for (index_t b = 0; b < layer.block_count(); ++b) CHECK(grad.weight(b).isZero(0));
        }
}

TEST_CASE("sliced_tree_linear backward matches finite differences", "[grad][tree_linear]") {
    const treegate::slice_combine combine = GENERATE(treegate::slice_combine::sum, treegate::slice_combine::concat);
    const tree_mode mode = GENERATE(tree_mode::path_sum, tree_mode::leaf_only);
    std::mt19937 g(300 + static_cast<unsigned>(combine) * 2 + static_cast<unsigned>(mode));
    for (int depth = 0; depth <= 3; ++depth) {
        const index_t si = 3, so = 2, trees = 3, n = 13;
        CAPTURE(static_cast<int>(combine), treegate::to_string(mode), depth);
        std::vector<std::vector<index_t>> idx;
        for (index_t t = 0; t < trees; ++t) idx.push_back(random_gating_indices(depth, si, g));
        treegate::sliced_tree_linear<double> layer(si, so, depth, mode, combine, idx);
        for (index_t t = 0; t < trees; ++t) fill_random(layer.tree(t), g);
        M X = random_matrix<double>(si * trees, n, g);
        for (index_t t = 0; t < trees; ++t)
            for (index_t e = 0; e < n; ++e)
                for (index_t i : idx[static_cast<std::size_t>(t)]) X(t * si + i, e) = away_from_zero(g);
        const probe pr{random_matrix<double>(layer.out_size(), n, g)};
        tt::backward_workspace<double> ws;
        auto grad = tt::make_gradient(layer);
        M dX(si * trees, n);
        tt::backward(layer, X, pr.R, grad, dX, ws);
        treegate::workspace<double> fws;
        M Y(layer.out_size(), n);
        const auto fwd = [&] {
            layer.forward_batch(X, Y, fws);
            return Y;
        };
        CHECK(check_params(layer, grad, pr, fwd) == "");
        CHECK(check_input(X, dX, pr, fwd) == "");
    }
}

// ---- tree_feedforward ------------------------------------------------------------------------------

namespace {

void check_tree_feedforward(index_t in, index_t out, index_t width, int depth, index_t trees, activation act,
                            tree_mode variant, bool output_bias, std::uint64_t seed) {
    CAPTURE(in, out, width, depth, trees, treegate::to_string(act), treegate::to_string(variant), output_bias);
    std::mt19937 g(static_cast<unsigned>(seed));
    treegate::tree_feedforward<double> layer(in, out, width, depth, trees, act, variant, output_bias);
    layer.initialize(seed);
    const index_t n = 19;
    M X = random_matrix<double>(in, n, g);
    ff_redraw(layer, X, g);
    const probe pr{random_matrix<double>(out, n, g)};

    tt::backward_workspace<double> ws;
    auto grad = tt::make_gradient(layer);
    M dX(in, n);
    tt::backward(layer, X, pr.R, grad, dX, ws);

    std::vector<index_t> reached_list;
    for (index_t e = 0; e < n; ++e) ff_margin(layer, X.col(e), &reached_list);
    const std::set<index_t> reached(reached_list.begin(), reached_list.end());
    for (index_t t = 0; t < trees; ++t)
        for (index_t i = 0; i < layer.unit_count(); ++i)
            CHECK(grad.visited(t, i) == (reached.count(t * layer.unit_count() + i) == 1));

    treegate::workspace<double> fws;
    M Y(out, n);
    const auto fwd = [&] {
        layer.forward_batch(X, Y, fws);
        return Y;
    };
    CHECK(check_params(layer, grad, pr, fwd) == "");
    CHECK(check_input(X, dX, pr, fwd) == "");
}

}  // namespace

TEST_CASE("tree_feedforward node_sum backward matches finite differences", "[grad][tree_feedforward]") {
    const index_t width = GENERATE(1, 3);
    const index_t trees = GENERATE(1, 2);
    const activation act = GENERATE(activation::gelu, activation::relu);
    for (int depth = 0; depth <= 4; ++depth) {
        check_tree_feedforward(5, 3, width, depth, trees, act, tree_mode::path_sum, true,
                               static_cast<std::uint64_t>(1000 + 10 * depth + width));
        check_tree_feedforward(3, 1, width, depth, trees, act, tree_mode::path_sum, false,
                               static_cast<std::uint64_t>(2000 + 10 * depth + width));
    }
}

TEST_CASE("tree_feedforward backward with the other activations", "[grad][tree_feedforward]") {
    for (activation act : {activation::gelu_tanh, activation::tanh, activation::identity})
        for (int depth : {0, 2}) check_tree_feedforward(4, 3, 3, depth, 2, act, tree_mode::path_sum, true, 3000);
}

TEST_CASE("tree_feedforward leaf_mlp backward matches finite differences", "[grad][tree_feedforward]") {
    const activation act = GENERATE(activation::gelu, activation::relu);
    for (int depth = 0; depth <= 4; ++depth) {
        check_tree_feedforward(5, 3, 3, depth, 1, act, tree_mode::leaf_only, true, static_cast<std::uint64_t>(4000 + depth));
        check_tree_feedforward(3, 2, 1, depth, 2, act, tree_mode::leaf_only, false, static_cast<std::uint64_t>(5000 + depth));
    }
}

TEST_CASE("tree_feedforward backward with the reference policy", "[grad][tree_feedforward]") {
    std::mt19937 g(77);
    using ref_ff = treegate::tree_feedforward<double, treegate::dynamic, treegate::dynamic, treegate::dynamic,
                                              treegate::dynamic, treegate::kernels::reference>;
    ref_ff layer(5, 3, 3, 3, 2, activation::gelu, tree_mode::path_sum);
    layer.initialize(9);
    M X = random_matrix<double>(5, 21, g);
    ff_redraw(layer, X, g);
    const probe pr{random_matrix<double>(3, 21, g)};
    tt::backward_workspace<double> ws;
    auto grad = tt::make_gradient(layer);
    M dX(5, 21);
    tt::backward(layer, X, pr.R, grad, dX, ws);
    const auto fwd = [&] { return M(layer.forward_batch(X)); };
    CHECK(check_params(layer, grad, pr, fwd) == "");
    CHECK(check_input(X, dX, pr, fwd) == "");
}

// ---- sequential ------------------------------------------------------------------------------------

TEST_CASE("sequential backward chains the layers", "[grad][sequential]") {
    std::mt19937 g(31);
    using S = double;
    treegate::sequential model(treegate::dense<S>(5, 7), treegate::activation_layer<S>(activation::relu, 7),
                               treegate::tree_linear<S>(7, 4, 2, tree_mode::path_sum, gating::from_input({0, 3})),
                               treegate::activation_layer<S>(activation::gelu, 4),
                               treegate::tree_feedforward<S>(4, 3, 2, 2, 2, activation::gelu));
    model.initialize(3);
    const index_t n = 15;
    M X = random_matrix<double>(5, n, g);
    // Away from flips: every ReLU input (hence the tree_linear gates, ReLU outputs) and every
    // tree_feedforward route decision at least `margin` from 0.
    for (index_t e = 0; e < n; ++e) {
        int tries = 0;
        for (;;) {
            const V a = model.layer<0>().forward_batch(X.col(e));
            bool ok = a.cwiseAbs().minCoeff() >= margin;
            if (ok) {
                const V z = model.layer<2>().forward_batch(a.cwiseMax(0.0));
                const V u = model.layer<3>().forward_batch(z);
                ok = ff_margin(model.layer<4>(), u, nullptr) >= margin;
            }
            if (ok) break;
            REQUIRE(++tries < 100000);
            for (index_t r = 0; r < 5; ++r) X(r, e) = uniform(g);
        }
    }
    const probe pr{random_matrix<double>(3, n, g)};

    decltype(model)::workspace_type fws;
    M Y(3, n);
    model.forward_batch(X, Y, fws);
    auto grad = tt::make_gradient(model);
    tt::sequential_backward_workspace<double> ws;
    M dX(5, n);
    tt::backward(model, X, fws, pr.R, grad, dX, ws);

    const auto fwd = [&] {
        model.forward_batch(X, Y, fws);
        return Y;
    };
    CHECK(check_params(model, grad, pr, fwd) == "");
    CHECK(check_input(X, dX, pr, fwd) == "");

    // Without dX the parameter gradients are the same.
    model.forward_batch(X, Y, fws);
    auto grad2 = tt::make_gradient(model);
    tt::backward(model, X, fws, pr.R, grad2, ws);
    CHECK(grad2.layer<0>().weight() == grad.layer<0>().weight());
}

TEST_CASE("backward rejects mismatched shapes and gating calls", "[grad][errors]") {
    tt::backward_workspace<double> ws;
    treegate::dense<double> d(3, 2);
    auto gd = tt::make_gradient(d);
    M dX(3, 4);
    TG_CHECK_THROWS_WITH(treegate::shape_error, tt::backward(d, M(4, 4), M(2, 4), gd, dX, ws), "dense", "4 rows",
                         "expected 3");
    TG_CHECK_THROWS_WITH(treegate::shape_error, tt::backward(d, M(3, 4), M(2, 5), gd, dX, ws), "output gradient",
                         "2 x 5");
    M small(3, 3);
    TG_CHECK_THROWS_WITH(treegate::shape_error, tt::backward(d, M(3, 4), M(2, 4), gd, small, ws), "input gradient",
                         "3 x 3");
    treegate::dense<double> other(3, 5);
    TG_CHECK_THROWS_WITH(treegate::shape_error, tt::backward(other, M(3, 4), M(5, 4), gd, ws), "does not match");

    treegate::tree_linear<double> ext(3, 2, 2, tree_mode::path_sum, gating::external());
    auto ge = tt::make_gradient(ext);
    TG_CHECK_THROWS_WITH(treegate::config_error, tt::backward(ext, M(3, 4), M(2, 4), ge, ws), "gated externally");
    TG_CHECK_THROWS_WITH(treegate::shape_error, tt::backward(ext, M(3, 4), M(1, 4), M(2, 4), ge, ws), "gate matrix",
                         "1 x 4");
    treegate::tree_linear<double> inp(3, 2, 1, tree_mode::path_sum, gating::from_input({0}));
    auto gi = tt::make_gradient(inp);
    TG_CHECK_THROWS_WITH(treegate::config_error, tt::backward(inp, M(3, 4), M(1, 4), M(2, 4), gi, ws), "gated by its input");
    TG_CHECK_THROWS_WITH(treegate::shape_error, tt::backward(inp, M(3, 4), M(2, 4), ge, ws), "does not match");

    treegate::tree_feedforward<double> ff(3, 2, 2, 1);
    treegate::tree_feedforward<double> ff_wide(3, 2, 3, 1);
    auto gf = tt::make_gradient(ff_wide);
    TG_CHECK_THROWS_WITH(treegate::shape_error, tt::backward(ff, M(3, 4), M(2, 4), gf, ws), "does not match");

    // A sequential backward needs the forward activations of the same batch.
    treegate::sequential model(treegate::dense<double>(3, 4), treegate::dense<double>(4, 2));
    decltype(model)::workspace_type fws;
    auto gm = tt::make_gradient(model);
    tt::sequential_backward_workspace<double> sws;
    TG_CHECK_THROWS_WITH(treegate::shape_error, tt::backward(model, M(M::Zero(3, 4)), fws, M(M::Zero(2, 4)), gm, sws),
                         "layer 1", "forward_batch");
}

TEST_CASE("backward works with compile-time sizes", "[grad][fixed]") {
    std::mt19937 g(55);
    const index_t n = 11;
    tt::backward_workspace<double> ws;
    {
        treegate::dense<double, 4, 3> layer;
        layer.initialize(1);
        M X = random_matrix<double>(4, n, g);
        const probe pr{random_matrix<double>(3, n, g)};
        auto grad = tt::make_gradient(layer);
        M dX(4, n);
        tt::backward(layer, X, pr.R, grad, dX, ws);
        const auto fwd = [&] { return M(layer.forward_batch(X)); };
        CHECK(check_params(layer, grad, pr, fwd) == "");
        CHECK(check_input(X, dX, pr, fwd) == "");
    }
    {
        treegate::tree_linear<double, 5, 3, 2> layer(tree_mode::path_sum, gating::from_input({1, 4}));
        fill_random(layer, g);
        M X = random_matrix<double>(5, n, g);
        for (index_t e = 0; e < n; ++e) {
            X(1, e) = away_from_zero(g);
            X(4, e) = away_from_zero(g);
        }
        const probe pr{random_matrix<double>(3, n, g)};
        auto grad = tt::make_gradient(layer);
        M dX(5, n);
        tt::backward(layer, X, pr.R, grad, dX, ws);
        const auto fwd = [&] { return M(layer.forward_batch(X)); };
        CHECK(check_params(layer, grad, pr, fwd) == "");
        CHECK(check_input(X, dX, pr, fwd) == "");
    }
    {
        treegate::tree_feedforward<double, 4, 3, 2, 2> layer(2, activation::gelu);
        layer.initialize(4);
        M X = random_matrix<double>(4, n, g);
        ff_redraw(layer, X, g);
        const probe pr{random_matrix<double>(3, n, g)};
        auto grad = tt::make_gradient(layer);
        M dX(4, n);
        tt::backward(layer, X, pr.R, grad, dX, ws);
        const auto fwd = [&] { return M(layer.forward_batch(X)); };
        CHECK(check_params(layer, grad, pr, fwd) == "");
        CHECK(check_input(X, dX, pr, fwd) == "");
    }
}
