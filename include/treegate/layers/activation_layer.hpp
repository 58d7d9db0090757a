// treegate/layers/activation_layer.hpp — an element-wise activation as a layer of its own.
// Lets sequential models put ReLU/GELU/tanh between linear and tree layers.
#ifndef TREEGATE_LAYERS_ACTIVATION_LAYER_HPP
#define TREEGATE_LAYERS_ACTIVATION_LAYER_HPP

#include "../activation.hpp"
#include "../parallel/executor.hpp"
#include "../workspace.hpp"
#include "batch_overloads.hpp"
#include "layer_common.hpp"

#include <algorithm>
#include <type_traits>
#include <utility>

namespace treegate {

template <class Scalar, int Size = dynamic>
class activation_layer : public detail::batch_overloads<activation_layer<Scalar, Size>, matrix<Scalar>, workspace<Scalar>> {
    static_assert(std::is_floating_point_v<Scalar>, "activation_layer: Scalar must be a floating-point type");
    static_assert(Size == dynamic || Size > 0, "activation_layer: Size must be positive or dynamic");

public:
    using scalar_type = Scalar;
    using input_vector = Eigen::Matrix<Scalar, Size, 1>;
    using output_vector = Eigen::Matrix<Scalar, Size, 1>;
    using batch = matrix<Scalar>;
    static constexpr const char* name = "activation_layer";

    activation_layer(activation act, index_t size) : act_(act), size_(detail::resolve_size(name, "size", Size, size)) {}

    activation_layer(const activation_layer&) = default;
    activation_layer& operator=(const activation_layer&) = default;
    /// Moving leaves the source empty (size 0), like the layers with weights: calls raise usage_error.
    activation_layer(activation_layer&& o) noexcept : act_(o.act_), size_(std::exchange(o.size_, 0)) {}
    activation_layer& operator=(activation_layer&& o) noexcept {
        if (this == &o) return *this;
        act_ = o.act_;
        size_ = std::exchange(o.size_, 0);
        return *this;
    }

    activation kind() const noexcept { return act_; }
    index_t in_size() const noexcept { return size_; }
    index_t out_size() const noexcept { return size_; }
    index_t parameter_count() const noexcept { return 0; }
    index_t memory_bytes() const noexcept { return 0; }
    index_t macs_per_example() const noexcept { return 0; }
    void initialize(std::uint64_t /*seed*/) noexcept {}

    void forward(const Eigen::Ref<const input_vector>& x, Eigen::Ref<output_vector> y) const {
        detail::check_live(name, size_ != 0);
        detail::check_vector(name, "input", x.size(), size_);
        detail::check_vector(name, "output", y.size(), size_);
        if (x.data() != y.data()) detail::check_no_overlap(name, x, y);  // in place is fine
        y = x;
        apply_inplace(act_, y.data(), size_);
    }

    // The serial and the allocating overloads (layers/batch_overloads.hpp).
    using detail::batch_overloads<activation_layer, matrix<Scalar>, workspace<Scalar>>::forward_batch;

    /// The batched forward on an executor (pieces of 256 examples; element-wise, so any split
    /// gives the same bits).
    template <class Executor>
    void forward_batch(const Eigen::Ref<const batch>& X, Eigen::Ref<batch> Y, workspace<Scalar>& ws, Executor&& ex) const {
        constexpr index_t chunk = 256;
        detail::check_live(name, size_ != 0);
        detail::check_batch(name, size_, X.rows(), X.cols(), size_, Y.rows(), Y.cols());
        // Element-wise: in place (the very same storage) is safe, any other overlap is not.
        const bool in_place = X.data() == Y.data() && X.outerStride() == Y.outerStride();
        if (!in_place && detail::rerun_on_copy(X, Y, ws, [&](const auto& C) { forward_batch(C, Y, ws, ex); })) return;
        parallel::for_each_chunk(ex, X.cols(), chunk, [&](index_t begin, index_t end, int) {
            for (index_t e = begin; e < end; ++e) {
                Y.col(e) = X.col(e);
                apply_inplace(act_, Y.col(e).data(), size_);
            }
        });
    }

private:
    activation act_;
    index_t size_;
};

}  // namespace treegate

#endif
