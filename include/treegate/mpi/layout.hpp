// treegate/mpi/layout.hpp — which rank holds which part of a tree sharded over MPI ranks: pure
// arithmetic on (depth, ranks, split level), below mpi/sharded_tree_linear.hpp; needs no mpi.h.
#ifndef TREEGATE_MPI_LAYOUT_HPP
#define TREEGATE_MPI_LAYOUT_HPP

#include "../config.hpp"
#include "../error.hpp"
#include "../tree.hpp"

namespace treegate::mpi {

/// Levels 0 .. L-1 of a depth-D tree are replicated on every rank; the 2^L subtrees rooted at
/// level L (each of depth D - L, itself a tree) are dealt out in contiguous runs: subtree s
/// belongs to rank floor(s R / 2^L), so rank r owns [ceil(r 2^L / R), ceil((r+1) 2^L / R)), the
/// runs differ in length by at most one, and neighbouring leaf codes stay on one rank.
///
/// L defaults to the smallest level with 2^L >= R, the least replication that gives every rank
/// a subtree. Every argument is the same on every rank (the depth and L from the program, R from
/// the communicator), so the checks here fail identically on all ranks: a layout error is raised
/// everywhere before any collective, never on one rank while the others wait.
class layout {
public:
    /// Picks L as above. `layer` names the layer in messages.
    static layout automatic(const char* layer, int depth, int ranks, int rank) {
        check_ranks(layer, ranks, rank);
        return layout(layer, depth, ranks, rank, automatic_split(ranks));
    }

    /// L given: at least R subtrees (2^L >= R) and at most the depth (L <= D).
    layout(const char* layer, int depth, int ranks, int rank, int split) : depth_(depth), ranks_(ranks), rank_(rank), split_(split) {
        check_ranks(layer, ranks, rank);
        detail::check_config(depth >= 0 && depth <= max_depth, layer, ": depth ", depth, " is outside [0, ", max_depth, "]");
        detail::check_config(split >= 0 && split <= depth, layer, ": split level ", split, " is outside [0, ", depth,
                             "] (the depth); ", ranks, " ranks need a tree of depth >= ", automatic_split(ranks));
        detail::check_config((index_t{1} << split) >= ranks, layer, ": split level ", split, " gives 2^", split, " = ",
                             index_t{1} << split, " subtrees, fewer than the ", ranks, " ranks (each rank needs one)");
    }

    int depth() const noexcept { return depth_; }
    int ranks() const noexcept { return ranks_; }
    int rank() const noexcept { return rank_; }
    /// L: the first level that is not replicated.
    int split() const noexcept { return split_; }
    /// D - L: the depth of each owned subtree (0: a subtree is a single node).
    int subtree_depth() const noexcept { return depth_ - split_; }
    index_t subtree_count() const noexcept { return index_t{1} << split_; }

    /// Rank owning subtree s.
    int owner(index_t s) const noexcept { return static_cast<int>(s * ranks_ / subtree_count()); }
    /// First subtree of rank r; rank r owns [first_subtree(r), first_subtree(r + 1)).
    index_t first_subtree(int r) const noexcept { return (static_cast<index_t>(r) * subtree_count() + ranks_ - 1) / ranks_; }
    index_t owned_count(int r) const noexcept { return first_subtree(r + 1) - first_subtree(r); }
    /// This rank's subtrees.
    index_t first_owned() const noexcept { return first_subtree(rank_); }
    index_t owned() const noexcept { return owned_count(rank_); }

    /// Subtree an example with leaf code `code` (D bits) reaches, and its code inside it (the low D - L bits).
    index_t subtree_of(leaf_t code) const noexcept { return static_cast<index_t>(code >> subtree_depth()); }
    leaf_t local_code(leaf_t code) const noexcept {
        return subtree_depth() == 0 ? leaf_t{0} : static_cast<leaf_t>(code & ((leaf_t{1} << subtree_depth()) - 1));
    }

    /// Heap index in the whole tree of node k (heap order inside the subtree) of subtree s.
    index_t global_node(index_t s, index_t k) const {
        const int j = tree::level_of(k);
        return tree::level_begin(split_ + j) + (s << j) + (k - tree::level_begin(j));
    }

    /// Rank holding heap node i of the whole tree: -1 for a replicated node (level < L).
    int node_owner(index_t node) const {
        const int level = tree::level_of(node);
        if (level < split_) return -1;
        return owner((node - tree::level_begin(level)) >> (level - split_));
    }

    /// The smallest L with 2^L >= R.
    static int automatic_split(int ranks) noexcept {
        int split = 0;
        while ((index_t{1} << split) < ranks && split < 31) ++split;
        return split;
    }

    friend bool operator==(const layout& a, const layout& b) noexcept {
        return a.depth_ == b.depth_ && a.ranks_ == b.ranks_ && a.rank_ == b.rank_ && a.split_ == b.split_;
    }
    friend bool operator!=(const layout& a, const layout& b) noexcept { return !(a == b); }

private:
    static void check_ranks(const char* layer, int ranks, int rank) {
        detail::check_config(ranks >= 1, layer, ": rank count ", ranks, " must be at least 1");
        detail::check_config(rank >= 0 && rank < ranks, layer, ": rank ", rank, " is outside [0, ", ranks, ")");
    }

    int depth_, ranks_, rank_, split_;
};

}  // namespace treegate::mpi

#endif
