// treegate/train/gradients.hpp — gradient containers that mirror each layer's parameters.
// Filled by train/backward.hpp, read by train/optimizer.hpp; tree layers also record visited blocks.
#ifndef TREEGATE_TRAIN_GRADIENTS_HPP
#define TREEGATE_TRAIN_GRADIENTS_HPP

#include "../error.hpp"
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
};

/// Every block of a layer or model, in a fixed order (the order of `collect`).
template <class Scalar>
using param_list = std::vector<param_block<Scalar>>;

namespace detail {

template <class Scalar>
using vector_map = Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, 1>>;
template <class Scalar>
using const_vector_map = Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>>;
template <class Scalar>
using matrix_map = Eigen::Map<matrix<Scalar>>;
template <class Scalar>
using const_matrix_map = Eigen::Map<const matrix<Scalar>>;

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

/// Layers without parameters (activations).
struct no_gradient {
    template <class Layer>
    explicit no_gradient(const Layer& /*layer*/) noexcept {}
    void zero() noexcept {}
    template <class Layer, class Scalar>
    void collect(Layer& /*layer*/, param_list<Scalar>& /*out*/) const {}
};

/// dL/dW and dL/db of a dense layer.
template <class Scalar>
class dense_gradient {
public:
    template <int In, int Out, class Policy>
    explicit dense_gradient(const dense<Scalar, In, Out, Policy>& layer)
        : weight_(matrix<Scalar>::Zero(layer.out_size(), layer.in_size())),
          bias_(Eigen::Matrix<Scalar, Eigen::Dynamic, 1>::Zero(layer.has_bias() ? layer.out_size() : 0)),
          has_bias_(layer.has_bias()) {}

    index_t in_size() const noexcept { return weight_.cols(); }
    index_t out_size() const noexcept { return weight_.rows(); }
    bool has_bias() const noexcept { return has_bias_; }

    matrix<Scalar>& weight() noexcept { return weight_; }
    const matrix<Scalar>& weight() const noexcept { return weight_; }
    Eigen::Matrix<Scalar, Eigen::Dynamic, 1>& bias() noexcept { return bias_; }
    const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>& bias() const noexcept { return bias_; }

    /// True once a non-empty batch went through backward since the last zero().
    bool visited() const noexcept { return visited_; }
    void mark() noexcept { visited_ = true; }

    void zero() noexcept {
        weight_.setZero();
        bias_.setZero();
        visited_ = false;
    }

    /// Weight, then bias; both at level 0.
    template <int In, int Out, class Policy>
    void collect(dense<Scalar, In, Out, Policy>& layer, param_list<Scalar>& out) const {
        treegate::detail::check_shape(layer.in_size() == in_size() && layer.out_size() == out_size() &&
                                          layer.has_bias() == has_bias_,
                                      "dense_gradient: does not match the layer (", layer.out_size(), " x ",
                                      layer.in_size(), ")");
        out.push_back({layer.weight().data(), weight_.data(), weight_.size(), 0, visited_, true});
        if (has_bias_) out.push_back({layer.bias().data(), bias_.data(), bias_.size(), 0, visited_, false});
    }

private:
    matrix<Scalar> weight_;
    Eigen::Matrix<Scalar, Eigen::Dynamic, 1> bias_;
    bool has_bias_;
    bool visited_ = false;
};

/// Gradients of a tree_linear: one `out x in` block and one bias per stored block (tree node in
/// path_sum, leaf in leaf_only), in the layer's block numbering. Blocks that no example reached
/// stay exactly zero and unmarked.
template <class Scalar>
class tree_linear_gradient {
public:
    template <int In, int Out, int Depth, class Policy>
    explicit tree_linear_gradient(const tree_linear<Scalar, In, Out, Depth, Policy>& layer)
        : in_(layer.in_size()),
          out_(layer.out_size()),
          blocks_(layer.block_count()),
          depth_(layer.depth()),
          mode_(layer.mode()),
          has_bias_(layer.has_bias()),
          weights_(static_cast<std::size_t>(blocks_ * in_ * out_), Scalar(0)),
          biases_(static_cast<std::size_t>(has_bias_ ? blocks_ * out_ : 0), Scalar(0)),
          visits_(blocks_) {}

    index_t in_size() const noexcept { return in_; }
    index_t out_size() const noexcept { return out_; }
    index_t block_count() const noexcept { return blocks_; }
    int depth() const noexcept { return depth_; }
    tree_mode mode() const noexcept { return mode_; }
    bool has_bias() const noexcept { return has_bias_; }

    detail::matrix_map<Scalar> weight(index_t i) noexcept { return {weights_.data() + i * in_ * out_, out_, in_}; }
    detail::const_matrix_map<Scalar> weight(index_t i) const noexcept {
        return {weights_.data() + i * in_ * out_, out_, in_};
    }
    /// Bias block i (empty when the layer has no bias).
    detail::vector_map<Scalar> bias(index_t i) noexcept {
        return {biases_.data() + (has_bias_ ? i * out_ : 0), has_bias_ ? out_ : 0};
    }
    detail::const_vector_map<Scalar> bias(index_t i) const noexcept {
        return {biases_.data() + (has_bias_ ? i * out_ : 0), has_bias_ ? out_ : 0};
    }

    /// Tree level of block i: its node's level (path_sum) or D (leaf_only).
    int level(index_t i) const noexcept { return mode_ == tree_mode::path_sum ? tree::level_of(i) : depth_; }

    bool visited(index_t i) const noexcept { return visits_.contains(i); }
    /// Visited blocks in the order backward first reached them (level by level, schedule order).
    const std::vector<index_t>& visited_blocks() const noexcept { return visits_.list(); }
    void mark(index_t i) { visits_.mark(i); }

    /// Zeroes the visited blocks (the others are zero already) and forgets the visits.
    void zero() noexcept {
        for (index_t i : visits_.list()) {
            weight(i).setZero();
            bias(i).setZero();
        }
        visits_.clear();
    }

    /// Per block i: weight (decayed at level(i)), then bias.
    template <int In, int Out, int Depth, class Policy>
    void collect(tree_linear<Scalar, In, Out, Depth, Policy>& layer, param_list<Scalar>& out) const {
        treegate::detail::check_shape(layer.in_size() == in_ && layer.out_size() == out_ &&
                                          layer.block_count() == blocks_ && layer.has_bias() == has_bias_,
                                      "tree_linear_gradient: does not match the layer (", layer.block_count(),
                                      " blocks of ", layer.out_size(), " x ", layer.in_size(), ")");
        for (index_t i = 0; i < blocks_; ++i) {
            const bool v = visited(i);
            out.push_back({layer.weight(i).data(), weight(i).data(), in_ * out_, level(i), v, true});
            if (has_bias_) out.push_back({layer.bias(i).data(), bias(i).data(), out_, level(i), v, false});
        }
    }

private:
    index_t in_, out_, blocks_;
    int depth_;
    tree_mode mode_;
    bool has_bias_;
    std::vector<Scalar> weights_, biases_;
    detail::visit_set visits_;
};

/// Gradients of a tree_feedforward: per tree t and unit i (node in path_sum, leaf in leaf_only)
/// the hidden weight `width x in`, hidden bias `width` and output weight `out x width`; per tree
/// t and internal node i of a leaf_only the router weight `in` and router bias; the output bias.
/// Hard-routing backward never reaches a router (a hard route bit has zero gradient), so router
/// entries stay zero and unvisited there; soft routing (train/soft_routing.hpp) fills them.
template <class Scalar>
class tree_feedforward_gradient {
public:
    template <int In, int Out, int Width, int Depth, class Policy>
    explicit tree_feedforward_gradient(const tree_feedforward<Scalar, In, Out, Width, Depth, Policy>& layer)
        : in_(layer.in_size()),
          out_(layer.out_size()),
          width_(layer.width()),
          depth_(layer.depth()),
          trees_(layer.tree_count()),
          units_(layer.unit_count()),
          routers_(layer.router_count()),
          mode_(layer.mode()),
          has_output_bias_(layer.has_output_bias()),
          U_(static_cast<std::size_t>(trees_ * units_ * width_ * in_), Scalar(0)),
          A_(static_cast<std::size_t>(trees_ * units_ * width_), Scalar(0)),
          V_(static_cast<std::size_t>(trees_ * units_ * out_ * width_), Scalar(0)),
          R_(static_cast<std::size_t>(trees_ * routers_ * in_), Scalar(0)),
          S_(static_cast<std::size_t>(trees_ * routers_), Scalar(0)),
          c_(static_cast<std::size_t>(has_output_bias_ ? out_ : 0), Scalar(0)),
          visits_(trees_ * units_),
          router_visits_(trees_ * routers_) {}

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

    detail::matrix_map<Scalar> hidden_weight(index_t t, index_t i) noexcept {
        return {U_.data() + unit(t, i) * width_ * in_, width_, in_};
    }
    detail::const_matrix_map<Scalar> hidden_weight(index_t t, index_t i) const noexcept {
        return {U_.data() + unit(t, i) * width_ * in_, width_, in_};
    }
    detail::vector_map<Scalar> hidden_bias(index_t t, index_t i) noexcept { return {A_.data() + unit(t, i) * width_, width_}; }
    detail::const_vector_map<Scalar> hidden_bias(index_t t, index_t i) const noexcept {
        return {A_.data() + unit(t, i) * width_, width_};
    }
    detail::matrix_map<Scalar> output_weight(index_t t, index_t i) noexcept {
        return {V_.data() + unit(t, i) * out_ * width_, out_, width_};
    }
    detail::const_matrix_map<Scalar> output_weight(index_t t, index_t i) const noexcept {
        return {V_.data() + unit(t, i) * out_ * width_, out_, width_};
    }
    detail::vector_map<Scalar> router_weight(index_t t, index_t i) noexcept { return {R_.data() + router(t, i) * in_, in_}; }
    detail::const_vector_map<Scalar> router_weight(index_t t, index_t i) const noexcept {
        return {R_.data() + router(t, i) * in_, in_};
    }
    Scalar& router_bias(index_t t, index_t i) noexcept { return S_.data()[router(t, i)]; }
    const Scalar& router_bias(index_t t, index_t i) const noexcept { return S_.data()[router(t, i)]; }
    detail::vector_map<Scalar> output_bias() noexcept { return {c_.data(), has_output_bias_ ? out_ : 0}; }
    detail::const_vector_map<Scalar> output_bias() const noexcept { return {c_.data(), has_output_bias_ ? out_ : 0}; }

    /// Tree level of unit i: its node's level (path_sum) or D (leaf_only).
    int level(index_t i) const noexcept { return mode_ == tree_mode::path_sum ? tree::level_of(i) : depth_; }

    bool visited(index_t t, index_t i) const noexcept { return visits_.contains(unit(t, i)); }
    /// Visited units as t * unit_count() + i, in first-visit order.
    const std::vector<index_t>& visited_units() const noexcept { return visits_.list(); }
    void mark(index_t t, index_t i) { visits_.mark(unit(t, i)); }
    bool router_visited(index_t t, index_t i) const noexcept { return router_visits_.contains(router(t, i)); }
    /// Visited routers as t * router_count() + i, in first-visit order.
    const std::vector<index_t>& visited_routers() const noexcept { return router_visits_.list(); }
    void mark_router(index_t t, index_t i) { router_visits_.mark(router(t, i)); }
    /// The output bias is reached by every non-empty batch.
    bool output_bias_visited() const noexcept { return bias_visited_; }
    void mark_output_bias() noexcept { bias_visited_ = true; }

    void zero() noexcept {
        for (index_t g : visits_.list()) {
            const index_t t = g / units_, i = g % units_;
            hidden_weight(t, i).setZero();
            hidden_bias(t, i).setZero();
            output_weight(t, i).setZero();
        }
        visits_.clear();
        for (index_t g : router_visits_.list()) {
            router_weight(g / routers_, g % routers_).setZero();
            router_bias(g / routers_, g % routers_) = Scalar(0);
        }
        router_visits_.clear();
        output_bias().setZero();
        bias_visited_ = false;
    }

    /// Per tree, per unit: hidden weight, hidden bias, output weight; then per tree, per router
    /// (leaf_only): router weight (decayed at the router's level), router bias; then the output bias.
    template <int In, int Out, int Width, int Depth, class Policy>
    void collect(tree_feedforward<Scalar, In, Out, Width, Depth, Policy>& layer, param_list<Scalar>& out) const {
        treegate::detail::check_shape(layer.in_size() == in_ && layer.out_size() == out_ && layer.width() == width_ &&
                                          layer.tree_count() == trees_ && layer.unit_count() == units_ &&
                                          layer.router_count() == routers_ && layer.has_output_bias() == has_output_bias_,
                                      "tree_feedforward_gradient: does not match the layer (", layer.tree_count(),
                                      " trees of ", layer.unit_count(), " units, ", layer.in_size(), " -> ",
                                      layer.width(), " -> ", layer.out_size(), ")");
        for (index_t t = 0; t < trees_; ++t)
            for (index_t i = 0; i < units_; ++i) {
                const bool v = visited(t, i);
                const int lv = level(i);
                out.push_back({layer.hidden_weight(t, i).data(), hidden_weight(t, i).data(), width_ * in_, lv, v, true});
                out.push_back({layer.hidden_bias(t, i).data(), hidden_bias(t, i).data(), width_, lv, v, false});
                out.push_back({layer.output_weight(t, i).data(), output_weight(t, i).data(), out_ * width_, lv, v, true});
            }
        for (index_t t = 0; t < trees_; ++t)
            for (index_t i = 0; i < routers_; ++i) {
                const bool v = router_visited(t, i);
                const int lv = tree::level_of(i);
                out.push_back({layer.router_weight(t, i).data(), router_weight(t, i).data(), in_, lv, v, true});
                out.push_back({&layer.router_bias(t, i), &router_bias(t, i), 1, lv, v, false});
            }
        if (has_output_bias_) out.push_back({layer.output_bias().data(), c_.data(), out_, 0, bias_visited_, false});
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
    std::vector<Scalar> U_, A_, V_, R_, S_, c_;
    detail::visit_set visits_, router_visits_;
    bool bias_visited_ = false;
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

private:
    template <std::size_t... I>
    static std::tuple<gradient_t<Layers>...> make(const sequential<Layers...>& model, std::index_sequence<I...>) {
        return std::tuple<gradient_t<Layers>...>(gradient_t<Layers>(model.template layer<I>())...);
    }

    template <class Scalar, std::size_t... I>
    void collect_each(sequential<Layers...>& model, param_list<Scalar>& out, std::index_sequence<I...>) const {
        (std::get<I>(grads_).collect(model.template layer<I>(), out), ...);
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
