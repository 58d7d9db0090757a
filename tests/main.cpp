// Catch2 v2 main for treegate_tests; with v3 the build links Catch2::Catch2WithMain instead.
// Kept in its own translation unit so that the large v2 runner is compiled once.
#if !defined(TREEGATE_CATCH2_V3)
#define CATCH_CONFIG_MAIN
#include "catch_compat.hpp"
#endif
