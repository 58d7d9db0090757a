// treegate/bf16.hpp — the bfloat16 storage type and its exact conversions to and from float.
// Bottom of the reduced-precision stack: kernels and tree_linear_bf16 store weights as `bf16`.
//
// bfloat16 is the top half of an IEEE float (sign, 8 exponent bits, 7 mantissa bits): the same
// range as float, 8 significant bits. Widening is exact (append 16 zero bits); narrowing rounds
// to nearest, ties to even, so a rounded normal value is within half an ulp of the float: a
// relative 2^-8 at most (the unit roundoff of an 8-bit significand, approached just above a
// power of two; 1 + 2^-8 is a tie that rounds to 1). The type only stores: arithmetic is done
// in float after widening.
#ifndef TREEGATE_BF16_HPP
#define TREEGATE_BF16_HPP

#include "config.hpp"

#include <cstdint>
#include <cstring>

namespace treegate {

/// A bfloat16 value as its 16 bits. Trivially copyable and exactly two bytes, so an array of
/// them is the packed storage the kernels stream.
struct bf16 {
    std::uint16_t bits;
};
static_assert(sizeof(bf16) == 2, "bf16 must be two bytes");

namespace detail {

/// float -> bfloat16 bits, round to nearest even. NaN stays a (quiet) NaN with the same sign;
/// infinities stay infinite; finite values above the largest bfloat16 round to infinity, as
/// round-to-nearest prescribes.
inline std::uint16_t float_to_bf16_bits(float f) noexcept {
    std::uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x0040u);
    const std::uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
    return static_cast<std::uint16_t>((u + rounding) >> 16);
}

/// True when `f` is finite but rounds to a bfloat16 infinity: |f| at or above the midpoint
/// between the largest bfloat16 and 2^128. Narrowing such a weight would change it silently.
inline bool float_overflows_bf16(float f) noexcept {
    std::uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return (u & 0x7f800000u) != 0x7f800000u && (float_to_bf16_bits(f) & 0x7fffu) == 0x7f80u;
}

/// bfloat16 bits -> float, exact.
inline float bf16_bits_to_float(std::uint16_t b) noexcept {
    const std::uint32_t u = static_cast<std::uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

}  // namespace detail

/// `f` rounded to the nearest bfloat16 (ties to even). A finite `f` beyond the largest
/// bfloat16 (bf16_max, plus half an ulp) becomes infinite, as round-to-nearest prescribes; the
/// layers and loaders refuse that unless told to saturate (treegate::overflow).
inline bf16 to_bf16(float f) noexcept { return bf16{detail::float_to_bf16_bits(f)}; }

/// The largest finite bfloat16, 0x7f7f: (2 - 2^-7) 2^127, about 3.3895314e38.
inline constexpr bf16 bf16_max{0x7f7f};

/// What a conversion to a narrower weight storage does with a finite value that the storage
/// cannot hold (it would round to infinity): `refuse` raises an error naming the value (the
/// default everywhere), `saturate` stores the largest finite value of the same sign.
enum class overflow { refuse, saturate };

/// to_bf16, except that a finite `f` which would round to infinity becomes +-bf16_max.
inline bf16 to_bf16_saturated(float f) noexcept {
    if (!detail::float_overflows_bf16(f)) return to_bf16(f);
    return bf16{static_cast<std::uint16_t>(f < 0 ? 0xff7fu : 0x7f7fu)};
}

/// The exact float value of `b`.
inline float to_float(bf16 b) noexcept { return detail::bf16_bits_to_float(b.bits); }

}  // namespace treegate

#endif
