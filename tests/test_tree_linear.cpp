// tree_linear against the "materialise the effective weight and multiply" oracle, for both modes,
// both gating kinds, with and without bias, float and double, reference and eigen policies.
#include "test_support.hpp"

#include <treegate/layers/tree_linear.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

using treegate::gating;
using treegate::index_t;
using treegate::tree_mode;
using namespace tg_test;

namespace {

struct layer_shape {
    index_t in, out;
    int depth;
};

/// Random sizes in 1..70 with in*out*2^(D+1) <= 2^18, so a depth-10 tree stays small (in*out <= 128).
layer_shape random_shape(int depth, std::mt19937& g) {
    const index_t budget = (index_t{1} << 17) >> depth;  // in * out
    const index_t in = uniform_index(g, 1, std::min<index_t>(70, budget));
    const index_t out = uniform_index(g, 1, std::min<index_t>(70, std::max<index_t>(1, budget / in)));
    return {in, out, depth};
}

const index_t batch_sizes[] = {0, 1, 2, 7, 300};

/// Terms summed per output entry: (D+1) blocks of `in` products plus a bias each (path_sum).
template <class Layer>
double terms_of(const Layer& layer) {
    const double blocks = layer.mode() == tree_mode::path_sum ? layer.depth() + 1.0 : 1.0;
    return blocks * (static_cast<double>(layer.in_size()) + 1.0);
}

template <class Layer, class S>
std::vector<std::uint64_t> codes_for(const Layer& layer, const mat<S>& X, const mat<S>* G) {
    std::vector<std::uint64_t> codes(static_cast<std::size_t>(X.cols()));
    for (index_t e = 0; e < X.cols(); ++e)
        codes[static_cast<std::size_t>(e)] =
            G ? oracle_code_from_gates(G->col(e)) : oracle_code_from_input(X.col(e), layer.gates().indices());
    return codes;
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("tree_linear matches the materialised-weight oracle", "[tree_linear][oracle]", scalar_policy_list) {
    using S = typename TestType::scalar;
    using P = typename TestType::policy;
    using layer_t = treegate::tree_linear<S, treegate::dynamic, treegate::dynamic, treegate::dynamic, P>;

    const tree_mode mode = GENERATE(tree_mode::path_sum, tree_mode::leaf_only);
    const bool external = GENERATE(false, true);
    const unsigned seed = GENERATE(1u, 2u);
    CAPTURE(treegate::to_string(mode), external, seed);

    std::mt19937 g(seed * 7919u + (external ? 1u : 0u));
    for (int depth = 0; depth <= 10; ++depth) {
        // With and without bias on alternate depths (and the other way round for the other seed).
        const bool bias = (static_cast<unsigned>(depth) + seed) % 2 == 0;
        const layer_shape sh = random_shape(depth, g);
        CAPTURE(depth, sh.in, sh.out, bias);
        const auto idx = random_gating_indices(depth, sh.in, g);
        layer_t layer(sh.in, sh.out, depth, mode, external ? gating::external() : gating::from_input(idx), bias);
        fill_random(layer, g);
        for (index_t n : batch_sizes) {
            CAPTURE(n);
            mat<S> X = random_matrix<S>(sh.in, n, g);
            mat<S> G;
            if (external) {
                G = random_gates<S>(depth, n, g);
            } else {
                sprinkle_zero_gates(X, idx, g);
            }
            const auto want = oracle_tree_linear(layer, X, codes_for(layer, X, external ? &G : nullptr));

            // Batch, through the allocating convenience overload.
            const mat<S> Y = external ? layer.forward_batch(X, G) : layer.forward_batch(X);
            CHECK(close_report<S>(Y, want.y, want.scale, terms_of(layer)) == "");

            // Single examples.
            mat<S> Y1(sh.out, n);
            vec<S> y(sh.out);
            for (index_t e = 0; e < n; ++e) {
                if (external) {
                    const vec<S> gate = G.col(e);
                    layer.forward(X.col(e), gate, y);
                } else {
                    layer.forward(X.col(e), y);
                }
                Y1.col(e) = y;
            }
            CHECK(close_report<S>(Y1, want.y, want.scale, terms_of(layer)) == "");
        }
    }
}

TEMPLATE_LIST_TEST_CASE("tree_linear batched output equals single-example output column by column", "[tree_linear][batch]",
                        scalar_policy_list) {
    using S = typename TestType::scalar;
    using P = typename TestType::policy;
    using layer_t = treegate::tree_linear<S, treegate::dynamic, treegate::dynamic, treegate::dynamic, P>;
    const tree_mode mode = GENERATE(tree_mode::path_sum, tree_mode::leaf_only);
    const unsigned seed = GENERATE(11u, 12u, 13u);
    CAPTURE(treegate::to_string(mode), seed);
    std::mt19937 g(seed);
    treegate::workspace<S> ws;  // one workspace reused across every size and depth
    for (int depth : {0, 1, 3, 5, 8}) {
        const layer_shape sh = random_shape(depth, g);
        CAPTURE(depth, sh.in, sh.out);
        const auto idx = random_gating_indices(depth, sh.in, g);
        layer_t layer(sh.in, sh.out, depth, mode, gating::from_input(idx));
        fill_random(layer, g);
        for (index_t n : {index_t{300}, index_t{1}, index_t{0}, index_t{45}, index_t{2}, index_t{300}}) {
            CAPTURE(n);
            mat<S> X = random_matrix<S>(sh.in, n, g);
            sprinkle_zero_gates(X, idx, g);
            mat<S> Y(sh.out, n);
            layer.forward_batch(X, Y, ws);
            // The grouped GEMM may sum in another order than the single-example path, so both are
            // held to the oracle's bound around each other: |a - b| <= |a - exact| + |b - exact|.
            const auto want = oracle_tree_linear(layer, X, codes_for(layer, X, static_cast<const mat<S>*>(nullptr)));
            mat<S> Y1(sh.out, n);
            vec<S> y(sh.out);
            for (index_t e = 0; e < n; ++e) {
                layer.forward(X.col(e), y);
                Y1.col(e) = y;
            }
            CHECK(close_report<S>(Y, Y1.template cast<double>(), want.scale, 2 * terms_of(layer)) == "");
            if (std::is_same_v<P, treegate::kernels::reference> && mode == tree_mode::leaf_only && layer.has_bias()) {
                // One block and one bias per example; the reference kernel sums a column exactly as
                // the single-example path does, bias first or last is the only difference.
                CHECK(close_report<S>(Y, Y1.template cast<double>(), want.scale, 2.0) == "");
            }
        }
    }
}

TEMPLATE_LIST_TEST_CASE("tree_linear path_sum at depth 0 is a dense layer", "[tree_linear]", scalar_policy_list) {
    using S = typename TestType::scalar;
    using P = typename TestType::policy;
    std::mt19937 g(5);
    for (index_t in : {index_t{1}, index_t{16}, index_t{17}, index_t{63}}) {
        for (index_t out : {index_t{1}, index_t{15}, index_t{64}, index_t{70}}) {
            CAPTURE(in, out);
            treegate::tree_linear<S, treegate::dynamic, treegate::dynamic, treegate::dynamic, P> layer(in, out, 0,
                                                                                                       tree_mode::path_sum);
            fill_random(layer, g);
            REQUIRE(layer.block_count() == 1);
            const Eigen::MatrixXd W = layer.weight(0).template cast<double>();
            const Eigen::VectorXd c = layer.bias(0).template cast<double>();
            const mat<S> X = random_matrix<S>(in, 31, g);
            const Eigen::MatrixXd Xd = X.template cast<double>();
            const Eigen::MatrixXd want = (W * Xd).colwise() + c;
            const Eigen::MatrixXd scale = (W.cwiseAbs() * Xd.cwiseAbs()).colwise() + c.cwiseAbs();
            CHECK(close_report<S>(layer.forward_batch(X), want, scale, static_cast<double>(in + 1)) == "");
            vec<S> y(out);
            layer.forward(X.col(3), y);
            CHECK(close_report<S>(y, want.col(3), scale.col(3), static_cast<double>(in + 1)) == "");
        }
    }
}

TEST_CASE("tree_linear leaf_only is a table lookup by bit pattern", "[tree_linear]") {
    // D = 3, gating units are inputs 4, 0, 2 (levels 1, 2, 3).
    treegate::tree_linear<double> layer(5, 4, 3, tree_mode::leaf_only, gating::from_input({4, 0, 2}));
    std::mt19937 g(8);
    fill_random(layer, g);
    REQUIRE(layer.block_count() == 8);
    Eigen::VectorXd x(5);
    x << -0.2, 0.9, 0.7, -0.4, 0.3;  // x4 > 0, x0 < 0, x2 > 0: bits 1 0 1, leaf 5
    Eigen::VectorXd y(4);
    layer.forward(x, y);
    Eigen::VectorXd want = layer.weight(5) * x + layer.bias(5);
    CHECK((y - want).cwiseAbs().maxCoeff() <= 1e-14);

    // Every bit pattern picks its own row of the table.
    for (unsigned code = 0; code < 8; ++code) {
        CAPTURE(code);
        x(4) = (code & 4u) ? 0.5 : -0.5;
        x(0) = (code & 2u) ? 0.25 : -0.0;  // -0 is bit 0
        x(2) = (code & 1u) ? 1e-300 : 0.0;  // +0 is bit 0, a tiny positive is bit 1
        layer.forward(x, y);
        want = layer.weight(code) * x + layer.bias(code);
        CHECK((y - want).cwiseAbs().maxCoeff() <= 1e-14);
        const unsigned other = code ^ 1u;
        CHECK((y - (layer.weight(other) * x + layer.bias(other))).cwiseAbs().maxCoeff() > 1e-3);
    }
}

TEMPLATE_TEST_CASE("tree_linear reference and eigen policies agree", "[tree_linear][policy]", float, double) {
    using S = TestType;
    using ref_t = treegate::tree_linear<S, treegate::dynamic, treegate::dynamic, treegate::dynamic, treegate::kernels::reference>;
    using eig_t = treegate::tree_linear<S, treegate::dynamic, treegate::dynamic, treegate::dynamic, treegate::kernels::eigen>;
    std::mt19937 g(31337);
    for (int depth = 0; depth <= 10; depth += 2)
        for (tree_mode mode : {tree_mode::path_sum, tree_mode::leaf_only}) {
            const layer_shape sh = random_shape(depth, g);
            CAPTURE(depth, sh.in, sh.out, treegate::to_string(mode));
            ref_t a(sh.in, sh.out, depth, mode, gating::external());
            eig_t b(sh.in, sh.out, depth, mode, gating::external());
            fill_random(a, g);
            copy_weights(b, a);
            const mat<S> X = random_matrix<S>(sh.in, 123, g);
            const mat<S> G = random_gates<S>(depth, 123, g);
            const auto want = oracle_tree_linear(a, X, codes_for(a, X, &G));
            // Each is within the bound of the exact result, so they are within twice it of each other.
            CHECK(close_report<S>(a.forward_batch(X, G), b.forward_batch(X, G).template cast<double>(), want.scale,
                                  2 * terms_of(a)) == "");
            vec<S> ya(sh.out), yb(sh.out);
            for (index_t e = 0; e < 123; e += 11) {
                const vec<S> ge = G.col(e);
                a.forward(X.col(e), ge, ya);
                b.forward(X.col(e), ge, yb);
                CHECK(close_report<S>(ya, yb.template cast<double>(), want.scale.col(e), 2 * terms_of(a)) == "");
            }
        }
}

TEMPLATE_LIST_TEST_CASE("tree_linear fixed sizes <8, 5, 3> match the dynamic layer", "[tree_linear][fixed]",
                        scalar_policy_list) {
    using S = typename TestType::scalar;
    using P = typename TestType::policy;
    using fixed_t = treegate::tree_linear<S, 8, 5, 3, P>;
    using dyn_t = treegate::tree_linear<S, treegate::dynamic, treegate::dynamic, treegate::dynamic, P>;
    const tree_mode mode = GENERATE(tree_mode::path_sum, tree_mode::leaf_only);
    CAPTURE(treegate::to_string(mode));
    std::mt19937 g(3);

    // Input gating through the all-fixed constructor.
    fixed_t f(mode, gating::from_input({7, 0, 3}));
    dyn_t d(8, 5, 3, mode, gating::from_input({7, 0, 3}));
    CHECK(f.in_size() == 8);
    CHECK(f.out_size() == 5);
    CHECK(f.depth() == 3);
    CHECK(f.block_count() == d.block_count());
    CHECK(f.parameter_count() == d.parameter_count());
    CHECK(f.macs_per_example() == d.macs_per_example());
    fill_random(d, g);
    copy_weights(f, d);

    // Same policy, same weights, same order of operations: identical results.
    const mat<S> X = random_matrix<S>(8, 77, g);
    CHECK(f.forward_batch(X) == d.forward_batch(X));
    for (index_t e = 0; e < 77; ++e) {
        Eigen::Matrix<S, 8, 1> x = X.col(e);
        Eigen::Matrix<S, 5, 1> yf;
        vec<S> yd(5);
        f.forward(x, yf);
        d.forward(X.col(e), yd);
        CHECK(yf == yd);
    }

    // External gating through the sized constructor of the fixed type.
    fixed_t fe(8, 5, 3, mode, gating::external(), false);
    dyn_t de(8, 5, 3, mode, gating::external(), false);
    fill_random(de, g);
    copy_weights(fe, de);
    const mat<S> G = random_gates<S>(3, 77, g);
    CHECK(fe.forward_batch(X, G) == de.forward_batch(X, G));
    Eigen::Matrix<S, 3, 1> gate = G.col(4);
    Eigen::Matrix<S, 5, 1> yf;
    vec<S> yd(5);
    fe.forward(X.col(4), gate, yf);
    de.forward(X.col(4), G.col(4), yd);
    CHECK(yf == yd);
}

TEST_CASE("tree_linear on an empty batch gives an empty result", "[tree_linear][batch]") {
    treegate::tree_linear<float> layer(6, 4, 2, tree_mode::path_sum, gating::from_input({1, 5}));
    layer.initialize(1);
    const tg_test::mat<float> X(6, 0);
    const auto Y = layer.forward_batch(X);
    CHECK(Y.rows() == 4);
    CHECK(Y.cols() == 0);
    treegate::workspace<float> ws;
    tg_test::mat<float> Y2(4, 0);
    layer.forward_batch(X, Y2, ws);
    CHECK(Y2.cols() == 0);

    treegate::tree_linear<double> ext(3, 2, 4, tree_mode::leaf_only, gating::external());
    const tg_test::mat<double> Xe(3, 0), Ge(4, 0);
    const auto Ye = ext.forward_batch(Xe, Ge);
    CHECK(Ye.rows() == 2);
    CHECK(Ye.cols() == 0);
}

TEST_CASE("tree_linear parameter_count, macs_per_example and block_count follow the README formulas", "[tree_linear]") {
    for (int depth : {0, 1, 4, 9}) {
        for (auto io : {std::pair<index_t, index_t>{1, 1}, {17, 3}, {5, 70}}) {
            const index_t in = io.first, out = io.second;
            const index_t nodes = (index_t{2} << depth) - 1, leaves = index_t{1} << depth;
            CAPTURE(depth, in, out);
            for (bool bias : {true, false}) {
                const auto gates = gating::external();
                treegate::tree_linear<float> ps(in, out, depth, tree_mode::path_sum, gates, bias);
                treegate::tree_linear<float> lo(in, out, depth, tree_mode::leaf_only, gates, bias);
                const index_t per_block = in * out + (bias ? out : 0);
                CHECK(ps.block_count() == nodes);
                CHECK(lo.block_count() == leaves);
                CHECK(ps.parameter_count() == nodes * per_block);
                CHECK(lo.parameter_count() == leaves * per_block);
                CHECK(ps.macs_per_example() == (depth + 1) * in * out);
                CHECK(lo.macs_per_example() == in * out);
                CHECK(ps.has_bias() == bias);
                CHECK(ps.mode() == tree_mode::path_sum);
                CHECK(lo.mode() == tree_mode::leaf_only);
                CHECK(ps.gates().is_external());
            }
        }
    }
}

TEST_CASE("tree_linear initialize(seed) is deterministic, seed dependent and bounded", "[tree_linear][init]") {
    for (tree_mode mode : {tree_mode::path_sum, tree_mode::leaf_only}) {
        CAPTURE(treegate::to_string(mode));
        const int depth = 3;
        const index_t in = 13, out = 7;
        treegate::tree_linear<float> a(in, out, depth, mode, gating::external());
        treegate::tree_linear<float> b(in, out, depth, mode, gating::external());
        treegate::tree_linear<float> c(in, out, depth, mode, gating::external());
        a.initialize(42);
        b.initialize(42);
        c.initialize(43);
        const double bound = 1.0 / std::sqrt(static_cast<double>(in) * (mode == tree_mode::path_sum ? depth + 1 : 1));
        bool any_different = false;
        for (index_t i = 0; i < a.block_count(); ++i) {
            CHECK(a.weight(i) == b.weight(i));
            CHECK(a.bias(i) == b.bias(i));
            if (a.weight(i) != c.weight(i)) any_different = true;
            CHECK(a.weight(i).cwiseAbs().maxCoeff() <= bound);
            CHECK(a.bias(i).cwiseAbs().maxCoeff() <= bound);
            CHECK(a.weight(i).cwiseAbs().maxCoeff() > 0.5 * bound);  // not all zero, spread over the range
            if (i > 0) CHECK(a.weight(i) != a.weight(i - 1));  // each block draws its own stream
            CHECK(a.weight(i) != a.bias(i).replicate(1, in));
        }
        CHECK(any_different);
        // Re-initialising overwrites: the same seed gives the same weights again.
        c.initialize(42);
        for (index_t i = 0; i < a.block_count(); ++i) CHECK(a.weight(i) == c.weight(i));
    }
    // Node i draws from its own stream: at another depth node i has the same draws, scaled by the
    // per-node bound 1/sqrt(in (D+1)).
    treegate::tree_linear<double> d2(9, 4, 2, tree_mode::path_sum, gating::external());
    treegate::tree_linear<double> d5(9, 4, 5, tree_mode::path_sum, gating::external());
    d2.initialize(7);
    d5.initialize(7);
    for (index_t i = 0; i < d2.block_count(); ++i) {
        const Eigen::MatrixXd scaled = d2.weight(i) * std::sqrt(3.0 / 6.0);
        CHECK((scaled - d5.weight(i)).cwiseAbs().maxCoeff() <= 1e-15);
    }
}

TEMPLATE_LIST_TEST_CASE("tree_linear routes NaN, -0 and +0 gates as bit 0", "[tree_linear][routing]", scalar_policy_list) {
    using S = typename TestType::scalar;
    using P = typename TestType::policy;
    const S nan = std::numeric_limits<S>::quiet_NaN();
    const int depth = 4;
    for (tree_mode mode : {tree_mode::path_sum, tree_mode::leaf_only}) {
        CAPTURE(treegate::to_string(mode));
        treegate::tree_linear<S, treegate::dynamic, treegate::dynamic, treegate::dynamic, P> layer(
            6, 3, depth, mode, gating::external());
        std::mt19937 g(4);
        fill_random(layer, g);
        const vec<S> x = random_matrix<S>(6, 1, g);
        // Gates 1, NaN, -0, +0 -> bits 1 0 0 0; the same as 1, -1, -1, -1 and different from 1, tiny, ...
        vec<S> odd(depth), plain(depth), tiny(depth);
        odd << S(1), nan, -S(0), S(0);
        plain << S(1), S(-1), S(-1), S(-1);
        tiny << S(1), std::numeric_limits<S>::denorm_min(), S(-1), S(-1);
        vec<S> y_odd(3), y_plain(3), y_tiny(3);
        layer.forward(x, odd, y_odd);
        layer.forward(x, plain, y_plain);
        layer.forward(x, tiny, y_tiny);
        CHECK(y_odd == y_plain);
        CHECK(y_odd.allFinite());
        CHECK(y_tiny != y_plain);

        mat<S> X(6, 3), G(depth, 3);
        X << x, x, x;
        G << odd, plain, tiny;
        const mat<S> Y = layer.forward_batch(X, G);
        CHECK(Y.allFinite());
        const auto want = oracle_tree_linear(layer, X, {8u, 8u, 12u});
        CHECK(close_report<S>(Y, want.y, want.scale, (depth + 1) * 7.0) == "");
        CHECK(close_report<S>(y_odd, want.y.col(0), want.scale.col(0), (depth + 1) * 7.0) == "");
    }
}

TEMPLATE_TEST_CASE("tree_linear path_sum tree equals its flattened leaf_only table", "[tree_linear][flatten]", float, double) {
    using S = TestType;
    std::mt19937 g(21);
    for (int depth : {0, 1, 2, 5, 7}) {
        const layer_shape sh = random_shape(depth, g);
        CAPTURE(depth, sh.in, sh.out);
        const auto idx = random_gating_indices(depth, sh.in, g);
        treegate::tree_linear<S> tree(sh.in, sh.out, depth, tree_mode::path_sum, gating::from_input(idx));
        treegate::tree_linear<S> flat(sh.in, sh.out, depth, tree_mode::leaf_only, gating::from_input(idx));
        fill_random(tree, g);
        Eigen::MatrixXd Wabs_max = Eigen::MatrixXd::Zero(sh.out, sh.in);
        for (index_t leaf = 0; leaf < flat.block_count(); ++leaf) {
            Eigen::MatrixXd W = Eigen::MatrixXd::Zero(sh.out, sh.in);
            Eigen::VectorXd c = Eigen::VectorXd::Zero(sh.out);
            for (int j = 0; j <= depth; ++j) {
                const index_t node = oracle_path_node(static_cast<std::uint64_t>(leaf), depth, j);
                W += tree.weight(node).template cast<double>();
                c += tree.bias(node).template cast<double>();
            }
            flat.weight(leaf) = W.cast<S>();
            flat.bias(leaf) = c.cast<S>();
        }
        const mat<S> X = random_matrix<S>(sh.in, 200, g);
        const auto want = oracle_tree_linear(tree, X, codes_for(tree, X, static_cast<const mat<S>*>(nullptr)));
        // The flat table's entries are rounded sums of D+1 values: the same bound covers them.
        CHECK(close_report<S>(flat.forward_batch(X), want.y, want.scale, 2 * terms_of(tree)) == "");
        CHECK(close_report<S>(tree.forward_batch(X), want.y, want.scale, terms_of(tree)) == "");
        CHECK(flat.macs_per_example() * (depth + 1) == tree.macs_per_example());
    }
}

TEST_CASE("tree_linear accepts strided views: blocks of larger matrices", "[tree_linear][batch]") {
    std::mt19937 g(77);
    const index_t in = 19, out = 11, n = 40;
    const int depth = 4;
    const auto idx = random_gating_indices(depth, in, g);
    treegate::tree_linear<float> layer(in, out, depth, tree_mode::path_sum, gating::from_input(idx));
    fill_random(layer, g);
    const mat<float> big = random_matrix<float>(in + 7, n + 5, g);
    const mat<float> X = big.block(3, 2, in, n);  // a plain copy for the oracle
    const auto want = layer.forward_batch(X);

    treegate::workspace<float> ws;
    mat<float> Ybig = mat<float>::Constant(out + 4, n + 3, 99.0f);
    layer.forward_batch(big.block(3, 2, in, n), Ybig.block(1, 2, out, n), ws);
    CHECK(Ybig.block(1, 2, out, n) == want);
    // Nothing outside the target block was touched.
    CHECK((Ybig.topRows(1).array() == 99.0f).all());
    CHECK((Ybig.bottomRows(3).array() == 99.0f).all());
    CHECK((Ybig.leftCols(2).array() == 99.0f).all());
    CHECK((Ybig.rightCols(1).array() == 99.0f).all());

    // A single example read from a column of a larger matrix and written into a column segment.
    vec<float> y(out);
    layer.forward(X.col(5), y);
    mat<float> Ycol = mat<float>::Zero(out, 3);
    layer.forward(big.col(7).segment(3, in), Ycol.col(1));
    CHECK(Ycol.col(1) == y);
    CHECK(Ycol.col(0).isZero());
}

TEST_CASE("tree_linear copies are deep and independent", "[tree_linear]") {
    treegate::tree_linear<float> a(7, 5, 3, tree_mode::path_sum, gating::from_input({0, 1, 2}));
    a.initialize(9);
    treegate::tree_linear<float> b = a;
    const mat<float> X = [] {
        std::mt19937 g(1);
        return random_matrix<float>(7, 20, g);
    }();
    CHECK(a.forward_batch(X) == b.forward_batch(X));
    b.weight(0).setZero();
    CHECK(a.weight(0).cwiseAbs().maxCoeff() > 0.0f);
    CHECK(a.forward_batch(X) != b.forward_batch(X));
    treegate::tree_linear<float> c = std::move(b);
    CHECK(c.weight(0).isZero());
    CHECK(c.gates().indices() == a.gates().indices());

    treegate::tree_linear<float> nb(7, 5, 3, tree_mode::leaf_only, gating::from_input({0, 1, 2}), false);
    nb.initialize(3);
    treegate::tree_linear<float> nb2(nb);
    CHECK_FALSE(nb2.has_bias());
    CHECK(nb2.forward_batch(X) == nb.forward_batch(X));
}
