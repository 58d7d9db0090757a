// The optimizers' lazy step (gradient containers' collect_visited): it lists exactly the visited
// entries of collect with their positions, and a multi-step sgd / adam run through it is bitwise
// the run of a straightforward loop over every block of the full list.
#include "test_support.hpp"

#include <treegate/layers/activation_layer.hpp>
#include <treegate/layers/dense.hpp>
#include <treegate/layers/sequential.hpp>
#include <treegate/layers/sliced_tree_linear.hpp>
#include <treegate/layers/tree_feedforward.hpp>
#include <treegate/layers/tree_linear.hpp>
#include <treegate/train/backward.hpp>
#include <treegate/train/gradients.hpp>
#include <treegate/train/loss.hpp>
#include <treegate/train/optimizer.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

using treegate::activation;
using treegate::gating;
using treegate::index_t;
using treegate::tree_mode;
namespace tt = treegate::train;
using tg_test::random_matrix;

namespace {

using M = Eigen::MatrixXd;

auto make_model(unsigned seed) {
    treegate::sequential model(treegate::dense<double>(5, 7), treegate::activation_layer<double>(activation::relu, 7),
                               treegate::tree_linear<double>(7, 4, 5, tree_mode::path_sum, gating::from_input({0, 1, 2, 3, 4})),
                               treegate::tree_feedforward<double>(4, 3, 2, 3, 2, activation::gelu, tree_mode::leaf_only));
    model.initialize(seed);
    return model;
}
using model_t = decltype(make_model(0));

template <class Grad>
std::vector<double> values(model_t& model, const Grad& grad) {
    tt::param_list<double> all;
    grad.collect(model, all);
    std::vector<double> v;
    for (const auto& b : all) v.insert(v.end(), b.value, b.value + b.size);
    return v;
}

bool same_bits(const std::vector<double>& a, const std::vector<double>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
}

// The straightforward optimizers: every block of the full list, state indexed by position.
struct reference_sgd {
    double lr, mu;
    tt::weight_decay decay;
    std::vector<std::vector<double>> vel;
    void step(const tt::param_list<double>& all) {
        vel.resize(all.size());
        for (std::size_t k = 0; k < all.size(); ++k) {
            const auto& b = all[k];
            vel[k].resize(static_cast<std::size_t>(b.size), 0.0);
            if (!b.visited) continue;
            const double keep = b.decay ? 1.0 - lr * decay.at_level(b.level) : 1.0;
            for (index_t i = 0; i < b.size; ++i) {
                double& v = vel[k][static_cast<std::size_t>(i)];
                v = mu * v + b.grad[i];
                b.value[i] = keep * b.value[i] - lr * v;
            }
        }
    }
};

struct reference_adam {
    tt::adam<double>::options o;
    std::vector<std::vector<double>> m, v;
    std::vector<std::int64_t> t;
    void step(const tt::param_list<double>& all) {
        m.resize(all.size());
        v.resize(all.size());
        t.resize(all.size(), 0);
        for (std::size_t k = 0; k < all.size(); ++k) {
            const auto& b = all[k];
            m[k].resize(static_cast<std::size_t>(b.size), 0.0);
            v[k].resize(static_cast<std::size_t>(b.size), 0.0);
            if (!b.visited) continue;
            const double keep = b.decay ? 1.0 - o.lr * o.decay.at_level(b.level) : 1.0;
            const double td = static_cast<double>(++t[k]);
            const double step_size = o.lr / (1.0 - std::pow(o.beta1, td));
            const double inv_c2 = 1.0 / (1.0 - std::pow(o.beta2, td));
            for (index_t i = 0; i < b.size; ++i) {
                const double g = b.grad[i];
                double& mi = m[k][static_cast<std::size_t>(i)];
                double& vi = v[k][static_cast<std::size_t>(i)];
                mi = o.beta1 * mi + (1.0 - o.beta1) * g;
                vi = o.beta2 * vi + (1.0 - o.beta2) * g * g;
                b.value[i] = keep * b.value[i] - step_size * mi / (std::sqrt(vi * inv_c2) + o.eps);
            }
        }
    }
};

// Runs the library optimizer on one copy of the model and the reference on another, over
// batches of odd sizes (one of them empty of visits), and checks the parameters bitwise.
template <class Opt, class Ref>
void compare_runs(Opt& opt, Ref& ref) {
    std::mt19937 g(17);
    model_t a = make_model(9), b = make_model(9);
    auto ga = tt::make_gradient(a);
    auto gb = tt::make_gradient(b);
    REQUIRE(same_bits(values(a, ga), values(b, gb)));
    model_t::workspace_type fa, fb;
    tt::sequential_backward_workspace<double> wa, wb;
    const index_t sizes[] = {13, 1, 0, 29, 7, 3, 31, 2};
    int step = 0;
    for (index_t n : sizes) {
        CAPTURE(step++, n);
        ga.zero();
        gb.zero();
        if (n > 0) {
            const M X = random_matrix<double>(5, n, g);
            const M T = random_matrix<double>(3, n, g);
            M Ya(3, n), Yb(3, n), dY(3, n);
            a.forward_batch(X, Ya, fa);
            b.forward_batch(X, Yb, fb);
            tt::mean_squared_error(Ya, T, dY);
            tt::backward(a, X, fa, dY, ga, wa);
            tt::backward(b, X, fb, dY, gb, wb);
        }
        opt.step(a, ga);
        tt::param_list<double> all;
        gb.collect(b, all);
        ref.step(all);
        CHECK(same_bits(values(a, ga), values(b, gb)));
    }
}

}  // namespace

TEST_CASE("collect_visited lists the visited entries of collect with their positions", "[train][optimizer]") {
    std::mt19937 g(3);
    for (int trial = 0; trial < 4; ++trial) {
        CAPTURE(trial);
        model_t model = make_model(static_cast<unsigned>(trial));
        auto grad = tt::make_gradient(model);
        const index_t n = trial == 0 ? 0 : 1 + 7 * trial;
        model_t::workspace_type fws;
        tt::sequential_backward_workspace<double> ws;
        if (n > 0) {
            const M X = random_matrix<double>(5, n, g);
            M Y(3, n);
            model.forward_batch(X, Y, fws);
            tt::backward(model, X, fws, M(random_matrix<double>(3, n, g)), grad, ws);
        }
        tt::param_list<double> all, seen;
        grad.collect(model, all);
        index_t count = 0;
        grad.collect_visited(model, seen, count);
        CHECK(count == static_cast<index_t>(all.size()));
        std::vector<int> listed(all.size(), 0);
        for (const auto& b : seen) {
            REQUIRE(b.index >= 0);
            REQUIRE(b.index < count);
            const auto& f = all[static_cast<std::size_t>(b.index)];
            CHECK(f.visited);
            CHECK(b.visited);
            CHECK(b.value == f.value);
            CHECK(b.grad == f.grad);
            CHECK(b.size == f.size);
            CHECK(b.level == f.level);
            CHECK(b.decay == f.decay);
            ++listed[static_cast<std::size_t>(b.index)];
        }
        for (std::size_t k = 0; k < all.size(); ++k) CHECK(listed[k] == (all[k].visited ? 1 : 0));
        if (n == 0) CHECK(seen.empty());
    }
}

TEST_CASE("sliced_tree_linear's collect_visited numbers its trees' blocks one after the other", "[train][optimizer]") {
    std::mt19937 g(8);
    treegate::sliced_tree_linear<double> layer(3, 2, 2, tree_mode::path_sum, treegate::slice_combine::concat,
                                               {{0, 1}, {2, 0}, {1, 2}});
    layer.initialize(4);
    auto grad = tt::make_gradient(layer);
    tt::backward_workspace<double> ws;
    const M X = random_matrix<double>(layer.in_size(), 9, g);
    tt::backward(layer, X, M(random_matrix<double>(layer.out_size(), 9, g)), grad, ws);
    tt::param_list<double> all, seen;
    grad.collect(layer, all);
    index_t count = 0;
    grad.collect_visited(layer, seen, count);
    CHECK(count == static_cast<index_t>(all.size()));
    index_t visited = 0;
    for (const auto& b : all) visited += b.visited ? 1 : 0;
    CHECK(static_cast<index_t>(seen.size()) == visited);
    for (const auto& b : seen) CHECK(all[static_cast<std::size_t>(b.index)].value == b.value);
}

TEST_CASE("the lazy sgd step is bitwise an all-blocks momentum loop", "[train][optimizer]") {
    tt::sgd<double> opt({0.05, 0.9, {0.1, 1.5}});
    reference_sgd ref{0.05, 0.9, {0.1, 1.5}, {}};
    compare_runs(opt, ref);
}

TEST_CASE("the lazy adam step is bitwise an all-blocks Adam loop, step counts included", "[train][optimizer]") {
    tt::adam<double>::options o;
    o.lr = 0.01;
    o.decay = {0.05, 2.0};
    tt::adam<double> opt(o);
    reference_adam ref{o, {}, {}, {}};
    compare_runs(opt, ref);
    REQUIRE(opt.block_count() == static_cast<index_t>(ref.t.size()));
    for (index_t k = 0; k < opt.block_count(); ++k) CHECK(opt.steps(k) == ref.t[static_cast<std::size_t>(k)]);
}

TEST_CASE("the lazy step still rejects a layer laid out unlike the optimizer state", "[train][optimizer]") {
    treegate::tree_linear<double> small(3, 2, 2, tree_mode::path_sum, gating::from_input({0, 1})),
        big(3, 2, 3, tree_mode::path_sum, gating::from_input({0, 1, 2}));
    small.initialize(1);
    big.initialize(1);
    auto gs = tt::make_gradient(small);
    auto gbig = tt::make_gradient(big);
    tt::sgd<double> opt;
    gs.mark(0);
    opt.step(small, gs);  // binds the layout (7 blocks of weight and bias)
    gbig.mark(0);
    TG_CHECK_THROWS_WITH(treegate::config_error, opt.step(big, gbig), "sgd", "parameter list has 30 blocks", "built for 14");
}
