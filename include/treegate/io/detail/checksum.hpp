// treegate/io/detail/checksum.hpp — the CRC-32 (zlib's) of a file's tensor data and its text form
// in treegate's __metadata__. Part of treegate/io/safetensors.hpp; the reason io/ links zlib.
#ifndef TREEGATE_IO_DETAIL_CHECKSUM_HPP
#define TREEGATE_IO_DETAIL_CHECKSUM_HPP

#include <zlib.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace treegate::safetensors::detail {

/// Metadata key of the checksum. safetensors itself has none, so a file changed in place while
/// it is read would otherwise load as a valid-looking model with wrong weights.
inline constexpr const char* checksum_key = "data_crc32";

/// Digits of the text form: fixed, so that the header's length does not depend on the value.
inline constexpr std::size_t checksum_digits = 8;

/// The CRC-32 of data that continues data whose CRC-32 is `crc` (0 before any data): a file
/// written or read in pieces.
inline std::uint32_t crc32_update(std::uint32_t crc, const unsigned char* p, std::uint64_t n) noexcept {
    // zlib's length is a uInt (32 bits on common platforms): feed larger data in pieces.
    constexpr std::uint64_t piece = std::uint64_t{1} << 30;
    uLong c = crc;
    while (n > 0) {
        const auto len = static_cast<uInt>(n < piece ? n : piece);
        c = ::crc32(c, p, len);
        p += len;
        n -= len;
    }
    return static_cast<std::uint32_t>(c);
}

inline std::uint32_t crc32_of(const unsigned char* p, std::uint64_t n) noexcept { return crc32_update(0, p, n); }

/// Eight lowercase hexadecimal digits.
inline std::string checksum_text(std::uint32_t crc) {
    static const char digits[] = "0123456789abcdef";
    std::string s(checksum_digits, '0');
    for (std::size_t k = 0; k < checksum_digits; ++k) s[checksum_digits - 1 - k] = digits[(crc >> (4 * k)) & 0xfu];
    return s;
}

/// The value of a text form; false unless it is exactly eight hexadecimal digits.
inline bool parse_checksum(const std::string& s, std::uint32_t& crc) noexcept {
    if (s.size() != checksum_digits) return false;
    crc = 0;
    for (const char c : s) {
        std::uint32_t d;
        if (c >= '0' && c <= '9')
            d = static_cast<std::uint32_t>(c - '0');
        else if (c >= 'a' && c <= 'f')
            d = static_cast<std::uint32_t>(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            d = static_cast<std::uint32_t>(c - 'A' + 10);
        else
            return false;
        crc = (crc << 4) | d;
    }
    return true;
}

}  // namespace treegate::safetensors::detail

#endif
