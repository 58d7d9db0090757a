// treegate/train/loss.hpp — losses over a batch (features x examples) and their gradients.
// The start of every backward pass: the gradient they return is the dY fed to train/backward.hpp.
#ifndef TREEGATE_TRAIN_LOSS_HPP
#define TREEGATE_TRAIN_LOSS_HPP

#include "../error.hpp"
#include "../layers/layer_common.hpp"
#include "batch_ref.hpp"

#include <algorithm>
#include <cmath>
#include <type_traits>

namespace treegate::train {

namespace detail {

// Mean over the batch of log(sum_k exp z_k) - z_label; when `grad` is given it receives
// (softmax(z) - onehot(label)) / n. The maximum is subtracted first, so no exp overflows.
// Sums run in double, so a float batch loses nothing to the reduction.
template <class Scalar, class Label>
Scalar softmax_cross_entropy_impl(const const_batch_ref<Scalar>& logits, const Label* labels, batch_ref<Scalar>* grad) {
    static_assert(std::is_integral_v<Label>, "softmax_cross_entropy: labels must be integers");
    const index_t classes = logits.rows(), n = logits.cols();
    treegate::detail::check_shape(classes > 0, "softmax_cross_entropy: logits have no rows");
    if (grad != nullptr)
        treegate::detail::check_shape(grad->rows() == classes && grad->cols() == n,
                                      "softmax_cross_entropy: gradient is ", grad->rows(), " x ", grad->cols(),
                                      ", expected ", classes, " x ", n);
    if (n == 0) return Scalar(0);
    for (index_t e = 0; e < n; ++e) {
        const auto label = static_cast<long long>(labels[e]);
        treegate::detail::check_shape(label >= 0 && label < static_cast<long long>(classes),
                                      "softmax_cross_entropy: label ", label, " of example ", e, " is outside [0, ",
                                      classes, ")");
    }
    const double inv_n = 1.0 / static_cast<double>(n);
    double total = 0;
    for (index_t e = 0; e < n; ++e) {
        const index_t label = static_cast<index_t>(labels[e]);
        double zmax = static_cast<double>(logits(0, e));
        for (index_t k = 1; k < classes; ++k) zmax = std::max(zmax, static_cast<double>(logits(k, e)));
        double sum = 0;
        for (index_t k = 0; k < classes; ++k) sum += std::exp(static_cast<double>(logits(k, e)) - zmax);
        const double log_sum = std::log(sum);
        total += log_sum + zmax - static_cast<double>(logits(label, e));
        if (grad != nullptr) {
            for (index_t k = 0; k < classes; ++k) {
                const double p = std::exp(static_cast<double>(logits(k, e)) - zmax - log_sum);
                (*grad)(k, e) = static_cast<Scalar>((p - (k == label ? 1.0 : 0.0)) * inv_n);
            }
        }
    }
    return static_cast<Scalar>(total * inv_n);
}

template <class Scalar>
Scalar mean_squared_error_impl(const const_batch_ref<Scalar>& Y, const const_batch_ref<Scalar>& T, batch_ref<Scalar>* grad) {
    treegate::detail::check_shape(Y.rows() == T.rows() && Y.cols() == T.cols(), "mean_squared_error: prediction is ",
                                  Y.rows(), " x ", Y.cols(), " but target is ", T.rows(), " x ", T.cols());
    if (grad != nullptr)
        treegate::detail::check_shape(grad->rows() == Y.rows() && grad->cols() == Y.cols(),
                                      "mean_squared_error: gradient is ", grad->rows(), " x ", grad->cols(),
                                      ", expected ", Y.rows(), " x ", Y.cols());
    const index_t count = Y.size();
    if (count == 0) return Scalar(0);
    const double inv = 1.0 / static_cast<double>(count);
    double total = 0;
    for (index_t e = 0; e < Y.cols(); ++e)
        for (index_t r = 0; r < Y.rows(); ++r) {
            const double d = static_cast<double>(Y(r, e)) - static_cast<double>(T(r, e));
            total += d * d;
            if (grad != nullptr) (*grad)(r, e) = static_cast<Scalar>(2.0 * d * inv);
        }
    return static_cast<Scalar>(total * inv);
}

}  // namespace detail

/// Softmax cross-entropy from logits (classes x examples) and integer labels (one per example,
/// in [0, classes)): the mean over the batch of -log softmax(z)_label. Writes dL/dlogits =
/// (softmax(z) - onehot) / n into `grad`. Throws shape_error on a bad label or shape.
template <class Derived, class Label>
typename Derived::Scalar softmax_cross_entropy(const Eigen::MatrixBase<Derived>& logits, const Label* labels,
                                               detail::batch_ref<typename Derived::Scalar> grad) {
    using Scalar = typename Derived::Scalar;
    return detail::softmax_cross_entropy_impl<Scalar, Label>(logits, labels, &grad);
}

/// The loss alone (evaluation).
template <class Derived, class Label>
typename Derived::Scalar softmax_cross_entropy(const Eigen::MatrixBase<Derived>& logits, const Label* labels) {
    using Scalar = typename Derived::Scalar;
    return detail::softmax_cross_entropy_impl<Scalar, Label>(logits, labels, nullptr);
}

/// Mean squared error over every entry, as PyTorch's MSELoss: sum (y - t)^2 / (rows * cols).
/// Writes dL/dY = 2 (y - t) / (rows * cols) into `grad`.
template <class Derived>
typename Derived::Scalar mean_squared_error(const Eigen::MatrixBase<Derived>& Y,
                                            const detail::const_batch_ref<typename Derived::Scalar>& T,
                                            detail::batch_ref<typename Derived::Scalar> grad) {
    using Scalar = typename Derived::Scalar;
    return detail::mean_squared_error_impl<Scalar>(Y, T, &grad);
}

template <class Derived>
typename Derived::Scalar mean_squared_error(const Eigen::MatrixBase<Derived>& Y,
                                            const detail::const_batch_ref<typename Derived::Scalar>& T) {
    using Scalar = typename Derived::Scalar;
    return detail::mean_squared_error_impl<Scalar>(Y, T, nullptr);
}

/// Examples whose largest logit is at their label (the first maximum wins a tie): accuracy is
/// count_correct / n. Labels are not range-checked beyond what a comparison needs.
template <class Derived, class Label>
index_t count_correct(const Eigen::MatrixBase<Derived>& logits, const Label* labels) {
    static_assert(std::is_integral_v<Label>, "count_correct: labels must be integers");
    index_t correct = 0;
    for (index_t e = 0; e < logits.cols(); ++e) {
        index_t best = 0;
        for (index_t k = 1; k < logits.rows(); ++k)
            if (logits(k, e) > logits(best, e)) best = k;
        if (static_cast<long long>(best) == static_cast<long long>(labels[e])) ++correct;
    }
    return correct;
}

}  // namespace treegate::train

#endif
