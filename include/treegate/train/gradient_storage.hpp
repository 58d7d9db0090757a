// treegate/train/gradient_storage.hpp — one gradient buffer per parameter tensor a layer describes.
// Built from layers/parameters.hpp; train/gradients.hpp puts each layer's named accessors on top.
#ifndef TREEGATE_TRAIN_GRADIENT_STORAGE_HPP
#define TREEGATE_TRAIN_GRADIENT_STORAGE_HPP

#include "../error.hpp"
#include "../layers/layer_common.hpp"
#include "../layers/parameters.hpp"
#include "../tree.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

namespace treegate::train {

/// One block of parameters as an optimizer sees it: the values, their gradient, the tree level
/// that sets its weight decay, whether any example reached it in the current batch, and whether
/// it is a weight matrix (decayed) or a bias (never decayed).
template <class Scalar>
struct param_block {
    Scalar* value = nullptr;
    const Scalar* grad = nullptr;
    index_t size = 0;
    int level = 0;
    bool visited = false;
    bool decay = false;
    /// Its position in the full list (`collect`); set by `collect_visited`, which lists only
    /// the visited blocks, so the optimizers find the block's state without the others.
    index_t index = -1;
};

/// Every block of a layer or model, in a fixed order (the order of `collect`).
template <class Scalar>
using param_list = std::vector<param_block<Scalar>>;

namespace detail {

/// Visited flags plus the list of visited blocks in first-visit order, so that resetting a
/// batch costs O(visited blocks), not O(all blocks): a deep tree stays cheap to train.
class visit_set {
public:
    explicit visit_set(index_t count = 0) : flags_(static_cast<std::size_t>(count), 0) {}

    bool contains(index_t i) const noexcept { return flags_.data()[i] != 0; }

    /// Returns true the first time `i` is marked since the last clear.
    bool mark(index_t i) {
        if (flags_.data()[i] != 0) return false;
        flags_.data()[i] = 1;
        list_.push_back(i);
        return true;
    }

    const std::vector<index_t>& list() const noexcept { return list_; }

    void clear() noexcept {
        for (index_t i : list_) flags_.data()[i] = 0;
        list_.clear();
    }

private:
    std::vector<unsigned char> flags_;
    std::vector<index_t> list_;
};

}  // namespace detail

/// The gradient of every tensor in `parameters(layer)`: same names, block shapes and block
/// counts, each tensor in its own dense buffer (block b at b * rows * cols). Tensors whose
/// blocks belong to the same node or unit (parameter_tensor::joins_previous) form one group
/// with one visit set, so a block of a group is marked once and `collect` lists its tensors
/// side by side — the order the optimizers' state was laid out in, which keeps them unchanged.
template <class Scalar>
class gradient_storage {
public:
    struct tensor_info {
        std::string name;
        index_t rows = 0, cols = 0, blocks = 0;
        bool decayed = false;
        int fixed_level = 0;
        index_t node_period = 0;
        std::vector<Scalar> data;

        index_t block_size() const noexcept { return rows * cols; }
        int level(index_t b) const noexcept {
            return node_period > 0 ? tree::level_of(b % node_period) : fixed_level;
        }
    };
    struct group_info {
        index_t first = 0, tensors = 0, blocks = 0;
        detail::visit_set visits;
    };

    /// `who` names the container in error messages (a string literal).
    template <class Layer>
    gradient_storage(const Layer& layer, const char* who) : who_(who) {
        for (const auto& t : parameters(layer)) {
            treegate::detail::check_config(t.element == element_kind::scalar, who_, ": tensor ", t.name,
                                           " is stored as bf16, which has no gradient");
            const index_t k = static_cast<index_t>(tensors_.size());
            tensors_.push_back({t.name, t.rows, t.cols, t.block_count(), t.decayed, t.fixed_level, t.node_period,
                                std::vector<Scalar>(static_cast<std::size_t>(t.block_count() * t.block_size()),
                                                    Scalar(0))});
            if (t.joins_previous && !groups_.empty() && groups_.back().blocks == t.block_count()) {
                ++groups_.back().tensors;
            } else {
                groups_.push_back({k, 1, t.block_count(), detail::visit_set(t.block_count())});
            }
            group_of_.push_back(static_cast<index_t>(groups_.size()) - 1);
        }
    }

    index_t tensor_count() const noexcept { return static_cast<index_t>(tensors_.size()); }
    const tensor_info& tensor(index_t k) const noexcept { return tensors_[static_cast<std::size_t>(k)]; }
    /// The index of the tensor called `name` (without prefix), or -1.
    index_t find(const std::string& name) const noexcept {
        for (index_t k = 0; k < tensor_count(); ++k)
            if (tensor(k).name == name) return k;
        return -1;
    }

    Scalar* block(index_t k, index_t b) noexcept {
        auto& t = tensors_[static_cast<std::size_t>(k)];
        return t.data.data() + b * t.block_size();
    }
    const Scalar* block(index_t k, index_t b) const noexcept {
        const auto& t = tensor(k);
        return t.data.data() + b * t.block_size();
    }

    /// Visits of tensor k's group (block b of any tensor of the group).
    bool visited(index_t k, index_t b) const noexcept { return group(k).visits.contains(b); }
    const std::vector<index_t>& visited_list(index_t k) const noexcept { return group(k).visits.list(); }
    void mark(index_t k, index_t b) { groups_[static_cast<std::size_t>(group_of_[static_cast<std::size_t>(k)])].visits.mark(b); }

    /// Zeroes the visited blocks (the others are zero already) and forgets the visits; a
    /// one-block group is zeroed whole, so a write without a mark cannot leak into the next batch.
    void zero() noexcept {
        for (auto& g : groups_) {
            for (index_t k = g.first; k < g.first + g.tensors; ++k) {
                auto& t = tensors_[static_cast<std::size_t>(k)];
                if (g.blocks == 1) {
                    std::fill(t.data.begin(), t.data.end(), Scalar(0));
                } else {
                    for (index_t b : g.visits.list()) std::fill_n(block(k, b), t.block_size(), Scalar(0));
                }
            }
            g.visits.clear();
        }
    }

    /// Group by group, block by block, the group's tensors side by side: value, gradient, size,
    /// level(b), visited, decay. Throws shape_error when `layer` is not laid out like this one.
    template <class Layer>
    void collect(Layer& layer, param_list<Scalar>& out) const {
        auto ts = parameters(layer);
        check_layout(ts);
        const auto& values = value_pointers(ts);
        for (const auto& g : groups_)
            for (index_t b = 0; b < g.blocks; ++b) {
                const bool v = g.visits.contains(b);
                for (index_t k = g.first; k < g.first + g.tensors; ++k) {
                    const auto& t = tensor(k);
                    out.push_back({values[static_cast<std::size_t>(k)][static_cast<std::size_t>(b)], block(k, b),
                                   t.block_size(), t.level(b), v, t.decayed});
                }
            }
    }

    /// The visited blocks only, as `collect` describes them, each with its position in the
    /// full list (`index`, counted from `base`, which then advances past this layer's blocks).
    /// Walks the groups' visit lists: O(tensors + visited blocks), not O(all blocks).
    template <class Layer>
    void collect_visited(Layer& layer, param_list<Scalar>& out, index_t& base) const {
        auto ts = parameters(layer);
        check_layout(ts);
        const auto& values = value_pointers(ts);
        for (const auto& g : groups_) {
            for (index_t b : g.visits.list())
                for (index_t k = g.first; k < g.first + g.tensors; ++k) {
                    const auto& t = tensor(k);
                    out.push_back({values[static_cast<std::size_t>(k)][static_cast<std::size_t>(b)], block(k, b),
                                   t.block_size(), t.level(b), true, t.decayed, base + b * g.tensors + (k - g.first)});
                }
            base += g.blocks * g.tensors;
        }
    }

private:
    // Throws shape_error when the layer's tensors are not laid out like this container's.
    template <class Tensors>
    void check_layout(const Tensors& ts) const {
        bool same = static_cast<index_t>(ts.size()) == tensor_count();
        for (index_t k = 0; same && k < tensor_count(); ++k) {
            const auto& t = ts[static_cast<std::size_t>(k)];
            same = t.name == tensor(k).name && t.rows == tensor(k).rows && t.cols == tensor(k).cols &&
                   t.block_count() == tensor(k).blocks && t.element == element_kind::scalar;
        }
        treegate::detail::check_shape(same, who_, ": does not match the layer (", ts.size(), " tensors, ",
                                      ts.empty() ? index_t(0) : ts.front().block_count(), " blocks of ",
                                      ts.empty() ? index_t(0) : ts.front().rows, " x ",
                                      ts.empty() ? index_t(0) : ts.front().cols, "; the gradient has ",
                                      tensor_count(), " tensors, ",
                                      tensors_.empty() ? index_t(0) : tensors_.front().blocks, " blocks of ",
                                      tensors_.empty() ? index_t(0) : tensors_.front().rows, " x ",
                                      tensors_.empty() ? index_t(0) : tensors_.front().cols, ")");
    }

    // The layer's block pointers, one vector per tensor. Rebuilt only when the tensors' runs
    // (first pointer, stride, count: O(tensors) to compare) differ from the last call's, so a
    // training loop does not walk every block of a deep tree to find its value pointers.
    template <class Tensors>
    const std::vector<std::vector<Scalar*>>& value_pointers(const Tensors& ts) const {
        key_scratch_.clear();
        for (const auto& t : ts)
            for (const auto& r : t.runs) {
                key_scratch_.push_back(reinterpret_cast<std::uintptr_t>(r.data));
                key_scratch_.push_back(static_cast<std::uintptr_t>(r.stride));
                key_scratch_.push_back(static_cast<std::uintptr_t>(r.count));
            }
        if (key_scratch_ == cache_key_ && cached_values_.size() == ts.size()) return cached_values_;
        cached_values_.assign(ts.size(), {});
        for (std::size_t k = 0; k < ts.size(); ++k) {
            cached_values_[k].reserve(static_cast<std::size_t>(ts[k].block_count()));
            ts[k].for_each_block([&](auto* p) {
                if constexpr (std::is_same_v<std::remove_pointer_t<decltype(p)>, Scalar>) cached_values_[k].push_back(p);
            });
        }
        cache_key_.swap(key_scratch_);
        return cached_values_;
    }

    const group_info& group(index_t k) const noexcept {
        return groups_[static_cast<std::size_t>(group_of_[static_cast<std::size_t>(k)])];
    }

    const char* who_;
    std::vector<tensor_info> tensors_;
    std::vector<group_info> groups_;
    std::vector<index_t> group_of_;
    // Not thread-safe, as the gradient itself: one container per thread.
    mutable std::vector<std::uintptr_t> cache_key_, key_scratch_;
    mutable std::vector<std::vector<Scalar*>> cached_values_;
};

}  // namespace treegate::train

#endif
