// treegate/kernels/paths.hpp — the optional policy kernel axpy_paths (several examples' path sums
// at once) and its fallback on axpy_many, for policies that do not provide it.
#ifndef TREEGATE_KERNELS_PATHS_HPP
#define TREEGATE_KERNELS_PATHS_HPP

#include "../config.hpp"

#include <cstddef>
#include <type_traits>
#include <utility>

namespace treegate::kernels {

/// axpy_paths(n, m, count, shared, alpha, x, ld, ys): for k < m,
///   ys[k][i] += sum_{j < count} alpha[k ld + j] * x[k ld + j][i],
/// giving each ys[k] the bits Policy::axpy_many(n, count, alpha + k ld, x + k ld, ys[k]) gives
/// it, so that grouping examples never changes a result. The caller promises that the first
/// `shared` vectors are the same for every example (x[k ld + j] == x[j], j < shared): the SIMD
/// policies load each of them once for the whole group and hold the group's y chunks in
/// registers. This is the one call a policy may leave out; then the group runs as m axpy_many.
template <class Policy, class Scalar>
void axpy_paths_by_example(index_t n, int m, int count, const Scalar* alpha, const Scalar* const* x, index_t ld,
                           Scalar* const* ys) noexcept {
    for (int k = 0; k < m; ++k) {
        const auto at = static_cast<std::ptrdiff_t>(k) * ld;
        Policy::axpy_many(n, count, alpha + at, x + at, ys[k]);
    }
}

namespace detail {
template <class Policy, class Scalar, class = void>
struct has_axpy_paths : std::false_type {};
template <class Policy, class Scalar>
struct has_axpy_paths<Policy, Scalar,
                      std::void_t<decltype(Policy::axpy_paths(index_t{}, 0, 0, 0, std::declval<const Scalar*>(),
                                                              std::declval<const Scalar* const*>(), index_t{},
                                                              std::declval<Scalar* const*>()))>> : std::true_type {};
}  // namespace detail

/// Policy's axpy_paths where it has one, else one axpy_many per example (same bits either way).
template <class Policy, class Scalar>
void axpy_paths(index_t n, int m, int count, int shared, const Scalar* alpha, const Scalar* const* x, index_t ld,
                Scalar* const* ys) noexcept {
    if constexpr (detail::has_axpy_paths<Policy, Scalar>::value)
        Policy::axpy_paths(n, m, count, shared, alpha, x, ld, ys);
    else
        axpy_paths_by_example<Policy>(n, m, count, alpha, x, ld, ys);
}

}  // namespace treegate::kernels

#endif
