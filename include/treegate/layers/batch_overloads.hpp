// treegate/layers/batch_overloads.hpp — the serial and the allocating forward_batch, written once.
// A base of every layer (CRTP): the layer writes only forward_batch(X, [G,] Y, ws, executor).
#ifndef TREEGATE_LAYERS_BATCH_OVERLOADS_HPP
#define TREEGATE_LAYERS_BATCH_OVERLOADS_HPP

#include "../parallel/executor.hpp"

#include <Eigen/Core>

namespace treegate::detail {

/// Derived provides out_size() and forward_batch(X, Y, ws, executor) (and, when gated
/// externally, forward_batch(X, G, Y, ws, executor)); a layer brings these in with
/// `using batch_overloads<...>::forward_batch;`. The gated overloads are only instantiated
/// where they are called, so a layer without them loses nothing.
template <class Derived, class Batch, class Workspace>
class batch_overloads {
public:
    /// On the calling thread (parallel::serial).
    void forward_batch(const Eigen::Ref<const Batch>& X, Eigen::Ref<Batch> Y, Workspace& ws) const {
        self().forward_batch(X, Y, ws, parallel::serial{});
    }
    void forward_batch(const Eigen::Ref<const Batch>& X, const Eigen::Ref<const Batch>& G, Eigen::Ref<Batch> Y,
                       Workspace& ws) const {
        self().forward_batch(X, G, Y, ws, parallel::serial{});
    }

    /// Allocates the output and a workspace: convenient, not for a serving loop.
    Batch forward_batch(const Eigen::Ref<const Batch>& X) const {
        Batch Y(self().out_size(), X.cols());
        Workspace ws;
        self().forward_batch(X, Y, ws);
        return Y;
    }
    Batch forward_batch(const Eigen::Ref<const Batch>& X, const Eigen::Ref<const Batch>& G) const {
        Batch Y(self().out_size(), X.cols());
        Workspace ws;
        self().forward_batch(X, G, Y, ws);
        return Y;
    }

protected:
    ~batch_overloads() = default;

private:
    const Derived& self() const noexcept { return static_cast<const Derived&>(*this); }
};

}  // namespace treegate::detail

#endif
