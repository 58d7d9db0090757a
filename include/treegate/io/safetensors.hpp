// treegate/io/safetensors.hpp — save and load layers in the safetensors format (PyTorch names).
// io/ is the only part of treegate that needs nlohmann-json; the umbrella header does not include it.
#ifndef TREEGATE_IO_SAFETENSORS_HPP
#define TREEGATE_IO_SAFETENSORS_HPP

#include "../config.hpp"
#include "../layers/dense.hpp"
#include "../layers/tree_feedforward.hpp"
#include "../layers/tree_linear.hpp"
#include "../layers/tree_linear_bf16.hpp"
#include "../layers/sliced_tree_linear.hpp"
#include "detail/atomic_file.hpp"
#include "detail/checksum.hpp"
#include "detail/composite_codecs.hpp"
#include "detail/format.hpp"
#include "detail/layer_codecs.hpp"
#include "detail/metadata.hpp"

#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <set>
#include <type_traits>
#include <string>
#include <utility>
#include <vector>

// The parts: detail/format.hpp (the container), detail/checksum.hpp (zlib's CRC-32 of the data),
// detail/metadata.hpp (treegate's __metadata__), detail/layer_codecs.hpp and
// detail/composite_codecs.hpp (layers <-> tensors), detail/atomic_file.hpp.
namespace treegate::safetensors {
namespace detail {

/// A file parsed, structurally validated and, as `options` say, checked against its checksum:
/// first, so that a damaged file says so rather than what the damage looks like.
inline parsed_file parse_checked(const void* data, std::size_t size, const std::string& source,
                                 const load_options& options) {
    parsed_file f = parse(static_cast<const unsigned char*>(data), size, source);
    verify_checksum(f, options);
    return f;
}

/// Builds a layer from a parsed file; with `target`, the file must match its configuration.
/// Everything is checked before the layer is allocated, so a hostile file cannot make a large one.
/// Whether a layer's blocks may be written: false for storage::mapped (io/mapped.hpp).
template <class Layer, class = void>
struct writable_layer : std::true_type {};
template <class Layer>
struct writable_layer<Layer, std::void_t<typename Layer::storage_type>>
    : std::integral_constant<bool, Layer::storage_type::writable> {};

template <class Layer>
constexpr void check_writable() noexcept {
    static_assert(writable_layer<Layer>::value, "safetensors: a layer with storage::mapped is not loaded into; map "
                                                "its file with safetensors::map_layer (io/mapped.hpp)");
}

template <class Layer>
Layer build(const parsed_file& f, const Layer* target) {
    using io = layer_io<Layer>;
    const meta_reader m(f, "");
    if (m.has("layout") && m.get("layout") != "row_major")
        fail(f.source, "holds its weights in the \"", m.get("layout"), "\" layout of save_for_mapping; serve it with "
                       "safetensors::map_layer (io/mapped.hpp), and to_owned() for a trainable copy");
    const std::string& kind = m.get("kind");
    if (!detail::kind_matches<io>(kind)) fail(f.source, "holds a \"", kind, "\" layer, not a ", io::kind);
    const auto cfg = io::read(m);
    if (target) io::compare(m, cfg, io::config_of(*target));
    std::vector<tensor_spec> specs;
    io::specs(cfg, "", specs);
    check_tensors(f, specs);
    Layer layer = io::make(m, cfg);
    // The configuration's tensor list (checked before allocating) is the description's.
    const auto described = parameters(std::as_const(layer));
    bool same = described.size() == specs.size();
    for (std::size_t k = 0; same && k < specs.size(); ++k)
        same = described[k].name == specs[k].name && described[k].file_shape == specs[k].shape;
    if (!same) fail(f.source, "internal error: the ", io::kind, " codec's tensors differ from the layer's description");
    fill_tensors(layer, f, [](const std::string& n) -> const std::string& { return n; });
    return layer;
}

/// `target` with the file's tensors, the layer's parameter description as the specification
/// (load_options: prefix, names, strict); the file's metadata is not read.
template <class Layer>
Layer fill_by_description(const parsed_file& f, const Layer& target, const load_options& o) {
    std::map<std::string, std::string> to_file;  // treegate name -> file name without the prefix
    for (const auto& entry : o.names) to_file[entry.second] = entry.first;
    const auto file_name = [&](const std::string& n) {
        const auto it = to_file.find(n);
        return o.prefix + (it == to_file.end() ? n : it->second);
    };
    std::set<std::string> used;
    for (const auto& t : parameters(target)) {
        const std::string name = file_name(t.name);
        const auto it = f.tensors.find(name);
        if (it == f.tensors.end())
            fail(f.source, "tensor '", name, "' is missing (the layer's '", t.name, "', shape ", shape_string(t.file_shape),
                 ")");
        if (it->second.shape != t.file_shape)
            fail(f.source, "tensor '", name, "' has shape ", shape_string(it->second.shape), " but the layer's '", t.name,
                 "' has shape ", shape_string(t.file_shape));
        used.insert(name);
    }
    if (o.strict) {
        std::string unused;
        for (const auto& t : f.tensors)
            if (!used.count(t.first)) unused += (unused.empty() ? "'" : ", '") + t.first + "' " + shape_string(t.second.shape);
        if (!unused.empty())
            fail(f.source, "tensors the layer does not use: ", unused, " (load_options::strict = false skips them)");
    }
    Layer layer = target;
    fill_tensors(layer, f, file_name);
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
    return encode(store_tensors(layer), md, type, target);
}

}  // namespace detail

// ---- public interface ------------------------------------------------------------------------
// Layer is dense, tree_linear (tree_linear_bf16 included: its bf16 weights are written as BF16
// whatever `type` says, and an F32 or F64 file loads into it rounded to bf16), sliced_tree_linear, tree_feedforward, or a
// sequential of those and activation_layer. `source` names a memory buffer in error messages. Saving refuses NaN and
// infinite values (loading would refuse them); loading verifies the data's checksum when the
// file has one, unless `options` turn that off.

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
/// layer is unchanged and a file_error names the tensor or setting and the numbers. With
/// `options` (require_metadata = false, a prefix or a name map) the file needs no treegate
/// metadata: the layer's parameter description is checked tensor by tensor instead.
template <class Layer>
void load_into_from_memory(Layer& layer, const void* data, std::size_t size, const std::string& source = "<memory>",
                           const load_options& options = {}) {
    detail::check_writable<Layer>();
    const auto f = detail::parse_checked(data, size, source, options);
    if (!options.require_metadata || !options.prefix.empty() || !options.names.empty())
        layer = detail::fill_by_description(f, layer, options);
    else
        layer = detail::build<Layer>(f, &layer);
}

template <class Layer>
void load_into(Layer& layer, const std::string& path, const load_options& options = {}) {
    const auto bytes = detail::read_file(path);
    load_into_from_memory(layer, bytes.data(), bytes.size(), path, options);
}

/// Builds a layer of type Layer from the configuration in the file.
template <class Layer>
Layer load_from_memory(const void* data, std::size_t size, const std::string& source = "<memory>",
                       const load_options& options = {}) {
    detail::check_writable<Layer>();
    const auto f = detail::parse_checked(data, size, source, options);
    return detail::build<Layer>(f, nullptr);
}

template <class Layer>
Layer load(const std::string& path, const load_options& options = {}) {
    const auto bytes = detail::read_file(path);
    return load_from_memory<Layer>(bytes.data(), bytes.size(), path, options);
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
tensor_map<Scalar> read_tensors_from_memory(const void* data, std::size_t size, const std::string& source = "<memory>",
                                            const load_options& options = {}) {
    const auto f = detail::parse_checked(data, size, source, options);
    tensor_map<Scalar> out;
    for (const auto& t : f.tensors) out[t.first] = {t.second.shape, detail::read_values<Scalar>(f, t.first)};
    return out;
}

template <class Scalar>
tensor_map<Scalar> read_tensors(const std::string& path, const load_options& options = {}) {
    const auto bytes = detail::read_file(path);
    return read_tensors_from_memory<Scalar>(bytes.data(), bytes.size(), path, options);
}

/// Saves tensors (and string metadata, where the checksum's key is reserved) atomically; each
/// tensor's size must match its shape.
template <class Scalar>
void write_tensors(const tensor_map<Scalar>& tensors, const std::string& path, dtype type = dtype::f32,
                   const std::map<std::string, std::string>& metadata = {}) {
    std::vector<detail::tensor_values<Scalar>> list;
    for (const auto& t : tensors) {
        std::uint64_t n = 0;
        if (!detail::element_count(t.second.shape, n) || n != static_cast<std::uint64_t>(t.second.values.size()))
            detail::fail(path, "tensor '", t.first, "' has ", t.second.values.size(), " values for shape ",
                         detail::shape_string(t.second.shape));
        list.push_back({t.first, t.second.shape, t.second.values});
    }
    detail::write_atomic(path, detail::encode(list, metadata, type, path));
}

template <class Scalar, class Policy = kernels::default_policy>
dense<Scalar, dynamic, dynamic, Policy> load_dense(const std::string& path, const load_options& options = {}) {
    return load<dense<Scalar, dynamic, dynamic, Policy>>(path, options);
}

template <class Scalar, class Policy = kernels::default_policy>
tree_linear<Scalar, dynamic, dynamic, dynamic, Policy> load_tree_linear(const std::string& path, const load_options& options = {}) {
    return load<tree_linear<Scalar, dynamic, dynamic, dynamic, Policy>>(path, options);
}

template <class Scalar, class Policy = kernels::default_policy>
sliced_tree_linear<Scalar, dynamic, dynamic, dynamic, Policy> load_sliced_tree_linear(const std::string& path, const load_options& options = {}) {
    return load<sliced_tree_linear<Scalar, dynamic, dynamic, dynamic, Policy>>(path, options);
}

template <class Scalar, class Policy = kernels::default_policy>
tree_feedforward<Scalar, dynamic, dynamic, dynamic, dynamic, Policy> load_tree_feedforward(const std::string& path, const load_options& options = {}) {
    return load<tree_feedforward<Scalar, dynamic, dynamic, dynamic, dynamic, Policy>>(path, options);
}

}  // namespace treegate::safetensors

#endif
