// treegate/workspace.hpp — reusable scratch memory for batched forward passes, named by what it
// holds. One type for every layer and the exec/ engine, so a caller keeps one and reuses it.
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

/// One piece of a level's work in a threaded batch: rows [row0, row0 + rows) of the block of
/// the level's k-th node, over that node's group of examples.
struct node_piece {
    index_t node = 0;
    index_t row0 = 0;
    index_t rows = 0;
};

/// Scratch buffers that grow to the largest batch seen and are then reused without allocation.
/// Not thread-safe: use one workspace per thread. A batched forward that runs on an executor
/// with several workers uses this workspace for worker 0 and `worker(w)` for the others.
template <class Scalar>
struct workspace {
    using matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

    std::vector<leaf_t> codes;
    std::vector<unsigned char> bits;
    leaf_schedule leaves;
    level_schedule levels;
    // Each scratch matrix has one owner at a time; a layer that calls another layer's batch
    // forward (sliced_tree_linear) uses only members the inner layer never touches.
    scratch_matrix<Scalar> gathered_input;     // input columns in schedule order (exec/grouped.hpp, tree_feedforward)
    scratch_matrix<Scalar> permuted_output;    // their outputs in the same order, before the scatter back
    scratch_matrix<Scalar> hidden;             // tree_feedforward: a group's hidden activations
    scratch_matrix<Scalar> route_activations;  // tree_feedforward fused sorted path: act(pre) of the top levels
    scratch_matrix<Scalar> part_output;        // sliced_tree_linear (sum): one tree's output before adding it up
    scratch_matrix<Scalar> input;              // a copy of a batch whose output overlaps it (detail::rerun_on_copy)
    std::vector<node_piece> pieces;            // the current level's pieces in a threaded batch (exec/grouped.hpp)

    /// Makes sure workers 1 .. count-1 have their own scratch (call before running them).
    void reserve_workers(int count) {
        if (count > 1 && others_.size() < static_cast<std::size_t>(count - 1)) others_.resize(static_cast<std::size_t>(count - 1));
    }

    /// Scratch of worker w: this workspace for w = 0, a separate one for the others.
    workspace& worker(int w) noexcept {
        return w == 0 ? *this : others_[static_cast<std::size_t>(w - 1)];
    }

    /// Resizes `m` only if its shape changes, so a steady batch size reuses the same memory.
    static void ensure(matrix& m, index_t rows, index_t cols) {
        if (m.rows() != rows || m.cols() != cols) m.resize(rows, cols);
    }

private:
    std::vector<workspace> others_;  // std::vector allows the incomplete element type (C++17)
};

}  // namespace treegate

#endif
