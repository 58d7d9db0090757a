// treegate/mpi/ff_shard_io.hpp — saving and loading a sharded tree_feedforward (mpi/) through io/'s
// safetensors writer and reader: one shard file per rank plus the replicated levels once.
#ifndef TREEGATE_MPI_FF_SHARD_IO_HPP
#define TREEGATE_MPI_FF_SHARD_IO_HPP

#include "../io/safetensors.hpp"
#include "comm.hpp"
#include "shard_io.hpp"
#include "sharded_tree_feedforward.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace treegate::mpi {

/// The files are named as tree_linear's (shard_path, replicated_path). The replicated file
/// holds each tree's units (path_sum) or routers (leaf_only) of levels 0 .. L-1 and the output
/// bias; rank r's shard its subtrees' units and routers, tree by tree in the layer's local
/// order. Tensors, row-major as the single-process file's: "hidden_weight" [units, width, in],
/// "hidden_bias" [units, width], "output_weight" [units, out, width], "leaf_bias" [units, out]
/// (with leaf biases), "router_weight" [routers, in], "router_bias" [routers], "output_bias"
/// [out] (replicated file, with an output bias), and "layout": depth, R, L, r (-1: the
/// replicated file), in, out, width, trees, mode (0 path_sum, 1 leaf_only), activation, tie
/// rule (0 >, 1 >=), output bias, leaf biases, first subtree, subtree count.
namespace ff_shard_detail {

inline const char* layout_fields() noexcept {
    return "depth, ranks, split, rank, in, out, width, trees, mode, activation, tie rule, output bias, leaf biases, "
           "first subtree, subtrees";
}

template <class Scalar, class Policy>
std::vector<Scalar> layout_values(const sharded_tree_feedforward<Scalar, Policy>& layer, bool replicated) {
    const auto& l = layer.layout();
    return {Scalar(l.depth()), Scalar(l.ranks()), Scalar(l.split()), Scalar(replicated ? -1 : l.rank()), Scalar(layer.in_size()),
            Scalar(layer.out_size()), Scalar(layer.width()), Scalar(layer.tree_count()),
            Scalar(layer.mode() == tree_mode::path_sum ? 0 : 1), Scalar(static_cast<int>(layer.activation_kind())),
            Scalar(layer.tie() == tie_rule::greater ? 0 : 1), Scalar(layer.has_output_bias() ? 1 : 0),
            Scalar(layer.has_leaf_bias() ? 1 : 0), Scalar(replicated ? 0 : l.first_owned()), Scalar(replicated ? 0 : l.owned())};
}

// Calls f(l) for the local units (g(l) for the local routers) of one file, in local order:
// the replicated ones, or the owned subtrees'.
template <class Layer, class F, class G>
void for_each_in_file(const Layer& layer, bool replicated, F&& f, G&& g) {
    for (index_t l = 0; l < layer.local_unit_count(); ++l)
        if ((l % layer.units_per_tree() < layer.replicated_units()) == replicated) f(l);
    for (index_t l = 0; l < layer.local_router_count(); ++l)
        if ((l % layer.routers_per_tree() < layer.replicated_routers()) == replicated) g(l);
}

// A column-major rows x cols block appended row-major, and read back.
template <class Scalar>
void append_rows(std::vector<Scalar>& out, const Scalar* block, index_t rows, index_t cols) {
    for (index_t r = 0; r < rows; ++r)
        for (index_t c = 0; c < cols; ++c) out.push_back(block[c * rows + r]);
}
template <class Scalar>
void read_rows(Scalar* block, const Scalar* src, index_t rows, index_t cols) {
    for (index_t r = 0; r < rows; ++r)
        for (index_t c = 0; c < cols; ++c) block[c * rows + r] = src[r * cols + c];
}

template <class Scalar, class Policy>
safetensors::tensor_map<Scalar> tensors_of(const sharded_tree_feedforward<Scalar, Policy>& layer, bool replicated) {
    const index_t in = layer.in_size(), out = layer.out_size(), w = layer.width();
    safetensors::tensor_map<Scalar> t;
    auto& U = t["hidden_weight"];
    auto& a = t["hidden_bias"];
    auto& V = t["output_weight"];
    auto& b = t["leaf_bias"];
    auto& R = t["router_weight"];
    auto& s = t["router_bias"];
    std::uint64_t units = 0, routers = 0;
    for_each_in_file(
        layer, replicated,
        [&](index_t l) {
            const auto u = layer.local_unit(l);
            append_rows(U.values, u.U, w, in);
            append_rows(a.values, u.a, w, 1);
            append_rows(V.values, u.V, out, w);
            if (u.b != nullptr) append_rows(b.values, u.b, out, 1);
            ++units;
        },
        [&](index_t l) {
            append_rows(R.values, layer.router_weight_data(l), 1, in);
            s.values.push_back(*layer.router_bias_data(l));
            ++routers;
        });
    const auto d = [](index_t v) { return static_cast<std::uint64_t>(v); };
    U.shape = {units, d(w), d(in)};
    a.shape = {units, d(w)};
    V.shape = {units, d(out), d(w)};
    b.shape = {units, d(out)};
    R.shape = {routers, d(in)};
    s.shape = {routers};
    if (!layer.has_leaf_bias()) t.erase("leaf_bias");
    if (layer.mode() == tree_mode::path_sum) t.erase("router_weight"), t.erase("router_bias");
    if (replicated && layer.has_output_bias()) {
        auto& c = t["output_bias"];
        c.values.assign(layer.output_bias_data(), layer.output_bias_data() + out);
        c.shape = {d(out)};
    }
    auto& lay = t["layout"];
    lay.values = layout_values(layer, replicated);
    lay.shape = {d(static_cast<index_t>(lay.values.size()))};
    return t;
}

// Reads one file of the set into the layer's units and routers, after checking its layout and
// every tensor's shape; a mismatch is a file_error naming the file.
template <class Scalar, class Policy>
void read_into(sharded_tree_feedforward<Scalar, Policy>& layer, const std::string& path, bool replicated) {
    const char* name = sharded_tree_feedforward<Scalar, Policy>::name;
    const auto t = shard_detail::read_checked(name, path, layout_values(layer, replicated), layout_fields());
    index_t units = 0, routers = 0;
    for_each_in_file(layer, replicated, [&](index_t) { ++units; }, [&](index_t) { ++routers; });
    const index_t in = layer.in_size(), out = layer.out_size(), w = layer.width();
    const auto tensor = [&](const char* what, std::vector<index_t> dims) -> const Scalar* {
        std::vector<std::uint64_t> shape(dims.begin(), dims.end());
        const auto it = t.find(what);
        if (it == t.end() || it->second.shape != shape) {
            std::string want;
            for (index_t v : dims) want += (want.empty() ? "" : ", ") + std::to_string(v);
            treegate::detail::raise<file_error>(name, ": ", path, ": \"", what, "\" is missing or not [", want, "]");
        }
        return it->second.values.data();
    };
    const Scalar* U = tensor("hidden_weight", {units, w, in});
    const Scalar* a = tensor("hidden_bias", {units, w});
    const Scalar* V = tensor("output_weight", {units, out, w});
    const Scalar* b = layer.has_leaf_bias() ? tensor("leaf_bias", {units, out}) : nullptr;
    const bool routed = layer.mode() == tree_mode::leaf_only;
    const Scalar* R = routed ? tensor("router_weight", {routers, in}) : nullptr;
    const Scalar* s = routed ? tensor("router_bias", {routers}) : nullptr;
    const Scalar* c = replicated && layer.has_output_bias() ? tensor("output_bias", {out}) : nullptr;
    index_t k = 0, j = 0;
    for_each_in_file(
        layer, replicated,
        [&](index_t l) {
            read_rows(layer.hidden_weight_data(l), U + k * w * in, w, in);
            read_rows(layer.hidden_bias_data(l), a + k * w, w, 1);
            read_rows(layer.output_weight_data(l), V + k * out * w, out, w);
            if (b != nullptr) read_rows(layer.leaf_bias_data(l), b + k * out, out, 1);
            ++k;
        },
        [&](index_t l) {
            read_rows(layer.router_weight_data(l), R + j * in, 1, in);
            *layer.router_bias_data(l) = s[j++];
        });
    if (c != nullptr) read_rows(layer.output_bias_data(), c, out, 1);
}

template <class Scalar, class Policy>
std::map<std::string, std::string> metadata_of(const sharded_tree_feedforward<Scalar, Policy>& layer, bool replicated) {
    const auto& l = layer.layout();
    return {{"format", "treegate"},
            {"kind", "sharded_tree_feedforward"},
            {"rank", replicated ? "replicated" : std::to_string(l.rank())},
            {"ranks", std::to_string(l.ranks())},
            {"split", std::to_string(l.split())},
            {"depth", std::to_string(l.depth())},
            {"mode", to_string(layer.mode())}};
}

}  // namespace ff_shard_detail

/// Writes the shard set of `layer` at `prefix` (every rank its shard, rank 0 the replicated
/// levels too), each file atomically. Collective: a rank whose write fails makes every rank
/// raise its file_error.
template <class Scalar, class Policy>
void save_shards(const sharded_tree_feedforward<Scalar, Policy>& layer, const std::string& prefix) {
    const auto& l = layer.layout();
    agree(layer.comm(), [&] {
        if (l.rank() == 0)
            safetensors::write_tensors(ff_shard_detail::tensors_of(layer, true), replicated_path(prefix),
                                       shard_detail::file_type<Scalar>(), ff_shard_detail::metadata_of(layer, true));
        safetensors::write_tensors(ff_shard_detail::tensors_of(layer, false), shard_path(prefix, l.rank(), l.ranks()),
                                   shard_detail::file_type<Scalar>(), ff_shard_detail::metadata_of(layer, false));
    });
}

/// Loads a shard set saved from the same layout (rank count, split level, sizes, trees, mode,
/// activation, tie rule, biases): every rank reads the replicated file and its own shard. A
/// missing file or one from another layout on any rank is a file_error on every rank, and then
/// no rank's layer has changed.
template <class Scalar, class Policy>
void load_shards(sharded_tree_feedforward<Scalar, Policy>& layer, const std::string& prefix) {
    const auto& l = layer.layout();
    sharded_tree_feedforward<Scalar, Policy> staged(layer.comm(), layer.in_size(), layer.out_size(), layer.width(),
                                                    layer.depth(), layer.tree_count(), layer.activation_kind(), layer.mode(),
                                                    layer.has_output_bias(), l.split(), layer.tie(), layer.has_leaf_bias());
    agree(layer.comm(), [&] {
        ff_shard_detail::read_into(staged, replicated_path(prefix), true);
        ff_shard_detail::read_into(staged, shard_path(prefix, l.rank(), l.ranks()), false);
    });
    layer = std::move(staged);
}

/// Loads a single-process tree_feedforward file (io/safetensors.hpp's save) into a sharded
/// layer: each rank reads the file and keeps its part. The whole layer passes through each
/// rank's memory once; for a tree that does not fit, save shards instead. Collective, errors as
/// above (a file whose layer differs from this one in any of the layout's facts is a file_error).
template <class Scalar, class Policy>
void load_whole(sharded_tree_feedforward<Scalar, Policy>& layer, const std::string& path) {
    agree(layer.comm(), [&] {
        const auto full = safetensors::load_tree_feedforward<Scalar, Policy>(path);
        if (full.in_size() != layer.in_size() || full.out_size() != layer.out_size() || full.width() != layer.width() ||
            full.depth() != layer.depth() || full.tree_count() != layer.tree_count() || full.mode() != layer.mode() ||
            full.activation_kind() != layer.activation_kind() || full.tie() != layer.tie() ||
            full.has_output_bias() != layer.has_output_bias() || full.has_leaf_bias() != layer.has_leaf_bias())
            treegate::detail::raise<file_error>(
                sharded_tree_feedforward<Scalar, Policy>::name, ": ", path, " holds a tree_feedforward of ", full.in_size(),
                " x ", full.out_size(), ", width ", full.width(), ", depth ", full.depth(), ", ", full.tree_count(), " trees, ",
                to_string(full.mode()), ", tie rule ", to_string(full.tie()), "; the layer is ", layer.in_size(), " x ",
                layer.out_size(), ", width ", layer.width(), ", depth ", layer.depth(), ", ", layer.tree_count(), " trees, ",
                to_string(layer.mode()), ", tie rule ", to_string(layer.tie()), " (activation and biases must match too)");
        layer.copy_from(full);
    });
}

}  // namespace treegate::mpi

#endif
