// treegate/io/detail/metadata.hpp — reading treegate's configuration from a file's __metadata__
// (string values, keys under a layer's name prefix). Part of treegate/io/safetensors.hpp.
#ifndef TREEGATE_IO_DETAIL_METADATA_HPP
#define TREEGATE_IO_DETAIL_METADATA_HPP

#include "../../config.hpp"
#include "format.hpp"

#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace treegate::safetensors::detail {

/// Writes and reads the configuration of one layer under a name prefix ("" or "i.").
class meta_reader {
public:
    meta_reader(const parsed_file& f, std::string prefix) : f_(f), prefix_(std::move(prefix)) {}

    const std::string& source() const noexcept { return f_.source; }
    const std::string& prefix() const noexcept { return prefix_; }
    const parsed_file& file() const noexcept { return f_; }

    bool has(const char* key) const { return f_.metadata.count(prefix_ + key) != 0; }

    const std::string& get(const char* key) const {
        const auto it = f_.metadata.find(prefix_ + key);
        if (it == f_.metadata.end())
            fail(f_.source, f_.has_metadata ? "" : "has no __metadata__; ", "metadata '", prefix_, key, "' is missing");
        return it->second;
    }

    std::int64_t integer(const char* key, std::int64_t lo, std::int64_t hi) const {
        return parse_integer(get(key), (prefix_ + key).c_str(), lo, hi);
    }

    index_t size(const char* key) const { return integer(key, 1, std::numeric_limits<std::int64_t>::max()); }

    int depth() const { return static_cast<int>(integer("depth", 0, max_depth)); }

    bool flag(const char* key) const {
        const std::string& v = get(key);
        if (v == "true") return true;
        if (v == "false") return false;
        fail(f_.source, "metadata '", prefix_, key, "' is \"", v, "\", expected \"true\" or \"false\"");
    }

    template <class Enum, std::size_t N>
    Enum choice(const char* key, const std::pair<const char*, Enum> (&options)[N]) const {
        const std::string& v = get(key);
        std::string list;
        for (const auto& o : options) {
            if (v == o.first) return o.second;
            list += list.empty() ? "" : ", ";
            list += o.first;
        }
        fail(f_.source, "metadata '", prefix_, key, "' is \"", v, "\", expected one of ", list);
    }

    /// A setting added after files without it were written: `absent` when the key is missing
    /// (the behaviour those files were saved with), else as choice().
    template <class Enum, std::size_t N>
    Enum choice_or(const char* key, const std::pair<const char*, Enum> (&options)[N], Enum absent) const {
        return has(key) ? choice(key, options) : absent;
    }
    bool flag_or(const char* key, bool absent) const { return has(key) ? flag(key) : absent; }

    /// Comma-separated indices, each in [0, in); "" for none.
    std::vector<index_t> indices(const std::string& text, const char* key, index_t in) const {
        std::vector<index_t> out;
        if (text.empty()) return out;
        std::size_t start = 0;
        while (true) {
            const std::size_t comma = text.find(',', start);
            const std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
            out.push_back(parse_integer(item, (prefix_ + key).c_str(), 0, in - 1));
            if (out.size() > static_cast<std::size_t>(max_depth))
                fail(f_.source, "metadata '", prefix_, key, "' lists more than ", max_depth, " gating indices");
            if (comma == std::string::npos) break;
            start = comma + 1;
        }
        return out;
    }

    std::int64_t parse_integer(const std::string& v, const char* what, std::int64_t lo, std::int64_t hi) const {
        std::int64_t x = 0;
        // At most 18 digits: the value cannot overflow int64 while it is accumulated.
        bool ok = !v.empty() && v.size() <= 18;
        for (const char c : v) {
            if (!ok || c < '0' || c > '9') {
                ok = false;
                break;
            }
            x = x * 10 + (c - '0');
        }
        if (!ok) fail(f_.source, "metadata '", what, "' is \"", v, "\", not a non-negative integer");
        if (x < lo || x > hi) fail(f_.source, "metadata '", what, "' is ", x, ", outside [", lo, ", ", hi, "]");
        return x;
    }

private:
    const parsed_file& f_;
    std::string prefix_;
};

inline const char* flag_name(bool b) noexcept { return b ? "true" : "false"; }

inline std::string join_indices(const std::vector<index_t>& v) {
    std::string s;
    for (std::size_t k = 0; k < v.size(); ++k) s += (k ? "," : "") + std::to_string(v[k]);
    return s;
}

}  // namespace treegate::safetensors::detail

#endif
