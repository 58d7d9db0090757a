// treegate/exec/levels.hpp — the level-by-level driver for node routers (tree_feedforward's
// forward and backward): part of the execution engine below layers/ (exec/).
#ifndef TREEGATE_EXEC_LEVELS_HPP
#define TREEGATE_EXEC_LEVELS_HPP

#include "../config.hpp"
#include "../schedule.hpp"
#include "../tree.hpp"

#include <cstddef>
#include <vector>

namespace treegate::exec {

/// One tree's walk for n examples through levels 0..depth: starts every example at the root,
/// and on each level calls visit(level, k, range, order, bits) for every non-empty k-th node,
/// in heap order. The visitor writes, for each position p of its range, the example's route
/// bit to bits[p] (order[p] is the example there); the driver then splits every range by those
/// bits, a stable split, so a node's examples keep their example order on every level.
template <class Visit>
void walk_levels(level_schedule& levels, std::vector<unsigned char>& bits, index_t n, int depth, Visit&& visit) {
    bits.resize(static_cast<std::size_t>(n));
    levels.reset(n);
    for (int level = 0; level <= depth; ++level) {
        const index_t nodes = index_t{1} << level;
        for (index_t k = 0; k < nodes; ++k) {
            const group_range r = levels.node_range(k);
            if (!r.empty()) visit(level, k, r, levels.order(), bits.data());
        }
        if (level < depth) levels.split(bits.data());
    }
}

}  // namespace treegate::exec

#endif
