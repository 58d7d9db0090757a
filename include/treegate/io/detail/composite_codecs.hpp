// treegate/io/detail/composite_codecs.hpp — the codecs of layers made of parts: tree_feedforward,
// activation_layer and sequential. Part of treegate/io/safetensors.hpp.
#ifndef TREEGATE_IO_DETAIL_COMPOSITE_CODECS_HPP
#define TREEGATE_IO_DETAIL_COMPOSITE_CODECS_HPP

#include "../../activation.hpp"
#include "../../config.hpp"
#include "../../layers/activation_layer.hpp"
#include "../../layers/sequential.hpp"
#include "../../layers/tree_feedforward.hpp"
#include "../../tree.hpp"
#include "layer_codecs.hpp"

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace treegate::safetensors::detail {

inline const std::pair<const char*, activation> activation_names[] = {{"identity", activation::identity},
                                                                      {"relu", activation::relu},
                                                                      {"gelu", activation::gelu},
                                                                      {"gelu_tanh", activation::gelu_tanh},
                                                                      {"tanh", activation::tanh}};
// Files written before tree_feedforward spoke of tree_mode carry `variant` = node_sum / leaf_mlp.
inline const std::pair<const char*, tree_mode> former_variant_names[] = {{"node_sum", tree_mode::path_sum},
                                                                         {"leaf_mlp", tree_mode::leaf_only}};

// ---- tree_feedforward ------------------------------------------------------------------------

template <class Scalar, int In, int Out, int Width, int Depth, class Policy>
struct layer_io<tree_feedforward<Scalar, In, Out, Width, Depth, Policy>> {
    using layer = tree_feedforward<Scalar, In, Out, Width, Depth, Policy>;
    struct config {
        index_t in, out, width;
        int depth;
        index_t trees;
        activation act;
        tree_mode mode;
        bool bias;
        tie_rule tie;
        bool leaf_bias;
    };
    static constexpr const char* kind = "tree_feedforward";

    static index_t units(const config& c) {
        return c.mode == tree_mode::path_sum ? tree::node_count(c.depth) : tree::leaf_count(c.depth);
    }
    static index_t routers(const config& c) { return c.mode == tree_mode::leaf_only ? tree::internal_count(c.depth) : 0; }
    static config config_of(const layer& l) {
        return {l.in_size(), l.out_size(), l.width(), l.depth(), l.tree_count(), l.activation_kind(), l.mode(),
                l.has_output_bias(), l.tie(), l.has_leaf_bias()};
    }
    static void write(const config& c, metadata& md, const std::string& p) {
        md[p + "in"] = std::to_string(c.in);
        md[p + "out"] = std::to_string(c.out);
        md[p + "width"] = std::to_string(c.width);
        md[p + "depth"] = std::to_string(c.depth);
        md[p + "trees"] = std::to_string(c.trees);
        md[p + "activation"] = to_string(c.act);
        md[p + "mode"] = to_string(c.mode);
        md[p + "has_bias"] = flag_name(c.bias);
        // Only when set, so that a default layer's file is the one saved before these keys existed.
        if (c.tie != tie_rule::greater) md[p + "tie_rule"] = to_string(c.tie);
        if (c.leaf_bias) md[p + "has_leaf_bias"] = flag_name(c.leaf_bias);
    }
    static config read(const meta_reader& m) {
        return {m.size("in"),
                m.size("out"),
                m.size("width"),
                m.depth(),
                m.size("trees"),
                m.choice("activation", activation_names),
                !m.has("mode") && m.has("variant") ? m.choice("variant", former_variant_names)
                                                   : m.choice("mode", mode_names),
                m.flag("has_bias"),
                m.choice_or("tie_rule", tie_rule_names, tie_rule::greater),
                m.flag_or("has_leaf_bias", false)};
    }
    static void compare(const meta_reader& m, const config& f, const config& l) {
        same_field(m, "in", f.in, l.in);
        same_field(m, "out", f.out, l.out);
        same_field(m, "width", f.width, l.width);
        same_field(m, "depth", f.depth, l.depth);
        same_field(m, "trees", f.trees, l.trees);
        same_field(m, "activation", f.act, l.act);
        same_field(m, "mode", f.mode, l.mode);
        same_field(m, "has_bias", f.bias, l.bias);
        same_field(m, "tie_rule", f.tie, l.tie);
        same_field(m, "has_leaf_bias", f.leaf_bias, l.leaf_bias);
    }
    static void specs(const config& c, const std::string& p, std::vector<tensor_spec>& out) {
        const std::uint64_t t = dim(c.trees), u = dim(units(c));
        out.push_back({p + "hidden_weight", {t, u, dim(c.width), dim(c.in)}});
        out.push_back({p + "hidden_bias", {t, u, dim(c.width)}});
        out.push_back({p + "output_weight", {t, u, dim(c.out), dim(c.width)}});
        if (c.leaf_bias) out.push_back({p + "leaf_bias", {t, u, dim(c.out)}});
        if (c.mode == tree_mode::leaf_only) {
            out.push_back({p + "router_weight", {t, dim(routers(c)), dim(c.in)}});
            out.push_back({p + "router_bias", {t, dim(routers(c))}});
        }
        if (c.bias) out.push_back({p + "output_bias", {dim(c.out)}});
    }
    static layer make(const meta_reader& m, const config& c) {
        return construct(m, [&] {
            return layer(c.in, c.out, c.width, c.depth, c.trees, c.act, c.mode, c.bias, c.tie, c.leaf_bias);
        });
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
        same_field(m, "activation", f.act, l.act);
        same_field(m, "size", f.size, l.size);
    }
    static void specs(const config&, const std::string&, std::vector<tensor_spec>&) {}
    static layer make(const meta_reader& m, const config& c) {
        return construct(m, [&] { return layer(c.act, c.size); });
    }
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
        check_kind<io<I>>(sm);
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

    template <class Io>
    static void check_kind(const meta_reader& m) {
        const std::string& k = m.get("kind");
        if (!kind_matches<Io>(k))
            fail(m.source(), "metadata '", m.prefix(), "kind' is \"", k, "\" but the model expects \"", Io::kind, "\"");
    }

};

}  // namespace treegate::safetensors::detail

#endif
