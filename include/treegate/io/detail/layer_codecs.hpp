// treegate/io/detail/layer_codecs.hpp — how a layer maps to tensors and metadata: the shared
// pieces and the codecs of dense, tree_linear and sliced_tree_linear. Part of treegate/io/safetensors.hpp.
#ifndef TREEGATE_IO_DETAIL_LAYER_CODECS_HPP
#define TREEGATE_IO_DETAIL_LAYER_CODECS_HPP

#include "../../config.hpp"
#include "../../error.hpp"
#include "../../layers/dense.hpp"
#include "../../layers/parameters.hpp"
#include "../../layers/tree_linear.hpp"
#include "../../layers/sliced_tree_linear.hpp"
#include "../../routing.hpp"
#include "../../tree.hpp"
#include "format.hpp"
#include "metadata.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

// Tensor names (row-major, like PyTorch; a `sequential` prefixes layer i's names with "i."):
//   dense             weight [out, in], bias [out]
//   tree_linear       weight [blocks, out, in], bias [blocks, out]   (blocks: nodes or leaves)
//   sliced_tree_linear weight [trees, blocks, out, in], bias [trees, blocks, out]
//   tree_feedforward  hidden_weight [trees, units, width, in], hidden_bias [trees, units, width],
//                     output_weight [trees, units, out, width], leaf_bias [trees, units, out]
//                     (leaf_only with leaf biases), router_weight [trees, routers, in],
//                     router_bias [trees, routers] (leaf_only), output_bias [out]
namespace treegate::safetensors::detail {

inline const std::pair<const char*, tree_mode> mode_names[] = {{"path_sum", tree_mode::path_sum},
                                                                {"leaf_only", tree_mode::leaf_only}};
// `tie_rule` is written only when it is not `greater`, so files of default layers keep their
// bytes, and a file without it (every file written before tie rules) routes by `> 0`.
inline const std::pair<const char*, tie_rule> tie_rule_names[] = {{"greater", tie_rule::greater},
                                                                  {"greater_equal", tie_rule::greater_equal}};
inline const std::pair<const char*, slice_combine> combine_names[] = {{"sum", slice_combine::sum},
                                                                      {"concat", slice_combine::concat}};

inline const char* to_name(slice_combine c) noexcept { return c == slice_combine::sum ? "sum" : "concat"; }

// ---- tensors ---------------------------------------------------------------------------------

/// Expected name and shape of one tensor of a configuration.
struct tensor_spec {
    std::string name;
    std::vector<std::uint64_t> shape;
};

inline std::uint64_t dim(index_t v) noexcept { return static_cast<std::uint64_t>(v); }


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

// A stored element as the layer's Scalar (bf16 widens exactly) and back (to bf16: rounded to
// nearest even, as tree_linear_bf16's converting constructor rounds).
template <class S>
S widen(S v) noexcept {
    return v;
}
inline float widen(bf16 v) noexcept { return to_float(v); }
template <class E, class S>
E narrow(S v) noexcept {
    if constexpr (std::is_same_v<E, bf16>)
        return to_bf16(static_cast<float>(v));
    else
        return v;
}

/// The tensors of `l` as the file writes them (each block row-major, blocks in order), derived
/// from the layer's parameter description (layers/parameters.hpp).
template <class Layer>
std::vector<tensor_values<typename Layer::scalar_type>> store_tensors(const Layer& l) {
    std::vector<tensor_values<typename Layer::scalar_type>> out;
    for (const auto& t : parameters(l)) {
        tensor_values<typename Layer::scalar_type> v{t.name, t.file_shape, {}, t.element == element_kind::bf16};
        v.values.reserve(static_cast<std::size_t>(t.block_count() * t.block_size()));
        t.for_each_block([&](const auto* b) {
            for (index_t r = 0; r < t.rows; ++r)
                for (index_t c = 0; c < t.cols; ++c) v.values.push_back(widen(b[r + c * t.rows]));
        });
        out.push_back(std::move(v));
    }
    return out;
}

/// Writes the file's tensors into `l`, whose shapes have been matched to the file;
/// file_name(name) is the file's name of the layer's tensor `name`.
template <class Layer, class FileName>
void fill_tensors(Layer& l, const parsed_file& f, FileName&& file_name) {
    for (const auto& t : parameters(l)) {
        const std::string& stored = file_name(t.name);
        const auto values = read_values<typename Layer::scalar_type>(f, stored);
        std::size_t k = 0;
        t.for_each_block([&](auto* b) {
            using E = std::remove_pointer_t<decltype(b)>;
            for (index_t r = 0; r < t.rows; ++r)
                for (index_t c = 0; c < t.cols; ++c, ++k) {
                    // A finite value that the storage would turn into infinity is refused, as
                    // NaN and infinities are: a load never changes a weight beyond rounding.
                    if constexpr (std::is_same_v<E, bf16>)
                        if (treegate::detail::float_overflows_bf16(static_cast<float>(values[k])))
                            fail(f.source, "tensor '", stored, "' element ", k, " (", values[k],
                                 ") overflows BF16 (largest ", to_float(bf16_max), "): it would load as infinity");
                    b[r + c * t.rows] = narrow<E>(values[k]);
                }
        });
    }
}

template <class... Args>
void check_same(const meta_reader& m, bool same, const Args&... args) {
    if (!same) fail(m.source(), "does not match the layer: ", m.prefix(), args...);
}

/// A setting as the metadata spells it: flags and enums by name, numbers as they are.
template <class T>
auto setting_text(const T& v) {
    if constexpr (std::is_same_v<T, bool>)
        return flag_name(v);
    else if constexpr (std::is_same_v<T, slice_combine>)
        return to_name(v);
    else if constexpr (std::is_enum_v<T>)
        return to_string(v);  // treegate's own, found by argument-dependent lookup
    else
        return v;
}

/// One setting of the file against the same setting of the layer.
template <class T>
void same_field(const meta_reader& m, const char* key, const T& in_file, const T& in_layer) {
    check_same(m, in_file == in_layer, key, " is ", setting_text(in_file), " in the file, ", setting_text(in_layer),
               " in the layer");
}

/// Weight blocks of one tree: every node (path_sum) or only the leaves (leaf_only).
inline index_t tree_blocks(tree_mode mode, int depth) noexcept {
    return mode == tree_mode::path_sum ? tree::node_count(depth) : tree::leaf_count(depth);
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

// A codec whose kind was renamed names the old spelling `former_kind`, so files written before the
// rename still load; new files always carry `kind`.
template <class Io, class = void>
struct former_kind_of {
    static bool matches(const std::string&) noexcept { return false; }
};
template <class Io>
struct former_kind_of<Io, std::void_t<decltype(Io::former_kind)>> {
    static bool matches(const std::string& k) { return k == Io::former_kind; }
};
template <class Io>
bool kind_matches(const std::string& k) {
    return k == Io::kind || former_kind_of<Io>::matches(k);
}

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
        same_field(m, "in", f.in, l.in);
        same_field(m, "out", f.out, l.out);
        same_field(m, "has_bias", f.bias, l.bias);
    }
    static void specs(const config& c, const std::string& p, std::vector<tensor_spec>& out) {
        out.push_back({p + "weight", {dim(c.out), dim(c.in)}});
        if (c.bias) out.push_back({p + "bias", {dim(c.out)}});
    }
    static layer make(const meta_reader& m, const config& c) {
        return construct(m, [&] { return layer(c.in, c.out, c.bias); });
    }
};

// ---- tree_linear -----------------------------------------------------------------------------

template <class Scalar, int In, int Out, int Depth, class Policy, class Storage>
struct layer_io<tree_linear<Scalar, In, Out, Depth, Policy, Storage>> {
    using layer = tree_linear<Scalar, In, Out, Depth, Policy, Storage>;
    struct config {
        index_t in, out;
        int depth;
        tree_mode mode;
        bool external;
        std::vector<index_t> gates;
        bool bias;
    };
    static constexpr const char* kind = "tree_linear";

    static index_t blocks(const config& c) { return tree_blocks(c.mode, c.depth); }
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
        same_field(m, "in", f.in, l.in);
        same_field(m, "out", f.out, l.out);
        same_field(m, "depth", f.depth, l.depth);
        same_field(m, "mode", f.mode, l.mode);
        check_same(m, f.external == l.external && f.gates == l.gates, "gating is \"",
                   f.external ? "external" : join_indices(f.gates), "\" in the file, \"",
                   l.external ? "external" : join_indices(l.gates), "\" in the layer");
        same_field(m, "has_bias", f.bias, l.bias);
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
};

// ---- sliced_tree_linear ---------------------------------------------------------------------

template <class Scalar, int SliceIn, int SliceOut, int Depth, class Policy>
struct layer_io<sliced_tree_linear<Scalar, SliceIn, SliceOut, Depth, Policy>> {
    using layer = sliced_tree_linear<Scalar, SliceIn, SliceOut, Depth, Policy>;
    struct config {
        index_t slice_in, slice_out, trees;
        int depth;
        tree_mode mode;
        slice_combine combine;
        std::vector<std::vector<index_t>> gates;
        bool bias;
    };
    static constexpr const char* kind = "sliced_tree_linear";
    static constexpr const char* former_kind = "tree_linear_blocked";

    static index_t blocks(const config& c) { return tree_blocks(c.mode, c.depth); }
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
        same_field(m, "slice_in", f.slice_in, l.slice_in);
        same_field(m, "slice_out", f.slice_out, l.slice_out);
        same_field(m, "trees", f.trees, l.trees);
        same_field(m, "depth", f.depth, l.depth);
        same_field(m, "mode", f.mode, l.mode);
        same_field(m, "combine", f.combine, l.combine);
        check_same(m, f.gates == l.gates, "gating is \"", gates_text(f.gates), "\" in the file, \"", gates_text(l.gates),
                   "\" in the layer");
        same_field(m, "has_bias", f.bias, l.bias);
    }
    static void specs(const config& c, const std::string& p, std::vector<tensor_spec>& out) {
        out.push_back({p + "weight", {dim(c.trees), dim(blocks(c)), dim(c.slice_out), dim(c.slice_in)}});
        if (c.bias) out.push_back({p + "bias", {dim(c.trees), dim(blocks(c)), dim(c.slice_out)}});
    }
    static layer make(const meta_reader& m, const config& c) {
        return construct(m, [&] { return layer(c.slice_in, c.slice_out, c.depth, c.mode, c.combine, c.gates, c.bias); });
    }
};

}  // namespace treegate::safetensors::detail

#endif
