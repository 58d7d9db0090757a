// The one switch between Catch2 v3 (where installed) and v2 (Debian 12 ships 2.13.10).
// Tests include only this header and use names valid in both: Catch::Approx, Catch::Matchers::…
#ifndef TREEGATE_TESTS_CATCH_COMPAT_HPP
#define TREEGATE_TESTS_CATCH_COMPAT_HPP

#if defined(TREEGATE_CATCH2_V3)
#include <catch2/catch_all.hpp>
#else
#include <catch2/catch.hpp>

// v2 names the scalar matcher Catch::Detail::Approx (and ::Approx), and `Catch::Approx` would
// find the std::vector matcher Catch::Matchers::Approx through a using-directive. v3 names it
// Catch::Approx; declaring that name here makes the v3 spelling work with v2 too.
namespace Catch {
using Detail::Approx;
}  // namespace Catch
#endif

#endif  // TREEGATE_TESTS_CATCH_COMPAT_HPP
