// Tests of the sharded tree_linear backward and training (mpi/sharded_train.hpp): steps against
// the single-process layer within a bound derived from the sums involved, and bit-identical
// from run to run for a rank count.
#include "../catch_compat.hpp"
#include "mpi_test_support.hpp"

#include <treegate/mpi/sharded_train.hpp>
#include <treegate/train/backward.hpp>
#include <treegate/train/optimizer.hpp>

#include <cmath>
#include <limits>
#include <vector>

using namespace tg_mpi_test;
using treegate::leaf_t;
using treegate::tree_mode;
namespace mpi = treegate::mpi;
namespace train = treegate::train;

namespace {

using layer_t = treegate::tree_linear<double>;
using sharded_t = mpi::sharded_tree_linear<double>;

// Gate values +-1 that give each example the route it takes in `layer`, so that a copy gated
// externally walks the same paths whatever its inputs.
mat<double> route_gates(const layer_t& layer, const mat<double>& X, const mat<double>& G) {
    const int depth = layer.depth();
    mat<double> out(depth, X.cols());
    for (index_t e = 0; e < X.cols(); ++e) {
        const leaf_t code = layer.gates().is_external() ? treegate::route_by_gates(G.col(e).data(), 1, depth)
                                                        : treegate::route_by_indices(X.col(e).data(), layer.gates().indices().data(), depth);
        for (int j = 0; j < depth; ++j) out(j, e) = ((code >> (depth - 1 - j)) & 1u) != 0 ? 1.0 : -1.0;
    }
    return out;
}

struct train_case {
    tree_mode mode;
    bool external;
    int split;
};

// Runs `steps` SGD steps (momentum 0, a linear loss sum(dY .* Y) with a fresh dY per step) on
// the whole layer and on the sharded one; checks dX and the weights within the derived bound,
// and returns the sharded layer's local weights for the run-to-run comparison.
std::vector<double> train_and_compare(const train_case& c, std::uint64_t seed, int steps) {
    const index_t in = 6, out = 5;
    const int depth = 4;
    const auto gates = c.external ? treegate::gating::external() : input_gating(depth, in, seed);
    layer_t full(in, out, depth, c.mode, gates);
    full.initialize(seed);
    sharded_t layer(MPI_COMM_WORLD, in, out, depth, c.mode, gates, true, c.split);
    layer.initialize(seed);
    train::tree_linear_gradient<double> gfull(full);
    mpi::sharded_gradient<double> g(layer);
    train::sgd<double> opt_full({0.1, 0.0, {}}), opt({0.1, 0.0, {}});
    train::backward_workspace<double> bws;
    mpi::exchange_workspace<double> xws;

    // Per entry, how far the sharded weights may be from the whole layer's: each gradient is a
    // sum of at most N + R products (N examples, R ranks' partial sums), each step adds its
    // rounding (2 u |w| for the update) and lr times the gradient's bound.
    const double u = std::numeric_limits<double>::epsilon() / 2;
    std::vector<mat<double>> wtol(static_cast<std::size_t>(full.block_count()), mat<double>::Zero(out, in));
    std::vector<mat<double>> btol(static_cast<std::size_t>(full.block_count()), mat<double>::Zero(out, 1));

    for (int s = 0; s < steps; ++s) {
        const global_batch<double> data(in, depth, seed + 10 + static_cast<std::uint64_t>(s), route_shape::random, gates);
        std::mt19937_64 r(seed + 99 + static_cast<std::uint64_t>(s));
        std::uniform_real_distribution<double> ud(-1.0, 1.0);
        mat<double> dY(out, data.total);
        for (index_t i = 0; i < dY.size(); ++i) dY.data()[i] = ud(r);

        // The bound's magnitudes: the same walk with |W|, |x|, |dy| on the same routes.
        layer_t absl(in, out, depth, c.mode, treegate::gating::external());
        for (index_t b = 0; b < full.block_count(); ++b) {
            absl.weight(b) = full.weight(b).cwiseAbs();
            absl.bias(b) = full.bias(b).cwiseAbs();
        }
        train::tree_linear_gradient<double> gabs(absl);
        mat<double> dXabs(in, data.total), dXfull(in, data.total);
        const mat<double> Gr = route_gates(full, data.X, data.G);
        train::backward(absl, data.X.cwiseAbs(), Gr, dY.cwiseAbs(), gabs, dXabs, bws);

        gfull.zero();
        if (c.external)
            train::backward(full, data.X, data.G, dY, gfull, dXfull, bws);
        else
            train::backward(full, data.X, dY, gfull, dXfull, bws);

        g.zero();
        const mat<double> Xl = data.local_X(), Gl = data.local_G(), dYl = dY.middleCols(data.first_local, data.count);
        mat<double> dX(in, data.count);
        if (c.external)
            mpi::backward(layer, Xl, Gl, dYl, g, dX, xws);
        else
            mpi::backward(layer, Xl, dYl, g, dX, xws);

        const double kx = static_cast<double>((depth + 1) * out);
        const mat<double> dXtol = dXabs.middleCols(data.first_local, data.count) * (2 * kx * u / (1 - kx * u));
        INFO("rank " << rank() << " of " << ranks() << ", step " << s << ", " << treegate::to_string(c.mode)
                     << (c.external ? " external" : " input") << ", split " << layer.layout().split());
        // From step 1 on the two layers' weights differ within wtol, which dX would inherit: its
        // bound is the first step's.
        if (s == 0) CHECK(((dX - dXfull.middleCols(data.first_local, data.count)).cwiseAbs().array() <= dXtol.array()).all());

        const double kg = static_cast<double>(data.total + ranks());
        const double gamma = 2 * kg * u / (1 - kg * u);
        for (index_t b = 0; b < full.block_count(); ++b) {
            const auto sb = static_cast<std::size_t>(b);
            wtol[sb] += 0.1 * gamma * gabs.weight(b) + 2 * u * full.weight(b).cwiseAbs();
            btol[sb] += 0.1 * gamma * gabs.bias(b) + 2 * u * full.bias(b).cwiseAbs();
        }
        opt_full.step(full, gfull);
        opt.step(g.collect(layer));
        layer.for_each_local_block([&](index_t gb, index_t l) {
            const auto sb = static_cast<std::size_t>(gb);
            CHECK(g.visited(l) == gfull.visited(gb));
            CHECK(((layer.weight(gb) - full.weight(gb)).cwiseAbs().array() <= wtol[sb].array()).all());
            CHECK(((layer.bias(gb) - full.bias(gb)).cwiseAbs().array() <= btol[sb].array()).all());
        });
    }
    std::vector<double> weights;
    layer.for_each_local_block([&](index_t gb, index_t) {
        for (index_t i = 0; i < in * out; ++i) weights.push_back(layer.weight(gb).data()[i]);
        for (index_t i = 0; i < out; ++i) weights.push_back(layer.bias(gb)(i));
    });
    return weights;
}

}  // namespace

TEST_CASE("sharded tree_linear SGD steps equal the single-process ones within the derived bound", "[mpi][train]") {
    std::uint64_t seed = 500;
    for (const train_case& c : {train_case{tree_mode::path_sum, false, -1}, train_case{tree_mode::path_sum, true, -1},
                                train_case{tree_mode::leaf_only, false, -1}, train_case{tree_mode::leaf_only, true, -1},
                                train_case{tree_mode::path_sum, false, 4}, train_case{tree_mode::path_sum, true, 3}}) {
        if (c.split >= 0 && (index_t{1} << c.split) < ranks()) continue;
        const auto a = train_and_compare(c, seed, 3);
        const auto b = train_and_compare(c, seed, 3);
        CHECK(bits_equal(Eigen::Map<const mat<double>>(a.data(), static_cast<index_t>(a.size()), 1),
                         Eigen::Map<const mat<double>>(b.data(), static_cast<index_t>(b.size()), 1)));
        ++seed;
    }
}

TEST_CASE("sharded tree_linear: replicated levels stay equal on every rank under Adam", "[mpi][train]") {
    const int depth = 4;
    const index_t in = 5, out = 3;
    sharded_t layer(MPI_COMM_WORLD, in, out, depth, tree_mode::path_sum, input_gating(depth, in, 8));
    layer.initialize(8);
    mpi::sharded_gradient<double> g(layer);
    train::adam<double> opt({0.01, 0.9, 0.999, 1e-8, {1e-2, 2.0}});
    mpi::exchange_workspace<double> xws;
    for (int s = 0; s < 4; ++s) {
        const global_batch<double> data(in, depth, 70 + static_cast<std::uint64_t>(s), route_shape::random, layer.gates());
        const mat<double> Xl = data.local_X();
        const mat<double> dY = mat<double>::Constant(out, Xl.cols(), 0.5);
        g.zero();
        mpi::backward(layer, Xl, dY, g, xws);
        opt.step(g.collect(layer));
    }
    // Rank 0's copy of the replicated blocks, broadcast and compared bit for bit on every rank.
    std::vector<double> mine, root;
    for (index_t b = 0; b < layer.replicated_block_count(); ++b)
        for (index_t i = 0; i < in * out; ++i) mine.push_back(layer.weight(b).data()[i]);
    root = mine;
    MPI_Bcast(root.data(), static_cast<int>(root.size()), MPI_DOUBLE, 0, MPI_COMM_WORLD);
    CHECK(mine == root);
}

TEST_CASE("sharded tree_linear backward: a bad dY on one rank is an error on every rank", "[mpi][train][errors]") {
    const int depth = 3;
    sharded_t layer(MPI_COMM_WORLD, 4, 2, depth, tree_mode::leaf_only, input_gating(depth, 4, 2));
    mpi::sharded_gradient<double> g(layer);
    mpi::exchange_workspace<double> xws;
    const mat<double> X = mat<double>::Random(4, 3);
    const mat<double> dY = mat<double>::Random(rank() == 0 ? 3 : 2, 3);
    CHECK_THROWS_AS(mpi::backward(layer, X, dY, g, xws), treegate::shape_error);
}
