// treegate/io/pytorch.hpp — loads the tensors of PyTorch fast feed-forward layers (the
// `fastfeedforward` package's FFF, UltraFastBERT's layer) into tree_feedforward. Opt-in, beside io/safetensors.hpp.
#ifndef TREEGATE_IO_PYTORCH_HPP
#define TREEGATE_IO_PYTORCH_HPP

#include "../activation.hpp"
#include "../config.hpp"
#include "../error.hpp"
#include "../kernels/policy.hpp"
#include "../layers/tree_feedforward.hpp"
#include "../routing.hpp"
#include "../tree.hpp"
#include "detail/atomic_file.hpp"
#include "detail/format.hpp"

#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

// Only the container (detail/format.hpp) and the layer's public accessors are used: these
// layouts are PyTorch's, independent of the tensor names treegate's own files use.
namespace treegate::pytorch {

/// How a PyTorch state dict is read.
struct load_options {
    /// Prepended to every tensor name: the layer's path inside a larger model, such as
    /// "encoder.layer.3.intermediate.fff." (with the trailing dot). Tensors outside it are ignored.
    std::string prefix;
    /// FFF only: the leaves' activation, which a state dict does not record (the package's
    /// default is ReLU).
    activation act = activation::relu;
    /// FFF only: the package's rule that a node sends x right iff `w.x + b >= 0`, also when
    /// `w.x + b` is exactly zero: the layer's tie rule is tie_rule::greater_equal. Off, the
    /// layer keeps treegate's default `> 0` and such inputs go left (see load_fastfeedforward).
    bool exact_ties = true;
    /// FFF only: b2s becomes the layer's per-leaf output bias, as the package's training path
    /// adds it; off (the default), the layer computes its eval output, which leaves b2s out.
    bool leaf_bias = false;
    /// UltraFastBERT only: the tree count K and depth D; 0 and -1 derive them from the shapes.
    index_t trees = 0;
    int depth = -1;
    /// Checksum handling of the file (PyTorch's writer stores none).
    safetensors::load_options file;
};

template <class Scalar, class Policy = kernels::default_policy>
using feedforward = tree_feedforward<Scalar, dynamic, dynamic, dynamic, dynamic, Policy>;

namespace detail {

using namespace treegate::safetensors::detail;

/// The tensors of one layer inside a parsed file: each is looked up under the prefix, checked
/// for shape, and every tensor under the prefix must be one of those asked for.
class layer_tensors {
public:
    layer_tensors(const parsed_file& f, std::string prefix, const char* layer)
        : f_(f), prefix_(std::move(prefix)), layer_(layer) {}

    bool has(const std::string& name) const { return f_.tensors.count(prefix_ + name) != 0; }

    /// The shape of a tensor that must exist, before its dimensions are known.
    const std::vector<std::uint64_t>& shape(const std::string& name, std::size_t rank) {
        const tensor_entry& e = entry(name);
        if (e.shape.size() != rank)
            fail(f_.source, layer_, ": tensor '", prefix_ + name, "' has shape ", shape_string(e.shape), ", expected ",
                 rank, " dimensions");
        return e.shape;
    }

    void expect(const std::string& name, const std::vector<std::uint64_t>& shape) {
        const tensor_entry& e = entry(name);
        if (e.shape != shape)
            fail(f_.source, layer_, ": tensor '", prefix_ + name, "' has shape ", shape_string(e.shape), ", expected ",
                 shape_string(shape));
    }

    /// Read as weights: floating-point dtypes only, NaN and infinities refused.
    template <class Scalar>
    std::vector<Scalar> values(const std::string& name) {
        entry(name);
        return read_values<Scalar>(f_, prefix_ + name);
    }

    std::int64_t integer(const std::string& name, const char* what) {
        entry(name);
        return read_integer(f_, prefix_ + name, what);
    }

    /// Marks a tensor as known but unused (the FFF's usage counters).
    void ignore(const std::string& name) { used_.insert(prefix_ + name); }

    void no_others() const {
        for (const auto& t : f_.tensors)
            if (t.first.compare(0, prefix_.size(), prefix_) == 0 && !used_.count(t.first))
                fail(f_.source, layer_, ": unexpected tensor '", t.first, "' (shape ", shape_string(t.second.shape),
                     ")");
    }

    template <class Make>
    auto construct(Make&& make) const {
        try {
            return make();
        } catch (const config_error& e) {
            fail(f_.source, layer_, " cannot be built: ", e.what());
        }
    }

    const std::string& source() const { return f_.source; }

private:
    const tensor_entry& entry(const std::string& name) {
        const auto it = f_.tensors.find(prefix_ + name);
        if (it == f_.tensors.end()) fail(f_.source, layer_, ": tensor '", prefix_ + name, "' is missing");
        used_.insert(it->first);
        return it->second;
    }

    const parsed_file& f_;
    std::string prefix_;
    const char* layer_;
    std::set<std::string> used_;
};

inline parsed_file read_checked(const void* data, std::size_t size, const std::string& source,
                                const safetensors::load_options& options) {
    parsed_file f = parse(static_cast<const unsigned char*>(data), size, source);
    verify_checksum(f, options);
    return f;
}

inline index_t as_index(std::uint64_t v) noexcept { return static_cast<index_t>(v); }

}  // namespace detail

/// The `fastfeedforward` package's FFF (its state dict: node_weights [2^D-1, in], node_biases
/// [2^D-1, 1], w1s [2^D, in, w], b1s [2^D, w], w2s [2^D, w, out], b2s [2^D, out], depth I64;
/// node_usage and leaf_usage, when present, are ignored) as a leaf_only tree_feedforward, every
/// tensor in place (router n is node n, leaf l is leaf l). By default it computes the package's
/// eval output `act(x w1s[l] + b1s[l]) w2s[l]` at the leaf l the nodes choose, and b2s is read
/// and checked but unused, as the eval path leaves it out; with `leaf_bias` b2s[l] is added
/// (the layer's leaf biases), as the training path adds it.
///
/// The package sends x right iff `w.x + b >= 0`: with `exact_ties` (the default) the layer's
/// tie rule is tie_rule::greater_equal, the same choice also at a score of exactly zero.
/// Without it the layer routes by treegate's default `> 0`, and only inputs on a node's
/// hyperplane (score exactly zero) go left instead of right.
template <class Scalar, class Policy = kernels::default_policy>
feedforward<Scalar, Policy> load_fastfeedforward_from_memory(const void* data, std::size_t size,
                                                             const std::string& source = "<memory>",
                                                             const load_options& options = {}) {
    const auto f = detail::read_checked(data, size, source, options.file);
    const std::string& path = f.source;
    detail::layer_tensors t(f, options.prefix, "fastfeedforward FFF");

    const std::int64_t depth = t.integer("depth", "the tree depth");
    if (depth < 0 || depth > max_depth)
        safetensors::detail::fail(path, "fastfeedforward FFF: depth ", depth, " is outside [0, ", max_depth, "]");
    const int D = static_cast<int>(depth);
    const std::uint64_t leaves = std::uint64_t{1} << D, nodes = leaves - 1;
    const auto w1 = t.shape("w1s", 3);
    const auto w2 = t.shape("w2s", 3);
    const std::uint64_t in = w1[1], width = w1[2], out = w2[2];
    t.expect("w1s", {leaves, in, width});
    t.expect("w2s", {leaves, width, out});
    t.expect("node_weights", {nodes, in});
    t.expect("node_biases", {nodes, 1});
    t.expect("b1s", {leaves, width});
    t.expect("b2s", {leaves, out});
    if (t.has("node_usage")) t.ignore("node_usage");
    if (t.has("leaf_usage")) t.ignore("leaf_usage");
    t.no_others();

    auto layer = t.construct([&] {
        return feedforward<Scalar, Policy>(detail::as_index(in), detail::as_index(out), detail::as_index(width), D, 1,
                                           options.act, tree_mode::leaf_only, false,
                                           options.exact_ties ? tie_rule::greater_equal : tie_rule::greater,
                                           options.leaf_bias);
    });
    const auto R = t.values<Scalar>("node_weights");
    const auto S = t.values<Scalar>("node_biases");
    const auto U = t.values<Scalar>("w1s");
    const auto A = t.values<Scalar>("b1s");
    const auto V = t.values<Scalar>("w2s");
    const auto B = t.values<Scalar>("b2s");  // validated (finite) also when unused: see above
    const index_t n_in = layer.in_size(), n_out = layer.out_size(), w = layer.width();
    for (index_t n = 0; n < detail::as_index(nodes); ++n) {
        auto r = layer.router_weight(0, n);
        for (index_t i = 0; i < n_in; ++i) r(i) = R[static_cast<std::size_t>(n * n_in + i)];
        layer.router_bias(0, n) = S[static_cast<std::size_t>(n)];
    }
    for (index_t l = 0; l < detail::as_index(leaves); ++l) {
        auto hidden = layer.hidden_weight(0, l);  // width x in; w1s[l] is in x width
        auto bias = layer.hidden_bias(0, l);
        auto output = layer.output_weight(0, l);  // out x width; w2s[l] is width x out
        for (index_t i = 0; i < n_in; ++i)
            for (index_t j = 0; j < w; ++j) hidden(j, i) = U[static_cast<std::size_t>((l * n_in + i) * w + j)];
        for (index_t j = 0; j < w; ++j) bias(j) = A[static_cast<std::size_t>(l * w + j)];
        for (index_t j = 0; j < w; ++j)
            for (index_t o = 0; o < n_out; ++o) output(o, j) = V[static_cast<std::size_t>((l * w + j) * n_out + o)];
        if (options.leaf_bias) {
            auto b2 = layer.leaf_bias(0, l);
            for (index_t o = 0; o < n_out; ++o) b2(o) = B[static_cast<std::size_t>(l * n_out + o)];
        }
    }
    return layer;
}

/// UltraFastBERT's layer: linear_in.weight [K*N, in], linear_in.bias [K*N], linear_out.weight
/// [out, K*N] with N = 2^(D+1)-1 and the nodes of tree t at rows (columns) t*N + n in heap
/// order; an optional linear_out.bias [out] becomes the output bias. It is a path_sum
/// tree_feedforward of width 1 with GELU (erf form): every node on the path adds
/// `gelu(z_n) v_n`, and its pre-activation z_n picks the child, right iff z_n > 0. Given K
/// (options.trees) or D (options.depth), the other follows from the rows; given neither, K = 1
/// (any row count also fits that many trees of depth 0, so the shapes alone cannot tell).
template <class Scalar, class Policy = kernels::default_policy>
feedforward<Scalar, Policy> load_ultrafastbert_from_memory(const void* data, std::size_t size,
                                                           const std::string& source = "<memory>",
                                                           const load_options& options = {}) {
    const auto f = detail::read_checked(data, size, source, options.file);
    const std::string& path = f.source;
    const char* name = "UltraFastBERT layer";
    detail::layer_tensors t(f, options.prefix, name);
    using safetensors::detail::fail;

    const auto w_in = t.shape("linear_in.weight", 2);
    const std::uint64_t rows = w_in[0], in = w_in[1];
    const auto w_out = t.shape("linear_out.weight", 2);
    const std::uint64_t out = w_out[0];
    // The (K, D) with K (2^(D+1)-1) = rows that the options allow; without either, K = 1.
    const index_t want_trees = options.trees > 0 || options.depth >= 0 ? options.trees : 1;
    std::vector<std::pair<std::uint64_t, int>> fits;
    for (int d = 0; d <= max_depth; ++d) {
        const std::uint64_t n = (std::uint64_t{2} << d) - 1;
        if (n > rows) break;
        if (rows % n == 0 && (options.depth < 0 || options.depth == d) &&
            (want_trees <= 0 || want_trees == detail::as_index(rows / n)))
            fits.emplace_back(rows / n, d);
    }
    if (fits.size() != 1)  // a given K or D leaves one D or K at most
        fail(path, name, ": linear_in.weight has ", rows, " rows, which are not K trees of 2^(D+1)-1 nodes",
             want_trees > 0 ? " for K = " + std::to_string(want_trees) : std::string(),
             options.depth >= 0 ? " for D = " + std::to_string(options.depth) : std::string(),
             options.trees > 0 || options.depth >= 0 ? "" : " (K = 1 unless options.trees or options.depth say otherwise)");
    const std::uint64_t K = fits[0].first, N = rows / K;
    const int D = fits[0].second;
    t.expect("linear_in.bias", {rows});
    t.expect("linear_out.weight", {out, rows});
    const bool has_bias = t.has("linear_out.bias");
    if (has_bias) t.expect("linear_out.bias", {out});
    t.no_others();

    auto layer = t.construct([&] {
        return feedforward<Scalar, Policy>(detail::as_index(in), detail::as_index(out), 1, D, detail::as_index(K),
                                           activation::gelu, tree_mode::path_sum, has_bias);
    });
    const auto W = t.values<Scalar>("linear_in.weight");
    const auto B = t.values<Scalar>("linear_in.bias");
    const auto O = t.values<Scalar>("linear_out.weight");
    const index_t n_in = layer.in_size(), n_out = layer.out_size();
    const auto n_rows = static_cast<std::size_t>(rows);
    for (index_t k = 0; k < detail::as_index(K); ++k)
        for (index_t n = 0; n < detail::as_index(N); ++n) {
            const auto r = static_cast<std::size_t>(k * detail::as_index(N) + n);
            auto hidden = layer.hidden_weight(k, n);
            for (index_t i = 0; i < n_in; ++i) hidden(0, i) = W[r * static_cast<std::size_t>(n_in) + static_cast<std::size_t>(i)];
            layer.hidden_bias(k, n)(0) = B[r];
            auto output = layer.output_weight(k, n);
            for (index_t o = 0; o < n_out; ++o) output(o, 0) = O[static_cast<std::size_t>(o) * n_rows + r];
        }
    if (has_bias) {
        const auto C = t.values<Scalar>("linear_out.bias");
        auto c = layer.output_bias();
        for (index_t o = 0; o < n_out; ++o) c(o) = C[static_cast<std::size_t>(o)];
    }
    return layer;
}

template <class Scalar, class Policy = kernels::default_policy>
feedforward<Scalar, Policy> load_fastfeedforward(const std::string& path, const load_options& options = {}) {
    const auto bytes = safetensors::detail::read_file(path);
    return load_fastfeedforward_from_memory<Scalar, Policy>(bytes.data(), bytes.size(), path, options);
}

template <class Scalar, class Policy = kernels::default_policy>
feedforward<Scalar, Policy> load_ultrafastbert(const std::string& path, const load_options& options = {}) {
    const auto bytes = safetensors::detail::read_file(path);
    return load_ultrafastbert_from_memory<Scalar, Policy>(bytes.data(), bytes.size(), path, options);
}

}  // namespace treegate::pytorch

#endif
