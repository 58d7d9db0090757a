// treegate/layers/parameters.hpp — one description of every layer's parameter tensors.
// Sits above the layers; the safetensors codecs (io/) walk it instead of repeating each layout.
//
// A tensor is a sequence of equally shaped blocks, each `rows x cols` column-major in memory,
// reached as runs of blocks at a fixed stride (a sliced_tree_linear tensor has one run per
// tree, every other layer one run). The file writes the same tensor row-major with the shape
// `file_shape` (README, "Saving and loading": the block index first, then out x in).
#ifndef TREEGATE_LAYERS_PARAMETERS_HPP
#define TREEGATE_LAYERS_PARAMETERS_HPP

#include "../bf16.hpp"
#include "../tree.hpp"
#include "activation_layer.hpp"
#include "dense.hpp"
#include "layer_common.hpp"
#include "sequential.hpp"
#include "storage.hpp"
#include "tree_feedforward.hpp"
#include "tree_linear.hpp"
#include "sliced_tree_linear.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace treegate {

/// How a tensor's elements are stored: as the layer's Scalar, or as bf16 (a serving layer's
/// weights, storage::owned<bf16>).
enum class element_kind { scalar, bf16 };

/// One parameter tensor of a layer. T is the layer's Scalar, const for a const layer; the
/// blocks are in `runs` (element scalar) or `bf16_runs` (element bf16).
template <class T>
struct parameter_tensor {
    using element_type = T;
    using bf16_type = std::conditional_t<std::is_const_v<T>, const bf16, bf16>;

    std::string name;                       ///< the safetensors name, prefix included
    std::vector<std::uint64_t> file_shape;  ///< as the file writes it (row-major)
    index_t rows = 0, cols = 0;             ///< one block as memory holds it (column-major)
    element_kind element = element_kind::scalar;
    std::vector<block_run<T>> runs;
    std::vector<block_run<bf16_type>> bf16_runs;
    bool decayed = false;   ///< weights decay; biases never do (train/optimizer.hpp)
    int fixed_level = 0;    ///< the tree level of every block, unless node_period is set
    index_t node_period = 0;  ///< > 0: block b is tree node b % node_period (heap order)
    /// Block b belongs to the same node or unit as block b of the previous tensor, so a gradient
    /// tracks their visits together and lists them side by side (train/gradient_storage.hpp).
    bool joins_previous = false;

    index_t block_size() const noexcept { return rows * cols; }
    index_t block_count() const noexcept {
        index_t n = 0;
        for (const auto& r : runs) n += r.count;
        for (const auto& r : bf16_runs) n += r.count;
        return n;
    }
    /// The tree level of block b, which sets its depth-scaled weight decay.
    int level(index_t b) const noexcept { return node_period > 0 ? tree::level_of(b % node_period) : fixed_level; }

    /// Calls f(pointer) for every block, in file order; the pointer is T* or bf16_type*.
    template <class F>
    void for_each_block(F&& f) const {
        if (element == element_kind::bf16)
            each(bf16_runs, f);
        else
            each(runs, f);
    }

private:
    template <class Runs, class F>
    static void each(const Runs& rs, F& f) {
        for (const auto& r : rs)
            for (index_t b = 0; b < r.count; ++b) f(r.data + b * r.stride);
    }
};

namespace detail {

template <class T>
using param_element = std::conditional_t<std::is_const_v<T>, const typename std::remove_const_t<T>::scalar_type,
                                         typename std::remove_const_t<T>::scalar_type>;

inline std::uint64_t file_dim(index_t v) noexcept { return static_cast<std::uint64_t>(v); }

/// The run of `count` blocks whose first two start at p0 and p1 (the layer's stride).
template <class T>
block_run<T> run_of(T* p0, T* p1, index_t count) noexcept {
    return {p0, count, count > 1 ? static_cast<index_t>(p1 - p0) : 0};
}

template <class T>
parameter_tensor<T> make_tensor(std::string name, std::vector<std::uint64_t> shape, index_t rows, index_t cols,
                                bool decayed, int fixed_level, index_t node_period) {
    parameter_tensor<T> t;
    t.name = std::move(name);
    t.file_shape = std::move(shape);
    t.rows = rows;
    t.cols = cols;
    t.decayed = decayed;
    t.fixed_level = fixed_level;
    t.node_period = node_period;
    return t;
}

template <class L>
struct layer_kind {
    static constexpr int value = 0;
};
template <class S, int I, int O, class P>
struct layer_kind<dense<S, I, O, P>> {
    static constexpr int value = 1;
};
template <class S, int I, int O, int D, class P, class St>
struct layer_kind<tree_linear<S, I, O, D, P, St>> {
    static constexpr int value = 2;
};
template <class S, int I, int O, int D, class P>
struct layer_kind<sliced_tree_linear<S, I, O, D, P>> {
    static constexpr int value = 3;
};
template <class S, int I, int O, int W, int D, class P>
struct layer_kind<tree_feedforward<S, I, O, W, D, P>> {
    static constexpr int value = 4;
};
template <class S, int N>
struct layer_kind<activation_layer<S, N>> {
    static constexpr int value = 5;
};
template <class... L>
struct layer_kind<sequential<L...>> {
    static constexpr int value = 6;
};

/// The tree_linear tensors of `trees` trees (tree_fn(t) gives tree t), as one tensor each.
template <class Layer, class TreeFn>
void describe_trees(index_t trees, TreeFn&& tree_fn, const std::string& p, bool blocked,
                    std::vector<parameter_tensor<param_element<Layer>>>& out) {
    using T = param_element<Layer>;
    auto& first = tree_fn(0);
    const index_t nb = first.block_count(), in = first.in_size(), o = first.out_size();
    const bool path = first.mode() == tree_mode::path_sum;
    const int lv = path ? 0 : first.depth();
    const index_t period = path ? nb : 0;
    std::vector<std::uint64_t> ws{file_dim(nb), file_dim(o), file_dim(in)}, bs{file_dim(nb), file_dim(o)};
    if (blocked) {
        ws.insert(ws.begin(), file_dim(trees));
        bs.insert(bs.begin(), file_dim(trees));
    }
    auto w = make_tensor<T>(p + "weight", ws, o, in, true, lv, period);
    auto b = make_tensor<T>(p + "bias", bs, o, 1, false, lv, period);
    b.joins_previous = true;
    using tree_t = std::remove_reference_t<decltype(first)>;
    constexpr bool half = std::is_same_v<typename std::remove_const_t<tree_t>::weight_type, bf16>;
    if (half) w.element = element_kind::bf16;
    for (index_t t = 0; t < trees; ++t) {
        auto& tr = tree_fn(t);
        if constexpr (half)
            w.bf16_runs.push_back(tr.weight_blocks());
        else
            w.runs.push_back(tr.weight_blocks());
        b.runs.push_back(tr.bias_blocks());
    }
    out.push_back(std::move(w));
    if (first.has_bias()) out.push_back(std::move(b));
}

template <class Layer>
void describe(Layer& l, const std::string& p, std::vector<parameter_tensor<param_element<Layer>>>& out);

template <class Seq, std::size_t... I>
void describe_layers(Seq& s, const std::string& p, std::vector<parameter_tensor<param_element<Seq>>>& out,
                     std::index_sequence<I...>) {
    (describe(s.template layer<I>(), p + std::to_string(I) + ".", out), ...);
}

template <class Layer>
void describe(Layer& l, const std::string& p, std::vector<parameter_tensor<param_element<Layer>>>& out) {
    using T = param_element<Layer>;
    using plain = std::remove_const_t<Layer>;
    constexpr int kind = layer_kind<plain>::value;
    static_assert(kind != 0, "parameters: not a treegate layer");
    if constexpr (kind == 1) {
        const index_t in = l.in_size(), o = l.out_size();
        auto w = make_tensor<T>(p + "weight", {file_dim(o), file_dim(in)}, o, in, true, 0, 0);
        w.runs.push_back({l.weight().data(), 1, 0});
        out.push_back(std::move(w));
        if (l.has_bias()) {
            auto b = make_tensor<T>(p + "bias", {file_dim(o)}, o, 1, false, 0, 0);
            b.joins_previous = true;
            b.runs.push_back({l.bias().data(), 1, 0});
            out.push_back(std::move(b));
        }
    } else if constexpr (kind == 2) {
        check_live(plain::name, l.in_size() != 0);
        describe_trees<Layer>(1, [&](index_t) -> Layer& { return l; }, p, false, out);
    } else if constexpr (kind == 3) {
        check_live(plain::name, l.tree_count() != 0);
        describe_trees<Layer>(l.tree_count(), [&](index_t t) -> auto& { return l.tree(t); }, p, true, out);
    } else if constexpr (kind == 4) {
        check_live(plain::name, l.in_size() != 0);
        const index_t K = l.tree_count(), U = l.unit_count(), R = l.router_count();
        const index_t in = l.in_size(), o = l.out_size(), w = l.width();
        const bool path_sum = l.mode() == tree_mode::path_sum;
        const int lv = path_sum ? 0 : l.depth();
        const index_t period = path_sum ? U : 0;
        const index_t n = K * U;  // unit (t, i) is block t * U + i of one run
        auto tensor = [&](const char* name, std::vector<std::uint64_t> shape, index_t rows, index_t cols, bool decayed,
                          T* p0, T* p1, index_t count, int level, index_t per, bool joins = false) {
            auto t = make_tensor<T>(p + name, std::move(shape), rows, cols, decayed, level, per);
            t.joins_previous = joins;
            t.runs.push_back(run_of<T>(p0, p1, count));
            out.push_back(std::move(t));
        };
        auto second = [&](auto&& at) { return n > 1 ? at(1 / U, 1 % U) : nullptr; };
        const auto kd = file_dim(K), ud = file_dim(U);
        tensor("hidden_weight", {kd, ud, file_dim(w), file_dim(in)}, w, in, true, l.hidden_weight(0, 0).data(),
               second([&](index_t t, index_t i) { return l.hidden_weight(t, i).data(); }), n, lv, period);
        tensor("hidden_bias", {kd, ud, file_dim(w)}, w, 1, false, l.hidden_bias(0, 0).data(),
               second([&](index_t t, index_t i) { return l.hidden_bias(t, i).data(); }), n, lv, period, true);
        tensor("output_weight", {kd, ud, file_dim(o), file_dim(w)}, o, w, true, l.output_weight(0, 0).data(),
               second([&](index_t t, index_t i) { return l.output_weight(t, i).data(); }), n, lv, period, true);
        if (l.has_leaf_bias())  // leaf_only: one output bias per leaf, a part of the leaf's unit
            tensor("leaf_bias", {kd, ud, file_dim(o)}, o, 1, false, l.leaf_bias(0, 0).data(),
                   second([&](index_t t, index_t i) { return l.leaf_bias(t, i).data(); }), n, lv, period, true);
        if (!path_sum) {  // leaf_only: router tensors, empty at depth 0
            const index_t nr = K * R;
            auto first = [&](auto&& at) { return nr > 0 ? at(0, 0) : nullptr; };
            auto second = [&](auto&& at) { return nr > 1 ? at(1 / R, 1 % R) : nullptr; };
            const auto rw = [&](index_t t, index_t i) { return l.router_weight(t, i).data(); };
            const auto rb = [&](index_t t, index_t i) { return &l.router_bias(t, i); };
            tensor("router_weight", {kd, file_dim(R), file_dim(in)}, in, 1, true, first(rw), second(rw), nr, 0, R);
            tensor("router_bias", {kd, file_dim(R)}, 1, 1, false, first(rb), second(rb), nr, 0, R, true);
        }
        if (l.has_output_bias())
            tensor("output_bias", {file_dim(o)}, o, 1, false, l.output_bias().data(), nullptr, 1, 0, 0);
    } else if constexpr (kind == 6) {
        describe_layers(l, p, out, std::make_index_sequence<plain::size>{});
    }
    // activation_layer (kind 5): no parameters.
}

}  // namespace detail

/// Every parameter tensor of `layer` (a layer or a sequential model; `sequential` prefixes layer
/// i's names with "i."), in the order the safetensors file lists them. A const layer gives
/// pointers to const. Pointers stay valid while the layer is neither moved nor destroyed.
template <class Layer>
std::vector<parameter_tensor<detail::param_element<Layer>>> parameters(Layer& layer, const std::string& prefix = "") {
    std::vector<parameter_tensor<detail::param_element<Layer>>> out;
    detail::describe(layer, prefix, out);
    return out;
}

}  // namespace treegate

#endif
