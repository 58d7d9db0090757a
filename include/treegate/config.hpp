// treegate/config.hpp — version, index types and library-wide limits.
// Bottom of the include graph: every other treegate header includes this one.
#ifndef TREEGATE_CONFIG_HPP
#define TREEGATE_CONFIG_HPP

#include <Eigen/Core>

#include <cstdint>

#define TREEGATE_VERSION_MAJOR 0
#define TREEGATE_VERSION_MINOR 1
#define TREEGATE_VERSION_PATCH 0

namespace treegate {

/// Sizes and indices, the same type Eigen uses.
using index_t = Eigen::Index;

/// A root-to-leaf path written as D bits, most significant bit first (the bit of level 1).
using leaf_t = std::uint32_t;

/// Marks a size chosen at run time, as in Eigen.
inline constexpr int dynamic = Eigen::Dynamic;

/// Deepest tree a layer accepts: leaf codes are 32-bit and node indices must fit an int32.
inline constexpr int max_depth = 30;

/// Weight blocks start on this boundary (bytes): one cache line, one AVX-512 register.
inline constexpr std::size_t block_alignment = 64;

constexpr const char* version_string() noexcept { return "0.1.0"; }

}  // namespace treegate

#endif
