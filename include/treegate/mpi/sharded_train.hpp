// treegate/mpi/sharded_train.hpp — training a sharded tree_linear (mpi/): its gradient container,
// the backward (the forward's exchange in reverse) and the parameter list the optimizers step.
#ifndef TREEGATE_MPI_SHARDED_TRAIN_HPP
#define TREEGATE_MPI_SHARDED_TRAIN_HPP

#include "../schedule.hpp"
#include "../train/gradient_storage.hpp"
#include "comm.hpp"
#include "exchange.hpp"
#include "sharded_tree_linear.hpp"

#include <vector>

namespace treegate::mpi {

/// Gradients of the blocks one rank holds, in the layer's local order (for_each_local_block):
/// the replicated blocks first, then the owned subtrees. After backward() the replicated
/// blocks' gradients and visit marks are the sums over all ranks, equal on every rank; the
/// owned blocks' are this rank's own. zero() before each batch, as the library's gradients.
template <class Scalar>
class sharded_gradient {
public:
    template <class Policy>
    explicit sharded_gradient(const sharded_tree_linear<Scalar, Policy>& layer)
        : in_(layer.in_size()),
          out_(layer.out_size()),
          blocks_(layer.local_block_count()),
          top_(layer.replicated_block_count()),
          has_bias_(layer.has_bias()),
          dw_(static_cast<std::size_t>(blocks_ * in_ * out_), Scalar(0)),
          db_(static_cast<std::size_t>(has_bias_ ? blocks_ * out_ : 0), Scalar(0)),
          visited_(static_cast<std::size_t>(blocks_), Scalar(0)) {}

    index_t local_block_count() const noexcept { return blocks_; }
    bool has_bias() const noexcept { return has_bias_; }

    /// Gradient of local block l (out x in) and of its bias.
    Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>> weight(index_t l) noexcept {
        return {dw_.data() + l * in_ * out_, out_, in_};
    }
    Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, 1>> bias(index_t l) noexcept {
        return {db_.data() + (has_bias_ ? l * out_ : 0), has_bias_ ? out_ : 0};
    }
    bool visited(index_t l) const noexcept { return visited_[static_cast<std::size_t>(l)] != Scalar(0); }
    void mark(index_t l) noexcept { visited_[static_cast<std::size_t>(l)] = Scalar(1); }

    void zero() noexcept {
        std::fill(dw_.begin(), dw_.end(), Scalar(0));
        std::fill(db_.begin(), db_.end(), Scalar(0));
        std::fill(visited_.begin(), visited_.end(), Scalar(0));
    }

    /// The replicated blocks' gradients and marks summed over the ranks in rank order (mpi::
    /// ordered_sum): the same bits on every rank and from run to run for a rank count, so every
    /// rank's optimizer takes the same step on its copy. Collective; backward() calls it.
    void sum_replicated(MPI_Comm comm) {
        const index_t w = top_ * in_ * out_, b = has_bias_ ? top_ * out_ : 0;
        packed_.resize(static_cast<std::size_t>(w + b + top_));
        std::copy(dw_.begin(), dw_.begin() + w, packed_.begin());
        std::copy(db_.begin(), db_.begin() + b, packed_.begin() + w);
        std::copy(visited_.begin(), visited_.begin() + top_, packed_.begin() + w + b);
        ordered_sum(comm, packed_.data(), static_cast<index_t>(packed_.size()), scratch_);
        std::copy(packed_.begin(), packed_.begin() + w, dw_.begin());
        std::copy(packed_.begin() + w, packed_.begin() + w + b, db_.begin());
        std::copy(packed_.begin() + w + b, packed_.end(), visited_.begin());
    }

    /// Every local block as the optimizers (train/optimizer.hpp) take them: weights (decayed at
    /// their tree level) then bias, block by block in local order. Lazy: unvisited blocks are
    /// left alone, so a subtree no example reached keeps its weights and optimizer state.
    template <class Policy>
    train::param_list<Scalar> collect(sharded_tree_linear<Scalar, Policy>& layer) const {
        treegate::detail::check_shape(layer.local_block_count() == blocks_ && layer.in_size() == in_ &&
                                          layer.out_size() == out_ && layer.has_bias() == has_bias_,
                                      "sharded_gradient: does not match the layer");
        train::param_list<Scalar> list;
        layer.for_each_local_block([&](index_t g, index_t l) {
            const int level = block_level(layer, g);
            const bool v = visited(l);
            list.push_back({layer.weight(g).data(), dw_.data() + l * in_ * out_, in_ * out_, level, v, true});
            if (has_bias_) list.push_back({layer.bias(g).data(), db_.data() + l * out_, out_, level, v, false});
        });
        return list;
    }

private:
    template <class Layer>
    static int block_level(const Layer& layer, index_t g) {
        return layer.path_sum() ? tree::level_of(g) : layer.depth();
    }

    index_t in_, out_, blocks_, top_;
    bool has_bias_;
    std::vector<Scalar> dw_, db_, visited_;  // visit marks as Scalars, so one ordered_sum carries them
    std::vector<Scalar> packed_, scratch_;
};

namespace backward_detail {

// The tree_linear backward over one tree of blocks (a subtree, or the replicated levels): sort
// by leaf code, then per visited block dW += dY_g X_g^T, dc += sum dY_g, dX_g += W^T dY_g, in
// the forward's walk. `local(blk)` maps the table's block to the gradient's local block.
template <class Scalar, class XRef, class DYRef, class DXRef, class Local>
void tree_walk(const exec::block_table<Scalar, Scalar>& t, const XRef& X, const DYRef& dY, const leaf_t* codes,
               sharded_gradient<Scalar>& grad, DXRef* dX, workspace<Scalar>& ws, Local&& local) {
    const index_t n = X.cols();
    if (n == 0) return;
    ws.leaves.build(codes, n, t.depth);
    const index_t* order = ws.leaves.order();
    auto xs = ws.gathered_input.view(t.in, n);
    auto dys = ws.permuted_output.view(t.out, n);
    auto dxs = ws.hidden.view(t.in, n);
    for (index_t k = 0; k < n; ++k) {
        xs.col(k) = X.col(order[k]);
        dys.col(k) = dY.col(order[k]);
    }
    dxs.setZero();
    using cmap = Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>>;
    exec::for_each_group(ws.leaves, t.path_sum, [&](index_t blk, group_range r) {
        const index_t l = local(blk);
        grad.mark(l);
        const auto Xg = xs.middleCols(r.begin, r.size());
        const auto dYg = dys.middleCols(r.begin, r.size());
        grad.weight(l).noalias() += dYg * Xg.transpose();
        if (t.biases != nullptr) grad.bias(l) += dYg.rowwise().sum();
        if (dX != nullptr) dxs.middleCols(r.begin, r.size()).noalias() += cmap(t.blocks + blk * t.stride, t.out, t.in).transpose() * dYg;
    });
    if (dX != nullptr)
        for (index_t k = 0; k < n; ++k) dX->col(order[k]) += dxs.col(k);
}

// The backward of the public overloads below (G, dX: null when not given).
template <class Scalar, class Policy>
void run(const sharded_tree_linear<Scalar, Policy>& layer, typename exec::batch_ref<Scalar>::const_type const& X,
         typename exec::batch_ref<Scalar>::const_type const* G, typename exec::batch_ref<Scalar>::const_type const& dY,
         sharded_gradient<Scalar>& grad, typename exec::batch_ref<Scalar>::type* dX, exchange_workspace<Scalar>& ws) {
    const char* name = "sharded_tree_linear backward";
    const auto& lay = layer.layout();
    agree(layer.comm(), [&] {
        detail::check_live(name, layer.live());
        detail::check_batch(name, layer.in_size(), X.rows(), X.cols(), layer.out_size(), dY.rows(), dY.cols());
        if (dX != nullptr)
            detail::check_shape(dX->rows() == layer.in_size() && dX->cols() == X.cols(), name, ": input gradient is ",
                                dX->rows(), " x ", dX->cols(), ", expected ", layer.in_size(), " x ", X.cols());
        detail::check_shape(grad.local_block_count() == layer.local_block_count() && grad.has_bias() == layer.has_bias(),
                            name, ": the gradient container does not match the layer");
        if (G != nullptr)
            exec::route_batch(name, "backward", layer.gates(), layer.depth(), X, *G, ws.local.codes);
        else
            exec::route_batch(name, "backward", layer.gates(), layer.depth(), X, ws.local.codes);
    });
    const index_t n = X.cols(), in = layer.in_size(), out = layer.out_size();
    ws.send(layer.comm(), lay, X, &dY);
    const index_t m = ws.received();
    auto Xs = ws.sorted_input.view(in, m);
    auto dYs = ws.sorted_output.view(out, m);
    ws.sort_received(lay, in, out, Xs, dYs);
    // Every rank returns W^T dy whether or not its own caller wants dX: the exchange's shape
    // must not depend on one rank's arguments.
    auto dXs = ws.top_output.view(in, m);
    dXs.setZero();
    const index_t top = layer.replicated_block_count(), per = layer.blocks_per_subtree();
    for (index_t t = 0; t < lay.owned(); ++t) {
        const index_t b = ws.subtree_begin[static_cast<std::size_t>(t)], e = ws.subtree_begin[static_cast<std::size_t>(t + 1)];
        if (b == e) continue;
        const auto Xt = Xs.middleCols(b, e - b);
        const auto dYt = dYs.middleCols(b, e - b);
        auto dXt = dXs.middleCols(b, e - b);
        backward_detail::tree_walk(layer.subtree_table(t), Xt, dYt, ws.local_codes.data() + b, grad, &dXt, ws.local,
                                   [&](index_t k) { return top + t * per + k; });
    }
    if (dX != nullptr) {
        ws.send_back(layer.comm(), in, dXs, *dX);
    } else {
        auto discard = ws.sorted_input.view(in, n);  // the received inputs are no longer needed
        ws.send_back(layer.comm(), in, dXs, discard);
    }
    if (top > 0) {
        const int shift = lay.subtree_depth() + 1;
        ws.top_codes.resize(static_cast<std::size_t>(n));
        for (index_t e = 0; e < n; ++e) ws.top_codes[static_cast<std::size_t>(e)] = ws.local.codes[static_cast<std::size_t>(e)] >> shift;
        backward_detail::tree_walk(layer.top_table(), X, dY, ws.top_codes.data(), grad, dX, ws.local,
                                   [](index_t k) { return k; });
    }
    grad.sum_replicated(layer.comm());
}

}  // namespace backward_detail

/// Gradients of a sharded tree_linear for this rank's batch X and output gradient dY, added
/// into `grad`; dX (when given) = dLoss/dX. The forward's exchange in reverse: (x, dy) travel
/// to the owner of each example's subtree, which adds its blocks' gradients and returns the
/// subtree levels' W^T dy; the replicated levels' terms are added locally and their gradients
/// summed over the ranks in rank order. Collective, like the forward.
template <class Scalar, class Policy>
void backward(const sharded_tree_linear<Scalar, Policy>& layer, typename exec::batch_ref<Scalar>::const_type const& X,
              typename exec::batch_ref<Scalar>::const_type const& dY, sharded_gradient<Scalar>& grad, typename exec::batch_ref<Scalar>::type dX,
              exchange_workspace<Scalar>& ws) {
    backward_detail::run(layer, X, nullptr, dY, grad, &dX, ws);
}
template <class Scalar, class Policy>
void backward(const sharded_tree_linear<Scalar, Policy>& layer, typename exec::batch_ref<Scalar>::const_type const& X,
              typename exec::batch_ref<Scalar>::const_type const& dY, sharded_gradient<Scalar>& grad, exchange_workspace<Scalar>& ws) {
    backward_detail::run(layer, X, nullptr, dY, grad, nullptr, ws);
}

/// The same for an externally gated layer (G: D x batch gate values).
template <class Scalar, class Policy>
void backward(const sharded_tree_linear<Scalar, Policy>& layer, typename exec::batch_ref<Scalar>::const_type const& X,
              typename exec::batch_ref<Scalar>::const_type const& G, typename exec::batch_ref<Scalar>::const_type const& dY,
              sharded_gradient<Scalar>& grad, typename exec::batch_ref<Scalar>::type dX, exchange_workspace<Scalar>& ws) {
    backward_detail::run(layer, X, &G, dY, grad, &dX, ws);
}
template <class Scalar, class Policy>
void backward(const sharded_tree_linear<Scalar, Policy>& layer, typename exec::batch_ref<Scalar>::const_type const& X,
              typename exec::batch_ref<Scalar>::const_type const& G, typename exec::batch_ref<Scalar>::const_type const& dY,
              sharded_gradient<Scalar>& grad, exchange_workspace<Scalar>& ws) {
    backward_detail::run(layer, X, &G, dY, grad, nullptr, ws);
}

}  // namespace treegate::mpi

#endif
