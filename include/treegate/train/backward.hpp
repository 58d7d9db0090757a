// treegate/train/backward.hpp — backward passes of every layer and of sequential models.
// Recomputes the forward routes and walks the forward schedule: a block's gradient sums only
// the examples that visited it, in schedule order; gate and route bits have zero gradient.
#ifndef TREEGATE_TRAIN_BACKWARD_HPP
#define TREEGATE_TRAIN_BACKWARD_HPP

#include "../activation.hpp"
#include "../error.hpp"
#include "../exec/grouped.hpp"
#include "../exec/levels.hpp"
#include "../exec/route.hpp"
#include "../layers/activation_layer.hpp"
#include "../layers/dense.hpp"
#include "../layers/layer_common.hpp"
#include "../layers/sequential.hpp"
#include "../layers/tree_feedforward.hpp"
#include "../layers/tree_linear.hpp"
#include "../layers/sliced_tree_linear.hpp"
#include "../routing.hpp"
#include "../schedule.hpp"
#include "../tree.hpp"
#include "../workspace.hpp"
#include "batch_ref.hpp"
#include "ff_unit_backward.hpp"
#include "gradients.hpp"

#include <array>
#include <cmath>
#include <cstddef>
#include <utility>
#include <vector>

namespace treegate::train {

/// Scratch for backward passes; grows to the largest batch and is then reused. One per thread.
template <class Scalar>
struct backward_workspace {
    std::vector<leaf_t> codes;
    std::vector<unsigned char> bits;
    leaf_schedule leaves;
    level_schedule levels;
    matrix<Scalar> x, dy, dx, pre, h, dpre;  // gathered in schedule order
};

namespace detail {

inline void check_backward(const char* layer, index_t in, index_t out, index_t x_rows, index_t x_cols, index_t dy_rows,
                           index_t dy_cols) {
    treegate::detail::check_shape(x_rows == in, layer, " backward: input batch has ", x_rows, " rows, expected ", in);
    treegate::detail::check_shape(dy_rows == out && dy_cols == x_cols, layer, " backward: output gradient is ", dy_rows,
                                  " x ", dy_cols, ", expected ", out, " x ", x_cols);
}

template <class DX>
void check_dx(const char* layer, const DX* dX, index_t in, index_t n) {
    if (dX != nullptr)
        treegate::detail::check_shape(dX->rows() == in && dX->cols() == n, layer, " backward: input gradient is ",
                                      dX->rows(), " x ", dX->cols(), ", expected ", in, " x ", n);
}


// ---- dense ---------------------------------------------------------------------------------------

template <class Scalar, int In, int Out, class Policy>
void dense_backward(const dense<Scalar, In, Out, Policy>& layer, const const_batch_ref<Scalar>& X,
                    const const_batch_ref<Scalar>& dY, dense_gradient<Scalar>& grad, batch_ref<Scalar>* dX) {
    const char* name = "dense";
    check_backward(name, layer.in_size(), layer.out_size(), X.rows(), X.cols(), dY.rows(), dY.cols());
    check_dx(name, dX, layer.in_size(), X.cols());
    treegate::detail::check_shape(grad.in_size() == layer.in_size() && grad.out_size() == layer.out_size() &&
                                      grad.has_bias() == layer.has_bias(),
                                  name, " backward: the gradient container does not match the layer");
    if (X.cols() == 0) return;
    grad.mark();
    grad.weight().noalias() += dY * X.transpose();
    if (layer.has_bias()) grad.bias() += dY.rowwise().sum();
    if (dX != nullptr) dX->noalias() = layer.weight().transpose() * dY;
}

// ---- activation_layer ----------------------------------------------------------------------------

template <class Scalar, int Size>
void activation_backward(const activation_layer<Scalar, Size>& layer, const const_batch_ref<Scalar>& X,
                         const const_batch_ref<Scalar>& dY, batch_ref<Scalar>* dX) {
    const char* name = "activation_layer";
    check_backward(name, layer.in_size(), layer.out_size(), X.rows(), X.cols(), dY.rows(), dY.cols());
    check_dx(name, dX, layer.in_size(), X.cols());
    if (dX == nullptr) return;
    const activation a = layer.kind();
    for (index_t e = 0; e < X.cols(); ++e)
        for (index_t r = 0; r < X.rows(); ++r) (*dX)(r, e) = dY(r, e) * activation_derivative(a, X(r, e));
}

// ---- tree_linear ---------------------------------------------------------------------------------

template <class Scalar, int In, int Out, int Depth, class Policy>
void check_tree_linear(const tree_linear<Scalar, In, Out, Depth, Policy>& layer, const tree_linear_gradient<Scalar>& grad) {
    treegate::detail::check_shape(grad.in_size() == layer.in_size() && grad.out_size() == layer.out_size() &&
                                      grad.block_count() == layer.block_count() && grad.mode() == layer.mode() &&
                                      grad.has_bias() == layer.has_bias(),
                                  "tree_linear backward: the gradient container does not match the layer");
}

// Same grouping and walk as tree_linear's forward (exec::for_each_group): one stable sort by leaf
// code, after which every node at every level owns one contiguous range. Per visited block:
// dW += dY_g X_g^T, dc += sum dY_g, dX_g += W^T dY_g. `ws.codes` holds the routes.
template <class Scalar, int In, int Out, int Depth, class Policy>
void tree_linear_grouped(const tree_linear<Scalar, In, Out, Depth, Policy>& layer, const const_batch_ref<Scalar>& X,
                         const const_batch_ref<Scalar>& dY, tree_linear_gradient<Scalar>& grad, batch_ref<Scalar>* dX,
                         backward_workspace<Scalar>& ws) {
    const index_t n = X.cols(), in = layer.in_size(), out = layer.out_size();
    ws.leaves.build(ws.codes.data(), n, layer.depth());
    const index_t* order = ws.leaves.order();
    workspace<Scalar>::ensure(ws.x, in, n);
    workspace<Scalar>::ensure(ws.dy, out, n);
    for (index_t k = 0; k < n; ++k) {
        ws.x.col(k) = X.col(order[k]);
        ws.dy.col(k) = dY.col(order[k]);
    }
    if (dX != nullptr) {
        workspace<Scalar>::ensure(ws.dx, in, n);
        ws.dx.setZero();
    }
    exec::for_each_group(ws.leaves, layer.mode() == tree_mode::path_sum, [&](index_t blk, group_range r) {
        grad.mark(blk);
        const auto Xg = ws.x.middleCols(r.begin, r.size());
        const auto dYg = ws.dy.middleCols(r.begin, r.size());
        grad.weight(blk).noalias() += dYg * Xg.transpose();
        if (layer.has_bias()) grad.bias(blk) += dYg.rowwise().sum();
        if (dX != nullptr) ws.dx.middleCols(r.begin, r.size()).noalias() += layer.weight(blk).transpose() * dYg;
    });
    if (dX != nullptr)
        for (index_t k = 0; k < n; ++k) dX->col(order[k]) = ws.dx.col(k);
}

template <class Scalar, int In, int Out, int Depth, class Policy>
void tree_linear_backward(const tree_linear<Scalar, In, Out, Depth, Policy>& layer, const const_batch_ref<Scalar>& X,
                          const const_batch_ref<Scalar>& dY, tree_linear_gradient<Scalar>& grad, batch_ref<Scalar>* dX,
                          backward_workspace<Scalar>& ws) {
    const char* name = "tree_linear";
    check_backward(name, layer.in_size(), layer.out_size(), X.rows(), X.cols(), dY.rows(), dY.cols());
    check_dx(name, dX, layer.in_size(), X.cols());
    check_tree_linear(layer, grad);
    exec::route_batch(name, "backward", layer.gates(), layer.depth(), X, ws.codes);
    if (X.cols() == 0) return;
    tree_linear_grouped(layer, X, dY, grad, dX, ws);
}

template <class Scalar, int In, int Out, int Depth, class Policy>
void tree_linear_backward(const tree_linear<Scalar, In, Out, Depth, Policy>& layer, const const_batch_ref<Scalar>& X,
                          const const_batch_ref<Scalar>& G, const const_batch_ref<Scalar>& dY,
                          tree_linear_gradient<Scalar>& grad, batch_ref<Scalar>* dX, backward_workspace<Scalar>& ws) {
    const char* name = "tree_linear";
    check_backward(name, layer.in_size(), layer.out_size(), X.rows(), X.cols(), dY.rows(), dY.cols());
    check_dx(name, dX, layer.in_size(), X.cols());
    check_tree_linear(layer, grad);
    exec::route_batch(name, "backward", layer.gates(), layer.depth(), X, G, ws.codes);
    if (X.cols() == 0) return;
    tree_linear_grouped(layer, X, dY, grad, dX, ws);
}

// ---- sliced_tree_linear -------------------------------------------------------------------------

// Tree t sees input rows [t si, (t+1) si) and its output gradient (all of dY when the trees are
// summed, rows [t so, (t+1) so) when concatenated); it owns the same rows of dX.
template <class Scalar, int SliceIn, int SliceOut, int Depth, class Policy>
void sliced_tree_linear_backward(const sliced_tree_linear<Scalar, SliceIn, SliceOut, Depth, Policy>& layer,
                                  const const_batch_ref<Scalar>& X, const const_batch_ref<Scalar>& dY,
                                  sliced_tree_linear_gradient<Scalar>& grad, batch_ref<Scalar>* dX,
                                  backward_workspace<Scalar>& ws) {
    const char* name = "sliced_tree_linear";
    check_backward(name, layer.in_size(), layer.out_size(), X.rows(), X.cols(), dY.rows(), dY.cols());
    check_dx(name, dX, layer.in_size(), X.cols());
    treegate::detail::check_shape(grad.tree_count() == layer.tree_count(), name, " backward: the gradient container has ",
                                  grad.tree_count(), " trees, the layer ", layer.tree_count());
    const index_t si = layer.slice_in(), so = layer.slice_out();
    const bool sum = layer.combine() == slice_combine::sum;
    for (index_t t = 0; t < layer.tree_count(); ++t) {
        const const_batch_ref<Scalar> Xt(X.middleRows(t * si, si));
        const const_batch_ref<Scalar> dYt = sum ? const_batch_ref<Scalar>(dY) : const_batch_ref<Scalar>(dY.middleRows(t * so, so));
        if (dX != nullptr) {
            batch_ref<Scalar> dXt(dX->middleRows(t * si, si));
            tree_linear_backward(layer.tree(t), Xt, dYt, grad.tree(t), &dXt, ws);
        } else {
            tree_linear_backward<Scalar>(layer.tree(t), Xt, dYt, grad.tree(t), nullptr, ws);
        }
    }
}

// ---- tree_feedforward ----------------------------------------------------------------------------

// Backward through unit u of tree t for the examples at positions [r.begin, r.end) of `order`
// (train/ff_unit_backward.hpp, the sharded layer's step too).
template <class Scalar, int In, int Out, int Width, int Depth, class Policy>
void ff_unit_backward(const tree_feedforward<Scalar, In, Out, Width, Depth, Policy>& layer, index_t t, index_t u,
                      group_range r, const index_t* order, const const_batch_ref<Scalar>& X,
                      const const_batch_ref<Scalar>& dY, tree_feedforward_gradient<Scalar>& grad, batch_ref<Scalar>* dX,
                      backward_workspace<Scalar>& ws, index_t leaf_bias_tensor) {
    grad.mark(t, u);
    const exec::ff_unit<Scalar> unit{layer.hidden_weight(t, u).data(), layer.hidden_bias(t, u).data(),
                                     layer.output_weight(t, u).data(), nullptr, layer.in_size(), layer.out_size(),
                                     layer.width(), layer.activation_kind(), layer.tie()};
    const ff_unit_grad<Scalar> g{grad.hidden_weight(t, u).data(), grad.hidden_bias(t, u).data(),
                                 grad.output_weight(t, u).data(),
                                 leaf_bias_tensor >= 0 ? grad.block(leaf_bias_tensor, t * layer.unit_count() + u) : nullptr};
    const ff_unit_scratch<Scalar> s{ws.x.data(), ws.dy.data(), ws.pre.data(), ws.h.data(), ws.dpre.data(), ws.dx.data()};
    ff_unit_backward<Policy>(unit, g, r, order, ws.bits.data(), X, dY, dX, s);
}

template <class Scalar, int In, int Out, int Width, int Depth, class Policy>
void tree_feedforward_backward(const tree_feedforward<Scalar, In, Out, Width, Depth, Policy>& layer,
                               const const_batch_ref<Scalar>& X, const const_batch_ref<Scalar>& dY,
                               tree_feedforward_gradient<Scalar>& grad, batch_ref<Scalar>* dX,
                               backward_workspace<Scalar>& ws) {
    const char* name = "tree_feedforward";
    check_backward(name, layer.in_size(), layer.out_size(), X.rows(), X.cols(), dY.rows(), dY.cols());
    check_dx(name, dX, layer.in_size(), X.cols());
    treegate::detail::check_shape(grad.in_size() == layer.in_size() && grad.out_size() == layer.out_size() &&
                                      grad.width() == layer.width() && grad.tree_count() == layer.tree_count() &&
                                      grad.unit_count() == layer.unit_count() && grad.mode() == layer.mode() &&
                                      grad.has_output_bias() == layer.has_output_bias() &&
                                      (grad.find("leaf_bias") >= 0) == layer.has_leaf_bias(),
                                  name, " backward: the gradient container does not match the layer");
    const index_t n = X.cols(), in = layer.in_size();
    const int depth = layer.depth();
    if (n == 0) return;
    if (dX != nullptr) dX->setZero();
    if (layer.has_output_bias()) {
        grad.output_bias() += dY.rowwise().sum();
        grad.mark_output_bias();
    }
    workspace<Scalar>::ensure(ws.x, in, n);
    workspace<Scalar>::ensure(ws.dy, layer.out_size(), n);
    workspace<Scalar>::ensure(ws.dx, in, n);
    workspace<Scalar>::ensure(ws.pre, layer.width(), n);
    workspace<Scalar>::ensure(ws.h, layer.width(), n);
    workspace<Scalar>::ensure(ws.dpre, layer.width(), n);
    const bool path_sum = layer.mode() == tree_mode::path_sum;
    // Part of the unit's group (layers/parameters.hpp), so mark(t, u) marks it too.
    const index_t leaf_bias = layer.has_leaf_bias() ? grad.find("leaf_bias") : -1;
    // The forward's level driver, so the backward visits the same groups in the same order.
    for (index_t t = 0; t < layer.tree_count(); ++t) {
        const auto visit = [&](int level, index_t k, group_range r, const index_t* order, unsigned char* bits) {
            const index_t node = tree::level_begin(level) + k;
            if (path_sum || level == depth) {
                ff_unit_backward(layer, t, path_sum ? node : k, r, order, X, dY, grad, dX, ws, leaf_bias);
            } else {
                const Scalar* R = layer.router_weight(t, node).data();
                const Scalar s = layer.router_bias(t, node);
                for (index_t p = r.begin; p < r.end; ++p)
                    bits[p] = static_cast<unsigned char>(
                        hyperplane_bit<Policy>(in, R, s, X.data() + order[p] * X.outerStride(), layer.tie()));
            }
        };
        exec::walk_levels(ws.levels, ws.bits, n, depth, visit);
    }
}

}  // namespace detail

// ---- public entry points: gradients accumulate into `grad`; dX is overwritten ------------------
//
// X is the batch the layer saw in the forward pass (features x examples) and dY = dL/dY. Every
// call adds its parameter gradients to `grad` (call grad.zero() between batches) and, when given,
// writes dL/dX into dX, which must not overlap X or dY. Without dX only the parameter gradients
// are computed. Shapes are checked (shape_error); an externally gated tree_linear needs its G.

template <class Scalar, int In, int Out, class Policy>
void backward(const dense<Scalar, In, Out, Policy>& layer, const detail::const_batch_ref<Scalar>& X,
              const detail::const_batch_ref<Scalar>& dY, dense_gradient<Scalar>& grad, detail::batch_ref<Scalar> dX,
              backward_workspace<Scalar>& /*ws*/) {
    detail::dense_backward(layer, X, dY, grad, &dX);
}
template <class Scalar, int In, int Out, class Policy>
void backward(const dense<Scalar, In, Out, Policy>& layer, const detail::const_batch_ref<Scalar>& X,
              const detail::const_batch_ref<Scalar>& dY, dense_gradient<Scalar>& grad, backward_workspace<Scalar>& /*ws*/) {
    detail::dense_backward<Scalar>(layer, X, dY, grad, nullptr);
}

/// X is the activation's input (the pre-activations).
template <class Scalar, int Size>
void backward(const activation_layer<Scalar, Size>& layer, const detail::const_batch_ref<Scalar>& X,
              const detail::const_batch_ref<Scalar>& dY, no_gradient& /*grad*/, detail::batch_ref<Scalar> dX,
              backward_workspace<Scalar>& /*ws*/) {
    detail::activation_backward(layer, X, dY, &dX);
}
template <class Scalar, int Size>
void backward(const activation_layer<Scalar, Size>& layer, const detail::const_batch_ref<Scalar>& X,
              const detail::const_batch_ref<Scalar>& dY, no_gradient& /*grad*/, backward_workspace<Scalar>& /*ws*/) {
    detail::activation_backward<Scalar>(layer, X, dY, nullptr);
}

/// Gated by input entries (or depth 0). Gating entries of dX get only their ordinary W^T dY part.
template <class Scalar, int In, int Out, int Depth, class Policy>
void backward(const tree_linear<Scalar, In, Out, Depth, Policy>& layer, const detail::const_batch_ref<Scalar>& X,
              const detail::const_batch_ref<Scalar>& dY, tree_linear_gradient<Scalar>& grad,
              detail::batch_ref<Scalar> dX, backward_workspace<Scalar>& ws) {
    detail::tree_linear_backward(layer, X, dY, grad, &dX, ws);
}
template <class Scalar, int In, int Out, int Depth, class Policy>
void backward(const tree_linear<Scalar, In, Out, Depth, Policy>& layer, const detail::const_batch_ref<Scalar>& X,
              const detail::const_batch_ref<Scalar>& dY, tree_linear_gradient<Scalar>& grad,
              backward_workspace<Scalar>& ws) {
    detail::tree_linear_backward<Scalar>(layer, X, dY, grad, nullptr, ws);
}

/// Gated externally by G (D x examples), which gets no gradient.
template <class Scalar, int In, int Out, int Depth, class Policy>
void backward(const tree_linear<Scalar, In, Out, Depth, Policy>& layer, const detail::const_batch_ref<Scalar>& X,
              const detail::const_batch_ref<Scalar>& G, const detail::const_batch_ref<Scalar>& dY,
              tree_linear_gradient<Scalar>& grad, detail::batch_ref<Scalar> dX, backward_workspace<Scalar>& ws) {
    detail::tree_linear_backward(layer, X, G, dY, grad, &dX, ws);
}
template <class Scalar, int In, int Out, int Depth, class Policy>
void backward(const tree_linear<Scalar, In, Out, Depth, Policy>& layer, const detail::const_batch_ref<Scalar>& X,
              const detail::const_batch_ref<Scalar>& G, const detail::const_batch_ref<Scalar>& dY,
              tree_linear_gradient<Scalar>& grad, backward_workspace<Scalar>& ws) {
    detail::tree_linear_backward<Scalar>(layer, X, G, dY, grad, nullptr, ws);
}

/// Blocked trees: each tree's backward on its input slice.
template <class Scalar, int SliceIn, int SliceOut, int Depth, class Policy>
void backward(const sliced_tree_linear<Scalar, SliceIn, SliceOut, Depth, Policy>& layer,
              const detail::const_batch_ref<Scalar>& X, const detail::const_batch_ref<Scalar>& dY,
              sliced_tree_linear_gradient<Scalar>& grad, detail::batch_ref<Scalar> dX, backward_workspace<Scalar>& ws) {
    detail::sliced_tree_linear_backward(layer, X, dY, grad, &dX, ws);
}
template <class Scalar, int SliceIn, int SliceOut, int Depth, class Policy>
void backward(const sliced_tree_linear<Scalar, SliceIn, SliceOut, Depth, Policy>& layer,
              const detail::const_batch_ref<Scalar>& X, const detail::const_batch_ref<Scalar>& dY,
              sliced_tree_linear_gradient<Scalar>& grad, backward_workspace<Scalar>& ws) {
    detail::sliced_tree_linear_backward<Scalar>(layer, X, dY, grad, nullptr, ws);
}

/// Route bits (node pre-activations, leaf_only routers) are constants: routers get no gradient
/// (their entries stay zero and unvisited; train/soft_routing.hpp trains them).
template <class Scalar, int In, int Out, int Width, int Depth, class Policy>
void backward(const tree_feedforward<Scalar, In, Out, Width, Depth, Policy>& layer,
              const detail::const_batch_ref<Scalar>& X, const detail::const_batch_ref<Scalar>& dY,
              tree_feedforward_gradient<Scalar>& grad, detail::batch_ref<Scalar> dX, backward_workspace<Scalar>& ws) {
    detail::tree_feedforward_backward(layer, X, dY, grad, &dX, ws);
}
template <class Scalar, int In, int Out, int Width, int Depth, class Policy>
void backward(const tree_feedforward<Scalar, In, Out, Width, Depth, Policy>& layer,
              const detail::const_batch_ref<Scalar>& X, const detail::const_batch_ref<Scalar>& dY,
              tree_feedforward_gradient<Scalar>& grad, backward_workspace<Scalar>& ws) {
    detail::tree_feedforward_backward<Scalar>(layer, X, dY, grad, nullptr, ws);
}

// ---- sequential ----------------------------------------------------------------------------------

/// Scratch for a sequential backward: the layers' workspace and two gradient buffers used in turn.
template <class Scalar>
struct sequential_backward_workspace {
    backward_workspace<Scalar> inner;
    std::array<matrix<Scalar>, 2> delta;
};

namespace detail {

template <std::size_t I, class Model, class Grad, class Scalar>
void sequential_backward_from(const Model& model, const const_batch_ref<Scalar>& X,
                              const typename Model::workspace_type& fws, const const_batch_ref<Scalar>& dY, Grad& grad,
                              batch_ref<Scalar>* dX, sequential_backward_workspace<Scalar>& ws) {
    const auto& l = model.template layer<I>();
    auto& g = grad.template layer<I>();
    const index_t n = X.cols();
    // Layer I reads dL/d(its output) from the buffer layer I + 1 wrote (or dY for the last layer)
    // and writes dL/d(its input) into the other buffer, so reads never alias writes.
    const matrix<Scalar>* upstream = &ws.delta[(I + 1) % 2];
    if constexpr (I + 1 == Model::size) upstream = nullptr;
    const const_batch_ref<Scalar> dOut = upstream != nullptr ? const_batch_ref<Scalar>(*upstream) : dY;
    if constexpr (I == 0) {
        if (dX != nullptr)
            backward(l, X, dOut, g, *dX, ws.inner);
        else
            backward(l, X, dOut, g, ws.inner);
    } else {
        const matrix<Scalar>& in = fws.acts[I - 1];
        treegate::detail::check_shape(in.rows() == l.in_size() && in.cols() == n, Model::name, " backward: layer ", I,
                                      " input is ", in.rows(), " x ", in.cols(), ", expected ", l.in_size(), " x ", n,
                                      " (run forward_batch with the same workspace first)");
        matrix<Scalar>& down = ws.delta[I % 2];
        workspace<Scalar>::ensure(down, l.in_size(), n);
        backward(l, const_batch_ref<Scalar>(in), dOut, g, batch_ref<Scalar>(down), ws.inner);
        sequential_backward_from<I - 1>(model, X, fws, dY, grad, dX, ws);
    }
}

}  // namespace detail

/// Backward through a sequential model. `fws` must hold the activations of the forward pass
/// model.forward_batch(X, Y, fws) on this same X (sequential keeps them in its workspace).
template <class Scalar, class... Layers>
void backward(const sequential<Layers...>& model, const detail::const_batch_ref<Scalar>& X,
              const typename sequential<Layers...>::workspace_type& fws, const detail::const_batch_ref<Scalar>& dY,
              sequential_gradient<Layers...>& grad, detail::batch_ref<Scalar> dX,
              sequential_backward_workspace<Scalar>& ws) {
    treegate::detail::check_shape(dX.rows() == model.in_size() && dX.cols() == X.cols(),
                                  "sequential backward: input gradient is ", dX.rows(), " x ", dX.cols(), ", expected ",
                                  model.in_size(), " x ", X.cols());
    detail::sequential_backward_from<sizeof...(Layers) - 1>(model, X, fws, dY, grad, &dX, ws);
}
template <class Scalar, class... Layers>
void backward(const sequential<Layers...>& model, const detail::const_batch_ref<Scalar>& X,
              const typename sequential<Layers...>::workspace_type& fws, const detail::const_batch_ref<Scalar>& dY,
              sequential_gradient<Layers...>& grad, sequential_backward_workspace<Scalar>& ws) {
    detail::sequential_backward_from<sizeof...(Layers) - 1, sequential<Layers...>, sequential_gradient<Layers...>, Scalar>(
        model, X, fws, dY, grad, nullptr, ws);
}

}  // namespace treegate::train

#endif
