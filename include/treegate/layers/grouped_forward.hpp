// treegate/layers/grouped_forward.hpp — the batched forward shared by tree_linear and its bf16
// serving copy: sort by leaf, gather, multiply each visited block once over its group in
// (node, row-chunk) pieces on an executor, scatter back.
#ifndef TREEGATE_LAYERS_GROUPED_FORWARD_HPP
#define TREEGATE_LAYERS_GROUPED_FORWARD_HPP

#include "../parallel/executor.hpp"
#include "../routing.hpp"
#include "../tree.hpp"
#include "../workspace.hpp"
#include "layer_common.hpp"

#include <algorithm>

namespace treegate::detail {

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

/// Checks a batch and its gating for a layer gated by its input, and writes the leaf codes to ws.codes.
template <class Scalar>
void route_batch(const char* layer, const gating& gates, int depth, index_t in, index_t out,
                 const Eigen::Ref<const matrix<Scalar>>& X, const Eigen::Ref<matrix<Scalar>>& Y, workspace<Scalar>& ws) {
    check_batch(layer, in, X.rows(), X.cols(), out, Y.rows(), Y.cols());
    check_config(!gates.is_external() || depth == 0, layer, ": this layer is gated externally; pass the gate matrix");
    ws.codes.resize(static_cast<std::size_t>(X.cols()));
    for (index_t e = 0; e < X.cols(); ++e)
        ws.codes.data()[e] = route_by_indices(X.data() + e * X.outerStride(), gates.indices().data(), depth);
}

/// The same for an externally gated layer: one column of D gate values per example.
template <class Scalar>
void route_batch(const char* layer, const gating& gates, int depth, index_t in, index_t out,
                 const Eigen::Ref<const matrix<Scalar>>& X, const Eigen::Ref<const matrix<Scalar>>& G,
                 const Eigen::Ref<matrix<Scalar>>& Y, workspace<Scalar>& ws) {
    check_batch(layer, in, X.rows(), X.cols(), out, Y.rows(), Y.cols());
    check_config(gates.is_external(), layer, ": this layer is gated by its input; call forward_batch(X, Y, ws)");
    check_shape(G.rows() == depth && G.cols() == X.cols(), layer, ": gate matrix is ", G.rows(), " x ", G.cols(),
                ", expected ", depth, " x ", X.cols());
    ws.codes.resize(static_cast<std::size_t>(X.cols()));
    for (index_t e = 0; e < X.cols(); ++e) ws.codes.data()[e] = route_by_gates(G.data() + e * G.outerStride(), 1, depth);
}

/// Y = table(X) for the leaf codes in ws.codes. Sorting by leaf once gives every node at every
/// level one contiguous range of the sorted order, so the batch is gathered once, each visited
/// block multiplies its whole range, and the result is scattered back once. Each level runs as
/// (node, row-chunk) pieces on `ex`: the pieces of a level write disjoint parts of B, levels run
/// in order, so the output is bit-identical for any executor.
template <class Policy, class W, class Scalar, class Executor>
void grouped_forward(const block_table<W, Scalar>& t, const Eigen::Ref<const matrix<Scalar>>& X,
                     Eigen::Ref<matrix<Scalar>> Y, workspace<Scalar>& ws, Executor& ex) {
    constexpr index_t copy_chunk = 256;  // examples per gather / scatter piece
    const index_t n = X.cols();
    if (n == 0) return;
    ws.leaves.build(ws.codes.data(), n, t.depth);
    const index_t* order = ws.leaves.order();
    auto A = ws.a.view(t.in, n);
    auto B = ws.b.view(t.out, n);
    parallel::for_each_chunk(ex, n, copy_chunk, [&](index_t begin, index_t end, int) {
        for (index_t k = begin; k < end; ++k) {
            A.col(k) = X.col(order[k]);
            B.col(k).setZero();
        }
    });
    for (int level = t.path_sum ? 0 : t.depth; level <= t.depth; ++level) {
        const index_t nodes = index_t{1} << level;
        ws.pieces.clear();
        for (index_t k = 0; k < nodes; ++k) {
            const group_range r = ws.leaves.node_range(level, k);
            if (r.empty()) continue;
            const index_t rows = piece_rows(r.size(), t.in, t.out);
            for (index_t row0 = 0; row0 < t.out; row0 += rows) ws.pieces.push_back({k, row0, std::min(rows, t.out - row0)});
        }
        const index_t first_block = t.path_sum ? tree::level_begin(level) : 0;
        ex.run(static_cast<index_t>(ws.pieces.size()), [&](index_t p, int) {
            const node_piece q = ws.pieces[static_cast<std::size_t>(p)];
            const group_range r = ws.leaves.node_range(level, q.node);
            const index_t blk = first_block + q.node;
            Policy::gemm(q.rows, t.in, r.size(), t.blocks + blk * t.stride + q.row0, t.out, A.data() + r.begin * t.in,
                         t.in, B.data() + r.begin * t.out + q.row0, t.out);
            if (t.biases != nullptr)
                B.block(q.row0, r.begin, q.rows, r.size()).colwise() +=
                    Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>>(t.biases + blk * t.bias_stride + q.row0, q.rows);
        });
    }
    parallel::for_each_chunk(ex, n, copy_chunk, [&](index_t begin, index_t end, int) {
        for (index_t k = begin; k < end; ++k) Y.col(order[k]) = B.col(k);
    });
}

}  // namespace treegate::detail

#endif
