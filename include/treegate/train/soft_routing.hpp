// treegate/train/soft_routing.hpp — soft-routing training mode of tree_feedforward: every route
// is a probability, so routers learn by gradient; sits beside train/backward.hpp and fills the same gradients.
#ifndef TREEGATE_TRAIN_SOFT_ROUTING_HPP
#define TREEGATE_TRAIN_SOFT_ROUTING_HPP

#include "../activation.hpp"
#include "../error.hpp"
#include "../layers/layer_common.hpp"
#include "../layers/sequential.hpp"
#include "../layers/tree_feedforward.hpp"
#include "../parallel/executor.hpp"
#include "../tree.hpp"
#include "../workspace.hpp"
#include "backward.hpp"
#include "batch_ref.hpp"
#include "gradients.hpp"

#include <cmath>
#include <cstddef>
#include <limits>
#include <type_traits>
#include <vector>

namespace treegate::train {

/// Soft routing of a tree_feedforward (training only; evaluate with the layer's hard forward).
///
/// Internal node i of a tree sends an example right with probability p_i = sigmoid(z_i / T) and
/// left with q_i = 1 - p_i, where z_i is the router pre-activation r.x + s (leaf_only) or the
/// node's first pre-activation (U x + a)_0 (path_sum): the quantities whose sign is the hard
/// route bit. The probability P(i) of reaching a node is the product along its path (P(root) = 1)
/// and the output mixes every path:
///
///     leaf_only:  y = c + sum_trees sum_leaves  P(leaf) V act(U x + a)
///     path_sum:  y = c + sum_trees sum_nodes   P(node) V act(U x + a)
///
/// With decisive routers (|z| / T large) every P is 0 or 1 and y is the hard forward's output.
///
/// `temperature` T >= 0 (finite) sharpens the sigmoid; T = 0 is the hard limit: p = 1 exactly
/// when z > 0 (the hard route bit, so NaN, -0 and +0 go left), no router gradient and no entropy.
/// At T = 0 the output equals the hard forward's except where a z lies within rounding of 0
/// (z is recomputed here with Eigen, the hard path uses the layer's policy).
///
/// `hardening` lambda >= 0 adds to the loss the penalty
///
///     lambda * (1 / (n K D)) sum_examples sum_trees sum_internal_nodes P(i) H(p_i),
///     H(p) = -p log p - (1 - p) log(1 - p)  (nats),
///
/// the mean decision entropy along the examples' soft paths: the P(i) of one level sum to 1, so
/// the bracket lies in [0, log 2]. Weighting by P(i) asks for decisiveness only where examples
/// actually go (a node that no example reaches has no decision the hard model would take), and
/// keeps the penalty's scale independent of the depth. D = 0 has no decision: the penalty is 0.
///
/// Cost: the soft forward and backward evaluate every node of every tree, 2^(D+1) - 1 MLPs
/// (path_sum) or 2^D MLPs and 2^D - 1 routers (leaf_only) per example, against D + 1 for the hard
/// forward. It is a training mode for modest depths (a few levels, or as a warm start before
/// hard training), not a serving path.
struct soft_routing_options {
    double temperature = 1.0;
    double hardening = 0.0;
};

/// Scratch of one worker of the soft passes: width x examples hidden buffers.
template <class Scalar>
struct soft_worker_scratch {
    matrix<Scalar> pre, h, w;
};

/// Scratch of the soft passes: per tree, examples x nodes matrices of router pre-activations,
/// reach probabilities and their gradients, every unit's hidden gradient (for dX), and one
/// soft_worker_scratch per executor worker. Grows to the largest batch, depth and worker count
/// seen, then is reused. One per concurrent call.
template <class Scalar>
struct soft_workspace {
    matrix<Scalar> z, reach, greach, dz;  // examples x internal nodes / examples x nodes
    matrix<Scalar> hidden_grad;           // (units * width) x examples, kept only when dX is wanted
    std::vector<soft_worker_scratch<Scalar>> workers;
    /// Mean decision entropy (the bracket above, before lambda) of the most recent soft call,
    /// a measure of how far from hard the routing is: log 2 = 0.693 undecided, 0 hard.
    double mean_entropy = 0.0;

    void reserve_workers(int count) {
        if (static_cast<int>(workers.size()) < count) workers.resize(static_cast<std::size_t>(count));
    }
    soft_worker_scratch<Scalar>& worker(int w) noexcept { return workers[static_cast<std::size_t>(w)]; }
};

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

inline void check_soft_options(const soft_routing_options& opt) {
    treegate::detail::check_config(std::isfinite(opt.temperature) && opt.temperature >= 0.0,
                                   "tree_feedforward soft routing: temperature must be finite and >= 0, got ",
                                   opt.temperature);
    treegate::detail::check_config(std::isfinite(opt.hardening) && opt.hardening >= 0.0,
                                   "tree_feedforward soft routing: hardening weight must be finite and >= 0, got ",
                                   opt.hardening);
}

// The soft mixture knows no per-leaf output bias (layers/tree_feedforward.hpp); refused, not ignored.
template <class Layer>
void check_soft_layer(const Layer& layer) {
    treegate::detail::check_config(!layer.has_leaf_bias(),
                                   "tree_feedforward soft routing: leaf biases are not supported (hard backward only)");
}

/// One soft decision at pre-activation z: p, q = 1 - p, dp/dz, H(p) and dH/dz.
template <class Scalar>
struct soft_decision {
    Scalar p, q, dp, entropy, dentropy;
};

template <class Scalar>
soft_decision<Scalar> decide(Scalar z, Scalar T) noexcept {
    using std::abs;
    using std::exp;
    using std::log1p;
    if (T == Scalar(0)) {
        const Scalar p = tree::gate_bit(z) ? Scalar(1) : Scalar(0);
        return {p, Scalar(1) - p, Scalar(0), Scalar(0), Scalar(0)};
    }
    const Scalar u = z / T;
    // p and q each from exp(-|u|) <= 1: neither overflows, and the smaller one keeps its
    // relative accuracy instead of being 1 - (something close to 1).
    const Scalar e = exp(-abs(u));
    const Scalar big = Scalar(1) / (Scalar(1) + e), small = e / (Scalar(1) + e);
    const Scalar p = u >= Scalar(0) ? big : small, q = u >= Scalar(0) ? small : big;
    const Scalar pq = p * q;
    if (!(pq > Scalar(0))) return {p, q, Scalar(0), Scalar(0), Scalar(0)};  // saturated (or NaN)
    // log(1/p) = softplus(-u), log(1/q) = softplus(u); dH/dp = log(q/p) = -u.
    const Scalar sp_abs = log1p(e);  // softplus(-|u|)
    const Scalar sp_pos = u > Scalar(0) ? u + sp_abs : sp_abs, sp_neg = u > Scalar(0) ? sp_abs : sp_abs - u;
    return {p, q, pq / T, p * sp_neg + q * sp_pos, -u * pq / T};
}

template <class Scalar, int In, int Out, int Width, int Depth, class Policy>
void check_soft_gradient(const tree_feedforward<Scalar, In, Out, Width, Depth, Policy>& layer,
                         const tree_feedforward_gradient<Scalar>& grad) {
    treegate::detail::check_shape(grad.in_size() == layer.in_size() && grad.out_size() == layer.out_size() &&
                                      grad.width() == layer.width() && grad.tree_count() == layer.tree_count() &&
                                      grad.unit_count() == layer.unit_count() && grad.router_count() == layer.router_count() &&
                                      grad.mode() == layer.mode() && grad.has_output_bias() == layer.has_output_bias(),
                                  "tree_feedforward soft_backward: the gradient container (", grad.tree_count(), " trees of ",
                                  grad.unit_count(), " units, ", grad.in_size(), " -> ", grad.width(), " -> ",
                                  grad.out_size(), ") does not match the layer (", layer.tree_count(), " trees of ",
                                  layer.unit_count(), " units, ", layer.in_size(), " -> ", layer.width(), " -> ",
                                  layer.out_size(), ")");
}

// Examples per piece of the soft passes' column-parallel loops: a fixed split, so that results
// are bit-identical for any executor and thread count.
inline constexpr index_t soft_tile = 64;

// Tree t: ws.z(e, i) = z_i of example e for every internal node i (one piece per node), then
// ws.reach(e, i) = P(i) for every node (top down, on the calling thread). Returns sum over
// examples and internal nodes of P(i) H(p_i), in double.
template <class Scalar, int In, int Out, int Width, int Depth, class Policy, class Executor>
double soft_route(const tree_feedforward<Scalar, In, Out, Width, Depth, Policy>& layer, index_t t,
                  const const_batch_ref<Scalar>& X, Scalar T, soft_workspace<Scalar>& ws, Executor& ex) {
    const index_t n = X.cols(), internal = tree::internal_count(layer.depth());
    workspace<Scalar>::ensure(ws.z, n, internal);
    workspace<Scalar>::ensure(ws.reach, n, tree::node_count(layer.depth()));
    const bool leaf_only = layer.mode() == tree_mode::leaf_only;
    ex.run(internal, [&](index_t i, int) {
        if (leaf_only) {
            ws.z.col(i).noalias() = X.transpose() * layer.router_weight(t, i);
            ws.z.col(i).array() += layer.router_bias(t, i);
        } else {
            ws.z.col(i).noalias() = X.transpose() * layer.hidden_weight(t, i).row(0).transpose();
            ws.z.col(i).array() += layer.hidden_bias(t, i)(0);
        }
    });
    ws.reach.col(0).setOnes();
    double entropy = 0;
    for (index_t i = 0; i < internal; ++i) {  // heap order: a node's P is set before it is read
        for (index_t e = 0; e < n; ++e) {
            const soft_decision<Scalar> d = decide(ws.z(e, i), T);
            const Scalar r = ws.reach(e, i);
            ws.reach(e, tree::child(i, 1)) = r * d.p;
            ws.reach(e, tree::child(i, 0)) = r * d.q;
            entropy += static_cast<double>(r) * static_cast<double>(d.entropy);
        }
    }
    return entropy;
}

// s.pre = U X + a, s.h = act(s.pre) for unit u of tree t.
template <class Scalar, int In, int Out, int Width, int Depth, class Policy, class XType>
void soft_unit_hidden(const tree_feedforward<Scalar, In, Out, Width, Depth, Policy>& layer, index_t t, index_t u,
                      const XType& X, soft_worker_scratch<Scalar>& s) {
    const index_t n = X.cols(), width = layer.width();
    workspace<Scalar>::ensure(s.pre, width, n);
    workspace<Scalar>::ensure(s.h, width, n);
    s.pre.noalias() = layer.hidden_weight(t, u) * X;
    s.pre.colwise() += layer.hidden_bias(t, u);
    const activation act = layer.activation_kind();
    for (index_t e = 0; e < n; ++e)
        for (index_t i = 0; i < width; ++i) s.h(i, e) = apply(act, s.pre(i, e));
}

template <class Layer>
index_t soft_unit_node(const Layer& layer, index_t u) noexcept {
    return layer.mode() == tree_mode::path_sum ? u : tree::level_begin(layer.depth()) + u;
}

// The mean over n K D decisions of `total` (0 without decisions).
template <class Layer>
double soft_mean(const Layer& layer, index_t n, double total) noexcept {
    if (layer.depth() == 0 || n == 0) return 0.0;
    return total / (static_cast<double>(n) * static_cast<double>(layer.tree_count()) * layer.depth());
}

template <class Scalar, int In, int Out, int Width, int Depth, class Policy, class Executor>
Scalar soft_forward_impl(const tree_feedforward<Scalar, In, Out, Width, Depth, Policy>& layer,
                         const const_batch_ref<Scalar>& X, batch_ref<Scalar> Y, soft_workspace<Scalar>& ws,
                         const soft_routing_options& opt, Executor& ex) {
    treegate::detail::check_batch("tree_feedforward soft_forward", layer.in_size(), X.rows(), X.cols(), layer.out_size(),
                                  Y.rows(), Y.cols());
    check_soft_options(opt);
    check_soft_layer(layer);
    const Scalar T = static_cast<Scalar>(opt.temperature);
    if (layer.has_output_bias())
        Y.colwise() = layer.output_bias();
    else
        Y.setZero();
    ws.reserve_workers(ex.size());
    double entropy = 0;
    for (index_t t = 0; t < layer.tree_count(); ++t) {
        entropy += soft_route(layer, t, X, T, ws, ex);
        // Tiles of examples are the pieces: each writes its own columns of Y.
        parallel::for_each_chunk(ex, X.cols(), soft_tile, [&](index_t b, index_t end, int worker) {
            soft_worker_scratch<Scalar>& s = ws.worker(worker);
            const auto Xt = X.middleCols(b, end - b);
            auto Yt = Y.middleCols(b, end - b);
            for (index_t u = 0; u < layer.unit_count(); ++u) {
                soft_unit_hidden(layer, t, u, Xt, s);
                const index_t node = soft_unit_node(layer, u);
                for (index_t e = b; e < end; ++e) s.h.col(e - b) *= ws.reach(e, node);
                Yt.noalias() += layer.output_weight(t, u) * s.h;
            }
        });
    }
    ws.mean_entropy = soft_mean(layer, X.cols(), entropy);
    return static_cast<Scalar>(opt.hardening * ws.mean_entropy);
}

// Backward of the soft forward plus the penalty, in four passes per tree:
//  1. z and P for every node (soft_route);
//  2. every unit's MLP with upstream P dY, and G(i) = dL/dP(i) = dY . (V act(U x + a));
//  3. leaves to root: G(i) += lambda' H(p_i) + p_i G(right) + q_i G(left), and
//     dL/dz_i = P(i) [(G(right) - G(left)) dp/dz + lambda' dH/dz];
//  4. dL/dz_i into the router row (r, s), or path_sum's first hidden row (U_0, a_0), and dX.
//
// On an executor: the routers' pre-activations and every unit's gradients are one piece per node or
// unit (each writes only its own gradient blocks and its own column of greach); dX is summed over
// the units and routers in a fixed order within each tile of examples; the top-down and
// bottom-up passes over the tree run on the calling thread. Nothing depends on which worker runs
// a piece, so the result is bit-identical for any executor and thread count.
template <class Scalar, int In, int Out, int Width, int Depth, class Policy, class Executor>
Scalar soft_backward_impl(const tree_feedforward<Scalar, In, Out, Width, Depth, Policy>& layer,
                          const const_batch_ref<Scalar>& X, const const_batch_ref<Scalar>& dY,
                          tree_feedforward_gradient<Scalar>& grad, batch_ref<Scalar>* dX, soft_workspace<Scalar>& ws,
                          const soft_routing_options& opt, Executor& ex) {
    const char* name = "tree_feedforward soft_backward";
    check_backward(name, layer.in_size(), layer.out_size(), X.rows(), X.cols(), dY.rows(), dY.cols());
    check_dx(name, dX, layer.in_size(), X.cols());
    check_soft_gradient(layer, grad);
    check_soft_options(opt);
    check_soft_layer(layer);
    const index_t n = X.cols();
    if (dX != nullptr) dX->setZero();
    if (n == 0) {
        ws.mean_entropy = 0.0;
        return Scalar(0);
    }
    const Scalar T = static_cast<Scalar>(opt.temperature);
    const int depth = layer.depth();
    const index_t internal = tree::internal_count(depth), width = layer.width(), units = layer.unit_count();
    const bool leaf_only = layer.mode() == tree_mode::leaf_only;
    const activation act = layer.activation_kind();
    const Scalar lam = static_cast<Scalar>(soft_mean(layer, n, opt.hardening));  // lambda / (n K D)
    if (layer.has_output_bias()) {
        grad.output_bias() += dY.rowwise().sum();
        grad.mark_output_bias();
    }
    ws.reserve_workers(ex.size());
    if (dX != nullptr) workspace<Scalar>::ensure(ws.hidden_grad, units * width, n);
    double entropy = 0;
    for (index_t t = 0; t < layer.tree_count(); ++t) {
        entropy += soft_route(layer, t, X, T, ws, ex);
        workspace<Scalar>::ensure(ws.greach, n, tree::node_count(depth));
        ws.greach.setZero();
        for (index_t u = 0; u < units; ++u) grad.mark(t, u);  // in unit order, on this thread
        ex.run(units, [&](index_t u, int worker) {
            soft_worker_scratch<Scalar>& s = ws.worker(worker);
            const index_t node = soft_unit_node(layer, u);
            soft_unit_hidden(layer, t, u, X, s);
            const auto V = layer.output_weight(t, u);
            workspace<Scalar>::ensure(s.w, width, n);
            s.w.noalias() = V.transpose() * dY;
            ws.greach.col(node) = (s.w.array() * s.h.array()).colwise().sum().transpose();
            for (index_t e = 0; e < n; ++e) {
                const Scalar r = ws.reach(e, node);
                s.h.col(e) *= r;
                for (index_t i = 0; i < width; ++i) s.w(i, e) *= r * activation_derivative(act, s.pre(i, e));
            }
            grad.output_weight(t, u).noalias() += dY * s.h.transpose();
            grad.hidden_weight(t, u).noalias() += s.w * X.transpose();
            grad.hidden_bias(t, u) += s.w.rowwise().sum();
            if (dX != nullptr) ws.hidden_grad.middleRows(u * width, width) = s.w;
        });
        workspace<Scalar>::ensure(ws.dz, n, internal);
        for (index_t i = internal - 1; i >= 0; --i) {  // children before parents
            const index_t left = tree::child(i, 0), right = tree::child(i, 1);
            for (index_t e = 0; e < n; ++e) {
                const soft_decision<Scalar> d = decide(ws.z(e, i), T);
                const Scalar gl = ws.greach(e, left), gr = ws.greach(e, right);
                ws.dz(e, i) = ws.reach(e, i) * ((gr - gl) * d.dp + lam * d.dentropy);
                ws.greach(e, i) += d.p * gr + d.q * gl + lam * d.entropy;
            }
        }
        if (leaf_only)
            for (index_t i = 0; i < internal; ++i) grad.mark_router(t, i);
        ex.run(internal, [&](index_t i, int) {
            const auto dz = ws.dz.col(i);
            if (leaf_only) {
                grad.router_weight(t, i).noalias() += X * dz;
                grad.router_bias(t, i) += dz.sum();
            } else {
                grad.hidden_weight(t, i).row(0).noalias() += (X * dz).transpose();
                grad.hidden_bias(t, i)(0) += dz.sum();
            }
        });
        if (dX != nullptr)
            parallel::for_each_chunk(ex, n, soft_tile, [&](index_t b, index_t end, int) {
                auto dXt = dX->middleCols(b, end - b);
                for (index_t u = 0; u < units; ++u)
                    dXt.noalias() +=
                        layer.hidden_weight(t, u).transpose() * ws.hidden_grad.block(u * width, b, width, end - b);
                for (index_t i = 0; i < internal; ++i) {
                    const auto dz = ws.dz.col(i).segment(b, end - b);
                    if (leaf_only)
                        dXt.noalias() += layer.router_weight(t, i) * dz.transpose();
                    else
                        dXt.noalias() += layer.hidden_weight(t, i).row(0).transpose() * dz.transpose();
                }
            });
    }
    ws.mean_entropy = soft_mean(layer, n, entropy);
    return static_cast<Scalar>(opt.hardening * ws.mean_entropy);
}

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
