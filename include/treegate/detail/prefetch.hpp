// treegate/detail/prefetch.hpp — a portable software-prefetch hint over a byte range.
// Used by layers whose next reads are known before the loads can be issued (tree_feedforward's routed paths).
#ifndef TREEGATE_DETAIL_PREFETCH_HPP
#define TREEGATE_DETAIL_PREFETCH_HPP

#include "../config.hpp"

#include <cstddef>
#include <cstdint>

namespace treegate::detail {

/// Where a prefetched line should land: the nearest cache (used within a few hundred cycles) or
/// only the outer ones (used later, and not to evict what the current loop reads).
enum class prefetch_to { l1, l2 };

/// Hints that the `bytes` bytes from p will be read soon. A prefetch never faults, but a pointer
/// past an object is not formed: the lines are walked as integers. A no-op where the compiler has
/// no prefetch builtin.
template <prefetch_to Level = prefetch_to::l1>
inline void prefetch_range(const void* p, std::size_t bytes) noexcept {
#if defined(__GNUC__) || defined(__clang__)
    constexpr std::uintptr_t line = 64;
    const auto begin = reinterpret_cast<std::uintptr_t>(p);
    for (std::uintptr_t a = begin & ~(line - 1); a < begin + bytes; a += line)
        __builtin_prefetch(reinterpret_cast<const void*>(a), 0, Level == prefetch_to::l1 ? 3 : 2);
#else
    (void)p;
    (void)bytes;
#endif
}

}  // namespace treegate::detail

#endif
