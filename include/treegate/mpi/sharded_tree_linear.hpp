// treegate/mpi/sharded_tree_linear.hpp — a tree_linear whose subtrees are sharded over MPI ranks:
// the replicated top levels run locally, the examples travel to their subtree's owner and back.
#ifndef TREEGATE_MPI_SHARDED_TREE_LINEAR_HPP
#define TREEGATE_MPI_SHARDED_TREE_LINEAR_HPP

#include "../detail/aligned_buffer.hpp"
#include "../detail/random.hpp"
#include "../exec/grouped.hpp"
#include "../exec/route.hpp"
#include "../exec/subtree.hpp"
#include "../kernels/policy.hpp"
#include "../layers/layer_common.hpp"
#include "../layers/tree_linear.hpp"
#include "../parallel/executor.hpp"
#include "../workspace.hpp"
#include "comm.hpp"
#include "exchange.hpp"
#include "layout.hpp"

#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

namespace treegate::mpi {

/// tree_linear (README, formula section) over the ranks of an MPI communicator: levels 0 .. L-1
/// (path_sum only; a leaf table has no blocks there) on every rank, each subtree rooted at level
/// L on the one rank that mpi::layout assigns it. A rank allocates the top levels and its own
/// subtrees only. Every call that takes `comm` is collective: all ranks call it, in the same
/// order, each with its own examples (any count, zero included).
///
/// The owned subtrees are stored one after the other, each in its own heap order (block k of
/// subtree t at (t * blocks_per_subtree + k) * stride); weight(i) and bias(i) take the whole
/// tree's block index and answer for blocks this rank holds.
template <class Scalar, class Policy = kernels::default_policy>
class sharded_tree_linear {
    static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>,
                  "sharded_tree_linear: Scalar must be float or double");

public:
    using scalar_type = Scalar;
    using policy_type = Policy;
    using batch = matrix<Scalar>;
    using weight_map = Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>>;
    using bias_map = Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, 1>>;
    static constexpr const char* name = "sharded_tree_linear";

    /// The whole tree's sizes, mode and gating as for tree_linear; `split` = L (-1: the smallest L
    /// with 2^L >= ranks, mpi::layout). Errors (sizes, gating, layout) are raised on every rank.
    /// Weights start at zero: initialize(seed), copy_from(full layer), or mpi/shard_io.hpp.
    sharded_tree_linear(MPI_Comm comm, index_t in, index_t out, int depth, tree_mode mode, gating gates = {},
                        bool bias = true, int split = -1)
        : comm_(comm), layout_(make_layout(comm, depth, split)), in_(in), out_(out), depth_(depth), mode_(mode),
          has_bias_(bias), gates_(std::move(gates)) {
        kernels::prepare<Policy>();
        detail::check_config(in > 0 && out > 0, name, ": input and output sizes must be positive, got ", in, " and ", out);
        detail::check_gating(name, gates_, depth_, in_);
        stride_ = detail::block_stride<Scalar>(detail::checked_mul(in_, out_, name, "block size"), name, "block size");
        bias_stride_ = detail::block_stride<Scalar>(out_, name, "bias size");
        top_blocks_ = path_sum() ? tree::internal_count(layout_.split()) : 0;
        per_subtree_ = path_sum() ? tree::node_count(layout_.subtree_depth()) : tree::leaf_count(layout_.subtree_depth());
        owned_blocks_ = layout_.owned() * per_subtree_;
        top_w_ = buffer(top_blocks_ * stride_);
        sub_w_ = buffer(owned_blocks_ * stride_);
        top_b_ = buffer(has_bias_ ? top_blocks_ * bias_stride_ : 0);
        sub_b_ = buffer(has_bias_ ? owned_blocks_ * bias_stride_ : 0);
    }

    sharded_tree_linear(const sharded_tree_linear&) = delete;
    sharded_tree_linear& operator=(const sharded_tree_linear&) = delete;
    /// A moved-from layer holds no blocks; every call on it raises usage_error (on every rank,
    /// as the collective calls agree on it).
    sharded_tree_linear(sharded_tree_linear&&) noexcept = default;
    sharded_tree_linear& operator=(sharded_tree_linear&&) noexcept = default;

    /// Every rank owns at least one subtree, so a layer that holds none was moved from.
    bool live() const noexcept { return sub_w_.size() != 0; }

    MPI_Comm comm() const noexcept { return comm_; }
    const mpi::layout& layout() const noexcept { return layout_; }
    index_t in_size() const noexcept { return in_; }
    index_t out_size() const noexcept { return out_; }
    int depth() const noexcept { return depth_; }
    tree_mode mode() const noexcept { return mode_; }
    bool has_bias() const noexcept { return has_bias_; }
    const gating& gates() const noexcept { return gates_; }

    /// Blocks of the whole tree (as tree_linear::block_count) and those this rank holds.
    index_t block_count() const noexcept { return path_sum() ? tree::node_count(depth_) : tree::leaf_count(depth_); }
    index_t local_block_count() const noexcept { return top_blocks_ + owned_blocks_; }
    index_t replicated_block_count() const noexcept { return top_blocks_; }
    index_t blocks_per_subtree() const noexcept { return per_subtree_; }

    /// Bytes of weights and biases on this rank (padding included), and what one process
    /// holding the whole tree would need: top + (1/R of the rest, rounded to whole subtrees).
    index_t memory_bytes() const noexcept { return top_w_.bytes() + sub_w_.bytes() + top_b_.bytes() + sub_b_.bytes(); }
    index_t full_memory_bytes() const noexcept {
        return block_count() * (stride_ + (has_bias_ ? bias_stride_ : 0)) * static_cast<index_t>(sizeof(Scalar));
    }

    /// Whether this rank holds block i of the whole tree, and which rank does (-1: every rank).
    int block_owner(index_t i) const {
        detail::check_index(name, "block", i, block_count());
        if (!path_sum()) return layout_.owner(i >> layout_.subtree_depth());
        return layout_.node_owner(i);
    }
    bool holds(index_t i) const {
        const int r = block_owner(i);
        return r < 0 || r == layout_.rank();
    }

    /// Block i of the whole tree (heap node for path_sum, leaf for leaf_only), if held here.
    weight_map weight(index_t i) { return weight_map(block_data(i), out_, in_); }
    Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>> weight(index_t i) const {
        return {const_cast<sharded_tree_linear*>(this)->block_data(i), out_, in_};
    }
    bias_map bias(index_t i) { return bias_map(bias_data(i), out_); }
    Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>> bias(index_t i) const {
        return {const_cast<sharded_tree_linear*>(this)->bias_data(i), out_};
    }

    /// Calls f(global block, local block) for every block this rank holds: the replicated ones
    /// first (local 0 .. top-1), then the owned subtrees in order. Local blocks index the buffers
    /// of local_weights() / local_biases().
    template <class F>
    void for_each_local_block(F&& f) const {
        for (index_t b = 0; b < top_blocks_; ++b) f(b, b);
        for (index_t t = 0; t < layout_.owned(); ++t)
            for (index_t k = 0; k < per_subtree_; ++k) f(global_block(layout_.first_owned() + t, k), top_blocks_ + t * per_subtree_ + k);
    }

    /// The same draws as tree_linear::initialize(seed) gives the whole tree: block i from its
    /// own stream, so each rank fills its blocks without the others.
    void initialize(std::uint64_t seed) noexcept {
        const index_t on_path = path_sum() ? depth_ + 1 : 1;
        const double bound = 1.0 / std::sqrt(static_cast<double>(in_) * static_cast<double>(on_path));
        for_each_local_block([&](index_t g, index_t) {
            treegate::detail::fill_uniform(block_data(g), in_ * out_, bound, seed, static_cast<std::uint64_t>(2 * g));
            if (has_bias_)
                treegate::detail::fill_uniform(bias_data(g), out_, bound, seed, static_cast<std::uint64_t>(2 * g + 1));
        });
    }

    /// Takes this rank's blocks from a whole layer of the same sizes, mode and bias (for example
    /// one loaded from a single-process file). Not collective; raises config_error on a mismatch.
    template <int I, int O, int D, class P>
    void copy_from(const tree_linear<Scalar, I, O, D, P>& full) {
        detail::check_config(full.in_size() == in_ && full.out_size() == out_ && full.depth() == depth_ &&
                                 full.mode() == mode_ && full.has_bias() == has_bias_,
                             name, ": copy_from needs a tree_linear of ", in_, " x ", out_, ", depth ", depth_, ", ",
                             to_string(mode_), has_bias_ ? " with" : " without", " bias; got ", full.in_size(), " x ",
                             full.out_size(), ", depth ", full.depth(), ", ", to_string(full.mode()),
                             full.has_bias() ? " with" : " without", " bias");
        for_each_local_block([&](index_t g, index_t) {
            weight(g) = full.weight(g);
            if (has_bias_) bias(g) = full.bias(g);
        });
    }

    // ---- forward: collective ---------------------------------------------------------------

    /// Y = layer(X) for this rank's examples (columns of X), gated by input entries (or depth 0).
    template <class Executor = parallel::serial>
    void forward_batch(const Eigen::Ref<const batch>& X, Eigen::Ref<batch> Y, exchange_workspace<Scalar>& ws,
                       Executor&& ex = Executor{}) const {
        agree(comm_, [&] {
            detail::check_live(name, live());
            detail::check_batch(name, in_, X.rows(), X.cols(), out_, Y.rows(), Y.cols());
            exec::route_batch(name, "forward_batch", gates_, depth_, X, ws.local.codes);
        });
        run(X, Y, ws, ex);
    }

    /// The same for an externally gated layer: column e of G holds example e's D gate values.
    template <class Executor = parallel::serial>
    void forward_batch(const Eigen::Ref<const batch>& X, const Eigen::Ref<const batch>& G, Eigen::Ref<batch> Y,
                       exchange_workspace<Scalar>& ws, Executor&& ex = Executor{}) const {
        agree(comm_, [&] {
            detail::check_live(name, live());
            detail::check_batch(name, in_, X.rows(), X.cols(), out_, Y.rows(), Y.cols());
            exec::route_batch(name, "forward_batch", gates_, depth_, X, G, ws.local.codes);
        });
        run(X, Y, ws, ex);
    }

    /// The block table of this rank's t-th owned subtree, and of the replicated levels (a
    /// path_sum tree of depth L-1; only for L >= 1): the views the exec engine runs.
    exec::block_table<Scalar, Scalar> subtree_table(index_t t) const noexcept {
        const index_t first = t * per_subtree_;
        return {in_, out_, layout_.subtree_depth(), path_sum(), sub_w_.data() + first * stride_, stride_,
                has_bias_ ? sub_b_.data() + first * bias_stride_ : nullptr, bias_stride_};
    }
    exec::block_table<Scalar, Scalar> top_table() const noexcept {
        return {in_, out_, layout_.split() - 1, true, top_w_.data(), stride_, has_bias_ ? top_b_.data() : nullptr, bias_stride_};
    }

    /// Global block index of node (path_sum) or leaf (leaf_only) k of subtree s.
    index_t global_block(index_t s, index_t k) const {
        return path_sum() ? layout_.global_node(s, k) : (s << layout_.subtree_depth()) + k;
    }

    bool path_sum() const noexcept { return mode_ == tree_mode::path_sum; }

private:
    static mpi::layout make_layout(MPI_Comm comm, int depth, int split) {
        const int ranks = comm_size(comm), rank = comm_rank(comm);
        return split < 0 ? mpi::layout::automatic(name, depth, ranks, rank) : mpi::layout(name, depth, ranks, rank, split);
    }

    treegate::detail::aligned_buffer<Scalar> buffer(index_t n) const {
        return treegate::detail::aligned_buffer<Scalar>(n, name);
    }

    // Local block index of global block i, or a usage_error naming the rank that holds it.
    index_t local_block(index_t i) const {
        detail::check_live(name, live());
        const int r = block_owner(i);
        if (r >= 0 && r != layout_.rank())
            detail::raise<usage_error>(name, ": block ", i, " is held by rank ", r, ", not by this rank (", layout_.rank(), ")");
        if (r < 0) return i;
        if (!path_sum()) return top_blocks_ + i - (layout_.first_owned() << layout_.subtree_depth());
        const int level = tree::level_of(i), j = level - layout_.split();
        const index_t k = i - tree::level_begin(level), s = k >> j;
        return top_blocks_ + (s - layout_.first_owned()) * per_subtree_ + tree::level_begin(j) + (k - (s << j));
    }
    Scalar* block_data(index_t i) {
        const index_t l = local_block(i);
        return l < top_blocks_ ? top_w_.data() + l * stride_ : sub_w_.data() + (l - top_blocks_) * stride_;
    }
    Scalar* bias_data(index_t i) {
        if (!has_bias_) detail::raise<usage_error>(name, ": the layer has no bias (block ", i, ")");
        const index_t l = local_block(i);
        return l < top_blocks_ ? top_b_.data() + l * bias_stride_ : sub_b_.data() + (l - top_blocks_) * bias_stride_;
    }

    // The exchange after routing (ws.local.codes holds every local example's code).
    template <class Executor>
    void run(const Eigen::Ref<const batch>& X, Eigen::Ref<batch> Y, exchange_workspace<Scalar>& ws, Executor& ex) const {
        const index_t n = X.cols();
        const bool partial = path_sum() && layout_.split() > 0;
        auto top = ws.top_output.view(partial ? out_ : 0, n);
        if (partial && n > 0) {
            const int shift = layout_.subtree_depth() + 1;
            ws.top_codes.resize(static_cast<std::size_t>(n));
            for (index_t e = 0; e < n; ++e) ws.top_codes[static_cast<std::size_t>(e)] = ws.local.codes[static_cast<std::size_t>(e)] >> shift;
            exec::grouped_range<Policy>(top_table(), X, top, ws.top_codes.data(), ws.local, ex);
        }
        ws.send(comm_, layout_, X, partial ? &top : nullptr);
        // On the owner: sort what arrived by subtree, then continue every path in its subtree.
        const index_t m = ws.received();
        auto Xs = ws.sorted_input.view(in_, m);
        auto Bs = ws.sorted_output.view(out_, m);
        ws.sort_received(layout_, in_, partial ? out_ : 0, Xs, Bs);
        for (index_t t = 0; t < layout_.owned(); ++t) {
            const index_t b = ws.subtree_begin[static_cast<std::size_t>(t)], e = ws.subtree_begin[static_cast<std::size_t>(t + 1)];
            if (b == e) continue;
            auto Xt = Xs.middleCols(b, e - b);
            auto Bt = Bs.middleCols(b, e - b);
            exec::continue_paths<Policy>(subtree_table(t), Xt, Bt, ws.local_codes.data() + b, ws.local, ex);
        }
        ws.send_back(comm_, out_, Bs, Y);
    }

    MPI_Comm comm_;
    mpi::layout layout_;
    index_t in_, out_;
    int depth_;
    tree_mode mode_;
    bool has_bias_;
    gating gates_;
    index_t stride_ = 0, bias_stride_ = 0, top_blocks_ = 0, per_subtree_ = 0, owned_blocks_ = 0;
    treegate::detail::aligned_buffer<Scalar> top_w_, sub_w_, top_b_, sub_b_;
};

}  // namespace treegate::mpi

#endif
