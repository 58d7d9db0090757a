// Misuse must never give a silent wrong answer (README, "Errors"): NaN inputs stay NaN through
// every activation, outputs that overlap inputs are either handled or refused, moved-from
// layers and bad indices raise treegate errors, and size arithmetic is checked to the end.
#include "test_support.hpp"

#include <treegate/treegate.hpp>
#include <treegate/layers/flatten.hpp>
#include <treegate/train/backward.hpp>

#include <cmath>
#include <initializer_list>
#include <limits>
#include <random>
#include <string>
#include <utility>

using treegate::activation;
using treegate::tree_mode;
using treegate::gating;
using treegate::index_t;
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
            for (tree_mode variant : {tree_mode::path_sum, tree_mode::leaf_only}) {
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

// ---- 2. outputs that overlap inputs -------------------------------------------------------------

namespace {

/// Runs `layer.forward_batch(X, Y, ws)` with X the top `in` rows of a buffer and Y the `out`
/// rows starting at row k of the same buffer (k = 0 and in = out: the very same storage), and
/// compares with the output of a separate input copy.
template <class Layer>
void check_batch_overlap(const Layer& layer, index_t k, index_t n, std::mt19937& g) {
    using S = typename Layer::scalar_type;
    const index_t in = layer.in_size(), out = layer.out_size();
    mat<S> M = tg_test::random_matrix<S>(std::max(in, k + out), n, g);
    const mat<S> X = M.topRows(in);
    const mat<S> want = layer.forward_batch(X);
    treegate::workspace<S> ws;
    auto Yb = M.middleRows(k, out);
    layer.forward_batch(M.topRows(in), Yb, ws);
    const mat<S> got = M.middleRows(k, out);
    const double tol = std::is_same_v<S, float> ? 1e-5 : 1e-12;
    CHECK((got - want).cwiseAbs().maxCoeff() <= tol * (1.0 + want.cwiseAbs().maxCoeff()));
}

/// A single-example forward whose output overlaps its input raises usage_error naming the layer.
template <class Layer>
void check_single_overlap_refused(const Layer& layer, index_t k) {
    using S = typename Layer::scalar_type;
    vec<S> buffer = vec<S>::Ones(std::max(layer.in_size(), k + layer.out_size()));
    auto x = buffer.head(layer.in_size());
    auto y = buffer.segment(k, layer.out_size());
    TG_CHECK_THROWS_WITH(treegate::usage_error, layer.forward(x, y), Layer::name, "output overlaps the input");
    CHECK((buffer.array() == S(1)).all());  // refused before writing anything
}

/// Both of the above: batches of each size with Y starting at each of `batch_rows` of the
/// buffer, single examples with y starting at each of `single_rows`.
template <class Layer>
void check_overlaps(const Layer& layer, std::initializer_list<index_t> sizes, std::initializer_list<index_t> batch_rows,
                    std::initializer_list<index_t> single_rows, std::mt19937& g) {
    for (index_t n : sizes)
        for (index_t k : batch_rows) check_batch_overlap(layer, k, n, g);
    for (index_t k : single_rows) check_single_overlap_refused(layer, k);
}

}  // namespace

TEST_CASE("misuse: dense forward_batch into its own input gives W x", "[misuse][alias]") {
    treegate::dense<float> d(2, 2, false);
    d.weight() << 0, 1, 1, 0;
    mat<float> X(2, 1);
    X << 1, 2;
    treegate::workspace<float> ws;
    d.forward_batch(X, X, ws);
    CHECK(X(0, 0) == 2);
    CHECK(X(1, 0) == 1);
    std::mt19937 g(21);
    treegate::dense<double> sq(6, 6), tall(4, 9);
    sq.initialize(1);
    tall.initialize(2);
    check_overlaps(sq, {1, 7, 300}, {0, 3}, {0}, g);
    check_overlaps(tall, {1, 7, 300}, {2}, {3}, g);
}

TEST_CASE("misuse: tree_linear and its bf16 copy with overlapping input and output", "[misuse][alias]") {
    std::mt19937 g(22);
    for (tree_mode mode : {tree_mode::path_sum, tree_mode::leaf_only}) {
        treegate::tree_linear<float> t(6, 6, 3, mode, gating::from_input({0, 2, 5}));
        t.initialize(3);
        const treegate::tree_linear_bf16<> b(t);
        check_overlaps(t, {1, 50}, {0, 4}, {0, 5}, g);
        check_overlaps(b, {1, 50}, {0, 2}, {0}, g);
        vec<float> buffer = vec<float>::Ones(6);
        TG_CHECK_THROWS_WITH(treegate::usage_error, t.forward_add(buffer, buffer), "tree_linear", "output overlaps the input");
        // Input and output side by side in one buffer do not overlap and are accepted.
        vec<float> both = vec<float>::Ones(12);
        auto x = both.head(6);
        auto y = both.tail(6);
        CHECK_NOTHROW(t.forward(x, y));
        CHECK((y - t.forward_batch(mat<float>::Ones(6, 1)).col(0)).cwiseAbs().maxCoeff() <= 1e-5f);
    }
    // Externally gated: the gate vector may share the output's storage (it is read first).
    treegate::tree_linear<double> ext(4, 2, 2, tree_mode::path_sum, gating::external());
    ext.initialize(4);
    vec<double> x = vec<double>::LinSpaced(4, -1, 1), y(2), g2(2);
    g2 << 1, -1;
    const vec<double> want = ext.forward_batch(x, g2).col(0);
    y = g2;
    ext.forward(x, y, y);
    CHECK((y - want).cwiseAbs().maxCoeff() <= 1e-12);
}

TEST_CASE("misuse: tree_feedforward with overlapping input and output", "[misuse][alias]") {
    std::mt19937 g(23);
    for (index_t width : {index_t{1}, index_t{4}})
        for (tree_mode variant : {tree_mode::path_sum, tree_mode::leaf_only}) {
            CAPTURE(width, treegate::to_string(variant));
            treegate::tree_feedforward<double> f(7, 7, width, 2, 2, activation::gelu, variant);
            f.initialize(5);
            check_overlaps(f, {1, 130}, {0, 3}, {0, 6}, g);
        }
    // On a thread pool as well.
    treegate::tree_feedforward<float> f(8, 8, 1, 3, 1, activation::relu);
    f.initialize(6);
    mat<float> X = tg_test::random_matrix<float>(8, 200, g);
    const mat<float> want = f.forward_batch(X);
    treegate::parallel::thread_pool pool(3);
    treegate::workspace<float> ws;
    f.forward_batch(X, X, ws, pool);
    CHECK((X - want).cwiseAbs().maxCoeff() <= 1e-5 * (1.0 + want.cwiseAbs().maxCoeff()));
}

TEST_CASE("misuse: sliced_tree_linear with overlapping input and output", "[misuse][alias]") {
    std::mt19937 g(24);
    for (auto combine : {treegate::slice_combine::sum, treegate::slice_combine::concat}) {
        // sum: 2 slices of 3 into 6 outputs; concat: 2 slices of 3 into 2 x 3 outputs.
        treegate::sliced_tree_linear<double> b(3, combine == treegate::slice_combine::sum ? 6 : 3, 1, tree_mode::path_sum,
                                                combine, {{0}, {2}});
        b.initialize(7);
        check_overlaps(b, {1, 40}, {0, 1, 4}, {0, 3}, g);
    }
}

TEST_CASE("misuse: activation_layer in place and with partial overlap", "[misuse][alias]") {
    std::mt19937 g(25);
    for (activation a : all_activations) {
        CAPTURE(treegate::to_string(a));
        treegate::activation_layer<float> layer(a, 9);
        // In place stays allowed, for batches and single examples.
        mat<float> X = tg_test::random_matrix<float>(9, 300, g);
        const mat<float> want = layer.forward_batch(X);
        treegate::workspace<float> ws;
        layer.forward_batch(X, X, ws);
        CHECK(X == want);
        vec<float> x = X.col(0), y(9);
        layer.forward(x, y);
        layer.forward(x, x);
        CHECK(x == y);
        // Shifted by some rows or columns: computed as if separate.
        check_overlaps(layer, {300}, {2}, {2}, g);
        mat<float> M = tg_test::random_matrix<float>(9, 301, g);
        const mat<float> want_shift = layer.forward_batch(M.leftCols(300));
        auto Y = M.rightCols(300);
        layer.forward_batch(M.leftCols(300), Y, ws);
        CHECK(M.rightCols(300) == want_shift);
    }
}

TEST_CASE("misuse: sequential with overlapping input and output", "[misuse][alias]") {
    std::mt19937 g(26);
    treegate::sequential one(treegate::dense<double>(5, 5));
    treegate::sequential two(treegate::dense<double>(5, 8), treegate::tree_feedforward<double>(8, 5, 2, 2));
    one.initialize(8);
    two.initialize(9);
    for (index_t n : {index_t{1}, index_t{33}}) {
        mat<double> X = tg_test::random_matrix<double>(5, n, g);
        const mat<double> want1 = one.forward_batch(X), want2 = two.forward_batch(X);
        mat<double> X1 = X, X2 = X;
        decltype(one)::workspace_type ws1;
        decltype(two)::workspace_type ws2;
        one.forward_batch(X1, X1, ws1);
        two.forward_batch(X2, X2, ws2);
        CHECK((X1 - want1).cwiseAbs().maxCoeff() <= 1e-12);
        CHECK((X2 - want2).cwiseAbs().maxCoeff() <= 1e-12);
        vec<double> x = X.col(0);
        two.forward(x, x, ws2);
        CHECK((x - want2.col(0)).cwiseAbs().maxCoeff() <= 1e-12);
    }
    vec<double> x = vec<double>::Ones(5);
    decltype(one)::workspace_type ws;
    TG_CHECK_THROWS_WITH(treegate::usage_error, one.forward(x, x, ws), "dense", "output overlaps the input");
}

// ---- 3. moved-from layers -----------------------------------------------------------------------

namespace {

/// Every call on a moved-from layer raises usage_error naming the layer; its sizes read zero.
template <class Layer>
void check_moved_from_state(const Layer& layer, const mat<typename Layer::scalar_type>& X) {
    using S = typename Layer::scalar_type;
    CHECK(layer.in_size() == 0);
    CHECK(layer.out_size() == 0);
    CHECK(layer.parameter_count() == 0);
    CHECK(layer.macs_per_example() == 0);
    TG_CHECK_THROWS_WITH(treegate::usage_error, layer.forward_batch(X), Layer::name, "moved from");
    mat<S> Y(3, X.cols());
    vec<S> x = X.col(0), y(3);
    treegate::workspace<S> ws;
    TG_CHECK_THROWS_WITH(treegate::usage_error, layer.forward_batch(X, Y, ws), Layer::name, "moved from");
    TG_CHECK_THROWS_WITH(treegate::usage_error, layer.forward(x, y), Layer::name, "moved from");
}

/// Moves `make()` by construction and by assignment: the target computes what the original
/// did, the source is left in the empty state, and a moved-from layer can be assigned again.
template <class Make, class Accessors>
void check_moves(Make make, const Accessors& accessors_throw) {
    using Layer = decltype(make());
    using S = typename Layer::scalar_type;
    std::mt19937 g(31);
    Layer a = make();
    const mat<S> X = tg_test::random_matrix<S>(a.in_size(), 9, g);
    const mat<S> want = a.forward_batch(X);
    Layer b(std::move(a));
    CHECK(b.forward_batch(X) == want);
    check_moved_from_state(a, X);
    accessors_throw(a);
    Layer c = make();
    c = std::move(b);
    CHECK(c.forward_batch(X) == want);
    check_moved_from_state(b, X);
    accessors_throw(b);
    a = std::move(c);  // a moved-from layer takes a new value and works again
    CHECK(a.forward_batch(X) == want);
    CHECK(a.in_size() == X.rows());
    Layer d = a;  // copying still works, and copying a moved-from layer gives another empty one
    CHECK(d.forward_batch(X) == want);
    Layer e = b;
    check_moved_from_state(e, X);
}

}  // namespace

TEST_CASE("misuse: a moved-from tree_linear is empty and refuses every call", "[misuse][moved]") {
    for (tree_mode mode : {tree_mode::path_sum, tree_mode::leaf_only}) {
        check_moves(
            [mode] {
                treegate::tree_linear<float> t(5, 3, 2, mode, gating::from_input({1, 4}));
                t.initialize(11);
                return t;
            },
            [](auto& t) {
                CHECK(t.block_count() == 0);
                CHECK(t.depth() == 0);
                TG_CHECK_THROWS_WITH(treegate::usage_error, t.weight(0), "tree_linear", "moved from");
                TG_CHECK_THROWS_WITH(treegate::usage_error, t.bias(0), "tree_linear", "moved from");
                TG_CHECK_THROWS_WITH(treegate::usage_error, std::as_const(t).weight(0), "tree_linear", "moved from");
                vec<float> x = vec<float>::Ones(5), y(3);
                TG_CHECK_THROWS_WITH(treegate::usage_error, t.forward_add(x, y), "tree_linear", "moved from");
                const auto flat = [&t] { return treegate::flatten(t); };
                TG_CHECK_THROWS_WITH(treegate::error, flat(), "moved from");
                TG_CHECK_THROWS_WITH(treegate::usage_error, treegate::tree_linear_bf16<>(t), "moved from");
            });
    }
    // Externally gated: the gated calls refuse as well.
    treegate::tree_linear<double> ext(4, 2, 2, tree_mode::path_sum, gating::external());
    treegate::tree_linear<double> taken(std::move(ext));
    vec<double> x = vec<double>::Ones(4), gv = vec<double>::Ones(2), y(2);
    TG_CHECK_THROWS_WITH(treegate::usage_error, ext.forward(x, gv, y), "tree_linear", "moved from");
    TG_CHECK_THROWS_WITH(treegate::usage_error, ext.forward_batch(mat<double>::Ones(4, 3), mat<double>::Ones(2, 3)),
                         "tree_linear", "moved from");
    CHECK(taken.in_size() == 4);
}

TEST_CASE("misuse: a moved-from tree_linear_bf16 is empty and refuses every call", "[misuse][moved]") {
    check_moves(
        [] {
            treegate::tree_linear<float> t(6, 4, 2, tree_mode::path_sum, gating::from_input({0, 3}));
            t.initialize(12);
            return treegate::tree_linear_bf16<>(t);
        },
        [](auto& t) {
            CHECK(t.block_count() == 0);
            CHECK(t.weight_bytes() == 0);
            TG_CHECK_THROWS_WITH(treegate::usage_error, t.weight(0), "tree_linear_bf16", "moved from");
            TG_CHECK_THROWS_WITH(treegate::usage_error, t.bias(0), "tree_linear_bf16", "moved from");
        });
}

TEST_CASE("misuse: a moved-from tree_feedforward is empty and refuses every call", "[misuse][moved]") {
    for (tree_mode variant : {tree_mode::path_sum, tree_mode::leaf_only})
        check_moves(
            [variant] {
                treegate::tree_feedforward<double> f(5, 3, 2, 2, 2, activation::gelu, variant);
                f.initialize(13);
                return f;
            },
            [](auto& f) {
                CHECK(f.unit_count() == 0);
                CHECK(f.router_count() == 0);
                CHECK(f.tree_count() == 0);
                CHECK(f.width() == 0);
                TG_CHECK_THROWS_WITH(treegate::usage_error, f.hidden_weight(0, 0), "tree_feedforward", "moved from");
                TG_CHECK_THROWS_WITH(treegate::usage_error, f.hidden_bias(0, 0), "tree_feedforward", "moved from");
                TG_CHECK_THROWS_WITH(treegate::usage_error, f.output_weight(0, 0), "tree_feedforward", "moved from");
                TG_CHECK_THROWS_WITH(treegate::usage_error, f.router_weight(0, 0), "tree_feedforward", "moved from");
                TG_CHECK_THROWS_WITH(treegate::usage_error, f.router_bias(0, 0), "tree_feedforward", "moved from");
                TG_CHECK_THROWS_WITH(treegate::usage_error, f.output_bias(), "tree_feedforward", "moved from");
            });
}

TEST_CASE("misuse: a moved-from dense or activation_layer is empty and refuses every call", "[misuse][moved]") {
    check_moves(
        [] {
            treegate::dense<float> d(5, 3);
            d.initialize(14);
            return d;
        },
        [](auto& d) {
            TG_CHECK_THROWS_WITH(treegate::usage_error, d.weight(), "dense", "moved from");
            TG_CHECK_THROWS_WITH(treegate::usage_error, d.bias(), "dense", "moved from");
        });
    check_moves([] { return treegate::activation_layer<float>(activation::tanh, 3); },
                [](auto&) {});
}

TEST_CASE("misuse: a moved-from sliced_tree_linear is empty and refuses every call", "[misuse][moved]") {
    for (auto combine : {treegate::slice_combine::sum, treegate::slice_combine::concat})
        check_moves(
            [combine] {
                treegate::sliced_tree_linear<float> b(3, 3, 1, tree_mode::path_sum, combine, {{0}, {2}});
                b.initialize(15);
                return b;
            },
            [](auto& b) {
                CHECK(b.tree_count() == 0);
                CHECK(b.slice_in() == 0);
                CHECK(b.slice_out() == 0);
                CHECK(b.depth() == 0);
                TG_CHECK_THROWS_WITH(treegate::usage_error, b.tree(0), "sliced_tree_linear", "moved from");
            });
}

TEST_CASE("misuse: a moved-from sequential refuses every call", "[misuse][moved]") {
    using model_t = treegate::sequential<treegate::dense<float>, treegate::activation_layer<float>>;
    std::mt19937 g(32);
    model_t a(treegate::dense<float>(4, 3), treegate::activation_layer<float>(activation::relu, 3));
    a.initialize(16);
    const mat<float> X = tg_test::random_matrix<float>(4, 6, g);
    const mat<float> want = a.forward_batch(X);
    model_t b(std::move(a));
    CHECK(b.forward_batch(X) == want);
    CHECK(a.in_size() == 0);
    CHECK(a.out_size() == 0);
    CHECK(a.parameter_count() == 0);
    TG_CHECK_THROWS_WITH(treegate::usage_error, a.forward_batch(X), "moved from");
    model_t::workspace_type ws;
    vec<float> x = X.col(0), y(3);
    TG_CHECK_THROWS_WITH(treegate::usage_error, a.forward(x, y, ws), "moved from");
    a = std::move(b);
    CHECK(a.forward_batch(X) == want);
    TG_CHECK_THROWS_WITH(treegate::usage_error, b.forward_batch(X), "moved from");
}

// ---- 4. indices are checked in every build ------------------------------------------------------

// The topology stays usable at compile time, up to the deepest representable tree.
static_assert(treegate::tree::node_count(3) == 15 && treegate::tree::leaf_count(62) == (index_t{1} << 62));
static_assert(treegate::tree::node_count(62) == std::numeric_limits<index_t>::max());
static_assert(treegate::tree::level_end(62) == std::numeric_limits<index_t>::max());
static_assert(treegate::tree::path_node(5u, 3, 3) == 12 && treegate::tree::leaf_node(5u, 3) == 12);
static_assert(treegate::tree::path_node(0xffffffffu, 32, 0) == 0);

TEST_CASE("misuse: tree topology helpers reject depths and codes they cannot represent", "[misuse][index]") {
    namespace tree = treegate::tree;
    using treegate::config_error;
    volatile int deep = 64, negative = -1;  // run time, not constant folding
    TG_CHECK_THROWS_WITH(config_error, tree::node_count(deep), "node_count", "depth 64", "[0, 62]");
    TG_CHECK_THROWS_WITH(config_error, tree::node_count(63), "node_count", "depth 63");
    TG_CHECK_THROWS_WITH(config_error, tree::node_count(negative), "node_count", "depth -1");
    TG_CHECK_THROWS_WITH(config_error, tree::leaf_count(63), "leaf_count", "depth 63");
    TG_CHECK_THROWS_WITH(config_error, tree::internal_count(deep), "internal_count", "depth 64");
    TG_CHECK_THROWS_WITH(config_error, tree::level_begin(63), "level_begin", "level 63");
    TG_CHECK_THROWS_WITH(config_error, tree::level_begin(negative), "level_begin", "level -1");
    TG_CHECK_THROWS_WITH(config_error, tree::level_end(63), "level_end", "level 63");
    TG_CHECK_THROWS_WITH(config_error, tree::level_of(-3), "level_of", "node -3");
    TG_CHECK_THROWS_WITH(config_error, tree::path_node(1u, 3, 4), "path_node", "level 4", "[0, 3]");
    TG_CHECK_THROWS_WITH(config_error, tree::path_node(1u, 3, negative), "path_node", "level -1");
    TG_CHECK_THROWS_WITH(config_error, tree::path_node(8u, 3, 3), "path_node", "code 8", "3 bits");
    TG_CHECK_THROWS_WITH(config_error, tree::path_node(1u, 33, 1), "path_node", "depth 33");
    TG_CHECK_THROWS_WITH(config_error, tree::leaf_node(8u, 3), "leaf_node", "code 8", "3 bits");
    TG_CHECK_THROWS_WITH(config_error, tree::leaf_node(0u, deep), "leaf_node", "depth 64");
    // The largest representable values are exact at run time too.
    volatile int d62 = 62, d32 = 32;
    CHECK(tree::node_count(d62) == std::numeric_limits<index_t>::max());
    CHECK(tree::leaf_count(d62) == index_t{1} << 62);
    CHECK(tree::level_begin(d62) == (index_t{1} << 62) - 1);
    CHECK(tree::path_node(0xffffffffu, d32, 32) == (index_t{1} << 32) - 1 + 0xffffffffLL);
    CHECK(tree::path_node(0x80000000u, d32, 1) == 2);
    CHECK(tree::leaf_node(0xffffffffu, d32) == (index_t{1} << 32) - 1 + 0xffffffffLL);
}

TEST_CASE("misuse: tree_linear and tree_linear_bf16 check block indices in every build", "[misuse][index]") {
    using treegate::usage_error;
    treegate::tree_linear<float> t(4, 3, 3, tree_mode::path_sum, gating::from_input({0, 1, 2}));
    treegate::tree_linear<float> nb(4, 3, 2, tree_mode::leaf_only, gating::from_input({0, 1}), false);
    TG_CHECK_THROWS_WITH(usage_error, t.weight(15), "tree_linear", "block 15 is outside [0, 15)");
    TG_CHECK_THROWS_WITH(usage_error, t.weight(-1), "tree_linear", "block -1 is outside [0, 15)");
    TG_CHECK_THROWS_WITH(usage_error, std::as_const(t).weight(100), "tree_linear", "block 100 is outside [0, 15)");
    TG_CHECK_THROWS_WITH(usage_error, t.bias(15), "tree_linear", "block 15 is outside [0, 15)");
    TG_CHECK_THROWS_WITH(usage_error, std::as_const(t).bias(-2), "tree_linear", "block -2");
    TG_CHECK_THROWS_WITH(usage_error, nb.bias(0), "tree_linear", "has no bias");
    TG_CHECK_THROWS_WITH(usage_error, std::as_const(nb).bias(0), "tree_linear", "has no bias");
    TG_CHECK_THROWS_WITH(usage_error, nb.weight(4), "tree_linear", "block 4 is outside [0, 4)");
    TG_CHECK_THROWS_WITH(usage_error, t.block_on_path(0u, 4), "tree_linear", "level 4 is outside [0, 3]");
    TG_CHECK_THROWS_WITH(usage_error, t.block_on_path(8u, 1), "tree_linear", "code 8");
    TG_CHECK_THROWS_WITH(usage_error, nb.block_on_path(1u, 1), "tree_linear", "level 1", "leaf_only");
    CHECK(t.block_on_path(5u, 3) == 12);
    CHECK(nb.block_on_path(3u, 2) == 3);
    CHECK_NOTHROW(t.weight(14));
    CHECK_NOTHROW(t.bias(0));

    const treegate::tree_linear_bf16<> b(t), bnb(nb);
    TG_CHECK_THROWS_WITH(usage_error, b.weight(15), "tree_linear_bf16", "block 15 is outside [0, 15)");
    TG_CHECK_THROWS_WITH(usage_error, b.bias(-1), "tree_linear_bf16", "block -1 is outside [0, 15)");
    TG_CHECK_THROWS_WITH(usage_error, bnb.bias(0), "tree_linear_bf16", "has no bias");
    TG_CHECK_THROWS_WITH(usage_error, b.block_on_path(0u, 5), "tree_linear_bf16", "level 5");
    CHECK(b.block_on_path(5u, 3) == 12);
}

TEST_CASE("misuse: tree_feedforward dense and sliced_tree_linear check indices in every build", "[misuse][index]") {
    using treegate::usage_error;
    treegate::tree_feedforward<double> ns(4, 3, 2, 2, 2, activation::gelu, tree_mode::path_sum, false);
    treegate::tree_feedforward<double> lm(4, 3, 2, 2, 1, activation::gelu, tree_mode::leaf_only);
    TG_CHECK_THROWS_WITH(usage_error, ns.hidden_weight(2, 0), "tree_feedforward", "tree 2 is outside [0, 2)");
    TG_CHECK_THROWS_WITH(usage_error, ns.hidden_weight(-1, 0), "tree_feedforward", "tree -1 is outside [0, 2)");
    TG_CHECK_THROWS_WITH(usage_error, ns.hidden_weight(0, 7), "tree_feedforward", "unit 7 is outside [0, 7)");
    TG_CHECK_THROWS_WITH(usage_error, std::as_const(ns).hidden_bias(1, -1), "tree_feedforward", "unit -1 is outside [0, 7)");
    TG_CHECK_THROWS_WITH(usage_error, ns.output_weight(0, 9), "tree_feedforward", "unit 9 is outside [0, 7)");
    TG_CHECK_THROWS_WITH(usage_error, lm.hidden_weight(0, 4), "tree_feedforward", "unit 4 is outside [0, 4)");
    TG_CHECK_THROWS_WITH(usage_error, ns.router_weight(0, 0), "tree_feedforward", "router 0 is outside [0, 0)");
    TG_CHECK_THROWS_WITH(usage_error, ns.router_bias(0, 0), "tree_feedforward", "router 0 is outside [0, 0)");
    TG_CHECK_THROWS_WITH(usage_error, lm.router_weight(0, 3), "tree_feedforward", "router 3 is outside [0, 3)");
    TG_CHECK_THROWS_WITH(usage_error, std::as_const(lm).router_bias(1, 0), "tree_feedforward", "tree 1 is outside [0, 1)");
    TG_CHECK_THROWS_WITH(usage_error, ns.output_bias(), "tree_feedforward", "has no output bias");
    TG_CHECK_THROWS_WITH(usage_error, std::as_const(ns).output_bias(), "tree_feedforward", "has no output bias");
    CHECK_NOTHROW(lm.router_bias(0, 2));
    CHECK_NOTHROW(lm.output_bias());
    CHECK_NOTHROW(ns.hidden_weight(1, 6));

    treegate::dense<float> d(3, 2, false);
    TG_CHECK_THROWS_WITH(usage_error, d.bias(), "dense", "has no bias");
    TG_CHECK_THROWS_WITH(usage_error, std::as_const(d).bias(), "dense", "has no bias");

    treegate::sliced_tree_linear<float> b(3, 2, 1, tree_mode::path_sum, treegate::slice_combine::sum, {{0}, {1}});
    TG_CHECK_THROWS_WITH(usage_error, b.tree(2), "sliced_tree_linear", "tree 2 is outside [0, 2)");
    TG_CHECK_THROWS_WITH(usage_error, std::as_const(b).tree(-1), "sliced_tree_linear", "tree -1 is outside [0, 2)");
    CHECK_NOTHROW(b.tree(1));
}

// ---- 5. size arithmetic and memory ---------------------------------------------------------------

namespace {

/// what() of the config_error `f` raises ("" if none).
template <class F>
std::string config_message(F&& f) {
    try {
        f();
    } catch (const treegate::config_error& e) {
        return e.what();
    }
    return {};
}

}  // namespace

TEST_CASE("misuse: block sizes next to the index limit are refused without a wrapped count", "[misuse][memory]") {
    // 7 x (2^63 - 1) / 7 = 2^63 - 1 scalars per block: the product fits, rounding it up to a
    // cache line does not. The message must name the layer and quote no negative count.
    const index_t big = std::numeric_limits<index_t>::max() / 7;
    const std::string tl = config_message([&] { treegate::tree_linear<float>(7, big, 0, tree_mode::path_sum); });
    CAPTURE(tl);
    CHECK(tl.find("tree_linear") != std::string::npos);
    CHECK(tl.find('-') == std::string::npos);
    const std::string ff = config_message([&] { treegate::tree_feedforward<float>(big, 3, 7, 0); });
    CAPTURE(ff);
    CHECK(ff.find("tree_feedforward") != std::string::npos);
    CHECK(ff.find('-') == std::string::npos);
    const std::string de = config_message([&] { treegate::dense<double>(7, big); });
    CAPTURE(de);
    CHECK(de.find("dense") != std::string::npos);
    CHECK(de.find('-') == std::string::npos);
    // The public rounding helper refuses as well instead of wrapping.
    TG_CHECK_THROWS_WITH(treegate::config_error, treegate::detail::padded<float>(std::numeric_limits<index_t>::max() - 3),
                         "overflows");
}

TEST_CASE("misuse: allocation errors quote the parameter count and the bytes with padding", "[misuse][memory]") {
    // The same shape at depth 2 (7 blocks) gives the bytes per block; at depth 30 (2^31 - 1
    // blocks, about 87 TB) the allocation fails and must quote parameter_count() and the bytes.
    const treegate::tree_linear<float> small(100, 100, 2, tree_mode::path_sum, gating::external());
    const index_t blocks = (index_t{1} << 31) - 1;
    const index_t params = blocks * (100 * 100 + 100);
    const index_t bytes = small.memory_bytes() / 7 * blocks;
    const std::string msg =
        config_message([] { treegate::tree_linear<float>(100, 100, 30, tree_mode::path_sum, gating::external()); });
    CAPTURE(msg);
    CHECK(msg.find("tree_linear") != std::string::npos);
    CHECK(msg.find("cannot allocate") != std::string::npos);
    CHECK(msg.find(std::to_string(params) + " parameters") != std::string::npos);
    CHECK(msg.find(std::to_string(bytes) + " bytes") != std::string::npos);

    const treegate::tree_feedforward<float> ff_small(1000, 1000, 1, 2);
    const index_t ff_params = blocks * (1000 + 1 + 1000) + 1000;
    const index_t ff_bytes = (ff_small.memory_bytes() - 1000 * 4) / 7 * blocks + 1000 * 4;
    const std::string ff = config_message([] { treegate::tree_feedforward<float>(1000, 1000, 1, 30); });
    CAPTURE(ff);
    CHECK(ff.find(std::to_string(ff_params) + " parameters") != std::string::npos);
    CHECK(ff.find(std::to_string(ff_bytes) + " bytes") != std::string::npos);
}

TEST_CASE("misuse: memory_bytes counts the padding, and padding never multiplies the memory", "[misuse][memory]") {
    std::mt19937 g(41);
    // Tiny blocks (1 x 1, width-1 biases) take what their parameters take, not a cache line each.
    const treegate::tree_linear<float> one(1, 1, 3, tree_mode::path_sum, gating::external());
    CHECK(one.memory_bytes() == one.parameter_count() * 4);
    // The standard sizes are whole cache lines: no padding at all.
    for (index_t n : {index_t{256}, index_t{512}, index_t{768}}) {
        const treegate::tree_feedforward<float> ff(n, n, 1, 3);
        CHECK(ff.memory_bytes() == ff.parameter_count() * 4);
        const treegate::tree_linear<float> tl(n, n, 1, tree_mode::path_sum, gating::external());
        CHECK(tl.memory_bytes() == tl.parameter_count() * 4);
    }
    // Random shapes: at least the parameters' bytes, at most 1/8 more (plus nothing for the
    // unpadded small buffers), for every layer.
    for (int trial = 0; trial < 40; ++trial) {
        const index_t in = tg_test::uniform_index(g, 1, 70), out = tg_test::uniform_index(g, 1, 70);
        const index_t w = tg_test::uniform_index(g, 1, 5);
        const int depth = static_cast<int>(tg_test::uniform_index(g, 0, 3));
        CAPTURE(in, out, w, depth);
        const auto check = [](index_t bytes, index_t params, index_t scalar) {
            CHECK(bytes >= params * scalar);
            CHECK(bytes * 8 <= params * scalar * 9);
        };
        const treegate::tree_linear<double> tl(in, out, depth, tree_mode::leaf_only, gating::external());
        check(tl.memory_bytes(), tl.parameter_count(), 8);
        const treegate::tree_linear<float> tf(in, out, depth, tree_mode::path_sum, gating::external(), false);
        check(tf.memory_bytes(), tf.parameter_count(), 4);
        // bf16 blocks keep their whole-line layout (test_bf16.cpp); the bytes say so.
        const treegate::tree_linear_bf16<> b(tf);
        CHECK(b.memory_bytes() == b.weight_bytes());
        CHECK(b.weight_bytes() == b.block_count() * ((in * out + 31) / 32 * 32) * 2);
        const treegate::tree_feedforward<float> ff(in, out, w, depth, 2, activation::gelu, tree_mode::leaf_only);
        check(ff.memory_bytes(), ff.parameter_count(), 4);
        const treegate::dense<float> d(in, out);
        CHECK(d.memory_bytes() == d.parameter_count() * 4);
        treegate::sequential seq(treegate::dense<float>(in, out), treegate::activation_layer<float>(activation::relu, out));
        CHECK(seq.memory_bytes() == d.memory_bytes());
        const treegate::sliced_tree_linear<float> bl(in, out, depth, tree_mode::path_sum, treegate::slice_combine::sum,
                                                      {std::vector<index_t>(static_cast<std::size_t>(depth), 0),
                                                       std::vector<index_t>(static_cast<std::size_t>(depth), in - 1)});
        CHECK(bl.memory_bytes() == 2 * treegate::tree_linear<float>(in, out, depth, tree_mode::path_sum,
                                                                     gating::from_input(std::vector<index_t>(
                                                                         static_cast<std::size_t>(depth), 0)))
                                           .memory_bytes());
    }
}
