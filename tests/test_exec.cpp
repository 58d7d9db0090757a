// The execution engine (include/treegate/exec/): the grouped loop against a "materialise the
// path's weight, then multiply" oracle for both streams, the leaf-sorted walk and the level
// driver against per-example routes, and the one gating-kind check's messages.
#include "test_support.hpp"

#include <treegate/exec/grouped.hpp>
#include <treegate/exec/levels.hpp>
#include <treegate/exec/route.hpp>
#include <treegate/kernels/reference.hpp>
#include <treegate/parallel/thread_pool.hpp>
#include <treegate/treegate.hpp>

#include <random>
#include <set>
#include <vector>

using namespace tg_test;
using treegate::index_t;
using treegate::leaf_t;
namespace exec = treegate::exec;

namespace {

// A random table of blocks in heap order (path_sum) or leaf order, with padding between blocks
// so that a wrong stride reads the wrong numbers.
struct table_data {
    index_t in, out, stride, bias_stride;
    int depth;
    bool path_sum, bias;
    std::vector<float> w, c;

    exec::block_table<float, float> table() const {
        return {in, out, depth, path_sum, w.data(), stride, bias ? c.data() : nullptr, bias_stride};
    }
    index_t blocks() const { return path_sum ? treegate::tree::node_count(depth) : treegate::tree::leaf_count(depth); }
};

table_data random_table(std::mt19937& g, index_t in, index_t out, int depth, bool path_sum, bool bias) {
    table_data t{in, out, in * out + 3, out + 1, depth, path_sum, bias, {}, {}};
    t.w.resize(static_cast<std::size_t>(t.blocks() * t.stride));
    t.c.resize(static_cast<std::size_t>(t.blocks() * t.bias_stride));
    for (auto& v : t.w) v = static_cast<float>(uniform(g));
    for (auto& v : t.c) v = static_cast<float>(uniform(g));
    return t;
}

// y_e = (sum of the path's blocks) x_e + (sum of their biases), in double, and |.| bounds.
oracle_result oracle_table(const table_data& t, const mat<float>& X, const std::vector<leaf_t>& codes) {
    const index_t n = X.cols();
    oracle_result r{Eigen::MatrixXd::Zero(t.out, n), Eigen::MatrixXd::Zero(t.out, n)};
    for (index_t e = 0; e < n; ++e) {
        Eigen::MatrixXd W = Eigen::MatrixXd::Zero(t.out, t.in), Wabs = W;
        Eigen::VectorXd c = Eigen::VectorXd::Zero(t.out), cabs = c;
        for (int level = t.path_sum ? 0 : t.depth; level <= t.depth; ++level) {
            const index_t b = t.path_sum ? oracle_path_node(codes[static_cast<std::size_t>(e)], t.depth, level)
                                         : static_cast<index_t>(codes[static_cast<std::size_t>(e)]);
            const Eigen::Map<const Eigen::MatrixXf> B(t.w.data() + b * t.stride, t.out, t.in);
            W += B.cast<double>();
            Wabs += B.cast<double>().cwiseAbs();
            if (t.bias) {
                const Eigen::Map<const Eigen::VectorXf> cb(t.c.data() + b * t.bias_stride, t.out);
                c += cb.cast<double>();
                cabs += cb.cast<double>().cwiseAbs();
            }
        }
        const Eigen::VectorXd x = X.col(e).cast<double>();
        r.y.col(e) = W * x + c;
        r.scale.col(e) = Wabs * x.cwiseAbs() + cabs;
    }
    return r;
}

std::vector<leaf_t> random_codes(std::mt19937& g, index_t n, int depth) {
    std::vector<leaf_t> codes(static_cast<std::size_t>(n));
    for (auto& c : codes) c = static_cast<leaf_t>(uniform_index(g, 0, treegate::tree::leaf_count(depth) - 1));
    return codes;
}

}  // namespace

TEST_CASE("exec: the grouped loop matches the materialised oracle, and both streams give the same bits", "[exec]") {
    std::mt19937 g(20261201);
    treegate::parallel::thread_pool pool(3);
    for (int trial = 0; trial < 24; ++trial) {
        const int depth = static_cast<int>(uniform_index(g, 0, 6));
        const bool path_sum = trial % 2 == 0, bias = trial % 3 != 0;
        // Some batches large enough that pieces are row chunks (> 2^18 multiply-adds per group).
        const index_t in = uniform_index(g, 1, 90), out = uniform_index(g, 1, trial % 4 == 0 ? 300 : 40);
        const index_t n = trial < 3 ? trial : uniform_index(g, 3, 900);  // 0, 1, 2 examples first
        CAPTURE(trial, depth, path_sum, bias, in, out, n);
        const table_data t = random_table(g, in, out, depth, path_sum, bias);
        const mat<float> X = random_matrix<float>(in, n, g);
        treegate::workspace<float> ws;
        ws.codes = random_codes(g, n, depth);
        const std::vector<leaf_t> codes = ws.codes;
        mat<float> per_batch = mat<float>::Constant(out, n, 7.0f), per_tile = per_batch, threaded = per_batch;
        treegate::parallel::serial serial;
        exec::grouped_forward<treegate::kernels::reference>(t.table(), X, per_batch, ws, serial);
        exec::grouped_forward<treegate::kernels::reference>(t.table(), X, per_tile, ws, serial, exec::stream::per_tile);
        exec::grouped_forward<treegate::kernels::reference>(t.table(), X, threaded, ws, pool, exec::stream::per_tile);
        const oracle_result want = oracle_table(t, X, codes);
        const double terms = static_cast<double>(in + 1) * (depth + 2);
        const Eigen::MatrixXd bound = want.scale.unaryExpr([&](double s) { return dot_tolerance<float>(terms, s); });
        CHECK(bound_report(per_batch, want.y, bound) == "");
        // Each column's sum runs over the same blocks in the same order and the reference
        // kernel's column result does not depend on the group it is in, so the streams agree.
        CHECK(per_tile == per_batch);
        CHECK(threaded == per_batch);
    }
}

TEST_CASE("exec: for_each_group visits each example's path blocks, level by level", "[exec]") {
    std::mt19937 g(77);
    for (int depth : {0, 1, 4, 7}) {
        for (bool path_sum : {true, false}) {
            const index_t n = uniform_index(g, 0, 400);
            const std::vector<leaf_t> codes = random_codes(g, n, depth);
            treegate::leaf_schedule leaves;
            leaves.build(codes.data(), n, depth);
            std::vector<std::set<index_t>> seen(static_cast<std::size_t>(n));
            // Blocks come level by level and in heap order within a level, so in increasing order.
            index_t last_block = -1;
            exec::for_each_group(leaves, path_sum, [&](index_t blk, treegate::group_range r) {
                CHECK(!r.empty());
                CHECK(blk > last_block);
                last_block = blk;
                for (index_t p = r.begin; p < r.end; ++p) seen[static_cast<std::size_t>(leaves.order()[p])].insert(blk);
            });
            for (index_t e = 0; e < n; ++e) {
                std::set<index_t> want;
                const std::uint64_t c = codes[static_cast<std::size_t>(e)];
                if (path_sum)
                    for (int level = 0; level <= depth; ++level) want.insert(oracle_path_node(c, depth, level));
                else
                    want.insert(static_cast<index_t>(c));
                CHECK(seen[static_cast<std::size_t>(e)] == want);
            }
        }
    }
}

TEST_CASE("exec: walk_levels routes every example by its own bits and keeps example order", "[exec]") {
    std::mt19937 g(5);
    for (int depth : {0, 2, 6}) {
        const index_t n = uniform_index(g, 0, 300);
        // bit(e, level), fixed up front: the route the driver must follow.
        std::vector<std::vector<unsigned char>> bit(static_cast<std::size_t>(n), std::vector<unsigned char>(8));
        for (auto& b : bit)
            for (auto& v : b) v = static_cast<unsigned char>(uniform_index(g, 0, 1));
        treegate::level_schedule levels;
        std::vector<unsigned char> bits;
        std::vector<index_t> node_of(static_cast<std::size_t>(n), 0);
        std::vector<index_t> visits_per_level(static_cast<std::size_t>(depth + 1), 0);
        exec::walk_levels(levels, bits, n, depth,
                          [&](int level, index_t k, treegate::group_range r, const index_t* order, unsigned char* b) {
                              const index_t node = treegate::tree::level_begin(level) + k;
                              for (index_t p = r.begin; p < r.end; ++p) {
                                  const auto e = static_cast<std::size_t>(order[p]);
                                  CHECK(node_of[e] == node);  // the example reached this node
                                  if (p > r.begin) CHECK(order[p - 1] < order[p]);
                                  b[p] = bit[e][static_cast<std::size_t>(level)];
                                  node_of[e] = treegate::tree::child(node, b[p]);
                              }
                              visits_per_level[static_cast<std::size_t>(level)] += r.size();
                          });
        for (int level = 0; level <= depth; ++level) CHECK(visits_per_level[static_cast<std::size_t>(level)] == n);
    }
}

TEST_CASE("exec: the gating-kind check names the layer, the call and the depth", "[exec][errors]") {
    const treegate::gating ext = treegate::gating::external(), in = treegate::gating::from_input({0, 1});
    TG_CHECK_THROWS_WITH(treegate::config_error, treegate::detail::check_gating_kind("L", "forward_batch", ext, 3, false),
                         "L forward_batch", "gated externally (depth 3)");
    TG_CHECK_THROWS_WITH(treegate::config_error, treegate::detail::check_gating_kind("L", "backward", in, 2, true), "L backward",
                         "gated by its input");
    CHECK_NOTHROW(treegate::detail::check_gating_kind("L", "forward", ext, 0, false));  // depth 0 needs no gates
    CHECK_NOTHROW(treegate::detail::check_gating_kind("L", "forward", ext, 3, true));
    CHECK_NOTHROW(treegate::detail::check_gating_kind("L", "forward", in, 2, false));
    mat<float> X = mat<float>::Zero(2, 5), G = mat<float>::Zero(3, 4);
    std::vector<leaf_t> codes;
    TG_CHECK_THROWS_WITH(treegate::shape_error, exec::route_batch("L", "backward", ext, 3, X, G, codes),
                         "L backward: gate matrix is 3 x 4, expected 3 x 5");
}
