// treegate/schedule.hpp — groups a batch by tree node so each node's block is multiplied once.
// Stable counting sorts only: deterministic, O(batch + nodes) memory, no atomics.
#ifndef TREEGATE_SCHEDULE_HPP
#define TREEGATE_SCHEDULE_HPP

#include "config.hpp"
#include "tree.hpp"

#include <cassert>
#include <vector>

namespace treegate {

/// Half-open range [begin, end) of positions in a schedule's order.
struct group_range {
    index_t begin = 0;
    index_t end = 0;
    index_t size() const noexcept { return end - begin; }
    bool empty() const noexcept { return end == begin; }
};

/// Schedule for routers that know every bit up front. One stable counting sort by leaf code
/// puts the examples of every node, at every level, into one contiguous range of `order()`:
/// a node at level j owns the leaves sharing its j-bit prefix, which are adjacent in heap order.
class leaf_schedule {
public:
    /// Sorts examples 0..n-1 by `codes[i]` (each < 2^depth), keeping example order within a leaf.
    void build(const leaf_t* codes, index_t n, int depth) {
        depth_ = depth;
        const index_t leaves = tree::leaf_count(depth);
        offsets_.assign(static_cast<std::size_t>(leaves + 1), 0);
        order_.resize(static_cast<std::size_t>(n));
        index_t* off = offsets_.data();
        index_t* ord = order_.data();
        for (index_t i = 0; i < n; ++i) ++off[codes[i] + 1];
        for (index_t l = 0; l < leaves; ++l) off[l + 1] += off[l];
        // Scatter in example order; off[l] walks to the end of leaf l and is restored below.
        for (index_t i = 0; i < n; ++i) ord[off[codes[i]]++] = i;
        for (index_t l = leaves; l > 0; --l) off[l] = off[l - 1];
        off[0] = 0;
    }

    int depth() const noexcept { return depth_; }
    index_t size() const noexcept { return static_cast<index_t>(order_.size()); }

    /// order()[k] is the example at sorted position k.
    const index_t* order() const noexcept { return order_.data(); }

    /// Positions owned by the k-th node of `level` (node level_begin(level) + k).
    group_range node_range(int level, index_t k) const noexcept {
        assert(level >= 0 && level <= depth_);
        const int shift = depth_ - level;
        const index_t* off = offsets_.data();
        return {off[k << shift], off[(k + 1) << shift]};
    }

private:
    int depth_ = 0;
    std::vector<index_t> offsets_;
    std::vector<index_t> order_;
};

/// Schedule for node routers, which learn one bit per level: each level refines the previous
/// one by a stable two-way split inside every parent's range (heap order keeps children of a
/// parent adjacent, bit 0 first).
class level_schedule {
public:
    /// All n examples at the root, in example order.
    void reset(index_t n) {
        level_ = 0;
        order_.resize(static_cast<std::size_t>(n));
        index_t* ord = order_.data();
        for (index_t i = 0; i < n; ++i) ord[i] = i;
        offsets_.assign({0, n});
    }

    int level() const noexcept { return level_; }
    index_t size() const noexcept { return static_cast<index_t>(order_.size()); }
    const index_t* order() const noexcept { return order_.data(); }

    /// Positions owned by the k-th node of the current level.
    group_range node_range(index_t k) const noexcept { return {offsets_.data()[k], offsets_.data()[k + 1]}; }

    /// Descends one level: `bit_at[p]` is the bit of the example at position p of order().
    void split(const unsigned char* bit_at) {
        const index_t nodes = static_cast<index_t>(offsets_.size()) - 1;
        next_order_.resize(order_.size());
        next_offsets_.resize(static_cast<std::size_t>(2 * nodes + 1));
        const index_t* off = offsets_.data();
        const index_t* ord = order_.data();
        index_t* next_off = next_offsets_.data();
        index_t* next_ord = next_order_.data();
        next_off[0] = 0;
        for (index_t k = 0; k < nodes; ++k) {
            const index_t b = off[k], e = off[k + 1];
            index_t ones = 0;
            for (index_t p = b; p < e; ++p) ones += bit_at[p];
            index_t zero_pos = b, one_pos = e - ones;
            for (index_t p = b; p < e; ++p) next_ord[bit_at[p] ? one_pos++ : zero_pos++] = ord[p];
            next_off[2 * k + 1] = e - ones;
            next_off[2 * k + 2] = e;
        }
        order_.swap(next_order_);
        offsets_.swap(next_offsets_);
        ++level_;
    }

private:
    int level_ = 0;
    std::vector<index_t> order_, next_order_;
    std::vector<index_t> offsets_, next_offsets_;
};

}  // namespace treegate

#endif
