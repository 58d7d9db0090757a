// treegate/io/safetensors.hpp — save and load layers in the safetensors format (PyTorch names).
// The only treegate header that needs nlohmann-json; the umbrella header does not include it.
#ifndef TREEGATE_IO_SAFETENSORS_HPP
#define TREEGATE_IO_SAFETENSORS_HPP

#include "../activation.hpp"
#include "../bf16.hpp"
#include "../config.hpp"
#include "../error.hpp"
#include "../layers/activation_layer.hpp"
#include "../layers/dense.hpp"
#include "../layers/sequential.hpp"
#include "../layers/tree_feedforward.hpp"
#include "../layers/tree_linear.hpp"
#include "../layers/tree_linear_blocked.hpp"
#include "../routing.hpp"
#include "../tree.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#define TREEGATE_SAFETENSORS_POSIX 1
#else
#include <cstdio>
#include <filesystem>
#endif

// File layout: 8-byte little-endian header length N, N bytes of JSON, then the tensor bytes.
//
// Tensor names (row-major, like PyTorch; a `sequential` prefixes layer i's names with "i."):
//   dense             weight [out, in], bias [out]
//   tree_linear       weight [blocks, out, in], bias [blocks, out]   (blocks: nodes or leaves)
//   tree_linear_blocked weight [trees, blocks, out, in], bias [trees, blocks, out]
//   tree_feedforward  hidden_weight [trees, units, width, in], hidden_bias [trees, units, width],
//                     output_weight [trees, units, out, width], output_bias [out],
//                     router_weight [trees, routers, in], router_bias [trees, routers] (leaf_mlp)
// The configuration is in "__metadata__" (all values strings): "kind" and the keys below.
namespace treegate::safetensors {

/// Element type of the stored tensors. BF16 is rounded to nearest even on save.
enum class dtype { f32, f64, bf16 };

inline const char* to_string(dtype t) noexcept {
    switch (t) {
        case dtype::f32: return "F32";
        case dtype::f64: return "F64";
        case dtype::bf16: return "BF16";
    }
    return "?";
}

/// Largest JSON header accepted (the reference implementation uses the same bound).
inline constexpr std::uint64_t max_header_bytes = 100'000'000;

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

inline std::size_t dtype_bytes(dtype t) noexcept { return t == dtype::f64 ? 8 : t == dtype::f32 ? 4 : 2; }

inline std::string shape_string(const std::vector<std::uint64_t>& shape) {
    std::ostringstream os;
    os << '[';
    for (std::size_t k = 0; k < shape.size(); ++k) os << (k ? ", " : "") << shape[k];
    os << ']';
    return os.str();
}

inline std::uint64_t read_le(const unsigned char* p, int bytes) noexcept {
    std::uint64_t v = 0;
    for (int k = bytes - 1; k >= 0; --k) v = (v << 8) | p[k];
    return v;
}

inline void write_le(std::vector<unsigned char>& out, std::uint64_t v, int bytes) {
    for (int k = 0; k < bytes; ++k) out.push_back(static_cast<unsigned char>((v >> (8 * k)) & 0xffu));
}

inline float bits_to_float(std::uint32_t u) noexcept {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}
inline std::uint32_t float_to_bits(float f) noexcept {
    std::uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}
inline double bits_to_double(std::uint64_t u) noexcept {
    double d;
    std::memcpy(&d, &u, sizeof d);
    return d;
}
inline std::uint64_t double_to_bits(double d) noexcept {
    std::uint64_t u;
    std::memcpy(&u, &d, sizeof u);
    return u;
}

/// float -> bfloat16, round to nearest even; NaN stays a (quiet) NaN.
inline std::uint16_t float_to_bf16(float f) noexcept { return treegate::detail::float_to_bf16_bits(f); }

/// A double narrowed to float without the undefined behaviour of an out-of-range conversion.
inline bool fits_float(double d) noexcept {
    return !std::isfinite(d) || std::fabs(d) <= static_cast<double>(std::numeric_limits<float>::max());
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
    else
        fail(source, "tensor '", name, "' has dtype ", dt->dump(), "; treegate reads F32, F64 and BF16");

    const auto sh = j.find("shape");
    if (sh == j.end()) fail(source, "tensor '", name, "' has no shape");
    if (!sh->is_array()) fail(source, "tensor '", name, "': shape must be an array, found ", sh->dump());
    std::uint64_t count = 1;
    bool overflow = false;
    for (const auto& s : *sh) {
        const std::uint64_t dim = unsigned_field(source, name, "shape", s);
        e.shape.push_back(dim);
        if (dim != 0 && count > std::numeric_limits<std::uint64_t>::max() / dim)
            overflow = true;
        else
            count *= dim;
    }
    // A zero dimension makes the tensor empty whatever the others are, but the product of the
    // others must still not have overflowed on the way.
    if (std::find(e.shape.begin(), e.shape.end(), std::uint64_t{0}) != e.shape.end()) count = 0;
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

// ---- metadata --------------------------------------------------------------------------------

/// Writes and reads the configuration of one layer under a name prefix ("" or "i.").
class meta_reader {
public:
    meta_reader(const parsed_file& f, std::string prefix) : f_(f), prefix_(std::move(prefix)) {}

    const std::string& source() const noexcept { return f_.source; }
    const std::string& prefix() const noexcept { return prefix_; }
    const parsed_file& file() const noexcept { return f_; }

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

inline const std::pair<const char*, tree_mode> mode_names[] = {{"path_sum", tree_mode::path_sum},
                                                                {"leaf_only", tree_mode::leaf_only}};
inline const std::pair<const char*, activation> activation_names[] = {{"identity", activation::identity},
                                                                      {"relu", activation::relu},
                                                                      {"gelu", activation::gelu},
                                                                      {"gelu_tanh", activation::gelu_tanh},
                                                                      {"tanh", activation::tanh}};
inline const std::pair<const char*, ff_variant> variant_names[] = {{"node_sum", ff_variant::node_sum},
                                                                   {"leaf_mlp", ff_variant::leaf_mlp}};
inline const std::pair<const char*, block_combine> combine_names[] = {{"sum", block_combine::sum},
                                                                      {"concat", block_combine::concat}};

inline const char* flag_name(bool b) noexcept { return b ? "true" : "false"; }

inline const char* to_name(block_combine c) noexcept { return c == block_combine::sum ? "sum" : "concat"; }

inline std::string join_indices(const std::vector<index_t>& v) {
    std::string s;
    for (std::size_t k = 0; k < v.size(); ++k) s += (k ? "," : "") + std::to_string(v[k]);
    return s;
}

using metadata = std::map<std::string, std::string>;

// ---- tensors ---------------------------------------------------------------------------------

/// Expected name and shape of one tensor of a configuration.
struct tensor_spec {
    std::string name;
    std::vector<std::uint64_t> shape;
};

/// Values of one tensor in row-major order, on their way to a file.
template <class Scalar>
struct tensor_values {
    std::string name;
    std::vector<std::uint64_t> shape;
    std::vector<Scalar> values;
};

inline std::uint64_t dim(index_t v) noexcept { return static_cast<std::uint64_t>(v); }

/// Decodes one tensor to Scalar, rejecting NaN, infinities and values Scalar cannot hold.
template <class Scalar>
std::vector<Scalar> read_values(const parsed_file& f, const std::string& name) {
    const tensor_entry& e = f.tensors.at(name);
    const std::size_t width = dtype_bytes(e.type);
    const std::size_t n = static_cast<std::size_t>(e.end - e.begin) / width;
    const unsigned char* p = f.data + e.begin;
    std::vector<Scalar> out(n);
    for (std::size_t k = 0; k < n; ++k, p += width) {
        double v;
        if (e.type == dtype::f64)
            v = bits_to_double(read_le(p, 8));
        else if (e.type == dtype::f32)
            v = static_cast<double>(bits_to_float(static_cast<std::uint32_t>(read_le(p, 4))));
        else
            v = static_cast<double>(bits_to_float(static_cast<std::uint32_t>(read_le(p, 2) << 16)));
        if (!std::isfinite(v))
            fail(f.source, "tensor '", name, "' element ", k, " of ", n, " is ", std::isnan(v) ? "NaN" : "infinite");
        if constexpr (sizeof(Scalar) < sizeof(double)) {
            if (!fits_float(v)) fail(f.source, "tensor '", name, "' element ", k, " (", v, ") overflows float");
        }
        out[k] = static_cast<Scalar>(v);
    }
    return out;
}

/// The tensors of the file are exactly `specs`, with these shapes (any supported dtype).
inline void check_tensors(const parsed_file& f, const std::vector<tensor_spec>& specs) {
    std::set<std::string> expected;
    for (const auto& s : specs) {
        expected.insert(s.name);
        const auto it = f.tensors.find(s.name);
        if (it == f.tensors.end()) fail(f.source, "tensor '", s.name, "' is missing (expected shape ", shape_string(s.shape), ")");
        if (it->second.shape != s.shape)
            fail(f.source, "tensor '", s.name, "' has shape ", shape_string(it->second.shape), ", expected ",
                 shape_string(s.shape));
    }
    for (const auto& t : f.tensors)
        if (!expected.count(t.first))
            fail(f.source, "unexpected tensor '", t.first, "' (shape ", shape_string(t.second.shape), ")");
}

template <class... Args>
void check_same(const meta_reader& m, bool same, const Args&... args) {
    if (!same) fail(m.source(), "does not match the layer: ", m.prefix(), args...);
}

/// Builds a layer from a validated configuration; a refusal of the layer is a file error.
template <class Make>
auto construct(const meta_reader& m, Make&& make) {
    try {
        return make();
    } catch (const config_error& e) {
        fail(m.source(), "layer '", m.prefix(), "' cannot be built: ", e.what());
    }
}

template <class Layer>
struct layer_io;  // specialised for every layer kind below

// ---- dense -----------------------------------------------------------------------------------

template <class Scalar, int In, int Out, class Policy>
struct layer_io<dense<Scalar, In, Out, Policy>> {
    using layer = dense<Scalar, In, Out, Policy>;
    struct config {
        index_t in, out;
        bool bias;
    };
    static constexpr const char* kind = "dense";

    static config config_of(const layer& l) { return {l.in_size(), l.out_size(), l.has_bias()}; }
    static void write(const config& c, metadata& md, const std::string& p) {
        md[p + "in"] = std::to_string(c.in);
        md[p + "out"] = std::to_string(c.out);
        md[p + "has_bias"] = flag_name(c.bias);
    }
    static config read(const meta_reader& m) { return {m.size("in"), m.size("out"), m.flag("has_bias")}; }
    static void compare(const meta_reader& m, const config& f, const config& l) {
        check_same(m, f.in == l.in, "in is ", f.in, " in the file, ", l.in, " in the layer");
        check_same(m, f.out == l.out, "out is ", f.out, " in the file, ", l.out, " in the layer");
        check_same(m, f.bias == l.bias, "has_bias is ", flag_name(f.bias), " in the file, ", flag_name(l.bias), " in the layer");
    }
    static void specs(const config& c, const std::string& p, std::vector<tensor_spec>& out) {
        out.push_back({p + "weight", {dim(c.out), dim(c.in)}});
        if (c.bias) out.push_back({p + "bias", {dim(c.out)}});
    }
    static layer make(const meta_reader& m, const config& c) {
        return construct(m, [&] { return layer(c.in, c.out, c.bias); });
    }
    static void store(const layer& l, const std::string& p, std::vector<tensor_values<Scalar>>& out) {
        const index_t in = l.in_size(), o = l.out_size();
        tensor_values<Scalar> w{p + "weight", {dim(o), dim(in)}, {}};
        for (index_t r = 0; r < o; ++r)
            for (index_t k = 0; k < in; ++k) w.values.push_back(l.weight()(r, k));
        out.push_back(std::move(w));
        if (l.has_bias()) {
            tensor_values<Scalar> b{p + "bias", {dim(o)}, {}};
            for (index_t r = 0; r < o; ++r) b.values.push_back(l.bias()(r));
            out.push_back(std::move(b));
        }
    }
    static void fill(layer& l, const parsed_file& f, const std::string& p) {
        const index_t in = l.in_size(), o = l.out_size();
        const auto w = read_values<Scalar>(f, p + "weight");
        std::size_t k = 0;
        for (index_t r = 0; r < o; ++r)
            for (index_t c = 0; c < in; ++c) l.weight()(r, c) = w[k++];
        if (l.has_bias()) {
            const auto b = read_values<Scalar>(f, p + "bias");
            for (index_t r = 0; r < o; ++r) l.bias()(r) = b[static_cast<std::size_t>(r)];
        }
    }
};

// ---- tree_linear -----------------------------------------------------------------------------

template <class Scalar, int In, int Out, int Depth, class Policy>
struct layer_io<tree_linear<Scalar, In, Out, Depth, Policy>> {
    using layer = tree_linear<Scalar, In, Out, Depth, Policy>;
    struct config {
        index_t in, out;
        int depth;
        tree_mode mode;
        bool external;
        std::vector<index_t> gates;
        bool bias;
    };
    static constexpr const char* kind = "tree_linear";

    static index_t blocks(const config& c) {
        return c.mode == tree_mode::path_sum ? tree::node_count(c.depth) : tree::leaf_count(c.depth);
    }
    static config config_of(const layer& l) {
        return {l.in_size(), l.out_size(), l.depth(), l.mode(), l.gates().is_external(), l.gates().indices(), l.has_bias()};
    }
    static void write(const config& c, metadata& md, const std::string& p) {
        md[p + "in"] = std::to_string(c.in);
        md[p + "out"] = std::to_string(c.out);
        md[p + "depth"] = std::to_string(c.depth);
        md[p + "mode"] = to_string(c.mode);
        md[p + "gating"] = c.external ? "external" : join_indices(c.gates);
        md[p + "has_bias"] = flag_name(c.bias);
    }
    static config read(const meta_reader& m) {
        config c{m.size("in"), m.size("out"), m.depth(), m.choice("mode", mode_names), false, {}, m.flag("has_bias")};
        const std::string& g = m.get("gating");
        c.external = g == "external";
        if (!c.external) {
            c.gates = m.indices(g, "gating", c.in);
            if (static_cast<int>(c.gates.size()) != c.depth)
                fail(m.source(), "metadata '", m.prefix(), "gating' lists ", c.gates.size(), " indices for depth ", c.depth);
        }
        return c;
    }
    static void compare(const meta_reader& m, const config& f, const config& l) {
        check_same(m, f.in == l.in, "in is ", f.in, " in the file, ", l.in, " in the layer");
        check_same(m, f.out == l.out, "out is ", f.out, " in the file, ", l.out, " in the layer");
        check_same(m, f.depth == l.depth, "depth is ", f.depth, " in the file, ", l.depth, " in the layer");
        check_same(m, f.mode == l.mode, "mode is ", to_string(f.mode), " in the file, ", to_string(l.mode), " in the layer");
        check_same(m, f.external == l.external && f.gates == l.gates, "gating is \"",
                   f.external ? "external" : join_indices(f.gates), "\" in the file, \"",
                   l.external ? "external" : join_indices(l.gates), "\" in the layer");
        check_same(m, f.bias == l.bias, "has_bias is ", flag_name(f.bias), " in the file, ", flag_name(l.bias), " in the layer");
    }
    static void specs(const config& c, const std::string& p, std::vector<tensor_spec>& out) {
        out.push_back({p + "weight", {dim(blocks(c)), dim(c.out), dim(c.in)}});
        if (c.bias) out.push_back({p + "bias", {dim(blocks(c)), dim(c.out)}});
    }
    static layer make(const meta_reader& m, const config& c) {
        return construct(m, [&] {
            return layer(c.in, c.out, c.depth, c.mode, c.external ? gating::external() : gating::from_input(c.gates), c.bias);
        });
    }
    static void store(const layer& l, const std::string& p, std::vector<tensor_values<Scalar>>& out) {
        const index_t nb = l.block_count(), in = l.in_size(), o = l.out_size();
        tensor_values<Scalar> w{p + "weight", {dim(nb), dim(o), dim(in)}, {}};
        tensor_values<Scalar> b{p + "bias", {dim(nb), dim(o)}, {}};
        for (index_t i = 0; i < nb; ++i) {
            for (index_t r = 0; r < o; ++r)
                for (index_t k = 0; k < in; ++k) w.values.push_back(l.weight(i)(r, k));
            if (l.has_bias())
                for (index_t r = 0; r < o; ++r) b.values.push_back(l.bias(i)(r));
        }
        out.push_back(std::move(w));
        if (l.has_bias()) out.push_back(std::move(b));
    }
    static void fill(layer& l, const parsed_file& f, const std::string& p) {
        const index_t nb = l.block_count(), in = l.in_size(), o = l.out_size();
        const auto w = read_values<Scalar>(f, p + "weight");
        std::vector<Scalar> b;
        if (l.has_bias()) b = read_values<Scalar>(f, p + "bias");
        std::size_t kw = 0, kb = 0;
        for (index_t i = 0; i < nb; ++i) {
            for (index_t r = 0; r < o; ++r)
                for (index_t k = 0; k < in; ++k) l.weight(i)(r, k) = w[kw++];
            if (l.has_bias())
                for (index_t r = 0; r < o; ++r) l.bias(i)(r) = b[kb++];
        }
    }
};

// ---- tree_linear_blocked ---------------------------------------------------------------------

template <class Scalar, int SliceIn, int SliceOut, int Depth, class Policy>
struct layer_io<tree_linear_blocked<Scalar, SliceIn, SliceOut, Depth, Policy>> {
    using layer = tree_linear_blocked<Scalar, SliceIn, SliceOut, Depth, Policy>;
    using tree_io = layer_io<typename layer::tree_type>;
    struct config {
        index_t slice_in, slice_out, trees;
        int depth;
        tree_mode mode;
        block_combine combine;
        std::vector<std::vector<index_t>> gates;
        bool bias;
    };
    static constexpr const char* kind = "tree_linear_blocked";

    static index_t blocks(const config& c) {
        return c.mode == tree_mode::path_sum ? tree::node_count(c.depth) : tree::leaf_count(c.depth);
    }
    static std::string gates_text(const std::vector<std::vector<index_t>>& g) {
        std::string s;
        for (std::size_t t = 0; t < g.size(); ++t) s += (t ? ";" : "") + join_indices(g[t]);
        return s;
    }
    static config config_of(const layer& l) {
        config c{l.slice_in(), l.slice_out(), l.tree_count(), l.depth(), l.tree(0).mode(), l.combine(), {},
                 l.tree(0).has_bias()};
        for (index_t t = 0; t < l.tree_count(); ++t) c.gates.push_back(l.tree(t).gates().indices());
        return c;
    }
    static void write(const config& c, metadata& md, const std::string& p) {
        md[p + "slice_in"] = std::to_string(c.slice_in);
        md[p + "slice_out"] = std::to_string(c.slice_out);
        md[p + "trees"] = std::to_string(c.trees);
        md[p + "depth"] = std::to_string(c.depth);
        md[p + "mode"] = to_string(c.mode);
        md[p + "combine"] = to_name(c.combine);
        md[p + "gating"] = gates_text(c.gates);
        md[p + "has_bias"] = flag_name(c.bias);
    }
    static config read(const meta_reader& m) {
        config c{m.size("slice_in"), m.size("slice_out"), m.size("trees"), m.depth(), m.choice("mode", mode_names),
                 m.choice("combine", combine_names), {}, m.flag("has_bias")};
        // Per-tree gating lists separated by ';' (a list is empty at depth 0).
        const std::string& g = m.get("gating");
        const auto separators = static_cast<index_t>(std::count(g.begin(), g.end(), ';'));
        if (separators + 1 != c.trees)
            fail(m.source(), "metadata '", m.prefix(), "gating' holds ", separators + 1, " lists for ", c.trees, " trees");
        std::size_t start = 0;
        for (index_t t = 0; t < c.trees; ++t) {
            const std::size_t semi = g.find(';', start);
            const std::string item = g.substr(start, semi == std::string::npos ? std::string::npos : semi - start);
            c.gates.push_back(m.indices(item, "gating", c.slice_in));
            if (static_cast<int>(c.gates.back().size()) != c.depth)
                fail(m.source(), "metadata '", m.prefix(), "gating' lists ", c.gates.back().size(), " indices for tree ",
                     t, " of depth ", c.depth);
            start = semi + 1;
        }
        return c;
    }
    static void compare(const meta_reader& m, const config& f, const config& l) {
        check_same(m, f.slice_in == l.slice_in, "slice_in is ", f.slice_in, " in the file, ", l.slice_in, " in the layer");
        check_same(m, f.slice_out == l.slice_out, "slice_out is ", f.slice_out, " in the file, ", l.slice_out,
                   " in the layer");
        check_same(m, f.trees == l.trees, "trees is ", f.trees, " in the file, ", l.trees, " in the layer");
        check_same(m, f.depth == l.depth, "depth is ", f.depth, " in the file, ", l.depth, " in the layer");
        check_same(m, f.mode == l.mode, "mode is ", to_string(f.mode), " in the file, ", to_string(l.mode), " in the layer");
        check_same(m, f.combine == l.combine, "combine is ", to_name(f.combine), " in the file, ", to_name(l.combine),
                   " in the layer");
        check_same(m, f.gates == l.gates, "gating is \"", gates_text(f.gates), "\" in the file, \"", gates_text(l.gates),
                   "\" in the layer");
        check_same(m, f.bias == l.bias, "has_bias is ", flag_name(f.bias), " in the file, ", flag_name(l.bias), " in the layer");
    }
    static void specs(const config& c, const std::string& p, std::vector<tensor_spec>& out) {
        out.push_back({p + "weight", {dim(c.trees), dim(blocks(c)), dim(c.slice_out), dim(c.slice_in)}});
        if (c.bias) out.push_back({p + "bias", {dim(c.trees), dim(blocks(c)), dim(c.slice_out)}});
    }
    static layer make(const meta_reader& m, const config& c) {
        return construct(m, [&] { return layer(c.slice_in, c.slice_out, c.depth, c.mode, c.combine, c.gates, c.bias); });
    }
    static void store(const layer& l, const std::string& p, std::vector<tensor_values<Scalar>>& out) {
        const config c = config_of(l);
        tensor_values<Scalar> w{p + "weight", {dim(c.trees), dim(blocks(c)), dim(c.slice_out), dim(c.slice_in)}, {}};
        tensor_values<Scalar> b{p + "bias", {dim(c.trees), dim(blocks(c)), dim(c.slice_out)}, {}};
        for (index_t t = 0; t < c.trees; ++t) {
            std::vector<tensor_values<Scalar>> one;
            tree_io::store(l.tree(t), "", one);
            w.values.insert(w.values.end(), one[0].values.begin(), one[0].values.end());
            if (c.bias) b.values.insert(b.values.end(), one[1].values.begin(), one[1].values.end());
        }
        out.push_back(std::move(w));
        if (c.bias) out.push_back(std::move(b));
    }
    static void fill(layer& l, const parsed_file& f, const std::string& p) {
        const config c = config_of(l);
        const auto w = read_values<Scalar>(f, p + "weight");
        std::vector<Scalar> b;
        if (c.bias) b = read_values<Scalar>(f, p + "bias");
        std::size_t kw = 0, kb = 0;
        for (index_t t = 0; t < c.trees; ++t) {
            auto& tr = l.tree(t);
            for (index_t i = 0; i < blocks(c); ++i) {
                for (index_t r = 0; r < c.slice_out; ++r)
                    for (index_t k = 0; k < c.slice_in; ++k) tr.weight(i)(r, k) = w[kw++];
                if (c.bias)
                    for (index_t r = 0; r < c.slice_out; ++r) tr.bias(i)(r) = b[kb++];
            }
        }
    }
};

// ---- tree_feedforward ------------------------------------------------------------------------

template <class Scalar, int In, int Out, int Width, int Depth, class Policy>
struct layer_io<tree_feedforward<Scalar, In, Out, Width, Depth, Policy>> {
    using layer = tree_feedforward<Scalar, In, Out, Width, Depth, Policy>;
    struct config {
        index_t in, out, width;
        int depth;
        index_t trees;
        activation act;
        ff_variant variant;
        bool bias;
    };
    static constexpr const char* kind = "tree_feedforward";

    static index_t units(const config& c) {
        return c.variant == ff_variant::node_sum ? tree::node_count(c.depth) : tree::leaf_count(c.depth);
    }
    static index_t routers(const config& c) { return c.variant == ff_variant::leaf_mlp ? tree::internal_count(c.depth) : 0; }
    static config config_of(const layer& l) {
        return {l.in_size(), l.out_size(), l.width(), l.depth(), l.tree_count(), l.activation_kind(), l.variant(),
                l.has_output_bias()};
    }
    static void write(const config& c, metadata& md, const std::string& p) {
        md[p + "in"] = std::to_string(c.in);
        md[p + "out"] = std::to_string(c.out);
        md[p + "width"] = std::to_string(c.width);
        md[p + "depth"] = std::to_string(c.depth);
        md[p + "trees"] = std::to_string(c.trees);
        md[p + "activation"] = to_string(c.act);
        md[p + "variant"] = to_string(c.variant);
        md[p + "has_bias"] = flag_name(c.bias);
    }
    static config read(const meta_reader& m) {
        return {m.size("in"),
                m.size("out"),
                m.size("width"),
                m.depth(),
                m.size("trees"),
                m.choice("activation", activation_names),
                m.choice("variant", variant_names),
                m.flag("has_bias")};
    }
    static void compare(const meta_reader& m, const config& f, const config& l) {
        check_same(m, f.in == l.in, "in is ", f.in, " in the file, ", l.in, " in the layer");
        check_same(m, f.out == l.out, "out is ", f.out, " in the file, ", l.out, " in the layer");
        check_same(m, f.width == l.width, "width is ", f.width, " in the file, ", l.width, " in the layer");
        check_same(m, f.depth == l.depth, "depth is ", f.depth, " in the file, ", l.depth, " in the layer");
        check_same(m, f.trees == l.trees, "trees is ", f.trees, " in the file, ", l.trees, " in the layer");
        check_same(m, f.act == l.act, "activation is ", to_string(f.act), " in the file, ", to_string(l.act), " in the layer");
        check_same(m, f.variant == l.variant, "variant is ", to_string(f.variant), " in the file, ", to_string(l.variant),
                   " in the layer");
        check_same(m, f.bias == l.bias, "has_bias is ", flag_name(f.bias), " in the file, ", flag_name(l.bias), " in the layer");
    }
    static void specs(const config& c, const std::string& p, std::vector<tensor_spec>& out) {
        const std::uint64_t t = dim(c.trees), u = dim(units(c));
        out.push_back({p + "hidden_weight", {t, u, dim(c.width), dim(c.in)}});
        out.push_back({p + "hidden_bias", {t, u, dim(c.width)}});
        out.push_back({p + "output_weight", {t, u, dim(c.out), dim(c.width)}});
        if (c.variant == ff_variant::leaf_mlp) {
            out.push_back({p + "router_weight", {t, dim(routers(c)), dim(c.in)}});
            out.push_back({p + "router_bias", {t, dim(routers(c))}});
        }
        if (c.bias) out.push_back({p + "output_bias", {dim(c.out)}});
    }
    static layer make(const meta_reader& m, const config& c) {
        return construct(m, [&] { return layer(c.in, c.out, c.width, c.depth, c.trees, c.act, c.variant, c.bias); });
    }
    static void store(const layer& l, const std::string& p, std::vector<tensor_values<Scalar>>& out) {
        const config c = config_of(l);
        std::vector<tensor_spec> s;
        specs(c, p, s);
        std::vector<tensor_values<Scalar>> v;
        for (auto& spec : s) v.push_back({spec.name, spec.shape, {}});
        for (index_t t = 0; t < c.trees; ++t) {
            for (index_t u = 0; u < units(c); ++u) {
                for (index_t r = 0; r < c.width; ++r) {
                    for (index_t k = 0; k < c.in; ++k) v[0].values.push_back(l.hidden_weight(t, u)(r, k));
                    v[1].values.push_back(l.hidden_bias(t, u)(r));
                }
                for (index_t r = 0; r < c.out; ++r)
                    for (index_t k = 0; k < c.width; ++k) v[2].values.push_back(l.output_weight(t, u)(r, k));
            }
            for (index_t g = 0; g < routers(c); ++g) {
                for (index_t k = 0; k < c.in; ++k) v[3].values.push_back(l.router_weight(t, g)(k));
                v[4].values.push_back(l.router_bias(t, g));
            }
        }
        if (c.bias)
            for (index_t r = 0; r < c.out; ++r) v.back().values.push_back(l.output_bias()(r));
        for (auto& t : v) out.push_back(std::move(t));
    }
    static void fill(layer& l, const parsed_file& f, const std::string& p) {
        const config c = config_of(l);
        const auto U = read_values<Scalar>(f, p + "hidden_weight");
        const auto A = read_values<Scalar>(f, p + "hidden_bias");
        const auto V = read_values<Scalar>(f, p + "output_weight");
        std::vector<Scalar> R, S, C;
        if (c.variant == ff_variant::leaf_mlp) {
            R = read_values<Scalar>(f, p + "router_weight");
            S = read_values<Scalar>(f, p + "router_bias");
        }
        if (c.bias) C = read_values<Scalar>(f, p + "output_bias");
        std::size_t ku = 0, ka = 0, kv = 0, kr = 0, ks = 0;
        for (index_t t = 0; t < c.trees; ++t) {
            for (index_t u = 0; u < units(c); ++u) {
                for (index_t r = 0; r < c.width; ++r) {
                    for (index_t k = 0; k < c.in; ++k) l.hidden_weight(t, u)(r, k) = U[ku++];
                    l.hidden_bias(t, u)(r) = A[ka++];
                }
                for (index_t r = 0; r < c.out; ++r)
                    for (index_t k = 0; k < c.width; ++k) l.output_weight(t, u)(r, k) = V[kv++];
            }
            for (index_t g = 0; g < routers(c); ++g) {
                for (index_t k = 0; k < c.in; ++k) l.router_weight(t, g)(k) = R[kr++];
                l.router_bias(t, g) = S[ks++];
            }
        }
        if (c.bias)
            for (index_t r = 0; r < c.out; ++r) l.output_bias()(r) = C[static_cast<std::size_t>(r)];
    }
};

// ---- activation_layer (inside a sequential: metadata only) -----------------------------------

template <class Scalar, int Size>
struct layer_io<activation_layer<Scalar, Size>> {
    using layer = activation_layer<Scalar, Size>;
    struct config {
        activation act;
        index_t size;
    };
    static constexpr const char* kind = "activation";

    static config config_of(const layer& l) { return {l.kind(), l.in_size()}; }
    static void write(const config& c, metadata& md, const std::string& p) {
        md[p + "activation"] = to_string(c.act);
        md[p + "size"] = std::to_string(c.size);
    }
    static config read(const meta_reader& m) { return {m.choice("activation", activation_names), m.size("size")}; }
    static void compare(const meta_reader& m, const config& f, const config& l) {
        check_same(m, f.act == l.act, "activation is ", to_string(f.act), " in the file, ", to_string(l.act), " in the layer");
        check_same(m, f.size == l.size, "size is ", f.size, " in the file, ", l.size, " in the layer");
    }
    static void specs(const config&, const std::string&, std::vector<tensor_spec>&) {}
    static layer make(const meta_reader& m, const config& c) {
        return construct(m, [&] { return layer(c.act, c.size); });
    }
    static void store(const layer&, const std::string&, std::vector<tensor_values<Scalar>>&) {}
    static void fill(layer&, const parsed_file&, const std::string&) {}
};

// ---- sequential: layer i under the prefix "i." -----------------------------------------------

template <class... Layers>
struct layer_io<sequential<Layers...>> {
    using layer = sequential<Layers...>;
    using scalar = typename layer::scalar_type;
    using config = std::tuple<typename layer_io<Layers>::config...>;
    static constexpr const char* kind = "sequential";
    static constexpr std::size_t n = sizeof...(Layers);
    using seq = std::index_sequence_for<Layers...>;

    template <std::size_t I>
    using io = layer_io<std::tuple_element_t<I, std::tuple<Layers...>>>;

    static std::string sub(const std::string& p, std::size_t i) { return p + std::to_string(i) + "."; }

    template <std::size_t... I>
    static config config_of(const layer& l, std::index_sequence<I...>) {
        return config{io<I>::config_of(l.template layer<I>())...};
    }
    static config config_of(const layer& l) { return config_of(l, seq{}); }

    template <std::size_t... I>
    static void write(const config& c, metadata& md, const std::string& p, std::index_sequence<I...>) {
        ((md[sub(p, I) + "kind"] = io<I>::kind, io<I>::write(std::get<I>(c), md, sub(p, I))), ...);
    }
    static void write(const config& c, metadata& md, const std::string& p) {
        md[p + "layers"] = std::to_string(n);
        write(c, md, p, seq{});
    }

    template <std::size_t I>
    static auto read_one(const meta_reader& m) {
        const meta_reader sm(m.file(), sub(m.prefix(), I));
        check_kind(sm, io<I>::kind);
        return io<I>::read(sm);
    }
    template <std::size_t... I>
    static config read(const meta_reader& m, std::index_sequence<I...>) {
        return config{read_one<I>(m)...};
    }
    static config read(const meta_reader& m) {
        const std::int64_t layers = m.integer("layers", 1, std::numeric_limits<std::int64_t>::max());
        if (layers != static_cast<std::int64_t>(n))
            fail(m.source(), "metadata '", m.prefix(), "layers' is ", layers, " but the model has ", n, " layers");
        return read(m, seq{});
    }

    template <std::size_t... I>
    static void compare(const meta_reader& m, const config& f, const config& l, std::index_sequence<I...>) {
        (io<I>::compare(meta_reader(m.file(), sub(m.prefix(), I)), std::get<I>(f), std::get<I>(l)), ...);
    }
    static void compare(const meta_reader& m, const config& f, const config& l) { compare(m, f, l, seq{}); }

    template <std::size_t... I>
    static void specs(const config& c, const std::string& p, std::vector<tensor_spec>& out, std::index_sequence<I...>) {
        (io<I>::specs(std::get<I>(c), sub(p, I), out), ...);
    }
    static void specs(const config& c, const std::string& p, std::vector<tensor_spec>& out) { specs(c, p, out, seq{}); }

    template <std::size_t... I>
    static layer make(const meta_reader& m, const config& c, std::index_sequence<I...>) {
        return construct(m, [&] { return layer(io<I>::make(meta_reader(m.file(), sub(m.prefix(), I)), std::get<I>(c))...); });
    }
    static layer make(const meta_reader& m, const config& c) { return make(m, c, seq{}); }

    template <std::size_t... I>
    static void store(const layer& l, const std::string& p, std::vector<tensor_values<scalar>>& out, std::index_sequence<I...>) {
        (io<I>::store(l.template layer<I>(), sub(p, I), out), ...);
    }
    static void store(const layer& l, const std::string& p, std::vector<tensor_values<scalar>>& out) {
        store(l, p, out, seq{});
    }

    template <std::size_t... I>
    static void fill(layer& l, const parsed_file& f, const std::string& p, std::index_sequence<I...>) {
        (io<I>::fill(l.template layer<I>(), f, sub(p, I)), ...);
    }
    static void fill(layer& l, const parsed_file& f, const std::string& p) { fill(l, f, p, seq{}); }

    static void check_kind(const meta_reader& m, const char* expected) {
        const std::string& k = m.get("kind");
        if (k != expected)
            fail(m.source(), "metadata '", m.prefix(), "kind' is \"", k, "\" but the model expects \"", expected, "\"");
    }

};

// ---- encoding and files ----------------------------------------------------------------------

template <class Scalar>
std::vector<unsigned char> encode(const std::vector<tensor_values<Scalar>>& tensors, const metadata& md, dtype type,
                                  const std::string& target) {
    nlohmann::json header = nlohmann::json::object();
    const std::uint64_t width = dtype_bytes(type);
    std::uint64_t offset = 0;
    for (const auto& t : tensors) {
        const std::uint64_t bytes = static_cast<std::uint64_t>(t.values.size()) * width;
        nlohmann::json entry = nlohmann::json::object();
        entry["dtype"] = to_string(type);
        entry["shape"] = t.shape;
        entry["data_offsets"] = nlohmann::json::array({offset, offset + bytes});
        header[t.name] = std::move(entry);
        offset += bytes;
    }
    header["__metadata__"] = md;
    std::string text = header.dump();
    // Pad with spaces so that the data section starts 8-byte aligned, as the reference writer does.
    while (text.size() % 8 != 0) text += ' ';
    std::vector<unsigned char> out;
    out.reserve(8 + text.size() + static_cast<std::size_t>(offset));
    write_le(out, static_cast<std::uint64_t>(text.size()), 8);
    out.insert(out.end(), text.begin(), text.end());
    for (const auto& t : tensors) {
        for (std::size_t k = 0; k < t.values.size(); ++k) {
            const Scalar v = t.values[k];
            if (type == dtype::f64) {
                write_le(out, double_to_bits(static_cast<double>(v)), 8);
                continue;
            }
            if (!fits_float(static_cast<double>(v)))
                fail(target, "tensor '", t.name, "' element ", k, " (", v, ") does not fit ", to_string(type));
            const float f = static_cast<float>(v);
            if (type == dtype::f32) {
                write_le(out, float_to_bits(f), 4);
            } else {
                const std::uint16_t b = float_to_bf16(f);
                if (std::isfinite(f) && (b & 0x7f80u) == 0x7f80u)
                    fail(target, "tensor '", t.name, "' element ", k, " (", v, ") overflows BF16");
                write_le(out, b, 2);
            }
        }
    }
    return out;
}

/// Writes `<path>.tmp.<pid>` next to the target, flushes it to disk and renames it over the
/// target, so that a reader sees either the old file or the complete new one.
inline void write_atomic(const std::string& path, const std::vector<unsigned char>& bytes) {
#if defined(TREEGATE_SAFETENSORS_POSIX)
    const std::string tmp = path + ".tmp." + std::to_string(static_cast<long long>(::getpid()));
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) fail(path, "cannot create the temporary file ", tmp, ": ", std::strerror(errno));
    auto abandon = [&](const char* what) {
        const int err = errno;
        if (fd >= 0) ::close(fd);
        ::unlink(tmp.c_str());
        fail(path, what, " ", tmp, ": ", std::strerror(err));
    };
    std::size_t done = 0;
    while (done < bytes.size()) {
        const ::ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
        if (w < 0) {
            if (errno == EINTR) continue;
            abandon("cannot write");
        }
        done += static_cast<std::size_t>(w);
    }
    if (::fsync(fd) != 0) abandon("cannot flush");
    const int closed = ::close(fd);
    fd = -1;
    if (closed != 0) abandon("cannot close");
    if (::rename(tmp.c_str(), path.c_str()) != 0) abandon("cannot rename over the target");
    // Make the rename itself durable; failing here cannot corrupt either file, so it is ignored.
    const std::size_t slash = path.find_last_of('/');
    const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_CLOEXEC);
    if (dfd >= 0) {
        ::fsync(dfd);
        ::close(dfd);
    }
#else
    const std::string tmp = path + ".tmp";
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        if (!out) fail(path, "cannot create the temporary file ", tmp);
        out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
        out.flush();
        if (!out) {
            out.close();
            std::remove(tmp.c_str());
            fail(path, "cannot write ", tmp);
        }
    }
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec) {
        std::remove(tmp.c_str());
        fail(path, "cannot rename ", tmp, " over the target: ", ec.message());
    }
#endif
}

inline std::vector<unsigned char> read_file(const std::string& path) {
#if defined(TREEGATE_SAFETENSORS_POSIX)
    struct ::stat st {};
    if (::stat(path.c_str(), &st) != 0) fail(path, "cannot open: ", std::strerror(errno));
    if (!S_ISREG(st.st_mode)) fail(path, "is not a regular file");
#endif
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(path, "cannot open for reading");
    in.seekg(0, std::ios::end);
    const std::streamoff size = in.tellg();
    if (size < 0) fail(path, "cannot determine the file size");
    in.seekg(0, std::ios::beg);
    std::vector<unsigned char> bytes(static_cast<std::size_t>(size));
    if (size > 0) in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(size));
    if (!in) fail(path, "cannot read ", size, " bytes");
    return bytes;
}

/// Builds a layer from a parsed file; with `target`, the file must match its configuration.
/// Everything is checked before the layer is allocated, so a hostile file cannot make a large one.
template <class Layer>
Layer build(const parsed_file& f, const Layer* target) {
    using io = layer_io<Layer>;
    const meta_reader m(f, "");
    const std::string& kind = m.get("kind");
    if (kind != io::kind) fail(f.source, "holds a \"", kind, "\" layer, not a ", io::kind);
    const auto cfg = io::read(m);
    if (target) io::compare(m, cfg, io::config_of(*target));
    std::vector<tensor_spec> specs;
    io::specs(cfg, "", specs);
    check_tensors(f, specs);
    Layer layer = io::make(m, cfg);
    io::fill(layer, f, "");
    return layer;
}

template <class Layer>
std::vector<unsigned char> save_bytes(const Layer& layer, dtype type, const std::string& target) {
    using io = layer_io<Layer>;
    metadata md;
    md["format"] = "treegate";
    md["treegate_version"] = version_string();
    md["kind"] = io::kind;
    io::write(io::config_of(layer), md, "");
    std::vector<tensor_values<typename Layer::scalar_type>> tensors;
    io::store(layer, "", tensors);
    return encode(tensors, md, type, target);
}

}  // namespace detail

// ---- public interface ------------------------------------------------------------------------
// Layer is dense, tree_linear, tree_linear_blocked, tree_feedforward, or a sequential of those
// and activation_layer. `source` names a memory buffer in error messages.

/// The bytes of a safetensors file holding `layer`.
template <class Layer>
std::vector<unsigned char> save_to_memory(const Layer& layer, dtype type = dtype::f32) {
    return detail::save_bytes(layer, type, "<memory>");
}

/// Saves atomically: a failed save leaves any existing file at `path` untouched.
template <class Layer>
void save(const Layer& layer, const std::string& path, dtype type = dtype::f32) {
    detail::write_atomic(path, detail::save_bytes(layer, type, path));
}

/// Loads into an existing layer whose configuration the file must match; on failure the
/// layer is unchanged and a file_error names the tensor or setting and the numbers.
template <class Layer>
void load_into_from_memory(Layer& layer, const void* data, std::size_t size, const std::string& source = "<memory>") {
    const auto f = detail::parse(static_cast<const unsigned char*>(data), size, source);
    layer = detail::build<Layer>(f, &layer);
}

template <class Layer>
void load_into(Layer& layer, const std::string& path) {
    const auto bytes = detail::read_file(path);
    load_into_from_memory(layer, bytes.data(), bytes.size(), path);
}

/// Builds a layer of type Layer from the configuration in the file.
template <class Layer>
Layer load_from_memory(const void* data, std::size_t size, const std::string& source = "<memory>") {
    const auto f = detail::parse(static_cast<const unsigned char*>(data), size, source);
    return detail::build<Layer>(f, nullptr);
}

template <class Layer>
Layer load(const std::string& path) {
    const auto bytes = detail::read_file(path);
    return load_from_memory<Layer>(bytes.data(), bytes.size(), path);
}

// ---- plain tensors: test vectors and other data that travel with a model ---------------------

/// One tensor of a file, row-major (the last index varies fastest).
template <class Scalar>
struct tensor {
    std::vector<std::uint64_t> shape;
    std::vector<Scalar> values;
};

template <class Scalar>
using tensor_map = std::map<std::string, tensor<Scalar>>;

/// Every tensor of any valid safetensors file (metadata optional), converted to Scalar; the
/// same structural checks as the layer loaders, and NaN or infinite values are refused.
template <class Scalar>
tensor_map<Scalar> read_tensors_from_memory(const void* data, std::size_t size, const std::string& source = "<memory>") {
    const auto f = detail::parse(static_cast<const unsigned char*>(data), size, source);
    tensor_map<Scalar> out;
    for (const auto& t : f.tensors) out[t.first] = {t.second.shape, detail::read_values<Scalar>(f, t.first)};
    return out;
}

template <class Scalar>
tensor_map<Scalar> read_tensors(const std::string& path) {
    const auto bytes = detail::read_file(path);
    return read_tensors_from_memory<Scalar>(bytes.data(), bytes.size(), path);
}

/// Saves tensors (and string metadata) atomically; each tensor's size must match its shape.
template <class Scalar>
void write_tensors(const tensor_map<Scalar>& tensors, const std::string& path, dtype type = dtype::f32,
                   const std::map<std::string, std::string>& metadata = {}) {
    std::vector<detail::tensor_values<Scalar>> list;
    for (const auto& t : tensors) {
        std::uint64_t n = 1;
        bool overflow = false;
        for (const std::uint64_t d : t.second.shape) {
            overflow = overflow || (d != 0 && n > std::numeric_limits<std::uint64_t>::max() / d);
            n *= d;
        }
        if (overflow || n != static_cast<std::uint64_t>(t.second.values.size()))
            detail::fail(path, "tensor '", t.first, "' has ", t.second.values.size(), " values for shape ",
                         detail::shape_string(t.second.shape));
        list.push_back({t.first, t.second.shape, t.second.values});
    }
    detail::write_atomic(path, detail::encode(list, metadata, type, path));
}

template <class Scalar, class Policy = kernels::default_policy>
dense<Scalar, dynamic, dynamic, Policy> load_dense(const std::string& path) {
    return load<dense<Scalar, dynamic, dynamic, Policy>>(path);
}

template <class Scalar, class Policy = kernels::default_policy>
tree_linear<Scalar, dynamic, dynamic, dynamic, Policy> load_tree_linear(const std::string& path) {
    return load<tree_linear<Scalar, dynamic, dynamic, dynamic, Policy>>(path);
}

template <class Scalar, class Policy = kernels::default_policy>
tree_linear_blocked<Scalar, dynamic, dynamic, dynamic, Policy> load_tree_linear_blocked(const std::string& path) {
    return load<tree_linear_blocked<Scalar, dynamic, dynamic, dynamic, Policy>>(path);
}

template <class Scalar, class Policy = kernels::default_policy>
tree_feedforward<Scalar, dynamic, dynamic, dynamic, dynamic, Policy> load_tree_feedforward(const std::string& path) {
    return load<tree_feedforward<Scalar, dynamic, dynamic, dynamic, dynamic, Policy>>(path);
}

}  // namespace treegate::safetensors

#endif
