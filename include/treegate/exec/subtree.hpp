// treegate/exec/subtree.hpp — the execution engine's view of a subtree (exec/, below layers/ and
// mpi/): a subtree rooted at level L of a depth-D tree is a tree of depth D - L, run by the grouped loop.
#ifndef TREEGATE_EXEC_SUBTREE_HPP
#define TREEGATE_EXEC_SUBTREE_HPP

#include "../config.hpp"
#include "../workspace.hpp"
#include "grouped.hpp"

#include <cstddef>
#include <vector>

namespace treegate::exec {

/// Sorts examples by a key in [0, keys) with a stable counting sort: order[begin[k] ..
/// begin[k+1]) are the examples of key k in their original order (begin has keys + 1 entries).
/// The stable order is what makes the exchange of a sharded layer deterministic.
template <class Key>
void counting_sort(index_t n, index_t keys, Key&& key, std::vector<index_t>& order, std::vector<index_t>& begin) {
    begin.assign(static_cast<std::size_t>(keys + 1), 0);
    for (index_t e = 0; e < n; ++e) ++begin[static_cast<std::size_t>(key(e) + 1)];
    for (index_t k = 0; k < keys; ++k) begin[static_cast<std::size_t>(k + 1)] += begin[static_cast<std::size_t>(k)];
    order.resize(static_cast<std::size_t>(n));
    std::vector<index_t> next(begin.begin(), begin.end() - 1);
    for (index_t e = 0; e < n; ++e) order[static_cast<std::size_t>(next[static_cast<std::size_t>(key(e))]++)] = e;
}

/// Y += subtree(X) over the subtree's own leaf codes (the low D - L bits of each example's
/// code): each column of Y holds the partial path sum of levels 0 .. L-1 (zero for a leaf
/// table, or when L = 0), and the subtree's levels are added to it in the order the whole
/// tree's grouped loop adds them, so a path finished here gives the bits of the whole tree's
/// forward wherever the kernel's result for one column does not depend on the others.
template <class Policy, class W, class Scalar, class XRef, class YRef, class Executor>
void continue_paths(const block_table<W, Scalar>& subtree, const XRef& X, YRef& Y, const leaf_t* local_codes,
                    workspace<Scalar>& ws, Executor& ex) {
    grouped_range<Policy>(subtree, X, Y, local_codes, ws, ex, true);
}

/// After a walk of the replicated levels 0 .. L-1 (L >= 1), each example's node on level L as
/// a code of L bits shifted to the top of a D-bit leaf code (the exchange routes by its top L
/// bits). A sharded layer's forward and backward both derive it from the groups of level L-1.
template <class Scalar>
void codes_at_split(workspace<Scalar>& ws, int L, int subtree_depth) {
    const index_t* order = ws.levels.order();
    for (index_t k = 0; k < (index_t{1} << (L - 1)); ++k) {
        const group_range r = ws.levels.node_range(k);
        for (index_t p = r.begin; p < r.end; ++p)
            ws.codes[static_cast<std::size_t>(order[p])] =
                static_cast<leaf_t>((2 * k + ws.bits[static_cast<std::size_t>(p)]) << subtree_depth);
    }
}

}  // namespace treegate::exec

#endif
