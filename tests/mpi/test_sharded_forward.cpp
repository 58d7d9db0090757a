// Tests of mpi/layout.hpp and the sharded tree_linear forward: every rank builds the whole layer
// from a seed as the oracle, and each rank's part of one global batch must come out the same.
#include "../catch_compat.hpp"
#include "mpi_test_support.hpp"

#include <treegate/mpi/sharded_tree_linear.hpp>

#include <algorithm>
#include <limits>
#include <set>
#include <string>
#include <vector>

using namespace tg_mpi_test;
using treegate::index_t;
using treegate::leaf_t;
using treegate::tree_mode;
namespace mpi = treegate::mpi;

TEST_CASE("mpi layout: every subtree has one owner, runs are contiguous and balanced", "[mpi][layout]") {
    for (int ranks = 1; ranks <= 9; ++ranks)
        for (int depth = mpi::layout::automatic_split(ranks); depth <= 6; ++depth)
            for (int split = mpi::layout::automatic_split(ranks); split <= depth; ++split) {
                index_t total = 0, lo = 1 << 30, hi = 0;
                for (int r = 0; r < ranks; ++r) {
                    const mpi::layout l("test", depth, ranks, r, split);
                    REQUIRE(l.subtree_depth() == depth - split);
                    for (index_t s = l.first_owned(); s < l.first_owned() + l.owned(); ++s) REQUIRE(l.owner(s) == r);
                    total += l.owned();
                    lo = std::min(lo, l.owned());
                    hi = std::max(hi, l.owned());
                }
                REQUIRE(total == (index_t{1} << split));
                REQUIRE(lo >= 1);
                REQUIRE(hi - lo <= 1);
            }
}

TEST_CASE("mpi layout: subtree nodes map to the whole tree's heap order", "[mpi][layout]") {
    // Naive: walk the whole tree level by level; node at level L+j, position p belongs to
    // subtree p >> j, and is the (p mod 2^j)-th node of the subtree's level j.
    const int depth = 5, split = 2;
    const mpi::layout l("test", depth, 3, 0, split);
    for (int level = split; level <= depth; ++level) {
        const int j = level - split;
        for (index_t p = 0; p < (index_t{1} << level); ++p) {
            const index_t node = (index_t{1} << level) - 1 + p;
            const index_t s = p >> j, k = (index_t{1} << j) - 1 + (p & ((index_t{1} << j) - 1));
            REQUIRE(l.global_node(s, k) == node);
            REQUIRE(l.node_owner(node) == l.owner(s));
        }
    }
    for (index_t node = 0; node < 3; ++node) REQUIRE(l.node_owner(node) == -1);
    // Leaf codes: the subtree is the top L bits, the code inside it the rest.
    REQUIRE(l.subtree_of(0b10110) == 0b10);
    REQUIRE(l.local_code(0b10110) == 0b110);
}

TEST_CASE("mpi layout: a rank count or split level that cannot work is a config_error", "[mpi][layout]") {
    CHECK_THROWS_AS(mpi::layout("test", 3, 0, 0, 0), treegate::config_error);
    CHECK_THROWS_AS(mpi::layout("test", 3, 2, 2, 1), treegate::config_error);
    CHECK_THROWS_AS(mpi::layout("test", 3, 4, 0, 1), treegate::config_error);  // 2 subtrees, 4 ranks
    CHECK_THROWS_AS(mpi::layout("test", 3, 2, 0, 4), treegate::config_error);  // split below the leaves
    CHECK_THROWS_AS(mpi::layout::automatic("test", 1, 3, 0), treegate::config_error);  // 3 ranks need depth 2
    CHECK_THROWS_WITH(mpi::layout("test", 3, 4, 0, 1), Catch::Matchers::Contains("fewer than the 4 ranks"));
}

namespace {

// One case of the forward test: sizes, mode, gating and how the global batch is dealt out.
struct forward_case {
    index_t in, out;
    int depth, split;  // split -1: automatic
    tree_mode mode;
    bool external;
    route_shape shape;
};

// Per entry, the sum over the path of |W| |x| + |c|: two evaluations of the same path sum in
// different orders (the default kernels' order depends on the size of a node's group of
// examples) differ by at most 2 gamma_k times it, gamma_k = k u / (1 - k u), k = in + D + 1 terms.
template <class Layer, class Scalar>
mat<Scalar> error_bound(const Layer& full, const mat<Scalar>& X, const mat<Scalar>& G) {
    mat<Scalar> bound = mat<Scalar>::Zero(full.out_size(), X.cols());
    const int depth = full.depth();
    const int first = full.mode() == tree_mode::path_sum ? 0 : depth;
    for (index_t e = 0; e < X.cols(); ++e) {
        const leaf_t code = full.gates().is_external() ? treegate::route_by_gates(G.col(e).data(), 1, depth)
                                                       : treegate::route_by_indices(X.col(e).data(), full.gates().indices().data(), depth);
        for (int level = first; level <= depth; ++level) {
            const index_t b = full.block_on_path(code, level);
            bound.col(e) += full.weight(b).cwiseAbs() * X.col(e).cwiseAbs() + full.bias(b).cwiseAbs();
        }
    }
    const double k = static_cast<double>(full.in_size() + depth + 1), u = std::numeric_limits<Scalar>::epsilon() / 2;
    return bound * static_cast<Scalar>(2 * k * u / (1 - k * u));
}

// exact: the kernels' result for a column does not depend on the other columns (reference), so
// the sharded forward must give the whole layer's bits; else within error_bound.
template <class Scalar, class Policy>
void check_forward(const forward_case& c, std::uint64_t seed, bool exact) {
    MPI_Comm comm = MPI_COMM_WORLD;
    const auto gates = c.external ? treegate::gating::external() : input_gating(c.depth, c.in, seed);
    treegate::tree_linear<Scalar, treegate::dynamic, treegate::dynamic, treegate::dynamic, Policy> full(
        c.in, c.out, c.depth, c.mode, gates);
    full.initialize(seed);
    mpi::sharded_tree_linear<Scalar, Policy> layer(comm, c.in, c.out, c.depth, c.mode, gates, true, c.split);
    layer.initialize(seed);

    const global_batch<Scalar> data(c.in, c.depth, seed + 1, c.shape, gates);
    mat<Scalar> Yall(c.out, data.total);
    treegate::workspace<Scalar> ws;
    if (c.external)
        full.forward_batch(data.X, data.G, Yall, ws);
    else
        full.forward_batch(data.X, Yall, ws);

    const auto Xl = data.local_X(), Gl = data.local_G();
    mat<Scalar> Y = mat<Scalar>::Constant(c.out, Xl.cols(), Scalar(-7));
    mpi::exchange_workspace<Scalar> xws;
    if (c.external)
        layer.forward_batch(Xl, Gl, Y, xws);
    else
        layer.forward_batch(Xl, Y, xws);
    const mat<Scalar> expected = Yall.middleCols(data.first_local, Xl.cols());
    INFO("rank " << rank() << " of " << ranks() << ", in " << c.in << " out " << c.out << " depth " << c.depth << " split "
                 << layer.layout().split() << " " << treegate::to_string(c.mode) << (c.external ? " external" : " input")
                 << " local examples " << Xl.cols() << " of " << data.total);
    if (exact) {
        CHECK(bits_equal(Y, expected));
    } else {
        const mat<Scalar> bound = error_bound(full, data.X, data.G).middleCols(data.first_local, Xl.cols());
        CHECK(((Y - expected).cwiseAbs().array() <= bound.array()).all());
    }

    // Every example arrived somewhere: the received counts add up to the global batch.
    const auto per_rank = mpi::examples_per_rank(comm, xws);
    index_t sum = 0;
    for (index_t v : per_rank) sum += v;
    CHECK(sum == data.total);
    CHECK(per_rank[static_cast<std::size_t>(rank())] == xws.stats().received);
    if (c.shape == route_shape::all_to_first) CHECK(per_rank[0] == data.total);

    // A second call on the same workspace gives the same bits (the exchange is deterministic).
    mat<Scalar> Y2(c.out, Xl.cols());
    if (c.external)
        layer.forward_batch(Xl, Gl, Y2, xws);
    else
        layer.forward_batch(Xl, Y2, xws);
    CHECK(bits_equal(Y, Y2));
}

const std::vector<forward_case>& forward_cases() {
    static const std::vector<forward_case> cases = {
        {7, 5, 3, -1, tree_mode::path_sum, false, route_shape::random},
        {7, 5, 3, -1, tree_mode::leaf_only, false, route_shape::random},
        {13, 9, 4, -1, tree_mode::path_sum, true, route_shape::random},
        {13, 9, 4, -1, tree_mode::leaf_only, true, route_shape::random},
        {6, 3, 5, 3, tree_mode::path_sum, false, route_shape::random},
        {6, 3, 5, 3, tree_mode::leaf_only, true, route_shape::random},
        {9, 4, 3, -1, tree_mode::path_sum, false, route_shape::all_to_first},
        {9, 4, 3, -1, tree_mode::leaf_only, false, route_shape::all_to_last},
        {9, 4, 3, -1, tree_mode::path_sum, true, route_shape::one_rank_holds_all},
        {5, 7, 2, 2, tree_mode::path_sum, false, route_shape::random},   // depth == L: subtrees of depth 0
        {5, 7, 2, 2, tree_mode::leaf_only, true, route_shape::random},
        {33, 40, 4, -1, tree_mode::path_sum, false, route_shape::random},  // wide enough for row-chunked pieces
        {4, 4, 3, -1, tree_mode::path_sum, false, route_shape::empty},
    };
    return cases;
}

}  // namespace

TEST_CASE("sharded tree_linear forward is bit-identical to the whole layer (reference kernels)", "[mpi][forward]") {
    std::uint64_t seed = 11;
    for (const auto& c : forward_cases()) {
        if (!layout_fits(c.depth, c.split)) continue;
        check_forward<double, treegate::kernels::reference>(c, seed++, true);
        check_forward<float, treegate::kernels::reference>(c, seed++, true);
    }
}

TEST_CASE("sharded tree_linear forward with the default kernels: float bit-identical on SIMD, double within rounding",
          "[mpi][forward]") {
    // The avx2 and avx512 float kernels are batch invariant, so the replicated levels' smaller
    // groups on each rank give the whole layer's bits; double runs on Eigen, which is not.
    const bool exact = default_float_kernels_invariant();
    if (!exact) WARN("default policy bound to " << treegate::kernels::to_string(treegate::kernels::active_isa())
                                                << ": float checked within rounding only");
    std::uint64_t seed = 101;
    for (const auto& c : forward_cases()) {
        if (!layout_fits(c.depth, c.split)) continue;
        check_forward<float, treegate::kernels::default_policy>(c, seed++, exact);
        check_forward<double, treegate::kernels::default_policy>(c, seed++, false);
    }
}

TEST_CASE("sharded tree_linear holds the top levels and only its own subtrees", "[mpi][memory]") {
    const int depth = 6;
    const index_t in = 8, out = 16;
    for (tree_mode mode : {tree_mode::path_sum, tree_mode::leaf_only}) {
        mpi::sharded_tree_linear<float> layer(MPI_COMM_WORLD, in, out, depth, mode, input_gating(depth, in, 3));
        treegate::tree_linear<float> full(in, out, depth, mode, input_gating(depth, in, 3));
        const auto& l = layer.layout();
        const index_t top = mode == tree_mode::path_sum ? (index_t{1} << l.split()) - 1 : 0;
        CHECK(layer.replicated_block_count() == top);
        CHECK(layer.local_block_count() == top + l.owned() * layer.blocks_per_subtree());
        CHECK(layer.full_memory_bytes() == full.memory_bytes());
        // Summed over the ranks, the owned parts are the tree once and the top levels R times.
        long long mine = static_cast<long long>(layer.local_block_count()), sum = 0;
        MPI_Allreduce(&mine, &sum, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
        CHECK(sum == static_cast<long long>(full.block_count() + (ranks() - 1) * top));
        // Blocks held elsewhere are refused with the owner's rank in the message.
        for (index_t b = 0; b < layer.block_count(); ++b) {
            if (layer.holds(b)) continue;
            CHECK_THROWS_WITH(layer.weight(b), Catch::Matchers::Contains("held by rank " + std::to_string(layer.block_owner(b))));
            break;
        }
    }
}

TEST_CASE("sharded tree_linear: copy_from a whole layer equals initialize from the same seed", "[mpi][weights]") {
    const int depth = 4;
    treegate::tree_linear<double> full(5, 3, depth, tree_mode::path_sum, input_gating(depth, 5, 9));
    full.initialize(42);
    mpi::sharded_tree_linear<double> a(MPI_COMM_WORLD, 5, 3, depth, tree_mode::path_sum, input_gating(depth, 5, 9));
    mpi::sharded_tree_linear<double> b(MPI_COMM_WORLD, 5, 3, depth, tree_mode::path_sum, input_gating(depth, 5, 9));
    a.initialize(42);
    b.copy_from(full);
    a.for_each_local_block([&](index_t g, index_t) {
        CHECK(a.weight(g) == b.weight(g));
        CHECK(a.bias(g) == full.bias(g));
    });
    treegate::tree_linear<double> other(5, 3, depth, tree_mode::leaf_only, input_gating(depth, 5, 9));
    CHECK_THROWS_AS(b.copy_from(other), treegate::config_error);
}

TEST_CASE("sharded tree_linear: a bad shape on one rank is an error on every rank, not a hang", "[mpi][errors]") {
    const int depth = 3;
    mpi::sharded_tree_linear<float> layer(MPI_COMM_WORLD, 6, 2, depth, tree_mode::path_sum, input_gating(depth, 6, 1));
    layer.initialize(1);
    const int bad = ranks() - 1;
    mat<float> X = mat<float>::Random(rank() == bad ? 5 : 6, 4), Y(2, 4);
    mpi::exchange_workspace<float> ws;
    std::string what;
    try {
        layer.forward_batch(X, Y, ws);
    } catch (const treegate::shape_error& e) {
        what = e.what();
    }
    CHECK_THAT(what, Catch::Matchers::Contains("rank " + std::to_string(bad)));
    CHECK_THAT(what, Catch::Matchers::Contains("5 rows, expected 6"));
    // The layer still works for everyone afterwards.
    mat<float> X6 = mat<float>::Random(6, 4);
    CHECK_NOTHROW(layer.forward_batch(X6, Y, ws));
    // Gate values given to a layer gated by its input: usage on every rank.
    mat<float> G = mat<float>::Zero(depth, 4);
    CHECK_THROWS_AS(layer.forward_batch(X6, G, Y, ws), treegate::config_error);
    // A moved-from layer: usage_error on every rank, and the layer it moved to works.
    auto taken = std::move(layer);
    CHECK_THROWS_AS(layer.forward_batch(X6, Y, ws), treegate::usage_error);
    CHECK_NOTHROW(taken.forward_batch(X6, Y, ws));
    // A layout that cannot work is raised on every rank at construction.
    if (ranks() > 1)
        CHECK_THROWS_AS(mpi::sharded_tree_linear<float>(MPI_COMM_WORLD, 6, 2, depth, tree_mode::path_sum,
                                                        input_gating(depth, 6, 1), true, 0),
                        treegate::config_error);
}
