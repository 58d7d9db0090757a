// treegate/io/detail/format.hpp — the safetensors container: header parsing and validation that
// never trusts a size, and encoding tensors to bytes (dtypes and conversions: dtype.hpp). Part of treegate/io/safetensors.hpp.
#ifndef TREEGATE_IO_DETAIL_FORMAT_HPP
#define TREEGATE_IO_DETAIL_FORMAT_HPP

#include "../../bf16.hpp"
#include "../../error.hpp"
#include "checksum.hpp"
#include "dtype.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

// File layout: 8-byte little-endian header length N, N bytes of JSON, then the tensor bytes.
namespace treegate::safetensors {

/// Largest JSON header accepted (the reference implementation uses the same bound).
inline constexpr std::uint64_t max_header_bytes = 100'000'000;

/// How a file is read. The structural checks and the refusal of NaN or infinite values always apply.
struct load_options {
    /// Verify the checksum of the tensor data when the file carries one (treegate writes it;
    /// files of other writers have none and load without). Off, the data is not read up front
    /// for it, which a memory-mapped file would want; a file changed in place then goes unnoticed.
    bool verify_checksum = true;

    /// load_into only. The layer's configuration is the specification, and the file needs no
    /// __metadata__ (a PyTorch state_dict): every tensor of the layer's parameter description
    /// must be in the file with its shape. Taken when `require_metadata` is false, or `prefix`
    /// or `names` is set.
    bool require_metadata = true;
    /// Prepended to every file name looked up: a layer inside a larger model's file.
    std::string prefix;
    /// File name (after the prefix) -> treegate name, for files that name tensors differently.
    std::map<std::string, std::string> names;
    /// A file tensor the layer does not use is an error naming it (strict), or skipped.
    bool strict = true;
};

namespace detail {

using treegate::detail::raise;

struct tensor_entry {
    dtype type = dtype::f32;
    std::vector<std::uint64_t> shape;
    std::uint64_t begin = 0, end = 0;
};

/// A parsed, structurally validated file: every tensor lies inside the data section, the
/// tensors cover it exactly without overlap, and every byte count agrees with its shape.
struct parsed_file {
    std::string source;
    std::map<std::string, std::string> metadata;
    bool has_metadata = false;
    std::map<std::string, tensor_entry> tensors;
    const unsigned char* data = nullptr;
    std::uint64_t data_size = 0;
};

template <class... Args>
[[noreturn]] void fail(const std::string& source, const Args&... args) {
    raise<file_error>("safetensors ", source, ": ", args...);
}

inline std::string shape_string(const std::vector<std::uint64_t>& shape) {
    std::ostringstream os;
    os << '[';
    for (std::size_t k = 0; k < shape.size(); ++k) os << (k ? ", " : "") << shape[k];
    os << ']';
    return os.str();
}

/// The number of elements of `shape`, false when the product overflows 64 bits on the way (also
/// when a later dimension is zero: a shape whose dimensions cannot be multiplied is refused).
inline bool element_count(const std::vector<std::uint64_t>& shape, std::uint64_t& count) noexcept {
    count = 1;
    for (const std::uint64_t d : shape) {
        if (d != 0 && count > std::numeric_limits<std::uint64_t>::max() / d) return false;
        count *= d;
    }
    return true;
}

// ---- header parsing --------------------------------------------------------------------------

/// Deepest nesting a valid header has: root { entry { shape [ ] } }. Rejecting deeper input
/// before parsing bounds the parser's work and memory on hostile files.
inline constexpr int max_json_depth = 3;

inline void check_nesting(const std::string& source, const char* p, std::size_t n) {
    int depth = 0;
    bool in_string = false;
    for (std::size_t k = 0; k < n; ++k) {
        const char c = p[k];
        if (in_string) {
            if (c == '\\')
                ++k;
            else if (c == '"')
                in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '{' || c == '[') {
            if (++depth > max_json_depth)
                fail(source, "JSON header nests deeper than ", max_json_depth, " levels (at byte ", k, ")");
        } else if (c == '}' || c == ']') {
            --depth;
        }
    }
}

inline std::uint64_t unsigned_field(const std::string& source, const std::string& name, const char* field,
                                    const nlohmann::json& v) {
    if (!v.is_number_unsigned())
        fail(source, "tensor '", name, "': ", field, " must hold non-negative integers, found ", v.dump());
    return v.get<std::uint64_t>();
}

inline tensor_entry parse_entry(const std::string& source, const std::string& name, const nlohmann::json& j,
                                std::uint64_t data_size) {
    if (!j.is_object()) fail(source, "tensor '", name, "' must be a JSON object, found ", j.type_name());
    for (const auto& item : j.items()) {
        const std::string& key = item.key();
        if (key != "dtype" && key != "shape" && key != "data_offsets")
            fail(source, "tensor '", name, "' has unexpected field '", key, "'");
    }
    tensor_entry e;
    const auto dt = j.find("dtype");
    if (dt == j.end()) fail(source, "tensor '", name, "' has no dtype");
    if (!dt->is_string()) fail(source, "tensor '", name, "': dtype must be a string, found ", dt->dump());
    const std::string& d = dt->get_ref<const std::string&>();
    if (d == "F32")
        e.type = dtype::f32;
    else if (d == "F64")
        e.type = dtype::f64;
    else if (d == "BF16")
        e.type = dtype::bf16;
    else if (d == "F16")
        e.type = dtype::f16;
    else if (d == "I64")
        e.type = dtype::i64;
    else if (d == "I32")
        e.type = dtype::i32;
    else
        fail(source, "tensor '", name, "' has dtype ", dt->dump(),
             "; treegate reads F32, F64, BF16 and F16 (and I64, I32 where it asks for an integer)");

    const auto sh = j.find("shape");
    if (sh == j.end()) fail(source, "tensor '", name, "' has no shape");
    if (!sh->is_array()) fail(source, "tensor '", name, "': shape must be an array, found ", sh->dump());
    for (const auto& s : *sh) e.shape.push_back(unsigned_field(source, name, "shape", s));
    std::uint64_t count = 0;
    const bool overflow = !element_count(e.shape, count);
    const std::uint64_t width = dtype_bytes(e.type);
    if (overflow || count > std::numeric_limits<std::uint64_t>::max() / width)
        fail(source, "tensor '", name, "': the byte size of shape ", shape_string(e.shape), " overflows 64 bits");
    const std::uint64_t bytes = count * width;

    const auto off = j.find("data_offsets");
    if (off == j.end()) fail(source, "tensor '", name, "' has no data_offsets");
    if (!off->is_array() || off->size() != 2)
        fail(source, "tensor '", name, "': data_offsets must be an array [begin, end], found ", off->dump());
    e.begin = unsigned_field(source, name, "data_offsets", (*off)[0]);
    e.end = unsigned_field(source, name, "data_offsets", (*off)[1]);
    if (e.begin > e.end) fail(source, "tensor '", name, "': data_offsets [", e.begin, ", ", e.end, "] end before they begin");
    if (e.end > data_size)
        fail(source, "tensor '", name, "': data_offsets [", e.begin, ", ", e.end, "] lie outside the data section of ",
             data_size, " bytes");
    if (e.end - e.begin != bytes)
        fail(source, "tensor '", name, "': shape ", shape_string(e.shape), " of ", to_string(e.type), " needs ", bytes,
             " bytes but data_offsets [", e.begin, ", ", e.end, "] span ", e.end - e.begin);
    return e;
}

inline parsed_file parse(const unsigned char* bytes, std::size_t size, std::string source) {
    parsed_file f;
    f.source = std::move(source);
    const std::string& src = f.source;
    if (size < 8) fail(src, "is ", size, " bytes, too short for the 8-byte header length");
    const std::uint64_t n = read_le(bytes, 8);
    if (n > max_header_bytes) fail(src, "header length ", n, " exceeds the limit of ", max_header_bytes, " bytes");
    if (n > size - 8)
        fail(src, "header length ", n, " exceeds the ", size - 8, " bytes that follow the length field (file is ", size,
             " bytes)");
    const char* text = reinterpret_cast<const char*>(bytes + 8);
    const auto length = static_cast<std::size_t>(n);
    if (length == 0 || text[0] != '{') fail(src, "header of ", n, " bytes does not start with '{'");
    check_nesting(src, text, length);

    // nlohmann keeps the last of duplicate keys silently; the callback sees every key.
    std::vector<std::set<std::string>> open;  // keys seen in each open container
    std::string duplicate;
    nlohmann::json header;
    try {
        header = nlohmann::json::parse(
            text, text + length,
            [&](int /*depth*/, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
                using ev = nlohmann::json::parse_event_t;
                if (event == ev::object_start || event == ev::array_start) {
                    open.emplace_back();
                } else if (event == ev::object_end || event == ev::array_end) {
                    if (!open.empty()) open.pop_back();
                } else if (event == ev::key && !open.empty()) {
                    const auto* key = parsed.get_ptr<const std::string*>();
                    if (key && !open.back().insert(*key).second && duplicate.empty()) duplicate = *key;
                }
                return true;
            });
    } catch (const nlohmann::json::exception& e) {
        fail(src, "header is not valid JSON: ", e.what());
    }
    if (!duplicate.empty()) fail(src, "header names '", duplicate, "' more than once");
    if (!header.is_object()) fail(src, "header must be a JSON object, found ", header.type_name());

    f.data = bytes + 8 + length;
    f.data_size = static_cast<std::uint64_t>(size - 8 - length);
    for (const auto& item : header.items()) {
        const std::string& name = item.key();
        const nlohmann::json& value = item.value();
        if (name == "__metadata__") {
            if (!value.is_object()) fail(src, "__metadata__ must be a JSON object, found ", value.type_name());
            for (const auto& m : value.items()) {
                if (!m.value().is_string())
                    fail(src, "metadata '", m.key(), "' must be a string, found ", m.value().type_name(), " ",
                         m.value().dump());
                f.metadata.emplace(m.key(), m.value().get<std::string>());
            }
            f.has_metadata = true;
            continue;
        }
        f.tensors.emplace(name, parse_entry(src, name, value, f.data_size));
    }

    // Exact, non-overlapping cover of the data section: walk the tensors in offset order.
    std::vector<std::pair<const std::string*, const tensor_entry*>> order;
    for (const auto& t : f.tensors) order.emplace_back(&t.first, &t.second);
    std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
        return std::tie(a.second->begin, a.second->end) < std::tie(b.second->begin, b.second->end);
    });
    std::uint64_t cursor = 0;
    const std::string* previous = nullptr;
    for (const auto& [name, e] : order) {
        if (e->begin < cursor)
            fail(src, "tensor '", *name, "' at [", e->begin, ", ", e->end, ") overlaps tensor '", *previous,
                 "' which ends at ", cursor);
        if (e->begin > cursor)
            fail(src, "data bytes [", cursor, ", ", e->begin, ") belong to no tensor (next is '", *name, "')");
        cursor = e->end;
        previous = name;
    }
    if (cursor != f.data_size)
        fail(src, "the tensors cover ", cursor, " bytes but the data section holds ", f.data_size,
             " (bytes [", cursor, ", ", f.data_size, ") belong to no tensor)");
    return f;
}


using metadata = std::map<std::string, std::string>;

/// Values of one tensor in row-major order, on their way to a file.
template <class Scalar>
struct tensor_values {
    std::string name;
    std::vector<std::uint64_t> shape;
    std::vector<Scalar> values;
    bool bf16 = false;  ///< written as BF16 whatever the file's dtype: bf16-stored weights, exact
};


/// Decodes one tensor to Scalar, rejecting NaN, infinities and values Scalar cannot hold, and
/// integer tensors: these are counts or indices in the files of other writers, never weights.
template <class Scalar>
std::vector<Scalar> read_values(const parsed_file& f, const std::string& name) {
    const tensor_entry& e = f.tensors.at(name);
    if (is_integer(e.type))
        fail(f.source, "tensor '", name, "' has dtype \"", to_string(e.type), "\" (integers, shape ",
             shape_string(e.shape), "); treegate reads weights from F32, F64, BF16 or F16 tensors");
    const std::size_t width = dtype_bytes(e.type);
    const std::size_t n = static_cast<std::size_t>(e.end - e.begin) / width;
    const unsigned char* p = f.data + e.begin;
    std::vector<Scalar> out(n);
    for (std::size_t k = 0; k < n; ++k, p += width) {
        const double v = decode_float(e.type, p);
        if (!std::isfinite(v))
            fail(f.source, "tensor '", name, "' element ", k, " of ", n, " is ", std::isnan(v) ? "NaN" : "infinite");
        if constexpr (sizeof(Scalar) < sizeof(double)) {
            if (!fits_float(v)) fail(f.source, "tensor '", name, "' element ", k, " (", v, ") overflows float");
        }
        out[k] = static_cast<Scalar>(v);
    }
    return out;
}

/// The one integer of a scalar (or one-element) I64 or I32 tensor, such as a stored tree depth;
/// `what` says in messages what the integer is.
inline std::int64_t read_integer(const parsed_file& f, const std::string& name, const char* what) {
    const tensor_entry& e = f.tensors.at(name);
    if (!is_integer(e.type))
        fail(f.source, "tensor '", name, "' (", what, ") has dtype ", to_string(e.type), "; expected I64 or I32");
    const std::uint64_t n = (e.end - e.begin) / dtype_bytes(e.type);
    if (n != 1)
        fail(f.source, "tensor '", name, "' (", what, ") has shape ", shape_string(e.shape), " of ", n,
             " elements; expected a single integer");
    const unsigned char* p = f.data + e.begin;
    if (e.type == dtype::i64) return bit_copy<std::int64_t>(read_le(p, 8));
    return bit_copy<std::int32_t>(static_cast<std::uint32_t>(read_le(p, 4)));
}

/// A file whose metadata holds a checksum must match it, unless `options` skip the check.
inline void verify_checksum(const parsed_file& f, const load_options& options) {
    if (!options.verify_checksum) return;
    const auto it = f.metadata.find(checksum_key);
    if (it == f.metadata.end()) return;
    std::uint32_t stored = 0;
    if (!parse_checksum(it->second, stored))
        fail(f.source, "metadata '", checksum_key, "' is \"", it->second, "\", not ", checksum_digits,
             " hexadecimal digits");
    const std::uint32_t actual = crc32_of(f.data, f.data_size);
    if (actual != stored)
        fail(f.source, "checksum mismatch: metadata '", checksum_key, "' is ", checksum_text(stored), " but the ",
             f.data_size, " bytes of tensor data have CRC-32 ", checksum_text(actual),
             " (changed or damaged after it was saved?)");
}

/// A tensor's flat (row-major) index k as a multi-index, for messages.
inline std::string index_string(const std::vector<std::uint64_t>& shape, std::uint64_t k) {
    std::vector<std::uint64_t> at(shape.size());
    for (std::size_t d = shape.size(); d-- > 0;) {
        at[d] = shape[d] ? k % shape[d] : 0;
        k = shape[d] ? k / shape[d] : 0;
    }
    return shape_string(at);
}

/// The header's text with `md` as its metadata, padded with spaces so that the data section
/// starts 8-byte aligned, as the reference writer does.
inline std::string header_text(nlohmann::json header, const metadata& md) {
    header["__metadata__"] = md;
    std::string text = header.dump();
    while (text.size() % 8 != 0) text += ' ';
    return text;
}

/// The bytes of a file; its metadata is `md` plus the checksum of the tensor data. Values that
/// load would refuse (NaN, infinities) or that the dtype cannot hold are refused here.
template <class Scalar>
std::vector<unsigned char> encode(const std::vector<tensor_values<Scalar>>& tensors, const metadata& md, dtype type,
                                  const std::string& target) {
    if (is_integer(type))
        fail(target, "dtype ", to_string(type), " is read where an integer is asked for, never written; "
                     "save as F32, F64, BF16 or F16");
    nlohmann::json header = nlohmann::json::object();
    std::uint64_t offset = 0;
    for (const auto& t : tensors) {
        const dtype tt = t.bf16 ? dtype::bf16 : type;
        const std::uint64_t bytes = static_cast<std::uint64_t>(t.values.size()) * dtype_bytes(tt);
        nlohmann::json entry = nlohmann::json::object();
        entry["dtype"] = to_string(tt);
        entry["shape"] = t.shape;
        entry["data_offsets"] = nlohmann::json::array({offset, offset + bytes});
        header[t.name] = std::move(entry);
        offset += bytes;
    }
    if (md.count(checksum_key))
        fail(target, "metadata key '", checksum_key, "' is reserved for the checksum that treegate writes");
    // The checksum is known only once the data is written after the header; a placeholder of
    // the same width reserves its place, so that the data is not copied.
    metadata full = md;
    full[checksum_key] = checksum_text(0);
    const std::string text = header_text(header, full);
    std::vector<unsigned char> out;
    out.reserve(8 + text.size() + static_cast<std::size_t>(offset));
    write_le(out, static_cast<std::uint64_t>(text.size()), 8);
    out.insert(out.end(), text.begin(), text.end());
    for (const auto& t : tensors) {
        const dtype tt = t.bf16 ? dtype::bf16 : type;
        for (std::size_t k = 0; k < t.values.size(); ++k) {
            const Scalar v = t.values[k];
            if (!std::isfinite(static_cast<double>(v)))
                fail(target, "tensor '", t.name, "' element ", k, " of ", t.values.size(), " (at ",
                     index_string(t.shape, k), ") is ", std::isnan(static_cast<double>(v)) ? "NaN" : "infinite",
                     ": not saved, since loading refuses non-finite values");
            if (tt == dtype::f64) {
                write_le(out, bit_copy<std::uint64_t>(static_cast<double>(v)), 8);
                continue;
            }
            if (!fits_float(static_cast<double>(v)))
                fail(target, "tensor '", t.name, "' element ", k, " (", v, ") does not fit ", to_string(tt));
            if (tt == dtype::f16) {
                const std::uint16_t h = double_to_f16(static_cast<double>(v));
                if ((h & 0x7c00u) == 0x7c00u)  // v is finite: it rounds beyond the largest half
                    fail(target, "tensor '", t.name, "' element ", k, " (", v, ") overflows F16");
                write_le(out, h, 2);
                continue;
            }
            const float f = static_cast<float>(v);
            if (tt == dtype::f32) {
                write_le(out, bit_copy<std::uint32_t>(f), 4);
            } else {
                const std::uint16_t b = float_to_bf16(f);
                if ((b & 0x7f80u) == 0x7f80u)  // f is finite: rounding carried into the exponent
                    fail(target, "tensor '", t.name, "' element ", k, " (", v, ") overflows BF16");
                write_le(out, b, 2);
            }
        }
    }
    const std::size_t data_begin = 8 + text.size();
    full[checksum_key] = checksum_text(crc32_of(out.data() + data_begin, out.size() - data_begin));
    const std::string sealed = header_text(header, full);
    if (sealed.size() != text.size())
        fail(target, "internal error: the header changed length from ", text.size(), " to ", sealed.size(),
             " bytes when its checksum was filled in");
    std::copy(sealed.begin(), sealed.end(), out.begin() + 8);
    return out;
}

}  // namespace detail
}  // namespace treegate::safetensors

#endif
