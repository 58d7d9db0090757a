// treegate/mpi/sharded_ff_train.hpp — training a sharded tree_feedforward (mpi/): its gradient
// container, the backward (the forward's exchange in reverse) and the blocks the optimizers step.
#ifndef TREEGATE_MPI_SHARDED_FF_TRAIN_HPP
#define TREEGATE_MPI_SHARDED_FF_TRAIN_HPP

#include "../exec/levels.hpp"
#include "../train/backward.hpp"
#include "../train/ff_unit_backward.hpp"
#include "../train/gradient_storage.hpp"
#include "comm.hpp"
#include "exchange.hpp"
#include "sharded_tree_feedforward.hpp"

#include <algorithm>
#include <vector>

namespace treegate::mpi {

/// Gradients of the units one rank holds, in the layer's local order (local_unit(l)), and of the
/// output bias. After backward() the replicated units' gradients and visit marks, and the
/// output bias's, are the sums over all ranks, equal on every rank; the owned subtrees' units
/// have this rank's own. Routers get none (a route bit has zero gradient). zero() before each
/// batch, as the library's gradients.
template <class Scalar>
class sharded_ff_gradient {
public:
    using matrix_map = Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>>;
    using vector_map = Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, 1>>;

    template <class Policy>
    explicit sharded_ff_gradient(const sharded_tree_feedforward<Scalar, Policy>& layer)
        : in_(layer.in_size()),
          out_(layer.out_size()),
          width_(layer.width()),
          units_(layer.local_unit_count()),
          per_tree_(layer.units_per_tree()),
          top_(layer.replicated_units()),
          trees_(layer.tree_count()),
          has_output_bias_(layer.has_output_bias()),
          has_leaf_bias_(layer.has_leaf_bias()),
          u_(width_ * in_), v_(out_ * width_), b_(has_leaf_bias_ ? out_ : 0),
          unit_size_(u_ + width_ + v_ + b_),
          data_(static_cast<std::size_t>(units_ * unit_size_), Scalar(0)),
          c_(static_cast<std::size_t>(out_), Scalar(0)),
          visited_(static_cast<std::size_t>(units_), Scalar(0)),
          level_(static_cast<std::size_t>(units_), 0) {
        const bool ps = layer.mode() == tree_mode::path_sum;
        layer.for_each_local([&](index_t, index_t whole, index_t l) { level_[static_cast<std::size_t>(l)] = ps ? tree::level_of(whole) : layer.depth(); },
                             [](index_t, index_t, index_t) {});
    }

    index_t local_unit_count() const noexcept { return units_; }
    bool has_output_bias() const noexcept { return has_output_bias_; }
    bool has_leaf_bias() const noexcept { return has_leaf_bias_; }

    /// Gradients of local unit l: U (width x in), a, V (out x width), the leaf bias (out).
    matrix_map hidden_weight(index_t l) noexcept { return {at(l), width_, in_}; }
    vector_map hidden_bias(index_t l) noexcept { return {at(l) + u_, width_}; }
    matrix_map output_weight(index_t l) noexcept { return {at(l) + u_ + width_, out_, width_}; }
    vector_map leaf_bias(index_t l) noexcept { return {at(l) + u_ + width_ + v_, b_}; }
    vector_map output_bias() noexcept { return {c_.data(), has_output_bias_ ? out_ : 0}; }
    bool visited(index_t l) const noexcept { return visited_[static_cast<std::size_t>(l)] != Scalar(0); }
    bool output_bias_visited() const noexcept { return c_visited_ != Scalar(0); }
    void mark(index_t l) noexcept { visited_[static_cast<std::size_t>(l)] = Scalar(1); }
    void mark_output_bias() noexcept { c_visited_ = Scalar(1); }

    void zero() noexcept {
        std::fill(data_.begin(), data_.end(), Scalar(0));
        std::fill(c_.begin(), c_.end(), Scalar(0));
        std::fill(visited_.begin(), visited_.end(), Scalar(0));
        c_visited_ = Scalar(0);
    }

    /// The replicated units' gradients and marks, and the output bias's, summed over the ranks
    /// in rank order (mpi::ordered_sum): the same bits on every rank and from run to run for a
    /// rank count, so every rank's optimizer takes the same step on its copy. Collective;
    /// backward() calls it.
    void sum_replicated(MPI_Comm comm) {
        const index_t block = top_ * unit_size_;
        packed_.resize(static_cast<std::size_t>(trees_ * (block + top_) + out_ + 1));
        auto p = packed_.begin();
        visit_replicated([&](Scalar* d, Scalar* v) { p = std::copy(v, v + top_, std::copy(d, d + block, p)); });
        p = std::copy(c_.begin(), c_.end(), p);
        *p = c_visited_;
        ordered_sum(comm, packed_.data(), static_cast<index_t>(packed_.size()), scratch_);
        auto q = packed_.cbegin();
        visit_replicated([&](Scalar* d, Scalar* v) {
            std::copy(q, q + block, d);
            std::copy(q + block, q + block + top_, v);
            q += block + top_;
        });
        std::copy(q, q + out_, c_.begin());
        c_visited_ = q[out_];
    }

    /// Every local unit as the optimizers (train/optimizer.hpp) take them, in the whole layer's
    /// order within a unit: U (decayed at its tree level), a, V (decayed), the leaf bias; then
    /// the output bias. Lazy: a unit no example reached is left alone with its optimizer state.
    template <class Policy>
    train::param_list<Scalar> collect(sharded_tree_feedforward<Scalar, Policy>& layer) const {
        treegate::detail::check_shape(layer.local_unit_count() == units_ && layer.in_size() == in_ &&
                                          layer.out_size() == out_ && layer.width() == width_ &&
                                          layer.has_output_bias() == has_output_bias_ &&
                                          layer.has_leaf_bias() == has_leaf_bias_,
                                      "sharded_ff_gradient: does not match the layer");
        train::param_list<Scalar> list;
        for (index_t l = 0; l < units_; ++l) {
            const int level = level_[static_cast<std::size_t>(l)];
            const bool v = visited(l);
            const Scalar* g = at(l);
            list.push_back({layer.hidden_weight_data(l), g, u_, level, v, true});
            list.push_back({layer.hidden_bias_data(l), g + u_, width_, level, v, false});
            list.push_back({layer.output_weight_data(l), g + u_ + width_, v_, level, v, true});
            if (has_leaf_bias_) list.push_back({layer.leaf_bias_data(l), g + u_ + width_ + v_, b_, level, v, false});
        }
        if (has_output_bias_) list.push_back({layer.output_bias_data(), c_.data(), out_, 0, output_bias_visited(), false});
        return list;
    }

private:
    Scalar* at(index_t l) noexcept { return data_.data() + l * unit_size_; }
    const Scalar* at(index_t l) const noexcept { return data_.data() + l * unit_size_; }
    // f(gradients, marks) of each tree's replicated units (the first top_ of its local units).
    template <class F>
    void visit_replicated(F&& f) {
        if (top_ == 0) return;
        for (index_t t = 0; t < trees_; ++t) f(at(t * per_tree_), visited_.data() + t * per_tree_);
    }

    index_t in_, out_, width_, units_, per_tree_, top_, trees_;
    bool has_output_bias_, has_leaf_bias_;
    index_t u_, v_, b_, unit_size_;
    std::vector<Scalar> data_, c_, visited_;  // visit marks as Scalars, so one ordered_sum carries them
    Scalar c_visited_ = Scalar(0);
    std::vector<int> level_;
    std::vector<Scalar> packed_, scratch_;
};

namespace ff_backward_detail {

// Backward through local unit l for the examples at positions [r.begin, r.end) of `order`:
// the single-process layer's unit step (train/ff_unit_backward.hpp), so both give the same bits.
template <class Policy, class Scalar, class XRef, class DYRef, class DXRef>
void unit_backward(const exec::ff_unit<Scalar>& u, index_t l, group_range r, const index_t* order, unsigned char* bits,
                   const XRef& X, const DYRef& dY, sharded_ff_gradient<Scalar>& grad, DXRef* dX, workspace<Scalar>& ws) {
    const index_t m = r.size();
    grad.mark(l);
    const train::detail::ff_unit_grad<Scalar> g{grad.hidden_weight(l).data(), grad.hidden_bias(l).data(),
                                                grad.output_weight(l).data(),
                                                u.b != nullptr ? grad.leaf_bias(l).data() : nullptr};
    const train::detail::ff_unit_scratch<Scalar> s{
        ws.gathered_input.view(u.in, m).data(), ws.permuted_output.view(u.out, m).data(),
        ws.hidden.view(u.width, m).data(),      ws.route_activations.view(u.width, m).data(),
        ws.part_output.view(u.width, m).data(), dX != nullptr ? ws.input.view(u.in, m).data() : nullptr};
    train::detail::ff_unit_backward<Policy>(u, g, r, order, bits, X, dY, dX, s);
}

// One level walk over `n` examples through part `part` of tree t (0: the replicated levels,
// st + 1: owned subtree st), `levels` levels deep; units do their backward, routers their bits.
template <class Scalar, class Policy, class XRef, class DYRef, class DXRef>
void walk(const sharded_tree_feedforward<Scalar, Policy>& layer, index_t t, index_t part, int levels, const XRef& X,
          const DYRef& dY, sharded_ff_gradient<Scalar>& grad, DXRef* dX, workspace<Scalar>& ws) {
    const bool ps = layer.mode() == tree_mode::path_sum;
    const index_t n = X.cols();
    const index_t ut = t * layer.units_per_tree(), rt = t * layer.routers_per_tree();
    exec::walk_levels(ws.levels, ws.bits, n, levels, [&](int level, index_t k, group_range r, const index_t* order, unsigned char* bits) {
        const index_t node = tree::level_begin(level) + k;
        const bool leaf = !ps && part > 0 && level == levels;
        if (ps || leaf) {
            const index_t l = ut + (part == 0 ? node : layer.replicated_units() + (part - 1) * layer.subtree_units() + (leaf ? k : node));
            unit_backward<Policy>(layer.local_unit(l), l, r, order, bits, X, dY, grad, dX, ws);
            return;
        }
        const index_t g = rt + (part == 0 ? node : layer.replicated_routers() + (part - 1) * layer.subtree_routers() + node);
        for (index_t p = r.begin; p < r.end; ++p) bits[p] = static_cast<unsigned char>(layer.route_bit(g, X.data() + order[p] * X.outerStride()));
    });
}

template <class Scalar, class Policy>
void run(const sharded_tree_feedforward<Scalar, Policy>& layer, typename exec::batch_ref<Scalar>::const_type const& X,
         typename exec::batch_ref<Scalar>::const_type const& dY, sharded_ff_gradient<Scalar>& grad,
         typename exec::batch_ref<Scalar>::type* dX, exchange_workspace<Scalar>& ws) {
    const char* name = "sharded_tree_feedforward backward";
    const auto& lay = layer.layout();
    const index_t n = X.cols(), in = layer.in_size(), out = layer.out_size();
    agree(layer.comm(), [&] {
        detail::check_live(name, layer.live());
        detail::check_batch(name, in, X.rows(), X.cols(), out, dY.rows(), dY.cols());
        if (dX != nullptr)
            detail::check_shape(dX->rows() == in && dX->cols() == n, name, ": input gradient is ", dX->rows(), " x ",
                                dX->cols(), ", expected ", in, " x ", n);
        detail::check_shape(grad.local_unit_count() == layer.local_unit_count() &&
                                grad.has_output_bias() == layer.has_output_bias() && grad.has_leaf_bias() == layer.has_leaf_bias(),
                            name, ": the gradient container does not match the layer");
    });
    if (dX != nullptr) dX->setZero();
    if (layer.has_output_bias() && n > 0) grad.output_bias() += dY.rowwise().sum();
    if (n > 0) grad.mark_output_bias();
    const int L = lay.split(), sd = lay.subtree_depth();
    for (index_t t = 0; t < layer.tree_count(); ++t) {
        // The replicated levels here (their units' gradients and dX terms, and the routes),
        // each example's node on level L as the top L bits of a D-bit code, as the forward.
        ws.local.codes.assign(static_cast<std::size_t>(n), 0);
        if (L > 0 && n > 0) {
            walk(layer, t, 0, L - 1, X, dY, grad, dX, ws.local);
            exec::codes_at_split(ws.local, L, sd);
        }
        // (x, dy) to the owners, which walk their subtrees and return the subtree levels' dX
        // terms; every rank returns them whether or not its own caller wants dX, as the
        // exchange's shape must not depend on one rank's arguments.
        ws.send(layer.comm(), lay, X, &dY);
        const index_t m = ws.received();
        auto Xs = ws.sorted_input.view(in, m);
        auto dYs = ws.sorted_output.view(out, m);
        ws.sort_received(lay, in, out, Xs, dYs);
        auto dXs = ws.top_output.view(in, m);
        dXs.setZero();
        for (index_t st = 0; st < lay.owned(); ++st) {
            const index_t b = ws.subtree_begin[static_cast<std::size_t>(st)], e = ws.subtree_begin[static_cast<std::size_t>(st + 1)];
            if (b == e) continue;
            auto dXt = dXs.middleCols(b, e - b);
            walk(layer, t, st + 1, sd, Xs.middleCols(b, e - b), dYs.middleCols(b, e - b), grad, &dXt, ws.local);
        }
        auto back = ws.sorted_input.view(in, n);  // the received inputs are no longer needed
        ws.send_back(layer.comm(), in, dXs, back);
        if (dX != nullptr) *dX += back;
    }
    grad.sum_replicated(layer.comm());
}

}  // namespace ff_backward_detail

/// Gradients of a sharded tree_feedforward for this rank's batch X and output gradient dY,
/// added into `grad`; dX (when given) = dLoss/dX. The forward's exchange in reverse, per tree:
/// the replicated levels' units are differentiated locally (recomputing the routes), (x, dy)
/// travel to the owner of each example's subtree, which adds its units' gradients and returns
/// the subtree levels' dX terms; the replicated units' and the output bias's gradients are
/// summed over the ranks in rank order. Collective, like the forward.
template <class Scalar, class Policy>
void backward(const sharded_tree_feedforward<Scalar, Policy>& layer, typename exec::batch_ref<Scalar>::const_type const& X,
              typename exec::batch_ref<Scalar>::const_type const& dY, sharded_ff_gradient<Scalar>& grad,
              typename exec::batch_ref<Scalar>::type dX, exchange_workspace<Scalar>& ws) {
    ff_backward_detail::run(layer, X, dY, grad, &dX, ws);
}
template <class Scalar, class Policy>
void backward(const sharded_tree_feedforward<Scalar, Policy>& layer, typename exec::batch_ref<Scalar>::const_type const& X,
              typename exec::batch_ref<Scalar>::const_type const& dY, sharded_ff_gradient<Scalar>& grad,
              exchange_workspace<Scalar>& ws) {
    ff_backward_detail::run(layer, X, dY, grad, nullptr, ws);
}

}  // namespace treegate::mpi

#endif
