// Soft routing of tree_feedforward (train/soft_routing.hpp): the soft forward against a brute-force
// enumeration of paths, every gradient (routers, penalty and sequential stages included) against
// central differences in double, the hard limits (decisive routers, T -> 0), errors, and a fit.
#include "test_support.hpp"

#include <treegate/layers/activation_layer.hpp>
#include <treegate/layers/dense.hpp>
#include <treegate/layers/sequential.hpp>
#include <treegate/layers/tree_feedforward.hpp>
#include <treegate/train/backward.hpp>
#include <treegate/train/data.hpp>
#include <treegate/train/loss.hpp>
#include <treegate/train/optimizer.hpp>
#include <treegate/parallel/thread_pool.hpp>
#include <treegate/train/soft_routing.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <sstream>
#include <string>

using treegate::activation;
using treegate::tree_mode;
using treegate::index_t;
using namespace tg_test;
namespace tt = treegate::train;

namespace {

using M = Eigen::MatrixXd;
using V = Eigen::VectorXd;
using ff = treegate::tree_feedforward<double>;

constexpr double u_round = std::numeric_limits<double>::epsilon() / 2;

// ---- brute-force oracle, written from the formulas in soft_routing.hpp ----------------------------

/// z of internal node `node` of tree t: the router (leaf_mlp) or the first hidden pre-activation.
double oracle_z(const ff& f, index_t t, index_t node, const V& x) {
    if (f.mode() == tree_mode::leaf_only) return f.router_weight(t, node).dot(x) + f.router_bias(t, node);
    return f.hidden_weight(t, node).row(0).dot(x) + f.hidden_bias(t, node)(0);
}

double oracle_p(double z, double T) { return T == 0 ? (z > 0 ? 1.0 : 0.0) : 1.0 / (1.0 + std::exp(-z / T)); }

double oracle_entropy(double p) {
    double h = 0;
    if (p > 0) h -= p * std::log(p);
    if (p < 1) h -= (1 - p) * std::log(1 - p);
    return h;
}

struct soft_oracle {
    M y;              // soft output
    M magnitude;      // |c| + sum over terms of |P| |V| |h|: the scale of y's rounding
    double entropy;   // mean decision entropy, the penalty before lambda
    double imbalance; // mean over trees of KL(batch leaf use || uniform), the penalty before beta
};

/// Enumerates every node of every tree as a (level, code) bit string, multiplies the
/// probabilities of its bits along the path and adds P(node) V act(U x + a) where the variant
/// has an MLP.
soft_oracle naive_soft(const ff& f, const M& X, double T) {
    const int D = f.depth();
    soft_oracle r{M::Zero(f.out_size(), X.cols()), M::Zero(f.out_size(), X.cols()), 0.0, 0.0};
    M use = M::Zero(index_t{1} << D, f.tree_count());  // sum over examples of P(leaf)
    for (index_t e = 0; e < X.cols(); ++e) {
        const V x = X.col(e);
        if (f.has_output_bias()) {
            r.y.col(e) = f.output_bias();
            r.magnitude.col(e) = f.output_bias().cwiseAbs();
        }
        for (index_t t = 0; t < f.tree_count(); ++t)
            for (int level = 0; level <= D; ++level)
                for (index_t code = 0; code < (index_t{1} << level); ++code) {
                    index_t node = 0;
                    double P = 1;
                    for (int j = 0; j < level; ++j) {
                        const int bit = static_cast<int>((code >> (level - 1 - j)) & 1);
                        const double p = oracle_p(oracle_z(f, t, node, x), T);
                        P *= bit ? p : 1 - p;
                        node = 2 * node + 1 + bit;
                    }
                    if (level < D) r.entropy += P * oracle_entropy(oracle_p(oracle_z(f, t, node, x), T));
                    if (level == D) use(code, t) += P;
                    if (f.mode() == tree_mode::path_sum || level == D) {
                        const index_t unit = f.mode() == tree_mode::path_sum ? node : code;
                        const V pre = f.hidden_weight(t, unit) * x + f.hidden_bias(t, unit);
                        V h(pre.size());
                        for (index_t i = 0; i < pre.size(); ++i) h(i) = oracle_act(f.activation_kind(), pre(i));
                        r.y.col(e) += P * (f.output_weight(t, unit) * h);
                        r.magnitude.col(e) += P * (f.output_weight(t, unit).cwiseAbs() * h.cwiseAbs());
                    }
                }
    }
    if (D > 0) r.entropy /= static_cast<double>(X.cols() * f.tree_count() * D);
    for (index_t t = 0; t < f.tree_count(); ++t)
        for (index_t l = 0; l < use.rows(); ++l) {
            const double u = use(l, t) / static_cast<double>(X.cols());
            if (u > 0) r.imbalance += u * std::log(u * static_cast<double>(use.rows())) / static_cast<double>(f.tree_count());
        }
    return r;
}

// ---- finite differences ----------------------------------------------------------------------------

constexpr double h = 1e-6;

/// max over entries of |analytic - central difference| / tolerance. The tolerance is the one of
/// test_grad.cpp: rounding of L(p +- h) is a few ulps of S = the sum of |terms| of L, i.e.
/// 8 u S / h; truncation is h^2 |L'''| / 6, and the h^2 S term allows |L'''| <= 6 S: the smooth
/// activations stay well inside that, and a sigmoid route adds at most max|sigmoid'''| / T^3 =
/// 1 / (8 T^3) < 5 per unit of S at T >= 0.3 with weights and inputs in [-1, 1]; plus 1e-6 of
/// the derivative. A wrong gradient (a missing router path, a dropped penalty term) is off by
/// O(1): removing either from the header makes this check fail by a factor > 1e5.
template <class Loss>
double fd_worst(double* p, const double* analytic, index_t n, const Loss& loss, double scale, std::string& where,
                const std::string& what) {
    const double abs_tol = 8 * u_round * scale / h + h * h * scale;
    double worst = 0;
    for (index_t i = 0; i < n; ++i) {
        const double saved = p[i];
        p[i] = saved + h;
        const double lp = loss();
        p[i] = saved - h;
        const double lm = loss();
        p[i] = saved;
        const double numeric = (lp - lm) / (2 * h);
        const double ratio = std::abs(analytic[i] - numeric) / (abs_tol + 1e-6 * std::abs(numeric));
        if (!(ratio <= worst)) {
            worst = ratio;
            std::ostringstream os;
            os.precision(12);
            os << what << " entry " << i << ": analytic " << analytic[i] << " numeric " << numeric;
            where = os.str();
        }
    }
    return worst;
}

/// Checks every block of `blocks` and dX against central differences of `loss` (which returns
/// the loss and sets `scale`); "" or the worst entry.
template <class Loss>
std::string fd_check(const tt::param_list<double>& blocks, M& X, const M& dX, const Loss& loss) {
    double scale = 0;
    loss(scale);
    const auto value = [&] {
        double s = 0;
        return loss(s);
    };
    std::string where, worst_where;
    double worst = 0;
    for (std::size_t k = 0; k < blocks.size(); ++k) {
        if (!blocks[k].visited) return "block " + std::to_string(k) + " is not marked visited";
        const double r = fd_worst(blocks[k].value, blocks[k].grad, blocks[k].size, value, scale, where,
                                  "block " + std::to_string(k));
        if (!(r <= worst)) worst = r, worst_where = where;
    }
    const double r = fd_worst(X.data(), dX.data(), X.size(), value, scale, where, "input");
    if (!(r <= worst)) worst = r, worst_where = where;
    return worst <= 1.0 ? std::string() : worst_where + " (error/tolerance " + std::to_string(worst) + ")";
}

struct ff_case {
    index_t in, out, width;
    int depth;
    index_t trees;
    bool bias;
    activation act;
};

// Depth 0 through 4, one and two trees, widths 1 to 3, every smooth activation.
const ff_case cases[] = {{3, 2, 1, 0, 1, true, activation::gelu},   {4, 3, 2, 0, 2, false, activation::tanh},
                         {4, 3, 2, 1, 2, false, activation::tanh},  {5, 2, 3, 2, 1, true, activation::gelu},
                         {3, 3, 2, 3, 2, true, activation::gelu_tanh}, {2, 1, 1, 4, 1, false, activation::tanh}};

ff make_layer(const ff_case& c, tree_mode variant, std::mt19937& g) {
    ff f(c.in, c.out, c.width, c.depth, c.trees, c.act, variant, c.bias);
    fill_random_ff(f, g);
    return f;
}

/// Multiplies the router rows (r, s or U_0, a_0) of every internal node so that |z| >= zmin
/// for every column of X; returns the factor.
double make_decisive(ff& f, const M& X, double zmin) {
    double smallest = std::numeric_limits<double>::infinity();
    const index_t internal = (index_t{1} << f.depth()) - 1;
    for (index_t t = 0; t < f.tree_count(); ++t)
        for (index_t i = 0; i < internal; ++i)
            for (index_t e = 0; e < X.cols(); ++e) smallest = std::min(smallest, std::abs(oracle_z(f, t, i, X.col(e))));
    const double k = internal > 0 ? zmin / smallest : 1.0;
    for (index_t t = 0; t < f.tree_count(); ++t)
        for (index_t i = 0; i < internal; ++i) {
            if (f.mode() == tree_mode::leaf_only) {
                f.router_weight(t, i) *= k;
                f.router_bias(t, i) *= k;
            } else {
                f.hidden_weight(t, i).row(0) *= k;
                f.hidden_bias(t, i)(0) *= k;
            }
        }
    return k;
}

}  // namespace

TEST_CASE("soft forward matches a brute-force enumeration of paths", "[soft_routing]") {
    const tree_mode variant = GENERATE(tree_mode::path_sum, tree_mode::leaf_only);
    std::mt19937 g(41 + static_cast<unsigned>(variant));
    tt::soft_workspace<double> ws;
    for (const ff_case& c : cases)
        for (double T : {1.0, 0.3, 0.0}) {
            CAPTURE(treegate::to_string(variant), c.in, c.out, c.width, c.depth, c.trees, T);
            const ff f = make_layer(c, variant, g);
            const M X = random_matrix<double>(c.in, 9, g);
            const soft_oracle want = naive_soft(f, X, T);
            M Y(c.out, X.cols());
            const double lambda = 0.7;
            const double penalty = tt::soft_forward(f, X, Y, ws, {T, lambda});
            // Same sums in another order: each output sums K (2^(D+1) - 1) terms, each a product
            // of <= D probabilities and a width-term dot over an in-term dot; 64 u of the summed
            // magnitudes bounds that rounding (and the oracle's own) to first order.
            CHECK(close_report<double>(Y, want.y, want.magnitude, 64.0) == "");
            CHECK(ws.mean_entropy == Catch::Approx(want.entropy).epsilon(1e-12).margin(1e-300));
            CHECK(penalty == Catch::Approx(lambda * want.entropy).epsilon(1e-12).margin(1e-300));
            if (T == 0.0 || c.depth == 0) CHECK(penalty == 0.0);
        }
}

TEST_CASE("soft backward matches finite differences, penalty included", "[soft_routing][grad]") {
    const tree_mode variant = GENERATE(tree_mode::path_sum, tree_mode::leaf_only);
    std::mt19937 g(43 + static_cast<unsigned>(variant));
    tt::soft_workspace<double> ws;
    for (const ff_case& c : cases)
        for (double T : {1.0, 0.3}) {
            CAPTURE(treegate::to_string(variant), c.in, c.out, c.width, c.depth, c.trees, T);
            ff f = make_layer(c, variant, g);
            const index_t n = 7;
            M X = random_matrix<double>(c.in, n, g);
            const M R = random_matrix<double>(c.out, n, g);
            const tt::soft_routing_options opt{T, 0.7};
            auto grad = tt::make_gradient(f);
            M dX(c.in, n);
            const double penalty = tt::soft_backward(f, X, R, grad, dX, ws, opt);
            M Y(c.out, n);
            CHECK(penalty == Catch::Approx(tt::soft_forward(f, X, Y, ws, opt)).epsilon(1e-13));
            CHECK(static_cast<index_t>(grad.visited_units().size()) == c.trees * f.unit_count());
            CHECK(static_cast<index_t>(grad.visited_routers().size()) == c.trees * f.router_count());
            tt::param_list<double> blocks;
            grad.collect(f, blocks);
            const auto loss = [&](double& scale) {
                const double pen = tt::soft_forward(f, X, Y, ws, opt);
                scale = (R.array() * Y.array()).abs().sum() + pen + 1.0;
                return (R.array() * Y.array()).sum() + pen;
            };
            CHECK(fd_check(blocks, X, dX, loss) == "");
            // Without dX: the same parameter gradients.
            auto again = tt::make_gradient(f);
            tt::soft_backward(f, X, R, again, ws, opt);
            tt::param_list<double> blocks2;
            again.collect(f, blocks2);
            for (std::size_t k = 0; k < blocks.size(); ++k)
                for (index_t i = 0; i < blocks[k].size; ++i) CHECK(blocks[k].grad[i] == blocks2[k].grad[i]);
            grad.zero();
            CHECK(grad.visited_routers().empty());
            for (index_t t = 0; t < c.trees; ++t)
                for (index_t i = 0; i < f.router_count(); ++i) CHECK(grad.router_weight(t, i).isZero(0));
        }
}

TEST_CASE("soft routing inside sequential models matches finite differences", "[soft_routing][grad]") {
    std::mt19937 g(47);
    const tt::soft_routing_options opt{0.5, 0.4};
    const index_t n = 6;
    SECTION("dense -> tanh -> tree_feedforward (leaf_mlp)") {
        treegate::sequential model(treegate::dense<double>(4, 5), treegate::activation_layer<double>(activation::tanh, 5),
                                   ff(5, 2, 2, 2, 2, activation::gelu, tree_mode::leaf_only));
        model.initialize(3);
        fill_random_ff(model.layer<2>(), g);
        M X = random_matrix<double>(4, n, g);
        const M R = random_matrix<double>(2, n, g);
        decltype(model)::workspace_type fws;
        tt::soft_sequential_workspace<double> ws;
        M Y(2, n), dX(4, n);
        const double pf = tt::soft_forward(model, X, Y, fws, ws, opt);
        auto grad = tt::make_gradient(model);
        CHECK(tt::soft_backward(model, X, fws, R, grad, dX, ws, opt) == Catch::Approx(pf).epsilon(1e-13));
        CHECK(pf > 0.0);
        tt::param_list<double> blocks;
        grad.collect(model, blocks);
        CHECK(fd_check(blocks, X, dX, [&](double& scale) {
                  const double pen = tt::soft_forward(model, X, Y, fws, ws, opt);
                  scale = (R.array() * Y.array()).abs().sum() + pen + 1.0;
                  return (R.array() * Y.array()).sum() + pen;
              }) == "");
        // Hard evaluation is the model's own forward; it differs from the soft output here.
        CHECK((model.forward_batch(X) - Y).cwiseAbs().maxCoeff() > 1e-3);
    }
    SECTION("tree_feedforward (node_sum) first -> dense") {
        treegate::sequential model(ff(3, 4, 2, 2, 1, activation::tanh, tree_mode::path_sum), treegate::dense<double>(4, 2));
        model.initialize(5);
        fill_random_ff(model.layer<0>(), g);
        M X = random_matrix<double>(3, n, g);
        const M R = random_matrix<double>(2, n, g);
        decltype(model)::workspace_type fws;
        tt::soft_sequential_workspace<double> ws;
        M Y(2, n), dX(3, n);
        const double pf = tt::soft_forward(model, X, Y, fws, ws, opt);
        auto grad = tt::make_gradient(model);
        CHECK(tt::soft_backward(model, X, fws, R, grad, dX, ws, opt) == Catch::Approx(pf).epsilon(1e-13));
        tt::param_list<double> blocks;
        grad.collect(model, blocks);
        auto no_dx = tt::make_gradient(model);
        tt::soft_backward(model, X, fws, R, no_dx, ws, opt);
        CHECK(no_dx.layer<1>().weight() == grad.layer<1>().weight());
        CHECK(fd_check(blocks, X, dX, [&](double& scale) {
                  const double pen = tt::soft_forward(model, X, Y, fws, ws, opt);
                  scale = (R.array() * Y.array()).abs().sum() + pen + 1.0;
                  return (R.array() * Y.array()).sum() + pen;
              }) == "");
        M bad_dx(3, n + 1);
        TG_CHECK_THROWS_WITH(treegate::shape_error, tt::soft_backward(model, X, fws, R, grad, bad_dx, ws, opt),
                             "sequential soft_backward", "3 x 7");
    }
}

TEST_CASE("decisive routers: the soft forward is the hard forward", "[soft_routing]") {
    const tree_mode variant = GENERATE(tree_mode::path_sum, tree_mode::leaf_only);
    std::mt19937 g(53 + static_cast<unsigned>(variant));
    tt::soft_workspace<double> ws;
    for (const ff_case& c : cases) {
        CAPTURE(treegate::to_string(variant), c.in, c.out, c.width, c.depth, c.trees);
        ff f = make_layer(c, variant, g);
        const M X = random_matrix<double>(c.in, 33, g);
        // |z| / T >= 40 everywhere: every p is within e^-40 = 4.2e-18 of 0 or 1, so the
        // off-path mass (< 2^(D+1) e^-40 per tree) is far below the rounding bound below.
        make_decisive(f, X, 40.0);
        const soft_oracle scale = naive_soft(f, X, 0.0);
        M Y(c.out, X.cols());
        const double penalty = tt::soft_forward(f, X, Y, ws, {1.0, 1.0});
        // Both sides round sums of <= K (D+1) unit outputs, each a width-term dot over an in-term
        // dot (plus the soft side's zero-weighted terms): 64 u of the magnitudes covers both.
        CHECK(close_report<double>(Y, naive_soft(f, X, 0.0).y, scale.magnitude, 64.0) == "");
        CHECK(close_report<double>(Y, f.forward_batch(X), scale.magnitude, 64.0) == "");
        // H(p) ~ u e^-u at u >= 40: the penalty of a hardened model is negligible.
        CHECK(penalty < 1e-15);
    }
}

TEST_CASE("T -> 0 tends to hard routing; T = 0 gives hard-routing gradients", "[soft_routing]") {
    const tree_mode variant = GENERATE(tree_mode::path_sum, tree_mode::leaf_only);
    std::mt19937 g(59 + static_cast<unsigned>(variant));
    tt::soft_workspace<double> ws;
    tt::backward_workspace<double> bws;
    const ff_case c{4, 3, 2, 3, 2, true, activation::gelu};
    ff f = make_layer(c, variant, g);
    // Inputs whose every |z| >= 0.05.
    M X = random_matrix<double>(c.in, 25, g);
    for (index_t e = 0; e < X.cols(); ++e) {
        auto zmin = [&] {
            double m = std::numeric_limits<double>::infinity();
            for (index_t t = 0; t < c.trees; ++t)
                for (index_t i = 0; i < (index_t{1} << c.depth) - 1; ++i) m = std::min(m, std::abs(oracle_z(f, t, i, X.col(e))));
            return m;
        };
        while (zmin() < 0.05) X.col(e) = random_matrix<double>(c.in, 1, g);
    }
    const M hard = f.forward_batch(X);
    const M magnitude = naive_soft(f, X, 0.0).magnitude;
    M Y(c.out, X.cols());
    double previous = std::numeric_limits<double>::infinity();
    for (double T : {1.0, 0.1, 0.01}) {
        tt::soft_forward(f, X, Y, ws, {T, 0.0});
        const double err = (Y - hard).cwiseAbs().maxCoeff();
        CAPTURE(T, err);
        CHECK(err < previous);
        CHECK(err > 1e-9);  // still soft: an input with |z| ~ 0.1 keeps e^(-|z| / T) off its path
        previous = err;
    }
    // |z| / T >= 0.05 / 1e-3 = 50 and T = 0 itself: the hard output within rounding (as above).
    for (double T : {1e-3, 0.0}) {
        CAPTURE(T);
        tt::soft_forward(f, X, Y, ws, {T, 0.0});
        CHECK(close_report<double>(Y, hard, magnitude, 64.0) == "");
    }
    // At T = 0 the soft backward is the hard one, with zero router gradients; units off every
    // path are visited with a zero gradient. Same products, other order: 64 u of the magnitudes.
    const M R = random_matrix<double>(c.out, X.cols(), g);
    auto soft_grad = tt::make_gradient(f), hard_grad = tt::make_gradient(f);
    M dXs(c.in, X.cols()), dXh(c.in, X.cols());
    CHECK(tt::soft_backward(f, X, R, soft_grad, dXs, ws, {0.0, 1.0}) == 0.0);
    tt::backward(f, X, R, hard_grad, dXh, bws);
    tt::param_list<double> s, hd;
    soft_grad.collect(f, s);
    hard_grad.collect(f, hd);
    REQUIRE(s.size() == hd.size());
    const double gscale = R.cwiseAbs().sum() * (1.0 + magnitude.maxCoeff()) * X.cwiseAbs().maxCoeff() + 1.0;
    for (std::size_t k = 0; k < s.size(); ++k) {
        CHECK(s[k].visited);
        for (index_t i = 0; i < s[k].size; ++i) CHECK(std::abs(s[k].grad[i] - hd[k].grad[i]) <= 64 * u_round * gscale);
    }
    CHECK((dXs - dXh).cwiseAbs().maxCoeff() <= 64 * u_round * gscale);
}

TEST_CASE("soft routing rejects bad shapes and options", "[soft_routing][errors]") {
    const ff f(4, 3, 2, 2, 1, activation::gelu, tree_mode::leaf_only);
    const ff other(4, 3, 2, 1, 1, activation::gelu, tree_mode::leaf_only);
    tt::soft_workspace<double> ws;
    const M X = M::Zero(4, 5), dY = M::Zero(3, 5);
    M Y(3, 5), dX(4, 5);
    auto grad = tt::make_gradient(f);
    auto wrong = tt::make_gradient(other);
    TG_CHECK_THROWS_WITH(treegate::shape_error, tt::soft_forward(f, M(5, 5), Y, ws), "soft_forward", "5 rows, expected 4");
    M bad_y(3, 4), bad_dx(4, 6);
    TG_CHECK_THROWS_WITH(treegate::shape_error, tt::soft_forward(f, X, bad_y, ws), "soft_forward", "3 x 4", "3 x 5");
    TG_CHECK_THROWS_WITH(treegate::shape_error, tt::soft_backward(f, X, M(2, 5), grad, dX, ws), "soft_backward", "2 x 5");
    TG_CHECK_THROWS_WITH(treegate::shape_error, tt::soft_backward(f, X, dY, grad, bad_dx, ws), "soft_backward", "4 x 6");
    TG_CHECK_THROWS_WITH(treegate::shape_error, tt::soft_backward(f, X, dY, wrong, dX, ws), "soft_backward",
                         "(1 trees of 2 units", "does not match the layer (1 trees of 4 units");
    TG_CHECK_THROWS_WITH(treegate::config_error, tt::soft_forward(f, X, Y, ws, {-1.0, 0.0}), "temperature", "-1");
    TG_CHECK_THROWS_WITH(treegate::config_error,
                         tt::soft_forward(f, X, Y, ws, {std::numeric_limits<double>::infinity(), 0.0}), "temperature");
    TG_CHECK_THROWS_WITH(treegate::config_error, tt::soft_backward(f, X, dY, grad, dX, ws, {1.0, -0.5}), "hardening",
                         "-0.5");
    TG_CHECK_THROWS_WITH(treegate::config_error, tt::soft_forward(f, X, Y, ws, {1.0, 0.0, -2.0}), "balance", "-2");
    TG_CHECK_THROWS_WITH(treegate::config_error,
                         tt::soft_backward(f, X, dY, grad, dX, ws, {1.0, 0.0, std::numeric_limits<double>::quiet_NaN()}),
                         "tree_feedforward soft routing", "balance");
    // An empty batch is fine and has no penalty.
    M Y0(3, 0), dX0(4, 0);
    CHECK(tt::soft_forward(f, M(4, 0), Y0, ws, {1.0, 1.0}) == 0.0);
    CHECK(tt::soft_backward(f, M(4, 0), M(3, 0), grad, dX0, ws, {1.0, 1.0}) == 0.0);
    CHECK(tt::soft_backward(f, M(4, 0), M(3, 0), grad, dX0, ws, {1.0, 1.0, 1.0}) == 0.0);
    CHECK(ws.leaf_imbalance == 0.0);
}

TEST_CASE("soft training learns the routing that hard training cannot", "[soft_routing][train]") {
    // Target: y = A x if w.x > 0 else B x, for a hidden unit direction w. A leaf_mlp of depth 1
    // with identity activation fits it exactly once its router is a large multiple of w; hard
    // training cannot move the router and is stuck with the random initial split. At a fixed
    // T = 1 soft training settles on a blurred split (router norm ~2, cosine to w ~0.5), so the
    // temperature falls geometrically from 1 to 0.1 while a small hardening weight sharpens the
    // decisions. With these settings the fit is reached for every seed tried (2027, 5, 77).
    using S = float;
    using sff = treegate::tree_feedforward<S>;
    const index_t in = 4, out = 2, n = 512, batch = 32;
    std::mt19937 g(2027);
    const mat<S> A = random_matrix<S>(out, in, g), B = random_matrix<S>(out, in, g);
    vec<S> w = random_matrix<S>(in, 1, g);
    w.normalize();
    const mat<S> X = random_matrix<S>(in, n, g);
    mat<S> T(out, n);
    for (index_t e = 0; e < n; ++e) T.col(e) = w.dot(X.col(e)) > 0 ? A * X.col(e) : B * X.col(e);
    const S variance = (T.colwise() - T.rowwise().mean()).squaredNorm() / static_cast<S>(T.size());
    const std::uint64_t epochs = 60;
    const double t_end = 0.1;

    auto train = [&](bool soft) {
        sff f(in, out, in, 1, 1, activation::identity, tree_mode::leaf_only);
        f.initialize(11);
        auto grad = tt::make_gradient(f);
        tt::adam<S>::options o;
        o.lr = 0.02;
        tt::adam<S> opt(o);
        tt::soft_workspace<S> sws;
        tt::backward_workspace<S> bws;
        mat<S> Xb(in, batch), Tb(out, batch), Yb(out, batch), dY(out, batch);
        for (std::uint64_t epoch = 0; epoch < epochs; ++epoch) {
            // T from 1 to t_end geometrically; hardening from 0 to 0.06, small next to the MSE.
            const double progress = static_cast<double>(epoch) / static_cast<double>(epochs - 1);
            const tt::soft_routing_options so{std::pow(t_end, progress), 1e-3 * static_cast<double>(epoch)};
            const auto order = tt::shuffled_indices(n, 99, epoch);
            for (index_t b = 0; b + batch <= n; b += batch) {
                tt::gather_columns(X, order.data() + b, batch, Xb);
                tt::gather_columns(T, order.data() + b, batch, Tb);
                grad.zero();
                if (soft) {
                    tt::soft_forward(f, Xb, Yb, sws, so);
                    tt::mean_squared_error(Yb, Tb, dY);
                    tt::soft_backward(f, Xb, dY, grad, sws, so);
                } else {
                    treegate::workspace<S> fws;
                    f.forward_batch(Xb, Yb, fws);
                    tt::mean_squared_error(Yb, Tb, dY);
                    tt::backward(f, Xb, dY, grad, bws);
                }
                opt.step(f, grad);
            }
        }
        return f;
    };
    const sff soft = train(true), hard = train(false);
    tt::soft_workspace<S> ws;
    mat<S> Ys(out, n);
    tt::soft_forward(soft, X, Ys, ws, {t_end, 0.0});
    const S soft_loss = tt::mean_squared_error(Ys, T);
    const S soft_model_hard_loss = tt::mean_squared_error(soft.forward_batch(X), T);
    const S hard_loss = tt::mean_squared_error(hard.forward_batch(X), T);
    CAPTURE(variance, soft_loss, soft_model_hard_loss, hard_loss, ws.mean_entropy);
    // Measured: soft 0.004, hard evaluation of the soft-trained model 0.004, hard training 0.24
    // (relative to the variance); other seeds reach 0.02 / 0.02 / 0.24-0.30.
    CHECK(soft_loss < 0.05f * variance);
    CHECK(soft_model_hard_loss < 0.05f * variance);  // hardened: evaluating hard keeps the fit
    CHECK(ws.mean_entropy < 0.15);                   // of log 2 = 0.69 for undecided routes
    CHECK(hard_loss > 0.15f * variance);
}

// The load-balancing penalty: its value against the oracle's leaf use, and its gradient, with
// hardening and the data loss, against central differences. Every pass here runs on pools of
// 1, 2 and 3 threads, which must give the serial call's bits; batches of 70 examples cross the
// 64-example tiles, and depth 0 (one leaf: no imbalance) is among the cases.
TEST_CASE("balance penalty and threaded soft passes: the oracle, finite differences, the serial bits",
          "[soft_routing][grad][parallel]") {
    const tree_mode variant = GENERATE(tree_mode::path_sum, tree_mode::leaf_only);
    std::mt19937 g(61 + static_cast<unsigned>(variant));
    for (const ff_case& c : cases) {
        const double T = 0.6;
        CAPTURE(treegate::to_string(variant), c.in, c.out, c.width, c.depth, c.trees);
        ff f = make_layer(c, variant, g);
        const index_t n = 70;
        M X = random_matrix<double>(c.in, n, g);
        const M R = random_matrix<double>(c.out, n, g);
        const tt::soft_routing_options opt{T, 0.3, 0.9};
        const soft_oracle want = naive_soft(f, X, T);
        tt::soft_workspace<double> ws;
        M Y0(c.out, n), dX0(c.in, n);
        const double pen0 = tt::soft_forward(f, X, Y0, ws, opt);
        CHECK(ws.leaf_imbalance == Catch::Approx(want.imbalance).epsilon(1e-12).margin(1e-15));
        CHECK(pen0 == Catch::Approx(0.3 * want.entropy + 0.9 * want.imbalance).epsilon(1e-12).margin(1e-300));
        if (c.depth == 0) CHECK(pen0 == 0.0);
        if (c.depth > 0) CHECK(ws.leaf_imbalance > 0.0);  // random routers do not split 70 examples evenly
        auto grad0 = tt::make_gradient(f);
        CHECK(tt::soft_backward(f, X, R, grad0, dX0, ws, opt) == pen0);
        tt::param_list<double> blocks0;
        grad0.collect(f, blocks0);
        for (int threads : {1, 2, 3}) {
            CAPTURE(threads);
            treegate::parallel::thread_pool pool(threads);
            tt::soft_workspace<double> pws;
            M Y(c.out, n), dX(c.in, n);
            CHECK(tt::soft_forward(f, X, Y, pws, opt, pool) == pen0);
            CHECK(Y == Y0);
            auto grad = tt::make_gradient(f);
            CHECK(tt::soft_backward(f, X, R, grad, dX, pws, opt, pool) == pen0);
            CHECK(dX == dX0);
            tt::param_list<double> blocks;
            grad.collect(f, blocks);
            REQUIRE(blocks.size() == blocks0.size());
            for (std::size_t k = 0; k < blocks.size(); ++k)
                CHECK(std::equal(blocks[k].grad, blocks[k].grad + blocks[k].size, blocks0[k].grad));
            if (threads == 3) {
                const auto loss = [&](double& scale) {
                    const double pen = tt::soft_forward(f, X, Y, pws, opt, pool);
                    scale = (R.array() * Y.array()).abs().sum() + pen + 1.0;
                    return (R.array() * Y.array()).sum() + pen;
                };
                CHECK(fd_check(blocks, X, dX, loss) == "");
            }
        }
    }
}

TEST_CASE("T = 0 routes ties by the layer's tie rule, as the hard forward does", "[soft_routing]") {
    // Zero routers give z = 0 exactly for every example: > 0 sends all of them left, >= 0 right.
    std::mt19937 g(71);
    tt::soft_workspace<double> ws;
    const M X = random_matrix<double>(5, 9, g);
    M outputs[2];
    int k = 0;
    for (treegate::tie_rule tie : {treegate::tie_rule::greater, treegate::tie_rule::greater_equal}) {
        CAPTURE(treegate::to_string(tie));
        ff f(5, 3, 2, 2, 1, activation::gelu, tree_mode::leaf_only, true, tie);
        f.initialize(17);
        for (index_t i = 0; i < f.router_count(); ++i) {
            f.router_weight(0, i).setZero();
            f.router_bias(0, i) = 0.0;
        }
        const M hard = f.forward_batch(X);
        M Y(3, X.cols());
        tt::soft_forward(f, X, Y, ws, {0.0, 0.0});
        CHECK((Y - hard).cwiseAbs().maxCoeff() <= 1e-12 * (1.0 + hard.cwiseAbs().maxCoeff()));
        outputs[k++] = hard;
    }
    CHECK((outputs[0] - outputs[1]).cwiseAbs().maxCoeff() > 1e-6);  // the two rules reach different leaves
}
