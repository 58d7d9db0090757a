// treegate/train/soft_passes.hpp — the soft-routing passes of one tree_feedforward: options, scratch,
// the routes, forward and backward; train/soft_routing.hpp builds the public entry points on them.
#ifndef TREEGATE_TRAIN_SOFT_PASSES_HPP
#define TREEGATE_TRAIN_SOFT_PASSES_HPP

#include "../activation.hpp"
#include "../error.hpp"
#include "../layers/layer_common.hpp"
#include "../layers/tree_feedforward.hpp"
#include "../parallel/executor.hpp"
#include "../tree.hpp"
#include "../workspace.hpp"
#include "backward.hpp"
#include "batch_ref.hpp"
#include "gradients.hpp"

#include <algorithm>
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
/// `balance` beta >= 0 adds the load-balancing penalty
///
///     beta * (1 / K) sum_trees KL(u_t || uniform) = beta * (1 / K) sum_trees (log L + sum_leaves u log u),
///     u_t(leaf) = (1 / n) sum_examples P(leaf),
///
/// over the L = 2^D leaves of each tree: the batch's use of the leaves, pushed towards equal shares
/// so that no leaf starves and none takes every example. It lies in [0, log L] and is 0 at D = 0.
/// Its gradient (log u + 1) / n per unit of P(leaf) uses max(u, the smallest normal) inside the
/// log, so a leaf no example reaches (possible only at T = 0 or after underflow) stays finite.
///
/// Cost: the soft forward and backward evaluate every node of every tree, 2^(D+1) - 1 MLPs
/// (path_sum) or 2^D MLPs and 2^D - 1 routers (leaf_only) per example, against D + 1 for the hard
/// forward. It is a training mode for modest depths (a few levels, or as a warm start before
/// hard training), not a serving path.
struct soft_routing_options {
    double temperature = 1.0;
    double hardening = 0.0;
    double balance = 0.0;
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
    /// Mean over trees of KL(leaf use || uniform) of the most recent soft call (the balance
    /// penalty before beta): 0 when the batch spreads evenly over the leaves, log L at worst.
    double leaf_imbalance = 0.0;
    std::vector<double> leaf_use;  // u of the tree last routed, one per leaf

    void reserve_workers(int count) {
        if (static_cast<int>(workers.size()) < count) workers.resize(static_cast<std::size_t>(count));
    }
    soft_worker_scratch<Scalar>& worker(int w) noexcept { return workers[static_cast<std::size_t>(w)]; }
};

namespace detail {

inline void check_soft_options(const soft_routing_options& opt) {
    treegate::detail::check_config(std::isfinite(opt.temperature) && opt.temperature >= 0.0,
                                   "tree_feedforward soft routing: temperature must be finite and >= 0, got ",
                                   opt.temperature);
    treegate::detail::check_config(std::isfinite(opt.hardening) && opt.hardening >= 0.0,
                                   "tree_feedforward soft routing: hardening weight must be finite and >= 0, got ",
                                   opt.hardening);
    treegate::detail::check_config(std::isfinite(opt.balance) && opt.balance >= 0.0,
                                   "tree_feedforward soft routing: balance weight must be finite and >= 0, got ",
                                   opt.balance);
}

// The soft mixture knows no per-leaf output bias (layers/tree_feedforward.hpp); refused, not ignored.
template <class Layer>
void check_soft_layer(const Layer& layer) {
    treegate::detail::check_config(!layer.has_leaf_bias(),
                                   "tree_feedforward soft routing: leaf biases are not supported (hard backward only)");
}

/// One soft decision at pre-activation z: p, q = 1 - p, dp/dz, H(p) and dH/dz; at T = 0 the hard
/// bit under the layer's tie rule.
template <class Scalar>
struct soft_decision {
    Scalar p, q, dp, entropy, dentropy;
};

template <class Scalar>
soft_decision<Scalar> decide(Scalar z, Scalar T, tie_rule tie) noexcept {
    using std::abs;
    using std::exp;
    using std::log1p;
    if (T == Scalar(0)) {
        const Scalar p = treegate::gate_bit(z, tie) ? Scalar(1) : Scalar(0);
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
            const soft_decision<Scalar> d = decide(ws.z(e, i), T, layer.tie());
            const Scalar r = ws.reach(e, i);
            ws.reach(e, tree::child(i, 1)) = r * d.p;
            ws.reach(e, tree::child(i, 0)) = r * d.q;
            entropy += static_cast<double>(r) * static_cast<double>(d.entropy);
        }
    }
    return entropy;
}

// ws.leaf_use = the batch's mean P of every leaf of the tree in ws.reach; returns KL(u || uniform).
template <class Scalar>
double soft_leaf_use(int depth, index_t n, soft_workspace<Scalar>& ws) {
    const index_t first = tree::level_begin(depth), leaves = index_t{1} << depth;
    ws.leaf_use.assign(static_cast<std::size_t>(leaves), 0.0);
    if (n == 0 || depth == 0) return 0.0;
    double kl = std::log(static_cast<double>(leaves));
    for (index_t l = 0; l < leaves; ++l) {
        double sum = 0;
        for (index_t e = 0; e < n; ++e) sum += static_cast<double>(ws.reach(e, first + l));
        const double u = sum / static_cast<double>(n);
        ws.leaf_use[static_cast<std::size_t>(l)] = u;
        if (u > 0) kl += u * std::log(u);
    }
    return kl;
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

// lambda H + beta KL: the penalty both passes return.
template <class Scalar>
Scalar soft_penalty(const soft_workspace<Scalar>& ws, const soft_routing_options& opt) noexcept {
    return static_cast<Scalar>(opt.hardening * ws.mean_entropy + opt.balance * ws.leaf_imbalance);
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
    double entropy = 0, imbalance = 0;
    for (index_t t = 0; t < layer.tree_count(); ++t) {
        entropy += soft_route(layer, t, X, T, ws, ex);
        imbalance += soft_leaf_use(layer.depth(), X.cols(), ws);
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
    ws.leaf_imbalance = imbalance / static_cast<double>(layer.tree_count());
    return soft_penalty(ws, opt);
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
        ws.mean_entropy = ws.leaf_imbalance = 0.0;
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
    double entropy = 0, imbalance = 0;
    const double beta = opt.balance / (static_cast<double>(layer.tree_count()) * static_cast<double>(n));
    for (index_t t = 0; t < layer.tree_count(); ++t) {
        entropy += soft_route(layer, t, X, T, ws, ex);
        imbalance += soft_leaf_use(depth, n, ws);
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
        if (beta > 0 && depth > 0)  // dL/dP(leaf) of the balance penalty, the same for every example
            for (index_t l = 0; l < static_cast<index_t>(ws.leaf_use.size()); ++l) {
                const double u = std::max(ws.leaf_use[static_cast<std::size_t>(l)], std::numeric_limits<double>::min());
                ws.greach.col(tree::level_begin(depth) + l).array() += static_cast<Scalar>(beta * (std::log(u) + 1.0));
            }
        workspace<Scalar>::ensure(ws.dz, n, internal);
        for (index_t i = internal - 1; i >= 0; --i) {  // children before parents
            const index_t left = tree::child(i, 0), right = tree::child(i, 1);
            for (index_t e = 0; e < n; ++e) {
                const soft_decision<Scalar> d = decide(ws.z(e, i), T, layer.tie());
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
    ws.leaf_imbalance = imbalance / static_cast<double>(layer.tree_count());
    return soft_penalty(ws, opt);
}

}  // namespace detail

}  // namespace treegate::train

#endif
