// treegate/workspace.hpp — reusable scratch memory for batched forward passes.
// One type for every layer, so a caller (or a sequential model) keeps one and reuses it.
#ifndef TREEGATE_WORKSPACE_HPP
#define TREEGATE_WORKSPACE_HPP

#include "config.hpp"
#include "schedule.hpp"

#include <vector>

namespace treegate {

/// Scratch buffers that grow to the largest batch seen and are then reused without allocation.
/// Not thread-safe: use one workspace per thread.
template <class Scalar>
struct workspace {
    using matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

    std::vector<leaf_t> codes;
    std::vector<unsigned char> bits;
    leaf_schedule leaves;
    level_schedule levels;
    matrix a, b, c;  // gathered inputs, permuted outputs, hidden activations

    /// Resizes `m` only if its shape changes, so a steady batch size reuses the same memory.
    static void ensure(matrix& m, index_t rows, index_t cols) {
        if (m.rows() != rows || m.cols() != cols) m.resize(rows, cols);
    }
};

}  // namespace treegate

#endif
