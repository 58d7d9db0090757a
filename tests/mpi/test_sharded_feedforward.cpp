// Tests of the sharded tree_feedforward (mpi/sharded_tree_feedforward.hpp): each rank's part of
// a global batch against the whole layer built from the same seed on every rank.
#include "../catch_compat.hpp"
#include "mpi_test_support.hpp"

#include <treegate/mpi/sharded_tree_feedforward.hpp>

#include <vector>

using namespace tg_mpi_test;
using treegate::activation;
using treegate::tree_mode;
namespace mpi = treegate::mpi;

namespace {

struct ff_case {
    index_t in, out, width;
    int depth;
    index_t trees;
    tree_mode mode;
    activation act;
    int split;
    route_shape shape;
};

template <class Scalar, class Policy>
void check_ff(const ff_case& c, std::uint64_t seed) {
    treegate::tree_feedforward<Scalar, treegate::dynamic, treegate::dynamic, treegate::dynamic, treegate::dynamic, Policy> full(
        c.in, c.out, c.width, c.depth, c.trees, c.act, c.mode);
    full.initialize(seed);
    mpi::sharded_tree_feedforward<Scalar, Policy> layer(MPI_COMM_WORLD, c.in, c.out, c.width, c.depth, c.trees, c.act,
                                                        c.mode, true, c.split);
    layer.initialize(seed);
    const global_batch<Scalar> data(c.in, c.depth, seed + 1, c.shape, treegate::gating::external());
    mat<Scalar> Yall(c.out, data.total);
    treegate::workspace<Scalar> fws;
    full.forward_batch(data.X, Yall, fws, treegate::parallel::serial{});
    const mat<Scalar> Xl = data.local_X();
    mat<Scalar> Y = mat<Scalar>::Constant(c.out, Xl.cols(), Scalar(-3));
    mpi::exchange_workspace<Scalar> ws;
    layer.forward_batch(Xl, Y, ws);
    INFO("rank " << rank() << " of " << ranks() << ": in " << c.in << " out " << c.out << " width " << c.width << " depth "
                 << c.depth << " trees " << c.trees << " " << treegate::to_string(c.mode) << " split "
                 << layer.layout().split() << ", " << Xl.cols() << " of " << data.total << " examples");
    CHECK(bits_equal(Y, Yall.middleCols(data.first_local, Xl.cols())));

    // copy_from a whole layer gives the same part as initialize.
    mpi::sharded_tree_feedforward<Scalar, Policy> copy(MPI_COMM_WORLD, c.in, c.out, c.width, c.depth, c.trees, c.act,
                                                       c.mode, true, c.split);
    copy.copy_from(full);
    mat<Scalar> Y2(c.out, Xl.cols());
    copy.forward_batch(Xl, Y2, ws);
    CHECK(bits_equal(Y, Y2));
}

const std::vector<ff_case>& ff_cases() {
    static const std::vector<ff_case> cases = {
        {7, 5, 3, 3, 1, tree_mode::path_sum, activation::gelu, -1, route_shape::random},
        {7, 5, 3, 3, 2, tree_mode::leaf_only, activation::relu, -1, route_shape::random},
        {6, 4, 1, 4, 1, tree_mode::path_sum, activation::gelu, -1, route_shape::random},
        {6, 4, 1, 4, 2, tree_mode::leaf_only, activation::gelu, 3, route_shape::random},
        {5, 3, 2, 2, 2, tree_mode::path_sum, activation::tanh, 2, route_shape::random},  // depth == L
        {5, 3, 2, 2, 1, tree_mode::leaf_only, activation::relu, 2, route_shape::random},
        {8, 6, 4, 3, 1, tree_mode::path_sum, activation::gelu, -1, route_shape::one_rank_holds_all},
        {8, 6, 4, 3, 1, tree_mode::leaf_only, activation::gelu, -1, route_shape::empty},
        {20, 37, 9, 4, 1, tree_mode::path_sum, activation::gelu, -1, route_shape::random},  // wide units: small and packed GEMMs
    };
    return cases;
}

}  // namespace

TEST_CASE("sharded tree_feedforward forward is bit-identical to the whole layer (reference kernels)", "[mpi][feedforward]") {
    std::uint64_t seed = 300;
    for (const auto& c : ff_cases()) {
        if (!layout_fits(c.depth, c.split)) continue;
        check_ff<double, treegate::kernels::reference>(c, seed++);
        check_ff<float, treegate::kernels::reference>(c, seed++);
    }
}

TEST_CASE("sharded tree_feedforward forward is bit-identical to the whole layer (default float kernels)", "[mpi][feedforward]") {
    // Wider units run two GEMMs per group; the avx2 and avx512 kernels are batch invariant, so
    // the replicated levels' smaller groups per rank give the whole layer's bits.
    if (!default_float_kernels_invariant()) {
        WARN("default policy bound to " << treegate::kernels::to_string(treegate::kernels::active_isa())
                                        << " (not batch invariant): skipped");
        return;
    }
    std::uint64_t seed = 700;
    for (const auto& c : ff_cases())
        if (layout_fits(c.depth, c.split)) check_ff<float, treegate::kernels::default_policy>(c, seed++);
}

TEST_CASE("sharded UltraFastBERT layer (width 1, path_sum) is bit-identical to the whole layer (default kernels)",
          "[mpi][feedforward]") {
    // The fused schedule computes each example alone (its groups only overlap latencies) and
    // the owner adds the path's terms into the same y in one axpy_many, so even the SIMD
    // kernels give the whole layer's bits.
    std::uint64_t seed = 900;
    for (const ff_case& c : {ff_case{24, 16, 1, 5, 2, tree_mode::path_sum, activation::gelu, -1, route_shape::random},
                             ff_case{40, 8, 1, 4, 1, tree_mode::path_sum, activation::gelu, 3, route_shape::one_rank_holds_all}}) {
        if (c.split >= 0 && (index_t{1} << c.split) < ranks()) continue;
        check_ff<float, treegate::kernels::default_policy>(c, seed++);
    }
}

TEST_CASE("sharded tree_feedforward with the >= tie rule or leaf biases is bit-identical to the whole layer",
          "[mpi][feedforward]") {
    using treegate::tie_rule;
    using full_t = treegate::tree_feedforward<double>;
    using sharded_t = mpi::sharded_tree_feedforward<double>;
    struct tie_case {
        index_t width;
        tree_mode mode;
        tie_rule tie;
        bool leaf_bias;
    };
    std::uint64_t seed = 700;
    for (const tie_case& c : {tie_case{3, tree_mode::path_sum, tie_rule::greater_equal, false},
                              tie_case{1, tree_mode::path_sum, tie_rule::greater_equal, false},
                              tie_case{2, tree_mode::leaf_only, tie_rule::greater_equal, false},
                              tie_case{1, tree_mode::leaf_only, tie_rule::greater_equal, true},
                              tie_case{3, tree_mode::leaf_only, tie_rule::greater, true}}) {
        const index_t in = 6, out = 4;
        const int depth = 4;
        full_t full(in, out, c.width, depth, 2, activation::gelu, c.mode, true, c.tie, c.leaf_bias);
        full.initialize(seed);
        // initialize draws the whole layer's blocks, leaf biases included.
        sharded_t drawn(MPI_COMM_WORLD, in, out, c.width, depth, 2, activation::gelu, c.mode, true, -1, c.tie, c.leaf_bias);
        drawn.initialize(seed);
        zero_scores(full);
        full_t other(in, out, c.width, depth, 2, activation::gelu, c.mode, true, tie_rule::greater, c.leaf_bias);
        sharded_t layer(MPI_COMM_WORLD, in, out, c.width, depth, 2, activation::gelu, c.mode, true, -1, c.tie, c.leaf_bias);
        layer.copy_from(full);
        const global_batch<double> data(in, depth, seed + 1, route_shape::random, treegate::gating::external());
        mat<double> Yall(out, data.total), Yd(out, data.total);
        treegate::workspace<double> fws;
        full.forward_batch(data.X, Yall, fws, treegate::parallel::serial{});
        const mat<double> Xl = data.local_X();
        mat<double> Y(out, Xl.cols()), Y2(out, Xl.cols());
        mpi::exchange_workspace<double> ws;
        layer.forward_batch(Xl, Y, ws);
        INFO("rank " << rank() << " of " << ranks() << ": width " << c.width << " " << treegate::to_string(c.mode) << " tie "
                     << treegate::to_string(c.tie) << " leaf bias " << c.leaf_bias);
        CHECK(bits_equal(Y, Yall.middleCols(data.first_local, Xl.cols())));
        // The zeros matter: under the default tie rule the same weights give other outputs.
        if (c.tie == tie_rule::greater_equal && data.total > 0) {
            for (index_t t = 0; t < 2; ++t) {
                for (index_t i = 0; i < full.unit_count(); ++i) {
                    other.hidden_weight(t, i) = full.hidden_weight(t, i);
                    other.hidden_bias(t, i) = full.hidden_bias(t, i);
                    other.output_weight(t, i) = full.output_weight(t, i);
                    if (c.leaf_bias) other.leaf_bias(t, i) = full.leaf_bias(t, i);
                }
                for (index_t i = 0; i < full.router_count(); ++i) {
                    other.router_weight(t, i) = full.router_weight(t, i);
                    other.router_bias(t, i) = full.router_bias(t, i);
                }
            }
            other.output_bias() = full.output_bias();
            other.forward_batch(data.X, Yd, fws, treegate::parallel::serial{});
            CHECK(!bits_equal(Yd, Yall));
        }
        // A layer drawn by initialize equals the whole layer's draw.
        full_t fresh(in, out, c.width, depth, 2, activation::gelu, c.mode, true, c.tie, c.leaf_bias);
        fresh.initialize(seed);
        fresh.forward_batch(data.X, Yall, fws, treegate::parallel::serial{});
        drawn.forward_batch(Xl, Y2, ws);
        CHECK(bits_equal(Y2, Yall.middleCols(data.first_local, Xl.cols())));
        ++seed;
    }
}

TEST_CASE("sharded UltraFastBERT layer: the sorted pass over large subtrees is bit-identical too", "[mpi][feedforward]") {
    // in = out = 256 floats: 2 KiB per node, so a subtree of depth 8 or more (511+ nodes)
    // overflows the 512 KiB the sorted pass keeps in L2, and with 80 examples per rank every
    // subtree has the 8 per part it needs (depth 10: L = 0..2 leaves subtrees of depth 8-10).
    // At one rank the examples are not packed for an exchange at all.
    const index_t in = 256, out = 256, per_rank = 80;
    const int depth = 10;
    for (int split : {-1, 2}) {
        treegate::tree_feedforward<float> full(in, out, 1, depth, 1, activation::gelu, tree_mode::path_sum);
        full.initialize(41);
        mpi::sharded_tree_feedforward<float> layer(MPI_COMM_WORLD, in, out, 1, depth, 1, activation::gelu,
                                                   tree_mode::path_sum, true, split);
        layer.copy_from(full);
        const mat<float> X = mat<float>::Random(in, per_rank * ranks());
        mat<float> Yall(out, X.cols());
        treegate::workspace<float> fws;
        full.forward_batch(X, Yall, fws, treegate::parallel::serial{});
        mat<float> Y(out, per_rank);
        mpi::exchange_workspace<float> ws;
        layer.forward_batch(X.middleCols(rank() * per_rank, per_rank), Y, ws);
        INFO("rank " << rank() << " of " << ranks() << ", split " << layer.layout().split());
        CHECK(bits_equal(Y, Yall.middleCols(rank() * per_rank, per_rank)));
        CHECK(ws.stats().examples == per_rank);
        if (ranks() == 1) CHECK(ws.stats().bytes_sent == 0);
    }
}

TEST_CASE("sharded tree_feedforward holds its top levels and its own subtrees", "[mpi][feedforward][memory]") {
    for (tree_mode mode : {tree_mode::path_sum, tree_mode::leaf_only}) {
        mpi::sharded_tree_feedforward<float> layer(MPI_COMM_WORLD, 16, 8, 4, 5, 2, activation::gelu, mode);
        treegate::tree_feedforward<float> full(16, 8, 4, 5, 2, activation::gelu, mode);
        CHECK(layer.full_memory_bytes() == full.memory_bytes());
        long long mine = static_cast<long long>(layer.memory_bytes()), sum = 0;
        MPI_Allreduce(&mine, &sum, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
        // Summed over ranks: the whole layer, plus R-1 extra copies of the replicated part.
        CHECK(sum >= static_cast<long long>(full.memory_bytes()));
        if (ranks() == 1) CHECK(mine == static_cast<long long>(full.memory_bytes()));
        if (ranks() > 1) CHECK(mine < static_cast<long long>(full.memory_bytes()));
    }
}

TEST_CASE("sharded tree_feedforward: a bad shape on one rank or a moved-from layer is an error on every rank",
          "[mpi][feedforward][errors]") {
    mpi::sharded_tree_feedforward<float> layer(MPI_COMM_WORLD, 6, 4, 2, 3);
    layer.initialize(2);
    mpi::exchange_workspace<float> ws;
    mat<float> X = mat<float>::Random(6, 5), Y(rank() == 0 ? 3 : 4, 5);
    CHECK_THROWS_AS(layer.forward_batch(X, Y, ws), treegate::shape_error);
    // Output over the input (a square layer): the input is copied first, as tree_feedforward does.
    mpi::sharded_tree_feedforward<float> square(MPI_COMM_WORLD, 4, 4, 2, 3);
    square.initialize(5);
    mat<float> Z = mat<float>::Random(4, 6), expected(4, 6);
    square.forward_batch(Z, expected, ws);
    square.forward_batch(Z, Z, ws);
    CHECK(bits_equal(Z, expected));
    auto taken = std::move(square);
    CHECK_THROWS_AS(square.forward_batch(Z, expected, ws), treegate::usage_error);
    CHECK_NOTHROW(taken.forward_batch(Z, expected, ws));
}

TEST_CASE("sharded tree_feedforward: copy_from a layer of another tie rule or leaf-bias setting is a config_error",
          "[mpi][feedforward][errors]") {
    using full_t = treegate::tree_feedforward<float, treegate::dynamic, treegate::dynamic, treegate::dynamic, treegate::dynamic,
                                              treegate::kernels::reference>;
    mpi::sharded_tree_feedforward<float, treegate::kernels::reference> layer(MPI_COMM_WORLD, 6, 4, 2, 3, 1, activation::gelu,
                                                                             tree_mode::leaf_only, true, -1);
    full_t ties(6, 4, 2, 3, 1, activation::gelu, tree_mode::leaf_only, true, treegate::tie_rule::greater_equal, false);
    CHECK_THROWS_AS(layer.copy_from(ties), treegate::config_error);
    full_t biased(6, 4, 2, 3, 1, activation::gelu, tree_mode::leaf_only, true, treegate::tie_rule::greater, true);
    CHECK_THROWS_AS(layer.copy_from(biased), treegate::config_error);
    full_t plain(6, 4, 2, 3, 1, activation::gelu, tree_mode::leaf_only, true);
    CHECK_NOTHROW(layer.copy_from(plain));
}
