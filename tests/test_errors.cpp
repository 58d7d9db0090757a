// Errors (README, "Errors"): bad shapes and bad configurations raise treegate::shape_error or
// treegate::config_error (both treegate::error) whose message names the layer and the numbers;
// absurd sizes are refused without crashing and without a successful huge allocation.
#include "test_support.hpp"

#include <treegate/treegate.hpp>

#include <stdexcept>
#include <type_traits>

using treegate::config_error;
using treegate::gating;
using treegate::index_t;
using treegate::shape_error;
using treegate::tree_mode;
using tg_test::mat;
using tg_test::vec;

static_assert(std::is_base_of_v<treegate::error, treegate::shape_error>);
static_assert(std::is_base_of_v<treegate::error, treegate::config_error>);
static_assert(std::is_base_of_v<treegate::error, treegate::file_error>);
static_assert(std::is_base_of_v<std::runtime_error, treegate::error>);

TEST_CASE("errors: tree_linear single-example shapes", "[errors][tree_linear]") {
    treegate::tree_linear<float> in_gated(5, 3, 2, tree_mode::path_sum, gating::from_input({0, 4}));
    treegate::tree_linear<float> ext(5, 3, 3, tree_mode::leaf_only, gating::external());
    vec<float> x5 = vec<float>::Ones(5), x4 = vec<float>::Ones(4), x6 = vec<float>::Ones(6);
    vec<float> y3(3), y2(3 - 1), y4(4);
    vec<float> g3 = vec<float>::Ones(3), g2 = vec<float>::Ones(2), g4 = vec<float>::Ones(4);

    TG_CHECK_THROWS_WITH(shape_error, in_gated.forward(x4, y3), "tree_linear", "input has 4 entries, expected 5");
    TG_CHECK_THROWS_WITH(shape_error, in_gated.forward(x6, y3), "tree_linear", "input has 6 entries, expected 5");
    TG_CHECK_THROWS_WITH(shape_error, in_gated.forward(x5, y2), "tree_linear", "output has 2 entries, expected 3");
    TG_CHECK_THROWS_WITH(shape_error, in_gated.forward(x5, y4), "tree_linear", "output has 4 entries, expected 3");
    TG_CHECK_THROWS_WITH(shape_error, ext.forward(x5, g2, y3), "tree_linear", "gate vector has 2 entries, expected 3");
    TG_CHECK_THROWS_WITH(shape_error, ext.forward(x5, g4, y3), "tree_linear", "gate vector has 4 entries, expected 3");
    TG_CHECK_THROWS_WITH(shape_error, ext.forward(x4, g3, y3), "tree_linear", "input has 4 entries, expected 5");
    TG_CHECK_THROWS_WITH(shape_error, in_gated.forward_add(x4, y3), "tree_linear", "input has 4 entries, expected 5");
    TG_CHECK_THROWS_WITH(shape_error, ext.forward_add(x5, g2, y3), "tree_linear", "gate vector has 2 entries");
    // Every library error is a treegate::error and a std::runtime_error.
    CHECK_THROWS_AS(in_gated.forward(x4, y3), treegate::error);
    CHECK_THROWS_AS(in_gated.forward(x4, y3), std::runtime_error);
    // The valid calls do not throw.
    CHECK_NOTHROW(in_gated.forward(x5, y3));
    CHECK_NOTHROW(ext.forward(x5, g3, y3));
}

TEST_CASE("errors: tree_linear batch shapes", "[errors][tree_linear]") {
    treegate::tree_linear<double> in_gated(5, 3, 2, tree_mode::path_sum, gating::from_input({1, 2}));
    treegate::tree_linear<double> ext(5, 3, 3, tree_mode::path_sum, gating::external());
    treegate::workspace<double> ws;
    const mat<double> X = mat<double>::Ones(5, 7), X4 = mat<double>::Ones(4, 7);
    mat<double> Y = mat<double>::Zero(3, 7), Ybad_rows(2, 7), Ybad_cols(3, 6);
    const mat<double> G = mat<double>::Ones(3, 7), G_rows(2, 7), G_cols(3, 8);

    TG_CHECK_THROWS_WITH(shape_error, in_gated.forward_batch(X4), "tree_linear", "input batch has 4 rows, expected 5");
    TG_CHECK_THROWS_WITH(shape_error, in_gated.forward_batch(X4, Y, ws), "tree_linear", "input batch has 4 rows, expected 5");
    TG_CHECK_THROWS_WITH(shape_error, in_gated.forward_batch(X, Ybad_rows, ws), "tree_linear",
                         "output batch is 2 x 7, expected 3 x 7");
    TG_CHECK_THROWS_WITH(shape_error, in_gated.forward_batch(X, Ybad_cols, ws), "tree_linear",
                         "output batch is 3 x 6, expected 3 x 7");
    TG_CHECK_THROWS_WITH(shape_error, ext.forward_batch(X, G_rows), "tree_linear", "gate matrix is 2 x 7, expected 3 x 7");
    TG_CHECK_THROWS_WITH(shape_error, ext.forward_batch(X, G_cols, Y, ws), "tree_linear", "gate matrix is 3 x 8, expected 3 x 7");
    TG_CHECK_THROWS_WITH(shape_error, ext.forward_batch(X4, G), "tree_linear", "input batch has 4 rows");
    // A rejected call leaves the output untouched.
    CHECK(Y.isZero());
    CHECK_NOTHROW(ext.forward_batch(X, G, Y, ws));
}

TEST_CASE("errors: tree_linear gating configuration", "[errors][tree_linear]") {
    TG_CHECK_THROWS_WITH(config_error, treegate::tree_linear<float>(5, 3, 2, tree_mode::path_sum, gating::from_input({0, 5})),
                         "tree_linear", "gating index 5 (level 2) is outside the input [0, 5)");
    TG_CHECK_THROWS_WITH(config_error, treegate::tree_linear<float>(5, 3, 2, tree_mode::path_sum, gating::from_input({-1, 0})),
                         "tree_linear", "gating index -1 (level 1)", "[0, 5)");
    TG_CHECK_THROWS_WITH(config_error, treegate::tree_linear<float>(5, 3, 3, tree_mode::leaf_only, gating::from_input({0, 1})),
                         "tree_linear", "depth 3 needs 3 gating indices, got 2");
    TG_CHECK_THROWS_WITH(config_error,
                         treegate::tree_linear<float>(5, 3, 1, tree_mode::leaf_only, gating::from_input({0, 1})),
                         "tree_linear", "depth 1 needs 1 gating indices, got 2");
    // Depth > 0 without any gating units.
    TG_CHECK_THROWS_WITH(config_error, treegate::tree_linear<float>(5, 3, 4, tree_mode::path_sum), "tree_linear",
                         "depth 4 needs 4 gating indices, got 0");
    // Depth 0 needs none, and external gating at depth 0 behaves like a dense layer.
    CHECK_NOTHROW(treegate::tree_linear<float>(5, 3, 0, tree_mode::path_sum));
    treegate::tree_linear<float> ext0(5, 3, 0, tree_mode::path_sum, gating::external());
    vec<float> x = vec<float>::Ones(5), y(3);
    CHECK_NOTHROW(ext0.forward(x, y));
}

TEST_CASE("errors: calling the forward of the other gating kind", "[errors][tree_linear]") {
    treegate::tree_linear<float> ext(4, 2, 2, tree_mode::path_sum, gating::external());
    treegate::tree_linear<float> in_gated(4, 2, 2, tree_mode::path_sum, gating::from_input({0, 1}));
    treegate::workspace<float> ws;
    vec<float> x = vec<float>::Ones(4), y(2), g = vec<float>::Ones(2);
    const mat<float> X = mat<float>::Ones(4, 3), G = mat<float>::Ones(2, 3);
    mat<float> Y(2, 3);
    TG_CHECK_THROWS_WITH(config_error, ext.forward(x, y), "tree_linear", "gated externally");
    TG_CHECK_THROWS_WITH(config_error, ext.forward_add(x, y), "tree_linear", "gated externally");
    TG_CHECK_THROWS_WITH(config_error, ext.forward_batch(X), "tree_linear", "gated externally");
    TG_CHECK_THROWS_WITH(config_error, ext.forward_batch(X, Y, ws), "tree_linear", "gated externally");
    TG_CHECK_THROWS_WITH(config_error, in_gated.forward(x, g, y), "tree_linear", "gated by its input");
    TG_CHECK_THROWS_WITH(config_error, in_gated.forward_add(x, g, y), "tree_linear", "gated by its input");
    TG_CHECK_THROWS_WITH(config_error, in_gated.forward_batch(X, G), "tree_linear", "gated by its input");
    TG_CHECK_THROWS_WITH(config_error, in_gated.forward_batch(X, G, Y, ws), "tree_linear", "gated by its input");
}

TEST_CASE("errors: tree_linear depth and sizes", "[errors][tree_linear]") {
    for (int depth : {31, 32, 63, 64, 1000, -1, -30}) {
        CAPTURE(depth);
        const std::string d = "depth " + std::to_string(depth) + " is outside [0, 30]";
        TG_CHECK_THROWS_WITH(config_error, treegate::tree_linear<float>(3, 3, depth, tree_mode::path_sum, gating::external()),
                             "tree_linear", d);
        TG_CHECK_THROWS_WITH(config_error, treegate::tree_linear<float>(3, 3, depth, tree_mode::leaf_only, gating::external()),
                             "tree_linear", d);
    }
    TG_CHECK_THROWS_WITH(config_error, treegate::tree_linear<float>(0, 3, 0, tree_mode::path_sum), "tree_linear",
                         "input size must be positive, got 0");
    TG_CHECK_THROWS_WITH(config_error, treegate::tree_linear<float>(3, 0, 0, tree_mode::path_sum), "tree_linear",
                         "output size must be positive, got 0");
    TG_CHECK_THROWS_WITH(config_error, treegate::tree_linear<float>(-4, 3, 0, tree_mode::path_sum), "tree_linear",
                         "input size must be positive, got -4");
    // Fixed sizes must match the run-time ones.
    using fixed_t = treegate::tree_linear<float, 8, 5, 3>;
    TG_CHECK_THROWS_WITH(config_error, (fixed_t(7, 5, 3, tree_mode::path_sum, gating::external())), "tree_linear",
                         "input size is fixed at 8 but 7 was given");
    TG_CHECK_THROWS_WITH(config_error, (fixed_t(8, 6, 3, tree_mode::path_sum, gating::external())), "tree_linear",
                         "output size is fixed at 5 but 6 was given");
    TG_CHECK_THROWS_WITH(config_error, (fixed_t(8, 5, 2, tree_mode::path_sum, gating::external())), "tree_linear",
                         "depth is fixed at 3 but 2 was given");
    TG_CHECK_THROWS_WITH(config_error, fixed_t(tree_mode::path_sum, gating::from_input({0, 1, 8})), "tree_linear",
                         "gating index 8 (level 3) is outside the input [0, 8)");
}

namespace {
// Under ASan, huge requests must return null rather than abort; test_alloc.cpp sets
// allocator_may_return_null=1 through __asan_default_options for the whole test binary.
// Every "too large" size below is far beyond any address space (> 2^47 bytes), so it fails
// even with unlimited overcommit and never touches real memory.
}  // namespace

TEST_CASE("errors: absurd sizes raise config_error instead of crashing", "[errors][memory]") {
    // Depth 30 with 1000 x 1000 blocks: 2^31 - 1 blocks of 10^6 floats, about 8.6 PB.
    TG_CHECK_THROWS_WITH(config_error, treegate::tree_linear<float>(1000, 1000, 30, tree_mode::path_sum, gating::external()),
                         "tree_linear", "cannot allocate", "2147483647000000");
    TG_CHECK_THROWS_WITH(config_error, treegate::tree_linear<double>(1000, 1000, 30, tree_mode::leaf_only, gating::external()),
                         "tree_linear", "cannot allocate", "1073741824000000");
    // Beyond what ptrdiff_t can address in bytes: refused before asking for memory.
    TG_CHECK_THROWS_WITH(config_error,
                         treegate::tree_linear<float>(index_t{1} << 16, index_t{1} << 15, 30, tree_mode::path_sum, gating::external()),
                         "tree_linear", "cannot hold");
    // Products that overflow index_t.
    TG_CHECK_THROWS_WITH(config_error, treegate::tree_linear<float>(index_t{1} << 32, index_t{1} << 32, 0, tree_mode::path_sum),
                         "tree_linear", "block size overflows");
    TG_CHECK_THROWS_WITH(config_error,
                         treegate::tree_linear<float>(index_t{1} << 20, index_t{1} << 20, 30, tree_mode::path_sum, gating::external()),
                         "tree_linear", "parameter count overflows");
    // The other layers refuse as well, naming themselves.
    TG_CHECK_THROWS_WITH(config_error, treegate::dense<float>(index_t{1} << 24, index_t{1} << 24), "dense", "cannot allocate");
    TG_CHECK_THROWS_WITH(config_error, treegate::dense<float>(index_t{1} << 32, index_t{1} << 32), "dense", "overflows");
    TG_CHECK_THROWS_WITH(config_error, treegate::tree_feedforward<float>(100000, 1000, 1, 30), "tree_feedforward",
                         "cannot allocate");
    TG_CHECK_THROWS_WITH(config_error, treegate::tree_feedforward<float>(index_t{1} << 32, 8, index_t{1} << 32, 2),
                         "tree_feedforward", "overflows");
    // After all that the process still works.
    treegate::tree_linear<float> ok(3, 2, 1, tree_mode::path_sum, gating::from_input({0}));
    CHECK(ok.parameter_count() == 3 * (3 * 2 + 2));
}

TEST_CASE("errors: dense, activation_layer and sliced_tree_linear", "[errors]") {
    TG_CHECK_THROWS_WITH(config_error, treegate::dense<float>(0, 3), "dense", "input size must be positive, got 0");
    TG_CHECK_THROWS_WITH(config_error, treegate::dense<float>(3, -2), "dense", "output size must be positive, got -2");
    TG_CHECK_THROWS_WITH(config_error, (treegate::dense<float, 4, 2>(5, 2)), "dense", "input size is fixed at 4 but 5 was given");
    treegate::dense<float> d(4, 2);
    vec<float> x3(3), y2(2), x4 = vec<float>::Ones(4), y3(3);
    TG_CHECK_THROWS_WITH(shape_error, d.forward(x3, y2), "dense", "input has 3 entries, expected 4");
    TG_CHECK_THROWS_WITH(shape_error, d.forward(x4, y3), "dense", "output has 3 entries, expected 2");
    TG_CHECK_THROWS_WITH(shape_error, d.forward_batch(mat<float>(3, 5)), "dense", "input batch has 3 rows, expected 4");
    treegate::workspace<float> ws;
    mat<float> Y(2, 4);
    TG_CHECK_THROWS_WITH(shape_error, d.forward_batch(mat<float>(4, 5), Y, ws), "dense", "output batch is 2 x 4, expected 2 x 5");

    TG_CHECK_THROWS_WITH(config_error, treegate::activation_layer<float>(treegate::activation::relu, 0), "activation_layer",
                         "size must be positive, got 0");
    treegate::activation_layer<float> a(treegate::activation::gelu, 6);
    vec<float> v6(6), v5(5);
    TG_CHECK_THROWS_WITH(shape_error, a.forward(v5, v6), "activation_layer", "input has 5 entries, expected 6");
    TG_CHECK_THROWS_WITH(shape_error, a.forward(v6, v5), "activation_layer", "output has 5 entries, expected 6");
    TG_CHECK_THROWS_WITH(shape_error, a.forward_batch(mat<float>(5, 2)), "activation_layer", "input batch has 5 rows, expected 6");

    using blocked = treegate::sliced_tree_linear<float>;
    TG_CHECK_THROWS_WITH(config_error, blocked(4, 3, 2, tree_mode::path_sum, treegate::slice_combine::sum, {}),
                         "sliced_tree_linear", "at least one tree");
    // A bad index list of one tree names the blocked layer, the tree and the numbers.
    TG_CHECK_THROWS_WITH(config_error, blocked(4, 3, 2, tree_mode::path_sum, treegate::slice_combine::sum, {{0, 1}, {0, 4}}),
                         "sliced_tree_linear", "tree 1 of 2", "gating index 4 (level 2) is outside the input [0, 4)");
    TG_CHECK_THROWS_WITH(config_error, blocked(4, 3, 2, tree_mode::path_sum, treegate::slice_combine::sum, {{0, 1}, {0}}),
                         "sliced_tree_linear", "tree 1 of 2", "depth 2 needs 2 gating indices, got 1");
    blocked b(4, 3, 1, tree_mode::path_sum, treegate::slice_combine::concat, {{0}, {3}});
    vec<float> x8 = vec<float>::Ones(8), x7(7), y6(6), y5(5);
    TG_CHECK_THROWS_WITH(shape_error, b.forward(x7, y6), "sliced_tree_linear", "input has 7 entries, expected 8");
    TG_CHECK_THROWS_WITH(shape_error, b.forward(x8, y5), "sliced_tree_linear", "output has 5 entries, expected 6");
    TG_CHECK_THROWS_WITH(shape_error, b.forward_batch(mat<float>(7, 3)), "sliced_tree_linear", "input batch has 7 rows, expected 8");
    CHECK_NOTHROW(b.forward(x8, y6));
}

TEST_CASE("errors: tree_feedforward configuration and shapes", "[errors][tree_feedforward]") {
    using ff = treegate::tree_feedforward<float>;
    TG_CHECK_THROWS_WITH(config_error, ff(0, 3, 1, 2), "tree_feedforward", "input size must be positive, got 0");
    TG_CHECK_THROWS_WITH(config_error, ff(3, 0, 1, 2), "tree_feedforward", "output size must be positive, got 0");
    TG_CHECK_THROWS_WITH(config_error, ff(3, 3, 0, 2), "tree_feedforward", "node width must be positive, got 0");
    TG_CHECK_THROWS_WITH(config_error, ff(3, 3, 1, 31), "tree_feedforward", "depth 31 is outside [0, 30]");
    TG_CHECK_THROWS_WITH(config_error, ff(3, 3, 1, -1), "tree_feedforward", "depth -1 is outside [0, 30]");
    TG_CHECK_THROWS_WITH(config_error, ff(3, 3, 1, 1000), "tree_feedforward", "depth 1000 is outside [0, 30]");
    TG_CHECK_THROWS_WITH(config_error, ff(3, 3, 1, 2, 0), "tree_feedforward", "tree count must be positive, got 0");
    TG_CHECK_THROWS_WITH(config_error, ff(3, 3, 1, 2, -3), "tree_feedforward", "tree count must be positive, got -3");
    ff layer(5, 3, 2, 2);
    vec<float> x4(4), x5 = vec<float>::Ones(5), y3(3), y2(2);
    TG_CHECK_THROWS_WITH(shape_error, layer.forward(x4, y3), "tree_feedforward", "input has 4 entries, expected 5");
    TG_CHECK_THROWS_WITH(shape_error, layer.forward(x5, y2), "tree_feedforward", "output has 2 entries, expected 3");
    TG_CHECK_THROWS_WITH(shape_error, layer.forward_batch(mat<float>(4, 2)), "tree_feedforward", "input batch has 4 rows, expected 5");
    treegate::workspace<float> ws;
    mat<float> Y(3, 1);
    TG_CHECK_THROWS_WITH(shape_error, layer.forward_batch(mat<float>(5, 2), Y, ws), "tree_feedforward",
                         "output batch is 3 x 1, expected 3 x 2");
}

TEST_CASE("errors: sequential checks the chain once, at construction", "[errors][sequential]") {
    treegate::dense<float> d(4, 5);
    treegate::tree_linear<float> t6(6, 2, 1, tree_mode::path_sum, gating::from_input({0}));
    TG_CHECK_THROWS_WITH(config_error, treegate::sequential(d, t6), "sequential", "layer 0 (dense) outputs 5 values",
                         "layer 1 (tree_linear) takes 6");
    treegate::tree_linear<float> ext(5, 2, 2, tree_mode::path_sum, gating::external());
    TG_CHECK_THROWS_WITH(config_error, treegate::sequential(d, ext), "sequential", "layer 1 (tree_linear)", "gated externally");
    // An externally gated layer of depth 0 needs no gates, so it may be chained.
    treegate::tree_linear<float> ext0(5, 2, 0, tree_mode::path_sum, gating::external());
    CHECK_NOTHROW(treegate::sequential(d, ext0));

    treegate::sequential model(d, treegate::activation_layer<float>(treegate::activation::relu, 5));
    decltype(model)::workspace_type ws;
    vec<float> x3(3), x4 = vec<float>::Ones(4), y5(5), y4(4);
    TG_CHECK_THROWS_WITH(shape_error, model.forward(x3, y5, ws), "sequential", "input has 3 entries, expected 4");
    TG_CHECK_THROWS_WITH(shape_error, model.forward(x4, y4, ws), "sequential", "output has 4 entries, expected 5");
    TG_CHECK_THROWS_WITH(shape_error, model.forward_batch(mat<float>(3, 2)), "sequential", "input batch has 3 rows, expected 4");
}
