// treegate/train/data.hpp — seeded shuffling of example indices and gathering of mini-batches.
// Uses treegate's own splitmix64 (detail/random.hpp), so an epoch's order is the same everywhere.
#ifndef TREEGATE_TRAIN_DATA_HPP
#define TREEGATE_TRAIN_DATA_HPP

#include "../detail/random.hpp"
#include "../error.hpp"
#include "../layers/layer_common.hpp"
#include "batch_ref.hpp"

#include <cstdint>
#include <vector>

namespace treegate::train {

/// Uniform integer in [0, bound) for bound >= 1: rejection sampling, so there is no modulo bias.
inline std::uint64_t uniform_below(treegate::detail::rng& r, std::uint64_t bound) noexcept {
    // 2^64 mod bound: draws below it would make small residues more likely.
    const std::uint64_t threshold = (std::uint64_t{0} - bound) % bound;
    for (;;) {
        const std::uint64_t x = r.next();
        if (x >= threshold) return x % bound;
    }
}

/// Shuffles idx[0..n) in place (Fisher-Yates) with stream `stream` of `seed`; pass the epoch
/// number as the stream to get a different, reproducible order per epoch.
inline void shuffle_indices(index_t* idx, index_t n, std::uint64_t seed, std::uint64_t stream) noexcept {
    treegate::detail::rng r(seed, stream);
    for (index_t i = n - 1; i > 0; --i) {
        const auto j = static_cast<index_t>(uniform_below(r, static_cast<std::uint64_t>(i) + 1));
        const index_t t = idx[i];
        idx[i] = idx[j];
        idx[j] = t;
    }
}

/// A random permutation of 0..n-1 for (seed, stream).
inline std::vector<index_t> shuffled_indices(index_t n, std::uint64_t seed, std::uint64_t stream) {
    treegate::detail::check_config(n >= 0, "shuffled_indices: negative count ", n);
    std::vector<index_t> idx(static_cast<std::size_t>(n));
    for (index_t i = 0; i < n; ++i) idx.data()[i] = i;
    shuffle_indices(idx.data(), n, seed, stream);
    return idx;
}

/// out.col(k) = X.col(idx[k]) for k < count: the mini-batch of the examples idx[0..count).
template <class Derived>
void gather_columns(const Eigen::MatrixBase<Derived>& X, const index_t* idx, index_t count,
                    detail::batch_ref<typename Derived::Scalar> out) {
    treegate::detail::check_shape(out.rows() == X.rows() && out.cols() == count, "gather_columns: output is ",
                                  out.rows(), " x ", out.cols(), ", expected ", X.rows(), " x ", count);
    for (index_t k = 0; k < count; ++k) {
        const index_t e = idx[k];
        treegate::detail::check_shape(e >= 0 && e < X.cols(), "gather_columns: index ", e, " is outside [0, ", X.cols(),
                                      ")");
        out.col(k) = X.col(e);
    }
}

}  // namespace treegate::train

#endif
