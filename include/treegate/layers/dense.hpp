// treegate/layers/dense.hpp — an ordinary fully connected layer, y = W x + b.
// The baseline treegate is measured against, and glue for networks built around tree layers.
#ifndef TREEGATE_LAYERS_DENSE_HPP
#define TREEGATE_LAYERS_DENSE_HPP

#include "../detail/aligned_buffer.hpp"
#include "../detail/random.hpp"
#include "../kernels/policy.hpp"
#include "../parallel/executor.hpp"
#include "../workspace.hpp"
#include "batch_overloads.hpp"
#include "layer_common.hpp"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>

namespace treegate {

template <class Scalar, int In = dynamic, int Out = dynamic, class Policy = kernels::default_policy>
class dense : public detail::batch_overloads<dense<Scalar, In, Out, Policy>, matrix<Scalar>, workspace<Scalar>> {
    static_assert(std::is_floating_point_v<Scalar>, "dense: Scalar must be a floating-point type");
    static_assert(In == dynamic || In > 0, "dense: In must be positive or dynamic");
    static_assert(Out == dynamic || Out > 0, "dense: Out must be positive or dynamic");

public:
    using scalar_type = Scalar;
    using policy_type = Policy;
    using input_vector = Eigen::Matrix<Scalar, In, 1>;
    using output_vector = Eigen::Matrix<Scalar, Out, 1>;
    using batch = matrix<Scalar>;
    using weight_map = Eigen::Map<Eigen::Matrix<Scalar, Out, In>>;
    using const_weight_map = Eigen::Map<const Eigen::Matrix<Scalar, Out, In>>;
    using bias_map = Eigen::Map<Eigen::Matrix<Scalar, Out, 1>>;
    using const_bias_map = Eigen::Map<const Eigen::Matrix<Scalar, Out, 1>>;
    static constexpr const char* name = "dense";

    dense(index_t in, index_t out, bool bias = true)
        : in_(detail::resolve_size(name, "input size", In, in)),
          out_(detail::resolve_size(name, "output size", Out, out)),
          has_bias_(bias),
          weights_(detail::checked_mul(in_, out_, name, "parameter count"), name, footprint_of(in_, out_, bias)),
          biases_(bias ? out_ : 0, name, footprint_of(in_, out_, bias)) {
        kernels::prepare<Policy>();  // a bad TREEGATE_ISA is an exception here, not in a kernel
    }

    dense() : dense(In, Out) {
        static_assert(In != dynamic && Out != dynamic, "dense: the default constructor needs In and Out fixed");
    }

    dense(const dense&) = default;
    dense& operator=(const dense&) = default;
    /// Moving leaves the source empty: every size reads 0 and every call raises usage_error.
    dense(dense&& o) noexcept { *this = std::move(o); }
    dense& operator=(dense&& o) noexcept {
        if (this == &o) return *this;
        in_ = std::exchange(o.in_, 0);
        out_ = std::exchange(o.out_, 0);
        has_bias_ = std::exchange(o.has_bias_, false);
        weights_ = std::move(o.weights_);
        biases_ = std::move(o.biases_);
        return *this;
    }

    index_t in_size() const noexcept { return in_; }
    index_t out_size() const noexcept { return out_; }
    bool has_bias() const noexcept { return has_bias_; }
    index_t parameter_count() const noexcept { return in_ * out_ + (has_bias_ ? out_ : 0); }
    index_t macs_per_example() const noexcept { return in_ * out_; }
    /// Bytes the weights and the bias occupy.
    index_t memory_bytes() const noexcept { return weights_.bytes() + biases_.bytes(); }

    weight_map weight() {
        detail::check_live(name, in_ != 0);
        return weight_map(weights_.data(), out_, in_);
    }
    const_weight_map weight() const {
        detail::check_live(name, in_ != 0);
        return const_weight_map(weights_.data(), out_, in_);
    }
    bias_map bias() {
        check_bias();
        return bias_map(biases_.data(), out_);
    }
    const_bias_map bias() const {
        check_bias();
        return const_bias_map(biases_.data(), out_);
    }

    /// Uniform(-1/sqrt(in), 1/sqrt(in)), as PyTorch's nn.Linear.
    void initialize(std::uint64_t seed) noexcept {
        const double bound = 1.0 / std::sqrt(static_cast<double>(in_));
        detail::fill_uniform(weights_.data(), in_ * out_, bound, seed, 0);
        if (has_bias_) detail::fill_uniform(biases_.data(), out_, bound, seed, 1);
    }

    void forward(const Eigen::Ref<const input_vector>& x, Eigen::Ref<output_vector> y) const {
        detail::check_live(name, in_ != 0);
        detail::check_vector(name, "input", x.size(), in_);
        detail::check_vector(name, "output", y.size(), out_);
        detail::check_no_overlap(name, x, y);
        if (has_bias_)
            y = const_bias_map(biases_.data(), out_);
        else
            y.setZero();
        Policy::gemv(out_, in_, weights_.data(), out_, x.data(), y.data());
    }

    // The serial and the allocating overloads (layers/batch_overloads.hpp).
    using detail::batch_overloads<dense, matrix<Scalar>, workspace<Scalar>>::forward_batch;

    /// The batched forward on an executor: pieces of 256 examples, the same for any executor,
    /// so the output is bit-identical for any thread count.
    template <class Executor>
    void forward_batch(const Eigen::Ref<const batch>& X, Eigen::Ref<batch> Y, workspace<Scalar>& ws, Executor&& ex) const {
        constexpr index_t chunk = 256;
        detail::check_live(name, in_ != 0);
        detail::check_batch(name, in_, X.rows(), X.cols(), out_, Y.rows(), Y.cols());
        if (detail::rerun_on_copy(X, Y, ws, [&](const auto& C) { forward_batch(C, Y, ws, ex); })) return;
        parallel::for_each_chunk(ex, X.cols(), chunk, [&](index_t e0, index_t end, int) {
            const index_t m = end - e0;
            auto Yc = Y.middleCols(e0, m);
            if (has_bias_)
                Yc.colwise() = const_bias_map(biases_.data(), out_);
            else
                Yc.setZero();
            Policy::gemm(out_, in_, m, weights_.data(), out_, X.data() + e0 * X.outerStride(), X.outerStride(),
                         Y.data() + e0 * Y.outerStride(), Y.outerStride());
        });
    }

private:
    static detail::footprint footprint_of(index_t in, index_t out, bool bias) {
        const index_t wn = detail::checked_mul(in, out, name, "parameter count"), bn = bias ? out : 0;
        return {detail::checked_add(wn, bn, name, "parameter count"), detail::checked_bytes<Scalar>({wn, bn}, name)};
    }

    void check_bias() const {
        detail::check_live(name, in_ != 0);
        if (!has_bias_) detail::raise<usage_error>(name, ": the layer has no bias");
    }

    index_t in_ = 0, out_ = 0;
    bool has_bias_ = false;
    detail::aligned_buffer<Scalar> weights_, biases_;
};

}  // namespace treegate

#endif
