// Tests of mpi/shard_io.hpp: a shard set round-trips bit for bit, a single-process file loads
// into a sharded layer, and files of another layout or a missing shard fail on every rank.
#if defined(TREEGATE_HAS_IO)
#include "../catch_compat.hpp"
#include "mpi_test_support.hpp"

#include <treegate/mpi/shard_io.hpp>

#include <cstdio>
#include <string>

using namespace tg_mpi_test;
using treegate::tree_mode;
namespace mpi = treegate::mpi;

namespace {

// Files of one rank count's run, apart from the runs at other rank counts.
std::string prefix(const char* what) { return std::string("mpi_shards_") + what + "_R" + std::to_string(ranks()); }

template <class Scalar>
bool same_local_weights(const mpi::sharded_tree_linear<Scalar>& a, const mpi::sharded_tree_linear<Scalar>& b) {
    bool same = true;
    a.for_each_local_block([&](index_t g, index_t) {
        same = same && bits_equal(a.weight(g), b.weight(g)) && (!a.has_bias() || bits_equal(a.bias(g), b.bias(g)));
    });
    return same;
}

// Removes a shard set once every rank is done with it (each rank its own file, rank 0 the rest).
void remove_set(const std::string& p) {
    MPI_Barrier(MPI_COMM_WORLD);
    std::remove(mpi::shard_path(p, rank(), ranks()).c_str());
    if (rank() == 0) std::remove(mpi::replicated_path(p).c_str());
    MPI_Barrier(MPI_COMM_WORLD);
}

}  // namespace

TEST_CASE("sharded tree_linear: a shard set round-trips bit for bit", "[mpi][io]") {
    const int depth = 4;
    for (tree_mode mode : {tree_mode::path_sum, tree_mode::leaf_only}) {
        mpi::sharded_tree_linear<double> a(MPI_COMM_WORLD, 5, 3, depth, mode, input_gating(depth, 5, 4));
        mpi::sharded_tree_linear<double> b(MPI_COMM_WORLD, 5, 3, depth, mode, input_gating(depth, 5, 4));
        a.initialize(77);
        b.initialize(78);
        const std::string p = prefix(treegate::to_string(mode));
        mpi::save_shards(a, p);
        CHECK_FALSE(same_local_weights(a, b));
        mpi::load_shards(b, p);
        CHECK(same_local_weights(a, b));
        mpi::sharded_tree_linear<float> f(MPI_COMM_WORLD, 5, 3, depth, mode, input_gating(depth, 5, 4));
        mpi::sharded_tree_linear<float> g(MPI_COMM_WORLD, 5, 3, depth, mode, input_gating(depth, 5, 4));
        f.initialize(5);
        mpi::save_shards(f, p + "_f32");
        mpi::load_shards(g, p + "_f32");
        CHECK(same_local_weights(f, g));
        remove_set(p);
        remove_set(p + "_f32");
    }
}

TEST_CASE("sharded tree_linear: a single-process file loads into a sharded layer", "[mpi][io]") {
    const int depth = 3;
    const auto gates = input_gating(depth, 4, 6);
    treegate::tree_linear<double> full(4, 2, depth, tree_mode::path_sum, gates);
    full.initialize(31);
    const std::string path = prefix("whole") + ".safetensors";
    if (rank() == 0) treegate::safetensors::save(full, path, treegate::safetensors::dtype::f64);
    MPI_Barrier(MPI_COMM_WORLD);
    mpi::sharded_tree_linear<double> a(MPI_COMM_WORLD, 4, 2, depth, tree_mode::path_sum, gates);
    mpi::sharded_tree_linear<double> b(MPI_COMM_WORLD, 4, 2, depth, tree_mode::path_sum, gates);
    mpi::load_whole(a, path);
    b.copy_from(full);
    CHECK(same_local_weights(a, b));
    // Another mode: the same error on every rank.
    mpi::sharded_tree_linear<double> leaf(MPI_COMM_WORLD, 4, 2, depth, tree_mode::leaf_only, gates);
    CHECK_THROWS_AS(mpi::load_whole(leaf, path), treegate::file_error);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank() == 0) std::remove(path.c_str());
}

TEST_CASE("sharded tree_linear: shards of another layout or a missing shard fail on every rank", "[mpi][io][errors]") {
    const int depth = 4;
    mpi::sharded_tree_linear<double> a(MPI_COMM_WORLD, 5, 3, depth, tree_mode::path_sum, input_gating(depth, 5, 4));
    a.initialize(3);
    const std::string p = prefix("layout");
    mpi::save_shards(a, p);
    // Another split level: every shard's layout differs.
    const int other = a.layout().split() + 1;
    mpi::sharded_tree_linear<double> b(MPI_COMM_WORLD, 5, 3, depth, tree_mode::path_sum, input_gating(depth, 5, 4), true, other);
    std::string what;
    try {
        mpi::load_shards(b, p);
    } catch (const treegate::file_error& e) {
        what = e.what();
    }
    CHECK_THAT(what, Catch::Matchers::Contains("layout"));
    // The last rank's shard removed: that rank fails to read, and every rank says so.
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank() == ranks() - 1) std::remove(mpi::shard_path(p, rank(), ranks()).c_str());
    MPI_Barrier(MPI_COMM_WORLD);
    mpi::sharded_tree_linear<double> c(MPI_COMM_WORLD, 5, 3, depth, tree_mode::path_sum, input_gating(depth, 5, 4));
    what.clear();
    try {
        mpi::load_shards(c, p);
    } catch (const treegate::file_error& e) {
        what = e.what();
    }
    CHECK_THAT(what, Catch::Matchers::Contains("rank " + std::to_string(ranks() - 1)));
    remove_set(p);
}
#endif
