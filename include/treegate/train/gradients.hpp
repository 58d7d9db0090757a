// treegate/train/gradients.hpp — each layer's gradient container: named views over gradient_storage.
// Filled by train/backward.hpp, read by train/optimizer.hpp; tree layers also record visited blocks.
#ifndef TREEGATE_TRAIN_GRADIENTS_HPP
#define TREEGATE_TRAIN_GRADIENTS_HPP

#include "../error.hpp"
#include "gradient_storage.hpp"
#include "../layers/activation_layer.hpp"
#include "../layers/dense.hpp"
#include "../layers/layer_common.hpp"
#include "../layers/sequential.hpp"
#include "../layers/tree_feedforward.hpp"
#include "../layers/tree_linear.hpp"
#include "../layers/sliced_tree_linear.hpp"
#include "../tree.hpp"

#include <cstddef>
#include <tuple>
#include <utility>
#include <vector>

namespace treegate::train {

namespace detail {

template <class Scalar>
using vector_map = Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, 1>>;
template <class Scalar>
using const_vector_map = Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>>;
template <class Scalar>
using matrix_map = Eigen::Map<matrix<Scalar>>;
template <class Scalar>
using const_matrix_map = Eigen::Map<const matrix<Scalar>>;

}  // namespace detail

/// Layers without parameters (activations).
struct no_gradient {
    template <class Layer>
    explicit no_gradient(const Layer& /*layer*/) noexcept {}
    void zero() noexcept {}
    template <class Layer, class Scalar>
    void collect(Layer& /*layer*/, param_list<Scalar>& /*out*/) const {}
    template <class Layer, class Scalar>
    void collect_visited(Layer& /*layer*/, param_list<Scalar>& /*out*/, index_t& /*base*/) const {}
};

/// dL/dW and dL/db of a dense layer: tensors "weight" and "bias" of one block each.
template <class Scalar>
class dense_gradient : public gradient_storage<Scalar> {
    using base = gradient_storage<Scalar>;

public:
    template <int In, int Out, class Policy>
    explicit dense_gradient(const dense<Scalar, In, Out, Policy>& layer)
        : base(layer, "dense_gradient"), in_(layer.in_size()), out_(layer.out_size()), has_bias_(layer.has_bias()) {}

    index_t in_size() const noexcept { return in_; }
    index_t out_size() const noexcept { return out_; }
    bool has_bias() const noexcept { return has_bias_; }

    detail::matrix_map<Scalar> weight() noexcept { return {base::block(0, 0), out_, in_}; }
    detail::const_matrix_map<Scalar> weight() const noexcept { return {base::block(0, 0), out_, in_}; }
    /// The bias (empty when the layer has none).
    detail::vector_map<Scalar> bias() noexcept {
        return {has_bias_ ? base::block(1, 0) : base::block(0, 0), has_bias_ ? out_ : 0};
    }
    detail::const_vector_map<Scalar> bias() const noexcept {
        return {has_bias_ ? base::block(1, 0) : base::block(0, 0), has_bias_ ? out_ : 0};
    }

    /// True once a non-empty batch went through backward since the last zero().
    bool visited() const noexcept { return base::visited(0, 0); }
    void mark() { base::mark(0, 0); }

private:
    index_t in_, out_;
    bool has_bias_;
};

/// Gradients of a tree_linear: one `out x in` block and one bias per stored block (tree node in
/// path_sum, leaf in leaf_only), in the layer's block numbering. Blocks that no example reached
/// stay exactly zero and unmarked.
template <class Scalar>
class tree_linear_gradient : public gradient_storage<Scalar> {
    using base = gradient_storage<Scalar>;

public:
    template <int In, int Out, int Depth, class Policy>
    explicit tree_linear_gradient(const tree_linear<Scalar, In, Out, Depth, Policy>& layer)
        : base(layer, "tree_linear_gradient"),
          in_(layer.in_size()),
          out_(layer.out_size()),
          blocks_(layer.block_count()),
          depth_(layer.depth()),
          mode_(layer.mode()),
          has_bias_(layer.has_bias()) {}

    index_t in_size() const noexcept { return in_; }
    index_t out_size() const noexcept { return out_; }
    index_t block_count() const noexcept { return blocks_; }
    int depth() const noexcept { return depth_; }
    tree_mode mode() const noexcept { return mode_; }
    bool has_bias() const noexcept { return has_bias_; }

    detail::matrix_map<Scalar> weight(index_t i) noexcept { return {base::block(0, i), out_, in_}; }
    detail::const_matrix_map<Scalar> weight(index_t i) const noexcept { return {base::block(0, i), out_, in_}; }
    /// Bias block i (empty when the layer has no bias).
    detail::vector_map<Scalar> bias(index_t i) noexcept {
        return {has_bias_ ? base::block(1, i) : base::block(0, 0), has_bias_ ? out_ : 0};
    }
    detail::const_vector_map<Scalar> bias(index_t i) const noexcept {
        return {has_bias_ ? base::block(1, i) : base::block(0, 0), has_bias_ ? out_ : 0};
    }

    /// Tree level of block i: its node's level (path_sum) or D (leaf_only).
    int level(index_t i) const noexcept { return base::tensor(0).level(i); }

    bool visited(index_t i) const noexcept { return base::visited(0, i); }
    /// Visited blocks in the order backward first reached them (level by level, schedule order).
    const std::vector<index_t>& visited_blocks() const noexcept { return base::visited_list(0); }
    void mark(index_t i) { base::mark(0, i); }

private:
    index_t in_, out_, blocks_;
    int depth_;
    tree_mode mode_;
    bool has_bias_;
};

/// Gradients of a tree_feedforward: per tree t and unit i (node in path_sum, leaf in leaf_only)
/// the hidden weight `width x in`, hidden bias `width` and output weight `out x width`; per tree
/// t and internal node i of a leaf_only the router weight `in` and router bias; the output bias.
/// Hard-routing backward never reaches a router (a hard route bit has zero gradient), so router
/// entries stay zero and unvisited there; soft routing (train/soft_routing.hpp) fills them.
template <class Scalar>
class tree_feedforward_gradient : public gradient_storage<Scalar> {
    using base = gradient_storage<Scalar>;

public:
    template <int In, int Out, int Width, int Depth, class Policy>
    explicit tree_feedforward_gradient(const tree_feedforward<Scalar, In, Out, Width, Depth, Policy>& layer)
        : base(layer, "tree_feedforward_gradient"),
          in_(layer.in_size()),
          out_(layer.out_size()),
          width_(layer.width()),
          depth_(layer.depth()),
          trees_(layer.tree_count()),
          units_(layer.unit_count()),
          routers_(layer.router_count()),
          mode_(layer.mode()),
          has_output_bias_(layer.has_output_bias()),
          rw_(base::find("router_weight")),
          rb_(base::find("router_bias")),
          c_(base::find("output_bias")) {}

    index_t in_size() const noexcept { return in_; }
    index_t out_size() const noexcept { return out_; }
    index_t width() const noexcept { return width_; }
    int depth() const noexcept { return depth_; }
    index_t tree_count() const noexcept { return trees_; }
    index_t unit_count() const noexcept { return units_; }
    /// Routers per tree: the internal nodes in leaf_only, none in path_sum.
    index_t router_count() const noexcept { return routers_; }
    tree_mode mode() const noexcept { return mode_; }
    bool has_output_bias() const noexcept { return has_output_bias_; }

    // Tensors 0, 1, 2 are hidden_weight, hidden_bias, output_weight (layers/parameters.hpp).
    detail::matrix_map<Scalar> hidden_weight(index_t t, index_t i) noexcept {
        return {base::block(0, unit(t, i)), width_, in_};
    }
    detail::const_matrix_map<Scalar> hidden_weight(index_t t, index_t i) const noexcept {
        return {base::block(0, unit(t, i)), width_, in_};
    }
    detail::vector_map<Scalar> hidden_bias(index_t t, index_t i) noexcept { return {base::block(1, unit(t, i)), width_}; }
    detail::const_vector_map<Scalar> hidden_bias(index_t t, index_t i) const noexcept {
        return {base::block(1, unit(t, i)), width_};
    }
    detail::matrix_map<Scalar> output_weight(index_t t, index_t i) noexcept {
        return {base::block(2, unit(t, i)), out_, width_};
    }
    detail::const_matrix_map<Scalar> output_weight(index_t t, index_t i) const noexcept {
        return {base::block(2, unit(t, i)), out_, width_};
    }
    detail::vector_map<Scalar> router_weight(index_t t, index_t i) noexcept { return {base::block(rw_, router(t, i)), in_}; }
    detail::const_vector_map<Scalar> router_weight(index_t t, index_t i) const noexcept {
        return {base::block(rw_, router(t, i)), in_};
    }
    Scalar& router_bias(index_t t, index_t i) noexcept { return *base::block(rb_, router(t, i)); }
    const Scalar& router_bias(index_t t, index_t i) const noexcept { return *base::block(rb_, router(t, i)); }
    detail::vector_map<Scalar> output_bias() noexcept {
        return {has_output_bias_ ? base::block(c_, 0) : base::block(0, 0), has_output_bias_ ? out_ : 0};
    }
    detail::const_vector_map<Scalar> output_bias() const noexcept {
        return {has_output_bias_ ? base::block(c_, 0) : base::block(0, 0), has_output_bias_ ? out_ : 0};
    }

    /// Tree level of unit i: its node's level (path_sum) or D (leaf_only).
    int level(index_t i) const noexcept { return base::tensor(0).level(i); }

    bool visited(index_t t, index_t i) const noexcept { return base::visited(0, unit(t, i)); }
    /// Visited units as t * unit_count() + i, in first-visit order.
    const std::vector<index_t>& visited_units() const noexcept { return base::visited_list(0); }
    void mark(index_t t, index_t i) { base::mark(0, unit(t, i)); }
    bool router_visited(index_t t, index_t i) const noexcept { return base::visited(rw_, router(t, i)); }
    /// Visited routers as t * router_count() + i, in first-visit order.
    const std::vector<index_t>& visited_routers() const noexcept {
        return rw_ >= 0 ? base::visited_list(rw_) : no_visits_;
    }
    void mark_router(index_t t, index_t i) { base::mark(rw_, router(t, i)); }
    /// The output bias is reached by every non-empty batch.
    bool output_bias_visited() const noexcept { return has_output_bias_ ? base::visited(c_, 0) : bias_marked_; }
    void mark_output_bias() {
        if (has_output_bias_)
            base::mark(c_, 0);
        else
            bias_marked_ = true;
    }
    void zero() noexcept {
        base::zero();
        bias_marked_ = false;
    }

private:
    index_t unit(index_t t, index_t i) const noexcept { return t * units_ + i; }
    index_t router(index_t t, index_t i) const noexcept {
        eigen_assert(t >= 0 && t < trees_ && i >= 0 && i < routers_);
        return t * routers_ + i;
    }

    index_t in_, out_, width_;
    int depth_;
    index_t trees_, units_, routers_;
    tree_mode mode_;
    bool has_output_bias_;
    index_t rw_, rb_, c_;  // tensor indices; -1 when the layer lists no such tensor
    bool bias_marked_ = false;  // without an output bias tensor, the mark has nowhere else to live
    std::vector<index_t> no_visits_;
};

/// Gradients of a sliced_tree_linear: one tree_linear_gradient per tree.
template <class Scalar>
class sliced_tree_linear_gradient {
public:
    template <int SliceIn, int SliceOut, int Depth, class Policy>
    explicit sliced_tree_linear_gradient(const sliced_tree_linear<Scalar, SliceIn, SliceOut, Depth, Policy>& layer) {
        trees_.reserve(static_cast<std::size_t>(layer.tree_count()));
        for (index_t t = 0; t < layer.tree_count(); ++t) trees_.emplace_back(layer.tree(t));
    }

    index_t tree_count() const noexcept { return static_cast<index_t>(trees_.size()); }
    tree_linear_gradient<Scalar>& tree(index_t t) noexcept { return trees_[static_cast<std::size_t>(t)]; }
    const tree_linear_gradient<Scalar>& tree(index_t t) const noexcept { return trees_[static_cast<std::size_t>(t)]; }

    void zero() noexcept {
        for (auto& g : trees_) g.zero();
    }

    /// Tree by tree, each as tree_linear_gradient::collect.
    template <int SliceIn, int SliceOut, int Depth, class Policy>
    void collect(sliced_tree_linear<Scalar, SliceIn, SliceOut, Depth, Policy>& layer, param_list<Scalar>& out) const {
        treegate::detail::check_shape(layer.tree_count() == tree_count(), "sliced_tree_linear_gradient: the layer has ",
                                      layer.tree_count(), " trees, the gradient ", tree_count());
        for (index_t t = 0; t < tree_count(); ++t) tree(t).collect(layer.tree(t), out);
    }
    template <int SliceIn, int SliceOut, int Depth, class Policy>
    void collect_visited(sliced_tree_linear<Scalar, SliceIn, SliceOut, Depth, Policy>& layer, param_list<Scalar>& out,
                         index_t& base) const {
        treegate::detail::check_shape(layer.tree_count() == tree_count(), "sliced_tree_linear_gradient: the layer has ",
                                      layer.tree_count(), " trees, the gradient ", tree_count());
        for (index_t t = 0; t < tree_count(); ++t) tree(t).collect_visited(layer.tree(t), out, base);
    }

private:
    std::vector<tree_linear_gradient<Scalar>> trees_;
};

// ---- which container goes with which layer ------------------------------------------------------

template <class Layer>
struct gradient_for;

template <class Scalar, int In, int Out, class Policy>
struct gradient_for<dense<Scalar, In, Out, Policy>> {
    using type = dense_gradient<Scalar>;
};
template <class Scalar, int Size>
struct gradient_for<activation_layer<Scalar, Size>> {
    using type = no_gradient;
};
template <class Scalar, int In, int Out, int Depth, class Policy>
struct gradient_for<tree_linear<Scalar, In, Out, Depth, Policy>> {
    using type = tree_linear_gradient<Scalar>;
};
template <class Scalar, int SliceIn, int SliceOut, int Depth, class Policy>
struct gradient_for<sliced_tree_linear<Scalar, SliceIn, SliceOut, Depth, Policy>> {
    using type = sliced_tree_linear_gradient<Scalar>;
};
template <class Scalar, int In, int Out, int Width, int Depth, class Policy>
struct gradient_for<tree_feedforward<Scalar, In, Out, Width, Depth, Policy>> {
    using type = tree_feedforward_gradient<Scalar>;
};

template <class... Layers>
class sequential_gradient;

template <class... Layers>
struct gradient_for<sequential<Layers...>> {
    using type = sequential_gradient<Layers...>;
};

/// The gradient container of `Layer`.
template <class Layer>
using gradient_t = typename gradient_for<Layer>::type;

/// One gradient container per layer of a sequential model, in the same order.
template <class... Layers>
class sequential_gradient {
public:
    static constexpr std::size_t size = sizeof...(Layers);

    explicit sequential_gradient(const sequential<Layers...>& model)
        : grads_(make(model, std::make_index_sequence<size>{})) {}

    template <std::size_t I>
    auto& layer() noexcept {
        return std::get<I>(grads_);
    }
    template <std::size_t I>
    const auto& layer() const noexcept {
        return std::get<I>(grads_);
    }

    void zero() noexcept {
        std::apply([](auto&... g) { (g.zero(), ...); }, grads_);
    }

    /// The layers' blocks, first layer first.
    template <class Scalar>
    void collect(sequential<Layers...>& model, param_list<Scalar>& out) const {
        collect_each(model, out, std::make_index_sequence<size>{});
    }
    template <class Scalar>
    void collect_visited(sequential<Layers...>& model, param_list<Scalar>& out, index_t& base) const {
        collect_visited_each(model, out, base, std::make_index_sequence<size>{});
    }

private:
    template <std::size_t... I>
    static std::tuple<gradient_t<Layers>...> make(const sequential<Layers...>& model, std::index_sequence<I...>) {
        return std::tuple<gradient_t<Layers>...>(gradient_t<Layers>(model.template layer<I>())...);
    }

    template <class Scalar, std::size_t... I>
    void collect_each(sequential<Layers...>& model, param_list<Scalar>& out, std::index_sequence<I...>) const {
        (std::get<I>(grads_).collect(model.template layer<I>(), out), ...);
    }
    template <class Scalar, std::size_t... I>
    void collect_visited_each(sequential<Layers...>& model, param_list<Scalar>& out, index_t& base,
                              std::index_sequence<I...>) const {
        (std::get<I>(grads_).collect_visited(model.template layer<I>(), out, base), ...);
    }

    std::tuple<gradient_t<Layers>...> grads_;
};

/// The zeroed gradient container of a layer or model.
template <class Layer>
gradient_t<Layer> make_gradient(const Layer& layer) {
    return gradient_t<Layer>(layer);
}

}  // namespace treegate::train

#endif
