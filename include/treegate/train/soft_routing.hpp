// treegate/train/soft_routing.hpp — soft-routing training mode of tree_feedforward: every route
// is a probability, so routers learn by gradient; sits beside train/backward.hpp and fills the same gradients.
// The formulas, options and single-layer passes are in train/soft_passes.hpp; here the entry
// points, for one layer and for sequential models.
#ifndef TREEGATE_TRAIN_SOFT_ROUTING_HPP
#define TREEGATE_TRAIN_SOFT_ROUTING_HPP

#include "../layers/sequential.hpp"
#include "../layers/tree_feedforward.hpp"
#include "../parallel/executor.hpp"
#include "backward.hpp"
#include "batch_ref.hpp"
#include "gradients.hpp"
#include "soft_passes.hpp"

#include <cstddef>
#include <type_traits>

namespace treegate::train {

/// Scratch of soft passes through a sequential model: the hard stages' backward workspace and
/// gradient buffers, and the soft workspace of its tree_feedforward stages.
template <class Scalar>
struct soft_sequential_workspace {
    sequential_backward_workspace<Scalar> seq;
    soft_workspace<Scalar> soft;
};

namespace detail {

template <class L>
struct is_tree_feedforward : std::false_type {};
template <class Scalar, int In, int Out, int Width, int Depth, class Policy>
struct is_tree_feedforward<tree_feedforward<Scalar, In, Out, Width, Depth, Policy>> : std::true_type {};

// ---- sequential: tree_feedforward stages soft, the others as usual -------------------------------

template <class Layer, class Scalar, class Executor>
Scalar soft_stage_forward(const Layer& l, const const_batch_ref<Scalar>& X, batch_ref<Scalar> Y, workspace<Scalar>& inner,
                          soft_workspace<Scalar>& ws, const soft_routing_options& opt, Executor& ex) {
    if constexpr (is_tree_feedforward<Layer>::value) {
        return soft_forward_impl(l, X, Y, ws, opt, ex);
    } else {
        l.forward_batch(X, Y, inner, ex);
        return Scalar(0);
    }
}

template <std::size_t I, class Model, class Scalar, class Executor>
Scalar soft_sequential_forward(const Model& model, const const_batch_ref<Scalar>& X, batch_ref<Scalar> Y,
                               typename Model::workspace_type& fws, soft_workspace<Scalar>& ws,
                               const soft_routing_options& opt, Executor& ex) {
    const auto& l = model.template layer<I>();
    if constexpr (I + 1 == Model::size) {
        return soft_stage_forward(l, X, Y, fws.inner, ws, opt, ex);
    } else {
        matrix<Scalar>& h = fws.acts[I];
        workspace<Scalar>::ensure(h, l.out_size(), X.cols());
        const Scalar penalty = soft_stage_forward(l, X, batch_ref<Scalar>(h), fws.inner, ws, opt, ex);
        return penalty + soft_sequential_forward<I + 1>(model, const_batch_ref<Scalar>(h), Y, fws, ws, opt, ex);
    }
}

// The other stages' backward passes run on the calling thread (train::backward takes no executor).
template <class Layer, class Grad, class Scalar, class Executor>
Scalar soft_stage_backward(const Layer& l, const const_batch_ref<Scalar>& X, const const_batch_ref<Scalar>& dY, Grad& g,
                           batch_ref<Scalar>* dX, soft_sequential_workspace<Scalar>& ws, const soft_routing_options& opt,
                           Executor& ex) {
    if constexpr (is_tree_feedforward<Layer>::value) {
        return soft_backward_impl(l, X, dY, g, dX, ws.soft, opt, ex);
    } else {
        if (dX != nullptr)
            backward(l, X, dY, g, *dX, ws.seq.inner);
        else
            backward(l, X, dY, g, ws.seq.inner);
        return Scalar(0);
    }
}

// As sequential_backward_from (backward.hpp), with soft tree_feedforward stages.
template <std::size_t I, class Model, class Grad, class Scalar, class Executor>
Scalar soft_sequential_backward(const Model& model, const const_batch_ref<Scalar>& X,
                                const typename Model::workspace_type& fws, const const_batch_ref<Scalar>& dY, Grad& grad,
                                batch_ref<Scalar>* dX, soft_sequential_workspace<Scalar>& ws,
                                const soft_routing_options& opt, Executor& ex) {
    const auto& l = model.template layer<I>();
    auto& g = grad.template layer<I>();
    const index_t n = X.cols();
    const matrix<Scalar>* upstream = &ws.seq.delta[(I + 1) % 2];
    if constexpr (I + 1 == Model::size) upstream = nullptr;
    const const_batch_ref<Scalar> dOut = upstream != nullptr ? const_batch_ref<Scalar>(*upstream) : dY;
    if constexpr (I == 0) {
        return soft_stage_backward(l, X, dOut, g, dX, ws, opt, ex);
    } else {
        const matrix<Scalar>& in = fws.acts[I - 1];
        treegate::detail::check_shape(in.rows() == l.in_size() && in.cols() == n, Model::name, " soft_backward: layer ", I,
                                      " input is ", in.rows(), " x ", in.cols(), ", expected ", l.in_size(), " x ", n,
                                      " (run soft_forward with the same workspace first)");
        matrix<Scalar>& down = ws.seq.delta[I % 2];
        workspace<Scalar>::ensure(down, l.in_size(), n);
        batch_ref<Scalar> down_ref(down);
        const Scalar penalty = soft_stage_backward(l, const_batch_ref<Scalar>(in), dOut, g, &down_ref, ws, opt, ex);
        return penalty + soft_sequential_backward<I - 1>(model, X, fws, dY, grad, dX, ws, opt, ex);
    }
}

}  // namespace detail

// ---- public entry points -------------------------------------------------------------------------
//
// soft_forward writes the soft output into Y and returns the hardening penalty (lambda times the
// mean decision entropy; add it to the loss). soft_backward takes X, the batch soft_forward saw,
// and dY = dL/dY of the data loss; it recomputes the routes, adds the gradients of the data loss
// and of the penalty to `grad` for every parameter (routers included) and marks every unit and
// router visited, writes dL/dX into dX when given (dX must not overlap X or dY), and returns the
// penalty. Evaluate the trained model with the ordinary (hard) forward / forward_batch.

// Every entry point takes an optional executor last (parallel::serial by default, or a
// parallel::thread_pool): the result is bit-identical for any executor and thread count.

template <class Scalar, int In, int Out, int Width, int Depth, class Policy, class Executor = parallel::serial>
Scalar soft_forward(const tree_feedforward<Scalar, In, Out, Width, Depth, Policy>& layer,
                    const detail::const_batch_ref<Scalar>& X, detail::batch_ref<Scalar> Y, soft_workspace<Scalar>& ws,
                    const soft_routing_options& opt = {}, Executor&& ex = Executor{}) {
    return detail::soft_forward_impl(layer, X, Y, ws, opt, ex);
}

template <class Scalar, int In, int Out, int Width, int Depth, class Policy, class Executor = parallel::serial>
Scalar soft_backward(const tree_feedforward<Scalar, In, Out, Width, Depth, Policy>& layer,
                     const detail::const_batch_ref<Scalar>& X, const detail::const_batch_ref<Scalar>& dY,
                     tree_feedforward_gradient<Scalar>& grad, detail::batch_ref<Scalar> dX, soft_workspace<Scalar>& ws,
                     const soft_routing_options& opt = {}, Executor&& ex = Executor{}) {
    return detail::soft_backward_impl(layer, X, dY, grad, &dX, ws, opt, ex);
}
template <class Scalar, int In, int Out, int Width, int Depth, class Policy, class Executor = parallel::serial>
Scalar soft_backward(const tree_feedforward<Scalar, In, Out, Width, Depth, Policy>& layer,
                     const detail::const_batch_ref<Scalar>& X, const detail::const_batch_ref<Scalar>& dY,
                     tree_feedforward_gradient<Scalar>& grad, soft_workspace<Scalar>& ws,
                     const soft_routing_options& opt = {}, Executor&& ex = Executor{}) {
    return detail::soft_backward_impl<Scalar>(layer, X, dY, grad, nullptr, ws, opt, ex);
}

/// A sequential model with its tree_feedforward stages soft and every other stage as in
/// model.forward_batch; the activations go to `fws` for soft_backward. Returns the sum of the
/// stages' penalties (ws.soft.mean_entropy is the last tree_feedforward stage's).
template <class Scalar, class... Layers, class Executor = parallel::serial>
Scalar soft_forward(const sequential<Layers...>& model, const detail::const_batch_ref<Scalar>& X,
                    detail::batch_ref<Scalar> Y, typename sequential<Layers...>::workspace_type& fws,
                    soft_sequential_workspace<Scalar>& ws, const soft_routing_options& opt = {},
                    Executor&& ex = Executor{}) {
    treegate::detail::check_batch("sequential soft_forward", model.in_size(), X.rows(), X.cols(), model.out_size(),
                                  Y.rows(), Y.cols());
    return detail::soft_sequential_forward<0, sequential<Layers...>, Scalar>(model, X, Y, fws, ws.soft, opt, ex);
}

/// Backward of soft_forward(model, X, Y, fws, ws, opt): tree_feedforward stages as soft_backward,
/// the others as train::backward. Returns the sum of the stages' penalties.
template <class Scalar, class... Layers, class Executor = parallel::serial>
Scalar soft_backward(const sequential<Layers...>& model, const detail::const_batch_ref<Scalar>& X,
                     const typename sequential<Layers...>::workspace_type& fws, const detail::const_batch_ref<Scalar>& dY,
                     sequential_gradient<Layers...>& grad, detail::batch_ref<Scalar> dX,
                     soft_sequential_workspace<Scalar>& ws, const soft_routing_options& opt = {},
                     Executor&& ex = Executor{}) {
    treegate::detail::check_shape(dX.rows() == model.in_size() && dX.cols() == X.cols(),
                                  "sequential soft_backward: input gradient is ", dX.rows(), " x ", dX.cols(),
                                  ", expected ", model.in_size(), " x ", X.cols());
    return detail::soft_sequential_backward<sizeof...(Layers) - 1>(model, X, fws, dY, grad, &dX, ws, opt, ex);
}
template <class Scalar, class... Layers, class Executor = parallel::serial>
Scalar soft_backward(const sequential<Layers...>& model, const detail::const_batch_ref<Scalar>& X,
                     const typename sequential<Layers...>::workspace_type& fws, const detail::const_batch_ref<Scalar>& dY,
                     sequential_gradient<Layers...>& grad, soft_sequential_workspace<Scalar>& ws,
                     const soft_routing_options& opt = {}, Executor&& ex = Executor{}) {
    return detail::soft_sequential_backward<sizeof...(Layers) - 1, sequential<Layers...>, sequential_gradient<Layers...>,
                                            Scalar>(model, X, fws, dY, grad, nullptr, ws, opt, ex);
}

}  // namespace treegate::train

#endif
