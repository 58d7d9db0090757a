// treegate/layers/sliced_tree_linear.hpp — K independent tree_linear layers over K input slices.
// "Multiply only the active blocks": each slice has its own tree and gating units.
#ifndef TREEGATE_LAYERS_SLICED_TREE_LINEAR_HPP
#define TREEGATE_LAYERS_SLICED_TREE_LINEAR_HPP

#include "batch_overloads.hpp"
#include "tree_linear.hpp"

#include <string>
#include <vector>

namespace treegate {

/// sum: every tree maps its slice to the full output and the outputs are added.
/// concat: tree t writes output slice t.
enum class slice_combine { sum, concat };

/// Input x = [x_0; ...; x_{K-1}], slices of SliceIn entries. Tree t reads x_t, is gated by its
/// own units (indices relative to its slice), and produces a SliceOut-sized output.
template <class Scalar, int SliceIn = dynamic, int SliceOut = dynamic, int Depth = dynamic,
          class Policy = kernels::default_policy>
class sliced_tree_linear
    : public detail::batch_overloads<sliced_tree_linear<Scalar, SliceIn, SliceOut, Depth, Policy>, matrix<Scalar>, workspace<Scalar>> {
public:
    using tree_type = tree_linear<Scalar, SliceIn, SliceOut, Depth, Policy>;
    using scalar_type = Scalar;
    using policy_type = Policy;
    using input_vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
    using output_vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
    using batch = matrix<Scalar>;
    static constexpr const char* name = "sliced_tree_linear";

    /// `gate_indices[t]` holds tree t's D gating indices, relative to slice t.
    sliced_tree_linear(index_t slice_in, index_t slice_out, int depth, tree_mode mode, slice_combine combine,
                       const std::vector<std::vector<index_t>>& gate_indices, bool bias = true)
        : combine_(combine) {
        detail::check_config(!gate_indices.empty(), name, ": needs at least one tree (one list of gating indices)");
        trees_.reserve(gate_indices.size());
        for (std::size_t t = 0; t < gate_indices.size(); ++t) {
            try {
                trees_.emplace_back(slice_in, slice_out, depth, mode, gating::from_input(gate_indices[t]), bias);
            } catch (const config_error& e) {
                const std::string inner = e.what();
                const std::string prefix = "treegate: ";
                detail::raise<config_error>(name, ": tree ", t, " of ", gate_indices.size(), ": ",
                                            inner.compare(0, prefix.size(), prefix) == 0 ? inner.substr(prefix.size()) : inner);
            }
        }
    }

    sliced_tree_linear(const sliced_tree_linear&) = default;
    sliced_tree_linear& operator=(const sliced_tree_linear&) = default;
    /// Moving leaves the source empty (no trees): every size reads 0 and every call raises usage_error.
    sliced_tree_linear(sliced_tree_linear&& o) noexcept : combine_(o.combine_), trees_(std::move(o.trees_)) { o.trees_.clear(); }
    sliced_tree_linear& operator=(sliced_tree_linear&& o) noexcept {
        if (this == &o) return *this;
        combine_ = o.combine_;
        trees_ = std::move(o.trees_);
        o.trees_.clear();
        return *this;
    }

    index_t tree_count() const noexcept { return static_cast<index_t>(trees_.size()); }
    slice_combine combine() const noexcept { return combine_; }
    index_t slice_in() const noexcept { return trees_.empty() ? 0 : trees_.front().in_size(); }
    index_t slice_out() const noexcept { return trees_.empty() ? 0 : trees_.front().out_size(); }
    index_t in_size() const noexcept { return tree_count() * slice_in(); }
    index_t out_size() const noexcept { return combine_ == slice_combine::sum ? slice_out() : tree_count() * slice_out(); }
    int depth() const noexcept { return trees_.empty() ? 0 : trees_.front().depth(); }

    tree_type& tree(index_t t) {
        check_tree(t);
        return trees_[static_cast<std::size_t>(t)];
    }
    const tree_type& tree(index_t t) const {
        check_tree(t);
        return trees_[static_cast<std::size_t>(t)];
    }

    index_t parameter_count() const noexcept { return trees_.empty() ? 0 : tree_count() * trees_.front().parameter_count(); }
    index_t memory_bytes() const noexcept {
        index_t bytes = 0;
        for (const auto& t : trees_) bytes += t.memory_bytes();
        return bytes;
    }
    index_t macs_per_example() const noexcept { return trees_.empty() ? 0 : tree_count() * trees_.front().macs_per_example(); }

    /// Tree t is initialised with seed + t.
    void initialize(std::uint64_t seed) noexcept {
        for (std::size_t t = 0; t < trees_.size(); ++t) trees_[t].initialize(seed + t);
    }

    void forward(const Eigen::Ref<const input_vector>& x, Eigen::Ref<output_vector> y) const {
        detail::check_live(name, !trees_.empty());
        detail::check_vector(name, "input", x.size(), in_size());
        detail::check_vector(name, "output", y.size(), out_size());
        detail::check_no_overlap(name, x, y);
        const index_t si = slice_in(), so = slice_out();
        if (combine_ == slice_combine::sum) y.setZero();
        for (index_t t = 0; t < tree_count(); ++t) {
            if (combine_ == slice_combine::sum)
                tree(t).forward_add(x.segment(t * si, si), y);
            else
                tree(t).forward(x.segment(t * si, si), y.segment(t * so, so));
        }
    }

    // The serial and the allocating overloads (layers/batch_overloads.hpp).
    using detail::batch_overloads<sliced_tree_linear, matrix<Scalar>, workspace<Scalar>>::forward_batch;

    /// The batched forward on an executor: the trees run one after another, each on the
    /// executor (bit-identical for any thread count, see tree_linear).
    template <class Executor>
    void forward_batch(const Eigen::Ref<const batch>& X, Eigen::Ref<batch> Y, workspace<Scalar>& ws, Executor&& ex) const {
        detail::check_live(name, !trees_.empty());
        detail::check_batch(name, in_size(), X.rows(), X.cols(), out_size(), Y.rows(), Y.cols());
        // Nothing to compute, and slicing an empty batch would offset its null data pointer
        // (undefined behaviour in Eigen 3.4's blocks).
        if (X.cols() == 0) return;
        if (detail::rerun_on_copy(X, Y, ws, [&](const auto& C) { forward_batch(C, Y, ws, ex); })) return;
        const index_t si = slice_in(), so = slice_out();
        if (combine_ == slice_combine::concat) {
            for (index_t t = 0; t < tree_count(); ++t)
                tree(t).forward_batch(X.middleRows(t * si, si), Y.middleRows(t * so, so), ws, ex);
            return;
        }
        Y.setZero();
        auto part = ws.part_output.view(so, X.cols());  // the trees never use part_output
        for (index_t t = 0; t < tree_count(); ++t) {
            tree(t).forward_batch(X.middleRows(t * si, si), part, ws, ex);
            Y += part;
        }
    }

private:
    void check_tree(index_t t) const {
        detail::check_live(name, !trees_.empty());
        detail::check_index(name, "tree", t, tree_count());
    }

    slice_combine combine_;
    std::vector<tree_type> trees_;
};

}  // namespace treegate

#endif
