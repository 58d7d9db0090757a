// treegate/io/mapped.hpp — serving a tree_linear straight from a memory-mapped safetensors file.
// Beside io/safetensors.hpp (same validation, same format); the layer type is storage::mapped.
//
// save_for_mapping writes the blocks as the kernels read them (README, "Serving a tree larger
// than memory"); map_layer validates such a file and points a storage::mapped layer's blocks
// into the mapping: opening costs the validation, not a copy, pages come in on first touch and
// the OS page cache is the cache. The mapping lives as long as the last layer sharing it.
#ifndef TREEGATE_IO_MAPPED_HPP
#define TREEGATE_IO_MAPPED_HPP

#include "safetensors.hpp"
#include "detail/mapping.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace treegate {

/// A tree_linear serving blocks in place from a mapped file (float or double weights).
template <class Scalar, class Policy = kernels::default_policy>
using mapped_tree_linear = tree_linear<Scalar, dynamic, dynamic, dynamic, Policy, storage::mapped<Scalar>>;

/// The same with bf16 weights (half the bytes to page in); inputs, biases and outputs are float.
template <class Policy = kernels::default_policy>
using mapped_tree_linear_bf16 = tree_linear<float, dynamic, dynamic, dynamic, Policy, storage::mapped<bf16>>;

namespace safetensors {

/// How a file holds a tree_linear's weights.
enum class weight_layout {
    /// What save() writes, PyTorch's convention: weight [blocks, out, in], bias [blocks, out],
    /// row-major. The kernels read column-major blocks, so serving it needs a transposed copy.
    row_major,
    /// What save_for_mapping() writes: weight [blocks, stride], each row one block as the kernels
    /// read it (column-major out x in, i.e. row-major [in, out]) followed by zeros up to the
    /// layer's block stride; bias [blocks, bias stride] likewise; the weights start 64-byte
    /// aligned in the file. Metadata `layout` = "blocks" says so.
    blocks,
};

inline const char* to_string(weight_layout l) noexcept { return l == weight_layout::blocks ? "blocks" : "row_major"; }

/// How map_layer reads a file.
struct map_options {
    /// Before any weight is used, read the whole tensor data once: its checksum (when the file
    /// has one) and the refusal of NaN or infinite values, as load() does. That pass reads every
    /// page of the file (the cost of a copying load's read, without the copy, and the pages are
    /// dropped from this process's resident set afterwards). Off, opening reads only the header
    /// (structure, metadata, shapes, dtypes, offsets and alignment are still checked): a damaged
    /// value then shows up in the outputs, not as an error.
    bool verify_data = true;
    /// A row_major file is refused unless this is set; set, its weights are loaded into memory
    /// (a transposed copy, as load() makes) and the layer shares that copy instead of a mapping.
    bool allow_copy = false;
};

namespace detail {

template <class T>
constexpr dtype dtype_of() noexcept {
    if constexpr (std::is_same_v<T, bf16>)
        return dtype::bf16;
    else if constexpr (std::is_same_v<T, double>)
        return dtype::f64;
    else
        return dtype::f32;
}

inline constexpr std::size_t mapped_alignment = 64;  // where save_for_mapping puts the weights
inline constexpr const char* layout_key = "layout";

template <class Layer>
struct mapped_traits {
    static constexpr bool value = false;
};
template <class S, int I, int O, int D, class P, class W>
struct mapped_traits<tree_linear<S, I, O, D, P, storage::mapped<W>>> {
    static constexpr bool value = true;
    using owned = tree_linear<S, I, O, D, P, storage::owned<W>>;
};

/// The layout a parsed treegate file declares (a file without the key is row_major).
inline weight_layout declared_layout(const parsed_file& f) {
    const auto it = f.metadata.find(layout_key);
    if (it == f.metadata.end() || it->second == "row_major") return weight_layout::row_major;
    if (it->second == "blocks") return weight_layout::blocks;
    fail(f.source, "metadata '", layout_key, "' is \"", it->second, "\", expected \"row_major\" or \"blocks\"");
}

/// Strides (in elements) of the weight and bias blocks of a tree_linear with weights W: the
/// owned layer's, which the file must match for the kernels to read it in place.
template <class W, class Scalar>
std::pair<index_t, index_t> block_strides(index_t in, index_t out, const char* layer) {
    return {treegate::detail::weight_stride<W, Scalar>(treegate::detail::checked_mul(in, out, layer, "block size"), layer),
            treegate::detail::block_stride<Scalar>(out, layer, "bias size")};
}

/// A tensor's element bits are finite (the exponent is not all ones), `n` elements from p.
template <class T>
bool all_finite(const unsigned char* p, std::size_t n, std::size_t& bad) noexcept {
    constexpr std::size_t width = sizeof(T);
    for (std::size_t k = 0; k < n; ++k, p += width) {
        bool finite;
        if constexpr (width == 2)
            finite = (read_le(p, 2) & 0x7f80u) != 0x7f80u;
        else if constexpr (width == 4)
            finite = (read_le(p, 4) & 0x7f800000u) != 0x7f800000u;
        else
            finite = (read_le(p, 8) & 0x7ff0000000000000u) != 0x7ff0000000000000u;
        if (!finite) {
            bad = k;
            return false;
        }
    }
    return true;
}

/// The one pass over the data of map_options::verify_data: the checksum (when the file has one)
/// and finite weights and biases, in pieces that `m` (when the bytes are a mapping) drops from
/// the resident set once read.
template <class W, class Scalar>
void verify_mapped(const parsed_file& f, const unsigned char* file, const mapping* m, bool has_bias) {
    constexpr std::uint64_t piece = std::uint64_t{64} << 20;
    const auto base = static_cast<std::size_t>(f.data - file);
    const auto crc_it = f.metadata.find(checksum_key);
    std::uint32_t crc = 0;
    const char* names[] = {"weight", "bias"};
    for (int t = 0; t < (has_bias ? 2 : 1); ++t) {
        const tensor_entry& e = f.tensors.at(names[t]);
        const std::size_t width = t == 0 ? sizeof(W) : sizeof(Scalar);
        for (std::uint64_t at = e.begin; at < e.end; at += piece) {
            const std::uint64_t n = std::min(piece, e.end - at);
            std::size_t bad = 0;
            const bool ok = t == 0 ? all_finite<W>(f.data + at, static_cast<std::size_t>(n) / width, bad)
                                   : all_finite<Scalar>(f.data + at, static_cast<std::size_t>(n) / width, bad);
            if (!ok)
                fail(f.source, "tensor '", names[t], "' element ", (at - e.begin) / width + bad, " of ",
                     (e.end - e.begin) / width, " is NaN or infinite");
            if (crc_it != f.metadata.end()) crc = crc32_update(crc, f.data + at, n);
            if (m) m->release(base + static_cast<std::size_t>(at), static_cast<std::size_t>(n));
        }
    }
    if (crc_it == f.metadata.end()) return;
    std::uint32_t stored = 0;
    if (!parse_checksum(crc_it->second, stored))
        fail(f.source, "metadata '", checksum_key, "' is \"", crc_it->second, "\", not ", checksum_digits,
             " hexadecimal digits");
    if (crc != stored)
        fail(f.source, "checksum mismatch: metadata '", checksum_key, "' is ", checksum_text(stored), " but the ",
             f.data_size, " bytes of tensor data have CRC-32 ", checksum_text(crc),
             " (changed or damaged after it was saved?)");
}

/// The dtype of a tensor of a blocks file, checked first: the strides, and so the shapes, depend on it.
inline void check_blocks_dtype(const parsed_file& f, const char* name, dtype type) {
    const auto it = f.tensors.find(name);
    if (it != f.tensors.end() && it->second.type != type)
        fail(f.source, "tensor '", name, "' has dtype ", to_string(it->second.type), "; this mapped layer reads ",
             to_string(type), " in place (load() converts other dtypes into a copy)");
}

/// A tensor of a blocks file, whose shape has been checked, lies where its elements may be read.
inline void check_blocks_alignment(const parsed_file& f, std::uint64_t data_offset, const char* name, dtype type,
                                   std::size_t align) {
    const tensor_entry& e = f.tensors.at(name);
    // The mapping starts on a page, so a file offset is as aligned as the address it maps to.
    const std::uint64_t at = data_offset + e.begin;
    if (at % align != 0)
        fail(f.source, "tensor '", name, "' starts at file byte ", at, ", not a multiple of ", align, " bytes: its ",
             to_string(type), " values cannot be read in place");
}

/// The mapped layer over the parsed blocks file `f` whose bytes start at `file` (page-aligned)
/// and are kept alive by `owner`; `m`, when the bytes are a mapping, drops verified pages.
template <class Layer>
Layer map_blocks(const parsed_file& f, const unsigned char* file, const std::shared_ptr<const void>& owner,
                 const mapping* m, const map_options& o) {
    using io = layer_io<Layer>;
    using W = typename Layer::weight_type;
    using Scalar = typename Layer::scalar_type;
    const meta_reader meta(f, "");
    const std::string& kind = meta.get("kind");
    if (kind != io::kind) fail(f.source, "holds a \"", kind, "\" layer, not a ", io::kind);
    const auto c = io::read(meta);
    const index_t blocks = tree_blocks(c.mode, c.depth);
    const auto strides = construct(meta, [&] { return block_strides<W, Scalar>(c.in, c.out, Layer::name); });
    std::vector<tensor_spec> specs{{"weight", {dim(blocks), dim(strides.first)}}};
    if (c.bias) specs.push_back({"bias", {dim(blocks), dim(strides.second)}});
    check_blocks_dtype(f, "weight", dtype_of<W>());
    check_blocks_dtype(f, "bias", dtype_of<Scalar>());
    check_tensors(f, specs);  // exactly these tensors, with these shapes
    const auto data_offset = static_cast<std::uint64_t>(f.data - file);
    check_blocks_alignment(f, data_offset, "weight", dtype_of<W>(), alignof(W));
    if (c.bias) check_blocks_alignment(f, data_offset, "bias", dtype_of<Scalar>(), alignof(Scalar));
    if (o.verify_data) verify_mapped<W, Scalar>(f, file, m, c.bias);
    const auto view = [&](const char* name, auto element) {
        using E = decltype(element);
        if (!f.tensors.count(name)) return treegate::detail::shared_view<E>();
        const tensor_entry& e = f.tensors.at(name);
        return treegate::detail::shared_view<E>(owner, reinterpret_cast<const E*>(f.data + e.begin),
                                                static_cast<index_t>((e.end - e.begin) / sizeof(E)));
    };
    return construct(meta, [&] {
        return Layer(c.in, c.out, c.depth, c.mode, c.external ? gating::external() : gating::from_input(c.gates), c.bias,
                     view("weight", W{}), view("bias", Scalar{}));
    });
}

/// A mapped-storage layer sharing the blocks of an owned one (the copy of a row_major file).
template <class Layer, class Owned>
Layer share_owned(Owned&& owned) {
    auto keep = std::make_shared<const Owned>(std::move(owned));
    const auto w = keep->weight_blocks();  // one run of block_count() blocks at the owned strides
    const auto b = keep->bias_blocks();
    return Layer(keep->in_size(), keep->out_size(), keep->depth(), keep->mode(), keep->gates(), keep->has_bias(),
                 treegate::detail::shared_view<typename Layer::weight_type>(keep, w.data, w.count * w.stride),
                 treegate::detail::shared_view<typename Layer::scalar_type>(keep, b.data, b.count * b.stride));
}

/// Reading the file's little-endian values in place needs a little-endian machine.
inline void check_little_endian(const std::string& source) {
    const std::uint16_t one = 1;
    unsigned char first = 0;
    std::memcpy(&first, &one, 1);
    if (first != 1) fail(source, "the blocks layout is read in place, which needs a little-endian machine");
}

/// Streams a blocks file: the header, then weight_block(b, dst) and bias_block(b, dst) fill
/// block b (column-major, in*out weights; out biases) into a zeroed buffer of the stride. The
/// checksum is filled in at the end; at no time is more than one block in memory.
template <class W, class Scalar, class WeightFn, class BiasFn>
void write_blocks_file(const std::string& path, const metadata& config, index_t in, index_t out, index_t blocks,
                       bool bias, WeightFn&& weight_block, BiasFn&& bias_block) {
    check_little_endian(path);
    const auto strides = block_strides<W, Scalar>(in, out, "save_for_mapping");
    const std::uint64_t wbytes = dim(blocks) * dim(strides.first) * sizeof(W);
    const std::uint64_t bbytes = bias ? dim(blocks) * dim(strides.second) * sizeof(Scalar) : 0;
    nlohmann::json header = nlohmann::json::object();
    header["weight"] = {{"dtype", to_string(dtype_of<W>())},
                        {"shape", {dim(blocks), dim(strides.first)}},
                        {"data_offsets", {0, wbytes}}};
    if (bias)
        header["bias"] = {{"dtype", to_string(dtype_of<Scalar>())},
                          {"shape", {dim(blocks), dim(strides.second)}},
                          {"data_offsets", {wbytes, wbytes + bbytes}}};
    metadata md = config;
    md["format"] = "treegate";
    md["treegate_version"] = version_string();
    md[layout_key] = to_string(weight_layout::blocks);
    if (md.count(checksum_key)) fail(path, "metadata key '", checksum_key, "' is reserved for the checksum");
    const auto text = [&](std::uint32_t crc) {
        md[checksum_key] = checksum_text(crc);
        std::string t = header_text(header, md);
        while ((8 + t.size()) % mapped_alignment != 0) t += ' ';  // the weights start on a cache line
        return t;
    };
    const std::string placeholder = text(0);
    atomic_writer file(path);
    std::vector<unsigned char> length;
    write_le(length, placeholder.size(), 8);
    file.write(length.data(), length.size());
    file.write(placeholder.data(), placeholder.size());
    std::uint32_t crc = 0;
    const auto stream = [&](const char* name, auto element, index_t stride, index_t used, auto&& fill) {
        using E = decltype(element);
        std::vector<E> buf(static_cast<std::size_t>(stride));
        for (index_t b = 0; b < blocks; ++b) {
            std::fill(buf.begin(), buf.end(), E{});
            fill(b, buf.data());
            const auto* bytes = reinterpret_cast<const unsigned char*>(buf.data());
            std::size_t bad = 0;
            if (!all_finite<E>(bytes, static_cast<std::size_t>(used), bad))
                fail(path, "tensor '", name, "' block ", b, " element ", bad,
                     " is NaN or infinite: not saved, since loading refuses non-finite values");
            crc = crc32_update(crc, bytes, buf.size() * sizeof(E));
            file.write(bytes, buf.size() * sizeof(E));
        }
    };
    stream("weight", W{}, strides.first, in * out, weight_block);
    if (bias) stream("bias", Scalar{}, strides.second, out, bias_block);
    const std::string sealed = text(crc);
    if (sealed.size() != placeholder.size())
        fail(path, "internal error: the header changed length when its checksum was filled in");
    file.write_at(8, sealed.data(), sealed.size());
    file.commit();
}

}  // namespace detail

/// The layout of the tree_linear in the safetensors file at `path`, from its header: what
/// map_layer will serve in place (blocks) or only with allow_copy (row_major).
inline weight_layout layout_of(const std::string& path) {
    const detail::mapping m(path);
    return detail::declared_layout(detail::parse(m.data(), m.size(), path));
}

/// A serving layer (mapped_tree_linear, mapped_tree_linear_bf16, or a tree_linear with fixed
/// sizes and storage::mapped) whose blocks are read in place from the file at `path`, written
/// by save_for_mapping. Everything load() checks is checked before the layer exists: the
/// header's structure, the metadata and the layer's configuration, every tensor's shape and
/// dtype (which must be the layer's own: nothing is converted in place), offsets inside the
/// file, alignment, and (map_options::verify_data) the checksum and finite values. A failure is
/// a file_error naming the tensor or setting and the numbers. A row_major file (save()) is
/// refused unless options.allow_copy; then it is loaded into memory as load() would.
template <class Layer>
Layer map_layer(const std::string& path, const map_options& options = {}) {
    static_assert(detail::mapped_traits<Layer>::value,
                  "safetensors::map_layer: Layer must be a tree_linear with storage::mapped (mapped_tree_linear)");
    detail::check_little_endian(path);
    auto m = std::make_shared<const detail::mapping>(path);
    const detail::parsed_file f = detail::parse(m->data(), m->size(), path);
    if (detail::declared_layout(f) == weight_layout::blocks)
        return detail::map_blocks<Layer>(f, m->data(), m, m.get(), options);
    if (!options.allow_copy)
        detail::fail(path, "holds row-major weights (written by save()), which the kernels cannot read in place; "
                           "write it with save_for_mapping(), or set map_options::allow_copy to load a copy");
    load_options lo;
    lo.verify_checksum = options.verify_data;
    detail::verify_checksum(f, lo);
    using owned = typename detail::mapped_traits<Layer>::owned;
    return detail::share_owned<Layer>(detail::build<owned>(f, nullptr));
}

/// Writes a tree_linear in the blocks layout without holding it in memory, one block at a time:
/// weight_block(b, W* dst) writes block b's in*out weights column-major (dst[r + c * out]),
/// bias_block(b, Scalar* dst) its out biases. Blocks are numbered as in the layer (nodes in heap
/// order for path_sum, leaves for leaf_only). W is Scalar, or bf16 for a float layer. For trees
/// larger than memory (bench/mapped_serving.cpp writes one of 32 GiB); atomic, like save().
template <class Scalar, class W = Scalar, class WeightFn, class BiasFn>
void write_for_mapping(const std::string& path, index_t in, index_t out, int depth, tree_mode mode, const gating& gates,
                       bool bias, WeightFn&& weight_block, BiasFn&& bias_block) {
    using L = tree_linear<Scalar, dynamic, dynamic, dynamic, kernels::reference, storage::mapped<W>>;
    using io = detail::layer_io<L>;
    if (in <= 0 || out <= 0) treegate::detail::raise<config_error>(L::name, ": sizes ", in, " x ", out, " must be positive");
    if (depth < 0 || depth > max_depth)
        treegate::detail::raise<config_error>(L::name, ": depth ", depth, " outside [0, ", max_depth, "]");
    treegate::detail::check_gating(L::name, gates, depth, in);
    detail::metadata config;
    config["kind"] = io::kind;
    io::write({in, out, depth, mode, gates.is_external(), gates.indices(), bias}, config, "");
    detail::write_blocks_file<W, Scalar>(path, config, in, out, detail::tree_blocks(mode, depth), bias, weight_block,
                                         bias_block);
}

/// Saves a tree_linear (float, double or bf16 weights; owned or mapped) atomically in the
/// blocks layout, which map_layer serves in place. Like save(), it refuses non-finite values
/// and writes a checksum; load() does not read this layout (map_layer with the owned copy
/// to_owned() makes a trainable layer of it).
template <class S, int I, int O, int D, class P, class St>
void save_for_mapping(const tree_linear<S, I, O, D, P, St>& layer, const std::string& path) {
    using L = tree_linear<S, I, O, D, P, St>;
    treegate::detail::check_live(L::name, layer.in_size() != 0);
    const auto w = layer.weight_blocks();
    const auto b = layer.bias_blocks();
    const index_t n = layer.in_size() * layer.out_size(), o = layer.out_size();
    write_for_mapping<S, typename L::weight_type>(
        path, layer.in_size(), layer.out_size(), layer.depth(), layer.mode(), layer.gates(), layer.has_bias(),
        [&](index_t k, auto* dst) { std::copy(w.data + k * w.stride, w.data + k * w.stride + n, dst); },
        [&](index_t k, S* dst) { std::copy(b.data + k * b.stride, b.data + k * b.stride + o, dst); });
}

/// A trainable (owned) copy of a mapped layer: the same blocks, sizes, mode and gating.
template <class S, int I, int O, int D, class P, class W>
tree_linear<S, I, O, D, P, storage::owned<W>> to_owned(const tree_linear<S, I, O, D, P, storage::mapped<W>>& m) {
    using L = tree_linear<S, I, O, D, P, storage::mapped<W>>;
    treegate::detail::check_live(L::name, m.in_size() != 0);
    tree_linear<S, I, O, D, P, storage::owned<W>> out(m.in_size(), m.out_size(), m.depth(), m.mode(), m.gates(), m.has_bias());
    const auto from_w = m.weight_blocks();
    const auto from_b = m.bias_blocks();
    const auto to_w = out.weight_blocks();
    const auto to_b = out.bias_blocks();
    std::copy(from_w.data, from_w.data + from_w.count * from_w.stride, to_w.data);
    std::copy(from_b.data, from_b.data + from_b.count * from_b.stride, to_b.data);
    return out;
}

}  // namespace safetensors
}  // namespace treegate

#endif
