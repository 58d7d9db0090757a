// treegate/workspace.hpp — reusable scratch memory for batched forward passes.
// One type for every layer, so a caller (or a sequential model) keeps one and reuses it.
#ifndef TREEGATE_WORKSPACE_HPP
#define TREEGATE_WORKSPACE_HPP

#include "config.hpp"
#include "schedule.hpp"

#include <vector>

namespace treegate {

/// A matrix-shaped view on a buffer that only grows: asking for a smaller shape after a larger
/// one reuses the memory, so the batch path allocates only when a batch is the largest yet.
template <class Scalar>
class scratch_matrix {
public:
    using map_type = Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>>;

    /// A rows x cols view (contents unspecified), valid until the next call.
    map_type view(index_t rows, index_t cols) {
        const auto need = static_cast<std::size_t>(rows * cols);
        if (need > buffer_.size()) buffer_.resize(need);
        return map_type(buffer_.data(), rows, cols);
    }

private:
    std::vector<Scalar> buffer_;
};

/// Scratch buffers that grow to the largest batch seen and are then reused without allocation.
/// Not thread-safe: use one workspace per thread.
template <class Scalar>
struct workspace {
    using matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

    std::vector<leaf_t> codes;
    std::vector<unsigned char> bits;
    leaf_schedule leaves;
    level_schedule levels;
    scratch_matrix<Scalar> a, b, c;  // gathered inputs, permuted outputs, hidden activations
    scratch_matrix<Scalar> d;        // per-part outputs of composite layers (blocked trees)

    /// Resizes `m` only if its shape changes, so a steady batch size reuses the same memory.
    static void ensure(matrix& m, index_t rows, index_t cols) {
        if (m.rows() != rows || m.cols() != cols) m.resize(rows, cols);
    }
};

}  // namespace treegate

#endif
