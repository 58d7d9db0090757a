// How treegate's unit tests configure Eigen; included first by test_support.hpp (which every test
// file includes first) and first in the precompiled header of treegate_tests.
#ifndef TREEGATE_TESTS_TEST_EIGEN_CONFIG_HPP
#define TREEGATE_TESTS_TEST_EIGEN_CONFIG_HPP

// Every test file includes this header first (through test_support.hpp), so all translation
// units see Eigen configured the same way (one definition of every inline Eigen function).
// Two settings:
// - EIGEN_RUNTIME_NO_MALLOC lets the allocation tests forbid Eigen's own heap use, which goes to
//   std::malloc and is invisible to a replaced operator new.
// - eigen_assert stays active even with NDEBUG, so index checks inside the layers run in every
//   build type; a forbidden Eigen allocation is counted instead of aborting, so that a test can
//   report it with CHECK.
#define EIGEN_RUNTIME_NO_MALLOC
#ifndef eigen_assert
#define eigen_assert(x) ((x) ? static_cast<void>(0) : ::tg_test::eigen_assert_failed(#x, __FILE__, __LINE__))
#endif

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace tg_test {

/// Allocations Eigen attempted while set_is_malloc_allowed(false) was in force.
inline std::atomic<long> eigen_forbidden_mallocs{0};

[[noreturn]] inline void eigen_assert_abort(const char* expr, const char* file, int line) {
    std::fprintf(stderr, "eigen_assert failed: %s at %s:%d\n", expr, file, line);
    std::abort();
}

inline void eigen_assert_failed(const char* expr, const char* file, int line) {
    if (std::strstr(expr, "heap allocation is forbidden") != nullptr) {
        eigen_forbidden_mallocs.fetch_add(1, std::memory_order_relaxed);
        return;
    }
    eigen_assert_abort(expr, file, line);
}

}  // namespace tg_test

#endif  // TREEGATE_TESTS_TEST_EIGEN_CONFIG_HPP
