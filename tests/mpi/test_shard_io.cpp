// Tests of mpi/shard_io.hpp: a shard set round-trips bit for bit, a single-process file loads
// into a sharded layer, and files of another layout or a missing shard fail on every rank.
#if defined(TREEGATE_HAS_IO)
#include "../catch_compat.hpp"
#include "mpi_test_support.hpp"

#include <treegate/mpi/ff_shard_io.hpp>
#include <treegate/mpi/shard_io.hpp>

#include <cstdio>
#include <string>

using namespace tg_mpi_test;
using treegate::activation;
using treegate::tie_rule;
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

using ff_t = mpi::sharded_tree_feedforward<double>;

// Every local unit, router and the output bias, bit for bit.
bool same_local_weights(const ff_t& a, const ff_t& b) {
    using cm = Eigen::Map<const mat<double>>;
    const index_t in = a.in_size(), out = a.out_size(), w = a.width();
    bool same = true;
    for (index_t l = 0; l < a.local_unit_count(); ++l) {
        const auto x = a.local_unit(l), y = b.local_unit(l);
        same = same && bits_equal(cm(x.U, w, in), cm(y.U, w, in)) && bits_equal(cm(x.a, w, 1), cm(y.a, w, 1)) &&
               bits_equal(cm(x.V, out, w), cm(y.V, out, w)) && (x.b == nullptr || bits_equal(cm(x.b, out, 1), cm(y.b, out, 1)));
    }
    for (index_t l = 0; l < a.local_router_count(); ++l)
        same = same && bits_equal(cm(a.router_weight_data(l), in, 1), cm(b.router_weight_data(l), in, 1)) &&
               bits_equal(cm(a.router_bias_data(l), 1, 1), cm(b.router_bias_data(l), 1, 1));
    return same && bits_equal(cm(a.output_bias_data(), out, 1), cm(b.output_bias_data(), out, 1));
}

struct ff_io_case {
    index_t width, trees;
    tree_mode mode;
    tie_rule tie;
    bool leaf_bias;
};
const ff_io_case ff_io_cases[] = {{3, 2, tree_mode::path_sum, tie_rule::greater, false},
                                  {1, 1, tree_mode::path_sum, tie_rule::greater_equal, false},
                                  {2, 2, tree_mode::leaf_only, tie_rule::greater_equal, true},
                                  {1, 1, tree_mode::leaf_only, tie_rule::greater, false}};

ff_t make_ff(const ff_io_case& c, int split = -1) {
    return ff_t(MPI_COMM_WORLD, 5, 3, c.width, 4, c.trees, activation::gelu, c.mode, true, split, c.tie, c.leaf_bias);
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
TEST_CASE("sharded tree_feedforward: a shard set round-trips bit for bit", "[mpi][io][feedforward]") {
    for (const ff_io_case& c : ff_io_cases) {
        ff_t a = make_ff(c), b = make_ff(c);
        a.initialize(77);
        b.initialize(78);
        const std::string p = prefix("ff");
        mpi::save_shards(a, p);
        CHECK_FALSE(same_local_weights(a, b));
        mpi::load_shards(b, p);
        CHECK(same_local_weights(a, b));
        remove_set(p);
    }
}

TEST_CASE("sharded tree_feedforward: a single-process file loads into a sharded layer", "[mpi][io][feedforward]") {
    for (const ff_io_case& c : ff_io_cases) {
        treegate::tree_feedforward<double> full(5, 3, c.width, 4, c.trees, activation::gelu, c.mode, true, c.tie, c.leaf_bias);
        full.initialize(31);
        const std::string path = prefix("ff_whole") + ".safetensors";
        if (rank() == 0) treegate::safetensors::save(full, path, treegate::safetensors::dtype::f64);
        MPI_Barrier(MPI_COMM_WORLD);
        ff_t a = make_ff(c), b = make_ff(c);
        mpi::load_whole(a, path);
        b.copy_from(full);
        CHECK(same_local_weights(a, b));
        // Another tie rule: the same error on every rank.
        ff_io_case d = c;
        d.tie = c.tie == tie_rule::greater ? tie_rule::greater_equal : tie_rule::greater;
        ff_t other = make_ff(d);
        CHECK_THROWS_AS(mpi::load_whole(other, path), treegate::file_error);
        MPI_Barrier(MPI_COMM_WORLD);
        if (rank() == 0) std::remove(path.c_str());
    }
}

TEST_CASE("sharded tree_feedforward: shards of another layout or a missing shard fail on every rank",
          "[mpi][io][feedforward][errors]") {
    const ff_io_case c = ff_io_cases[2];
    ff_t a = make_ff(c);
    a.initialize(3);
    const std::string p = prefix("ff_layout");
    mpi::save_shards(a, p);
    ff_t b = make_ff(c, a.layout().split() + 1), kept = make_ff(c, a.layout().split() + 1);
    b.initialize(4);
    kept.initialize(4);
    std::string what;
    try {
        mpi::load_shards(b, p);
    } catch (const treegate::file_error& e) {
        what = e.what();
    }
    CHECK_THAT(what, Catch::Matchers::Contains("layout"));
    CHECK(same_local_weights(b, kept));  // a failed load leaves the layer as it was
    // Leaf biases off in the loading layer: another layout too.
    ff_io_case d = c;
    d.leaf_bias = false;
    ff_t plain = make_ff(d);
    CHECK_THROWS_AS(mpi::load_shards(plain, p), treegate::file_error);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank() == ranks() - 1) std::remove(mpi::shard_path(p, rank(), ranks()).c_str());
    MPI_Barrier(MPI_COMM_WORLD);
    ff_t e = make_ff(c);
    what.clear();
    try {
        mpi::load_shards(e, p);
    } catch (const treegate::file_error& ex) {
        what = ex.what();
    }
    CHECK_THAT(what, Catch::Matchers::Contains("rank " + std::to_string(ranks() - 1)));
    remove_set(p);
}
#endif
