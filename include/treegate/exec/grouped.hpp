// treegate/exec/grouped.hpp — the grouped loop of the execution engine (exec/, below layers/):
// sort a batch by leaf, gather, multiply each visited block once over its group in (node,
// row-chunk) pieces on an executor, scatter back; and the same leaf-sorted walk for backward.
#ifndef TREEGATE_EXEC_GROUPED_HPP
#define TREEGATE_EXEC_GROUPED_HPP

#include "../config.hpp"
#include "../parallel/executor.hpp"
#include "../schedule.hpp"
#include "../tree.hpp"
#include "../workspace.hpp"

#include <algorithm>

namespace treegate::exec {

// The layers' batch types (layers/layer_common.hpp's matrix), named here without including layers/.
template <class Scalar>
using batch_matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
template <class Scalar>
using batch_vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

// Views of batches, as nested types so that Scalar is deduced from the table alone and any
// matrix or block converts to them.
template <class Scalar>
struct batch_ref {
    using type = Eigen::Ref<batch_matrix<Scalar>>;
    using const_type = Eigen::Ref<const batch_matrix<Scalar>>;
};

/// How often a batch streams the node weights. per_batch: the whole batch is sorted once and
/// every visited block is read once for all of its examples. per_tile: the batch is cut into
/// tiles of `tile_examples` columns, each routed and run through every level on its own (one
/// piece per tile, on its worker's scratch), so a tile's inputs and outputs stay in L2 while
/// the weights are read once per tile. Each layer has a default (README, "Architecture", under "Developing").
enum class stream { per_batch, per_tile };

/// Examples per tile of stream::per_tile: 64 columns of inputs and outputs of a few hundred
/// features fit in L2 together (64 x 768 floats is 192 KiB each).
inline constexpr index_t tile_examples = 64;

/// Runs body(begin, end, ws, inner) over the examples [0, n) as `s` says: per_batch, once over
/// the whole batch with `ex` as the inner executor; per_tile, one piece per tile on `ex`, each
/// with its worker's workspace and a serial inner executor. The tiles depend on n only, so a
/// body whose tiles write disjoint columns gives the same bits for any executor.
template <class Scalar, class Executor, class Body>
void run_streamed(stream s, index_t n, workspace<Scalar>& ws, Executor& ex, Body&& body) {
    if (s == stream::per_batch) {
        body(index_t{0}, n, ws, ex);
        return;
    }
    ws.reserve_workers(ex.size());
    parallel::for_each_chunk(ex, n, tile_examples, [&](index_t begin, index_t end, int worker) {
        parallel::serial inner;
        body(begin, end, ws.worker(worker), inner);
    });
}

/// A tree_linear-shaped table of blocks: `blocks[b * stride]` is block b (`out x in`,
/// column-major, weights of type W), `biases[b * bias_stride]` its bias (or null).
template <class W, class Scalar>
struct block_table {
    index_t in, out;
    int depth;
    bool path_sum;  // blocks are tree nodes (else leaves, only level `depth`)
    const W* blocks;
    index_t stride;
    const Scalar* biases;  // null: no bias
    index_t bias_stride;
};

/// Rows of a block per piece for a group of `m` examples: whole blocks for groups of fewer than
/// 16 examples (memory-bound: a whole block is one sequential stream, while a row chunk of a
/// column-major block is a strided one, which measured up to 1.5x slower) and for small work,
/// else chunks of a multiple of 16 rows (the SIMD kernels' row panel) worth at least ~2^18
/// multiply-adds each. Depends on the sizes only, never on the thread count.
inline index_t piece_rows(index_t m, index_t in, index_t out) noexcept {
    constexpr index_t piece_macs = index_t{1} << 18, min_rows = 64, min_group = 16;
    const index_t macs = m * in * out;
    if (m < min_group || macs <= piece_macs || out <= min_rows) return out;
    const index_t parts = std::min((macs + piece_macs - 1) / piece_macs, (out + min_rows - 1) / min_rows);
    const index_t rows = (out + parts - 1) / parts;
    return (rows + 15) / 16 * 16;
}

/// First level that holds blocks: 0 for a path sum (blocks are nodes), D for a leaf table.
inline int first_level(bool path_sum, int depth) noexcept { return path_sum ? 0 : depth; }

/// Block of the 0-th node of `level`: its heap index for a path sum, leaf 0 for a leaf table.
inline index_t first_block(bool path_sum, int level) noexcept { return path_sum ? tree::level_begin(level) : 0; }

/// Calls visit(block, range) for every visited node of `level` of a leaf-sorted schedule, in
/// heap order (block = node for a path sum, leaf for a leaf table).
template <class Visit>
void for_each_group_of_level(const leaf_schedule& leaves, bool path_sum, int level, Visit&& visit) {
    const index_t nodes = index_t{1} << level, first = first_block(path_sum, level);
    for (index_t k = 0; k < nodes; ++k) {
        const group_range r = leaves.node_range(level, k);
        if (!r.empty()) visit(first + k, r);
    }
}

/// Calls visit(block, range) for every visited block, level by level: the order in which the
/// forward runs them, and the walk of the tree_linear backward.
template <class Visit>
void for_each_group(const leaf_schedule& leaves, bool path_sum, Visit&& visit) {
    for (int level = first_level(path_sum, leaves.depth()); level <= leaves.depth(); ++level)
        for_each_group_of_level(leaves, path_sum, level, visit);
}

/// Y = table(X) for the leaf codes codes[0 .. X.cols()). Sorting by leaf once gives every node
/// at every level one contiguous range of the sorted order, so the batch is gathered once (into
/// ws.gathered_input), each visited block multiplies its whole range (into
/// ws.permuted_output), and the result is scattered back once. Each level runs as (node,
/// row-chunk) pieces on `ex`: the pieces of a level write disjoint parts of the output, levels
/// run in order, so the output is bit-identical for any executor. With `from_output`, Y = Y +
/// table(X), the levels' terms added to Y's columns in the same order (a path continued from a
/// partial sum: mpi/, exec/subtree.hpp).
template <class Policy, class W, class Scalar, class XRef, class YRef, class Executor>
void grouped_range(const block_table<W, Scalar>& t, const XRef& X, YRef& Y, const leaf_t* codes, workspace<Scalar>& ws,
                   Executor& ex, bool from_output = false) {
    constexpr index_t copy_chunk = 256;  // examples per gather / scatter piece
    const index_t n = X.cols();
    if (n == 0) return;
    ws.leaves.build(codes, n, t.depth);
    const index_t* order = ws.leaves.order();
    auto A = ws.gathered_input.view(t.in, n);
    auto B = ws.permuted_output.view(t.out, n);
    parallel::for_each_chunk(ex, n, copy_chunk, [&](index_t begin, index_t end, int) {
        for (index_t k = begin; k < end; ++k) {
            A.col(k) = X.col(order[k]);
            if (from_output)
                B.col(k) = Y.col(order[k]);
            else
                B.col(k).setZero();
        }
    });
    for (int level = first_level(t.path_sum, t.depth); level <= t.depth; ++level) {
        const index_t first = first_block(t.path_sum, level);
        ws.pieces.clear();
        for_each_group_of_level(ws.leaves, t.path_sum, level, [&](index_t blk, group_range r) {
            const index_t rows = piece_rows(r.size(), t.in, t.out);
            for (index_t row0 = 0; row0 < t.out; row0 += rows)
                ws.pieces.push_back({blk - first, row0, std::min(rows, t.out - row0)});
        });
        ex.run(static_cast<index_t>(ws.pieces.size()), [&](index_t p, int) {
            const node_piece q = ws.pieces[static_cast<std::size_t>(p)];
            const group_range r = ws.leaves.node_range(level, q.node);
            const index_t blk = first + q.node;
            Policy::gemm(q.rows, t.in, r.size(), t.blocks + blk * t.stride + q.row0, t.out, A.data() + r.begin * t.in,
                         t.in, B.data() + r.begin * t.out + q.row0, t.out);
            if (t.biases != nullptr)
                B.block(q.row0, r.begin, q.rows, r.size()).colwise() +=
                    Eigen::Map<const batch_vector<Scalar>>(t.biases + blk * t.bias_stride + q.row0, q.rows);
        });
    }
    parallel::for_each_chunk(ex, n, copy_chunk, [&](index_t begin, index_t end, int) {
        for (index_t k = begin; k < end; ++k) Y.col(order[k]) = B.col(k);
    });
}

/// Y = table(X) for the leaf codes in ws.codes, streamed as `s` says (per_batch by default, the
/// choice of tree_linear and its bf16 copy).
template <class Policy, class W, class Scalar, class Executor>
void grouped_forward(const block_table<W, Scalar>& t, const typename batch_ref<Scalar>::const_type& X,
                     typename batch_ref<Scalar>::type Y, workspace<Scalar>& ws, Executor& ex, stream s = stream::per_batch) {
    const leaf_t* codes = ws.codes.data();
    run_streamed(s, X.cols(), ws, ex, [&](index_t begin, index_t end, workspace<Scalar>& w, auto& inner) {
        const auto Xt = X.middleCols(begin, end - begin);
        auto Yt = Y.middleCols(begin, end - begin);
        grouped_range<Policy>(t, Xt, Yt, codes + begin, w, inner);
    });
}

}  // namespace treegate::exec

#endif
