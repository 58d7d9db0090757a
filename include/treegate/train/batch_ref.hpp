// treegate/train/batch_ref.hpp — the batch argument types of the training functions.
// Non-deduced Eigen::Ref aliases, so a layer (or a loss's first argument) alone fixes Scalar.
#ifndef TREEGATE_TRAIN_BATCH_REF_HPP
#define TREEGATE_TRAIN_BATCH_REF_HPP

#include "../layers/layer_common.hpp"

namespace treegate::train::detail {

template <class T>
struct non_deduced {
    using type = T;
};

/// A writable batch (features x examples); plain matrices and blocks of them convert to it.
template <class Scalar>
using batch_ref = typename non_deduced<Eigen::Ref<matrix<Scalar>>>::type;

/// A read-only batch; any expression converts to it (evaluated into a temporary if needed).
template <class Scalar>
using const_batch_ref = typename non_deduced<Eigen::Ref<const matrix<Scalar>>>::type;

}  // namespace treegate::train::detail

#endif
