// Helpers of the safetensors tests (test_io_*.cpp): taking files apart and putting them back
// together byte by byte, an independent CRC-32, and scratch directories.
#ifndef TREEGATE_TESTS_IO_TEST_SUPPORT_HPP
#define TREEGATE_TESTS_IO_TEST_SUPPORT_HPP

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <unistd.h>

namespace tg_test {

using bytes_t = std::vector<unsigned char>;

// ---- building broken files ------------------------------------------------------------------

struct parts {
    nlohmann::json header;
    bytes_t data;
};

inline bytes_t join(const std::string& header, const bytes_t& data) {
    bytes_t out;
    std::uint64_t n = header.size();
    for (int k = 0; k < 8; ++k) out.push_back(static_cast<unsigned char>((n >> (8 * k)) & 0xffu));
    out.insert(out.end(), header.begin(), header.end());
    out.insert(out.end(), data.begin(), data.end());
    return out;
}

inline bytes_t join(const nlohmann::json& header, const bytes_t& data) { return join(header.dump(), data); }

/// The header and the data of a file, everything as written.
inline parts split_as_is(const bytes_t& file) {
    std::uint64_t n = 0;
    for (int k = 7; k >= 0; --k) n = (n << 8) | file[static_cast<std::size_t>(k)];
    const auto h = static_cast<std::size_t>(n);
    return {nlohmann::json::parse(file.begin() + 8, file.begin() + 8 + static_cast<std::ptrdiff_t>(h)),
            bytes_t(file.begin() + 8 + static_cast<std::ptrdiff_t>(h), file.end())};
}

/// Metadata key of treegate's checksum of the tensor data.
inline const char* const checksum_key = "data_crc32";

/// The header and the data of a file, without treegate's checksum: the edits of the validation
/// tests change the data and test what a file without a checksum (another writer's) does then.
inline parts split(const bytes_t& file) {
    parts p = split_as_is(file);
    if (p.header.contains("__metadata__")) p.header["__metadata__"].erase(checksum_key);
    return p;
}

inline void put_f32(bytes_t& data, std::size_t offset, float v) {
    std::uint32_t u;
    std::memcpy(&u, &v, sizeof u);
    for (std::size_t k = 0; k < 4; ++k) data[offset + k] = static_cast<unsigned char>((u >> (8 * k)) & 0xffu);
}

/// CRC-32 (ISO-HDLC: reflected polynomial 0xEDB88320, initial and final complement; what zlib's
/// crc32 and Python's zlib.crc32 compute), one bit at a time: the oracle of the checksum tests.
inline std::uint32_t crc32_bitwise(const unsigned char* p, std::size_t n) {
    std::uint32_t crc = 0xffffffffu;
    for (std::size_t k = 0; k < n; ++k) {
        crc ^= p[k];
        for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1u)));
    }
    return crc ^ 0xffffffffu;
}

// ---- files on disk --------------------------------------------------------------------------

inline std::filesystem::path scratch_dir(const std::string& tag) {
    const auto dir = std::filesystem::temp_directory_path() /
                     ("treegate_io_" + tag + "_" + std::to_string(static_cast<long long>(::getpid())));
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    return dir;
}

inline bytes_t read_all(const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    return bytes_t(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace tg_test

#endif  // TREEGATE_TESTS_IO_TEST_SUPPORT_HPP
