// treegate/activation.hpp — the element-wise activations shared by layers and kernels.
// GELU is the exact erf form (PyTorch's default); the tanh approximation has its own name.
// Every activation maps NaN to NaN (as PyTorch does), so a bad input can never come out finite.
#ifndef TREEGATE_ACTIVATION_HPP
#define TREEGATE_ACTIVATION_HPP

#include "config.hpp"

#include <cmath>

namespace treegate {

enum class activation { identity, relu, gelu, gelu_tanh, tanh };

inline const char* to_string(activation a) noexcept {
    switch (a) {
        case activation::identity: return "identity";
        case activation::relu: return "relu";
        case activation::gelu: return "gelu";
        case activation::gelu_tanh: return "gelu_tanh";
        case activation::tanh: return "tanh";
    }
    return "unknown";
}

/// ReLU written as "not (v <= 0)" so that NaN, which fails every comparison, passes through
/// unchanged; -0 and the negatives still give +0.
template <class Scalar>
constexpr Scalar relu(Scalar v) noexcept {
    return v <= Scalar(0) ? Scalar(0) : v;
}

/// act(v) for one value.
template <class Scalar>
inline Scalar apply(activation a, Scalar v) noexcept {
    using std::erf;
    using std::tanh;
    switch (a) {
        case activation::identity: return v;
        case activation::relu: return relu(v);
        case activation::gelu: return Scalar(0.5) * v * (Scalar(1) + erf(v * Scalar(0.70710678118654752440)));
        case activation::gelu_tanh: {
            const Scalar c = Scalar(0.79788456080286535588);  // sqrt(2 / pi)
            return Scalar(0.5) * v * (Scalar(1) + tanh(c * (v + Scalar(0.044715) * v * v * v)));
        }
        case activation::tanh: return tanh(v);
    }
    return v;
}

/// act applied in place to n contiguous values.
template <class Scalar>
inline void apply_inplace(activation a, Scalar* v, index_t n) noexcept {
    switch (a) {
        case activation::identity: return;
        case activation::relu:
            for (index_t i = 0; i < n; ++i) v[i] = relu(v[i]);
            return;
        default:
            for (index_t i = 0; i < n; ++i) v[i] = apply(a, v[i]);
    }
}

}  // namespace treegate

#endif
