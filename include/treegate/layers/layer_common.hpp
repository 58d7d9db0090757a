// treegate/layers/layer_common.hpp — size checks and type aliases shared by every layer.
// Only layers include it; it holds no math.
#ifndef TREEGATE_LAYERS_LAYER_COMMON_HPP
#define TREEGATE_LAYERS_LAYER_COMMON_HPP

#include "../config.hpp"
#include "../error.hpp"

#include <type_traits>

namespace treegate {

/// A batch: features x examples, column-major, one example per column.
template <class Scalar>
using matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

namespace detail {

/// Resolves a size given at run time against a compile-time one (dynamic accepts anything > 0).
inline index_t resolve_size(const char* layer, const char* what, int fixed, index_t given) {
    check_config(given > 0, layer, ": ", what, " must be positive, got ", given);
    check_config(fixed == dynamic || given == fixed, layer, ": ", what, " is fixed at ", fixed, " but ", given,
                 " was given");
    return given;
}

inline int resolve_depth(const char* layer, int fixed, int given) {
    check_config(given >= 0 && given <= max_depth, layer, ": depth ", given, " is outside [0, ", max_depth,
                 "] (the tree would have 2^(depth+1)-1 nodes)");
    check_config(fixed == dynamic || given == fixed, layer, ": depth is fixed at ", fixed, " but ", given,
                 " was given");
    return given;
}

/// The checks every batched forward makes before touching data.
inline void check_batch(const char* layer, index_t in, index_t x_rows, index_t x_cols, index_t out, index_t y_rows,
                        index_t y_cols) {
    check_shape(x_rows == in, layer, ": input batch has ", x_rows, " rows, expected ", in);
    check_shape(y_rows == out && y_cols == x_cols, layer, ": output batch is ", y_rows, " x ", y_cols, ", expected ", out,
                " x ", x_cols);
}

inline void check_vector(const char* layer, const char* what, index_t size, index_t expected) {
    check_shape(size == expected, layer, ": ", what, " has ", size, " entries, expected ", expected);
}

}  // namespace detail
}  // namespace treegate

#endif
