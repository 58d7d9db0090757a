// treegate/io/detail/dtype.hpp — the element types of safetensors files and their conversions
// (F32, F64, BF16, F16, I32, I64; little-endian bytes). Part of treegate/io/safetensors.hpp, below format.hpp.
#ifndef TREEGATE_IO_DETAIL_DTYPE_HPP
#define TREEGATE_IO_DETAIL_DTYPE_HPP

#include "../../bf16.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace treegate::safetensors {

/// Element type of the stored tensors. BF16 and F16 (IEEE half) are rounded to nearest even on
/// save. The integer types are only read, and only where a loader asks for an integer (such as
/// the tree depth PyTorch models store as I64): a weight stored as integers is refused.
enum class dtype { f32, f64, bf16, f16, i32, i64 };

inline const char* to_string(dtype t) noexcept {
    switch (t) {
        case dtype::f32: return "F32";
        case dtype::f64: return "F64";
        case dtype::bf16: return "BF16";
        case dtype::f16: return "F16";
        case dtype::i32: return "I32";
        case dtype::i64: return "I64";
    }
    return "?";
}

inline bool is_integer(dtype t) noexcept { return t == dtype::i32 || t == dtype::i64; }

namespace detail {

inline std::size_t dtype_bytes(dtype t) noexcept {
    return t == dtype::f64 || t == dtype::i64 ? 8 : t == dtype::f32 || t == dtype::i32 ? 4 : 2;
}

inline std::uint64_t read_le(const unsigned char* p, int bytes) noexcept {
    std::uint64_t v = 0;
    for (int k = bytes - 1; k >= 0; --k) v = (v << 8) | p[k];
    return v;
}

inline void write_le(std::vector<unsigned char>& out, std::uint64_t v, int bytes) {
    for (int k = 0; k < bytes; ++k) out.push_back(static_cast<unsigned char>((v >> (8 * k)) & 0xffu));
}

/// The bits of `from` read as a To (C++20's std::bit_cast).
template <class To, class From>
To bit_copy(const From& from) noexcept {
    static_assert(sizeof(To) == sizeof(From), "bit_copy needs types of one size");
    To to;
    std::memcpy(&to, &from, sizeof to);
    return to;
}

/// float -> bfloat16, round to nearest even; NaN stays a (quiet) NaN.
inline std::uint16_t float_to_bf16(float f) noexcept { return treegate::detail::float_to_bf16_bits(f); }

/// IEEE half bits -> double, exactly (every half is a double); NaN and infinities come through
/// as such, for the validator to refuse.
inline double f16_to_double(std::uint16_t h) noexcept {
    const double sign = (h & 0x8000u) ? -1.0 : 1.0;
    const int exponent = (h >> 10) & 0x1f;
    const int mantissa = h & 0x3ff;
    if (exponent == 0x1f)
        return mantissa ? std::numeric_limits<double>::quiet_NaN() : sign * std::numeric_limits<double>::infinity();
    if (exponent == 0) return sign * std::ldexp(static_cast<double>(mantissa), -24);  // zero or subnormal
    return sign * std::ldexp(static_cast<double>(mantissa + 0x400), exponent - 25);
}

/// Finite double -> IEEE half bits, rounded once to nearest even (a double rounded to float
/// first could round twice). A value that rounds beyond the largest half (65504) gives the
/// bits of infinity, which the writer refuses.
inline std::uint16_t double_to_f16(double d) noexcept {
    const std::uint16_t sign = std::signbit(d) ? 0x8000u : 0u;
    const double a = std::fabs(d);
    if (a == 0.0) return sign;
    int e = 0;
    std::frexp(a, &e);                            // a = f 2^e, f in [0.5, 1)
    const int unit = std::max(e - 1, -14) - 10;  // exponent of one unit in the last place
    if (unit > 5) return static_cast<std::uint16_t>(sign | 0x7c00u);
    const double q = std::ldexp(a, -unit);        // exact: a power-of-two scaling to [0, 2048)
    const double whole = std::floor(q);
    auto m = static_cast<std::uint32_t>(whole);
    const double rest = q - whole;
    if (rest > 0.5 || (rest == 0.5 && (m & 1u))) ++m;
    // m counts units and holds the implicit leading bit of a normal (1024), so adding it to the
    // exponent field below carries a rounding up to 2048 into the next binade, a subnormal that
    // rounds up to 1024 into the smallest normal, and the largest binade into infinity's bits.
    const std::uint32_t bits = (static_cast<std::uint32_t>(unit + 24) << 10) + m;
    if (bits >= 0x7c00u) return static_cast<std::uint16_t>(sign | 0x7c00u);
    return static_cast<std::uint16_t>(sign | bits);
}

/// A double narrowed to float without the undefined behaviour of an out-of-range conversion.
inline bool fits_float(double d) noexcept {
    return !std::isfinite(d) || std::fabs(d) <= static_cast<double>(std::numeric_limits<float>::max());
}

/// One stored floating-point element (F64, F32, F16 or BF16) at p, exactly as a double.
inline double decode_float(dtype t, const unsigned char* p) noexcept {
    if (t == dtype::f64) return bit_copy<double>(read_le(p, 8));
    if (t == dtype::f32) return static_cast<double>(bit_copy<float>(static_cast<std::uint32_t>(read_le(p, 4))));
    if (t == dtype::f16) return f16_to_double(static_cast<std::uint16_t>(read_le(p, 2)));
    return static_cast<double>(bit_copy<float>(static_cast<std::uint32_t>(read_le(p, 2) << 16)));
}

}  // namespace detail
}  // namespace treegate::safetensors

#endif
