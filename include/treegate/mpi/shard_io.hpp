// treegate/mpi/shard_io.hpp — saving and loading a sharded tree_linear (mpi/) through io/'s
// safetensors writer and reader: one shard file per rank plus the replicated levels once.
#ifndef TREEGATE_MPI_SHARD_IO_HPP
#define TREEGATE_MPI_SHARD_IO_HPP

#include "../io/safetensors.hpp"
#include "comm.hpp"
#include "sharded_tree_linear.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace treegate::mpi {

/// A shard set is `<prefix>.replicated.safetensors` (rank 0 writes it: levels 0 .. L-1) and
/// `<prefix>.rank<r>-of-<R>.safetensors` (rank r: its subtrees, in its local order). Each file
/// holds "weight" [blocks, out, in] and "bias" [blocks, out] (row-major, as PyTorch's Linear),
/// and "layout": depth, R, L, r, in, out, mode (0 path_sum, 1 leaf_only), bias, first subtree,
/// subtree count, the replicated file marked by r = -1; the same facts as string metadata.
inline std::string shard_path(const std::string& prefix, int rank, int ranks) {
    return prefix + ".rank" + std::to_string(rank) + "-of-" + std::to_string(ranks) + ".safetensors";
}
inline std::string replicated_path(const std::string& prefix) { return prefix + ".replicated.safetensors"; }

namespace shard_detail {

template <class Scalar, class Policy>
std::vector<Scalar> layout_values(const sharded_tree_linear<Scalar, Policy>& layer, bool replicated) {
    const auto& l = layer.layout();
    return {Scalar(l.depth()), Scalar(l.ranks()), Scalar(l.split()), Scalar(replicated ? -1 : l.rank()),
            Scalar(layer.in_size()), Scalar(layer.out_size()), Scalar(layer.path_sum() ? 0 : 1), Scalar(layer.has_bias() ? 1 : 0),
            Scalar(replicated ? 0 : l.first_owned()), Scalar(replicated ? 0 : l.owned())};
}

inline const char* layout_fields() noexcept {
    return "depth, ranks, split, rank, in, out, mode, bias, first subtree, subtrees";
}

// The blocks [first, first + count) of the local order as row-major tensors.
template <class Scalar, class Policy>
safetensors::tensor_map<Scalar> tensors_of(const sharded_tree_linear<Scalar, Policy>& layer, index_t first, index_t count,
                                           bool replicated) {
    const auto in = static_cast<std::uint64_t>(layer.in_size()), out = static_cast<std::uint64_t>(layer.out_size());
    safetensors::tensor_map<Scalar> t;
    auto& w = t["weight"];
    auto& b = t["bias"];
    w.shape = {static_cast<std::uint64_t>(count), out, in};
    layer.for_each_local_block([&](index_t g, index_t l) {
        if (l < first || l >= first + count) return;
        const auto W = layer.weight(g);
        for (index_t r = 0; r < W.rows(); ++r)
            for (index_t c = 0; c < W.cols(); ++c) w.values.push_back(W(r, c));
        if (layer.has_bias())
            for (index_t r = 0; r < W.rows(); ++r) b.values.push_back(layer.bias(g)(r));
    });
    if (layer.has_bias())
        b.shape = {static_cast<std::uint64_t>(count), out};
    else
        t.erase("bias");
    auto& lay = t["layout"];
    lay.values = layout_values(layer, replicated);
    lay.shape = {static_cast<std::uint64_t>(lay.values.size())};
    return t;
}

template <class Scalar, class Policy>
std::map<std::string, std::string> metadata_of(const sharded_tree_linear<Scalar, Policy>& layer, bool replicated) {
    const auto& l = layer.layout();
    return {{"format", "treegate"},
            {"kind", "sharded_tree_linear"},
            {"rank", replicated ? "replicated" : std::to_string(l.rank())},
            {"ranks", std::to_string(l.ranks())},
            {"split", std::to_string(l.split())},
            {"depth", std::to_string(l.depth())},
            {"mode", to_string(layer.mode())}};
}

template <class Layer>
constexpr const char* name_of(const Layer&) noexcept { return Layer::name; }

// Reads a shard file and checks its "layout" tensor against `expected` (the fields named by
// `fields`); a missing tensor or another layout is a file_error naming both.
template <class Scalar>
safetensors::tensor_map<Scalar> read_checked(const char* layer, const std::string& path, const std::vector<Scalar>& expected,
                                             const char* fields) {
    auto t = safetensors::read_tensors<Scalar>(path);
    const auto fail = [&](const auto&... what) { treegate::detail::raise<file_error>(layer, ": ", path, ": ", what...); };
    const auto lay = t.find("layout");
    if (lay == t.end()) fail("no \"layout\" tensor: not a ", layer, " shard");
    if (lay->second.values != expected) {
        std::string got, want;
        for (Scalar v : lay->second.values) got += (got.empty() ? "" : " ") + std::to_string(static_cast<long long>(v));
        for (Scalar v : expected) want += (want.empty() ? "" : " ") + std::to_string(static_cast<long long>(v));
        fail("the shard's layout (", fields, ") is [", got, "], this layer's is [", want,
             "]; a shard set loads only on the layout it was saved from (load_whole takes a single-process file)");
    }
    return t;
}

// Reads one file of the set into the layer's blocks [first, first + count) of the local order,
// after checking that its layout is the layer's; a mismatch is a file_error naming both.
template <class Scalar, class Policy>
void read_into(sharded_tree_linear<Scalar, Policy>& layer, const std::string& path, index_t first, index_t count,
               bool replicated) {
    const auto t = read_checked(name_of(layer), path, layout_values(layer, replicated), layout_fields());
    const auto fail = [&](const auto&... what) { treegate::detail::raise<file_error>("sharded_tree_linear: ", path, ": ", what...); };
    const auto in = static_cast<std::uint64_t>(layer.in_size()), out = static_cast<std::uint64_t>(layer.out_size());
    const auto w = t.find("weight");
    if (w == t.end() || w->second.shape != std::vector<std::uint64_t>{static_cast<std::uint64_t>(count), out, in})
        fail("\"weight\" is missing or not [", count, ", ", out, ", ", in, "]");
    const auto b = t.find("bias");
    if (layer.has_bias() && (b == t.end() || b->second.shape != std::vector<std::uint64_t>{static_cast<std::uint64_t>(count), out}))
        fail("\"bias\" is missing or not [", count, ", ", out, "]");
    layer.for_each_local_block([&](index_t g, index_t l) {
        if (l < first || l >= first + count) return;
        auto W = layer.weight(g);
        const Scalar* src = w->second.values.data() + static_cast<std::size_t>(l - first) * out * in;
        for (index_t r = 0; r < W.rows(); ++r)
            for (index_t c = 0; c < W.cols(); ++c) W(r, c) = src[static_cast<std::size_t>(r * W.cols() + c)];
        if (layer.has_bias())
            for (index_t r = 0; r < W.rows(); ++r) layer.bias(g)(r) = b->second.values[static_cast<std::size_t>((l - first) * W.rows() + r)];
    });
}

template <class Scalar>
constexpr safetensors::dtype file_type() noexcept {
    return std::is_same_v<Scalar, double> ? safetensors::dtype::f64 : safetensors::dtype::f32;
}

}  // namespace shard_detail

/// Writes the shard set of `layer` at `prefix` (every rank its shard, rank 0 the replicated
/// levels too), each file atomically. Collective: a rank whose write fails makes every rank
/// raise its file_error.
template <class Scalar, class Policy>
void save_shards(const sharded_tree_linear<Scalar, Policy>& layer, const std::string& prefix) {
    const auto& l = layer.layout();
    const index_t top = layer.replicated_block_count();
    agree(layer.comm(), [&] {
        if (l.rank() == 0)
            safetensors::write_tensors(shard_detail::tensors_of(layer, 0, top, true), replicated_path(prefix),
                                       shard_detail::file_type<Scalar>(), shard_detail::metadata_of(layer, true));
        safetensors::write_tensors(shard_detail::tensors_of(layer, top, layer.local_block_count() - top, false),
                                   shard_path(prefix, l.rank(), l.ranks()), shard_detail::file_type<Scalar>(),
                                   shard_detail::metadata_of(layer, false));
    });
}

/// Loads a shard set saved from the same layout (rank count, split level, sizes, mode): every
/// rank reads the replicated file and its own shard. A missing file or one from another layout
/// on any rank is a file_error on every rank, and then no rank's layer has changed.
template <class Scalar, class Policy>
void load_shards(sharded_tree_linear<Scalar, Policy>& layer, const std::string& prefix) {
    const auto& l = layer.layout();
    const index_t top = layer.replicated_block_count();
    sharded_tree_linear<Scalar, Policy> staged(layer.comm(), layer.in_size(), layer.out_size(), layer.depth(), layer.mode(),
                                               layer.gates(), layer.has_bias(), l.split());
    agree(layer.comm(), [&] {
        shard_detail::read_into(staged, replicated_path(prefix), 0, top, true);
        shard_detail::read_into(staged, shard_path(prefix, l.rank(), l.ranks()), top, layer.local_block_count() - top, false);
    });
    layer = std::move(staged);
}

/// Loads a single-process tree_linear file (io/safetensors.hpp's save) into a sharded layer:
/// each rank reads the file and keeps its part. The whole layer passes through each rank's
/// memory once; for a tree that does not fit, save shards instead. Collective, errors as above
/// (a file whose sizes, mode, bias or gating differ from the layer's is a file_error).
template <class Scalar, class Policy>
void load_whole(sharded_tree_linear<Scalar, Policy>& layer, const std::string& path) {
    agree(layer.comm(), [&] {
        const auto full = safetensors::load_tree_linear<Scalar, Policy>(path);
        const bool same_gates = full.gates().is_external() == layer.gates().is_external() &&
                                full.gates().indices() == layer.gates().indices();
        if (!same_gates || full.in_size() != layer.in_size() || full.out_size() != layer.out_size() ||
            full.depth() != layer.depth() || full.mode() != layer.mode() || full.has_bias() != layer.has_bias())
            treegate::detail::raise<file_error>("sharded_tree_linear: ", path, " holds a tree_linear of ", full.in_size(),
                                                " x ", full.out_size(), ", depth ", full.depth(), ", ", to_string(full.mode()),
                                                same_gates ? "" : " with other gating", "; the layer is ", layer.in_size(),
                                                " x ", layer.out_size(), ", depth ", layer.depth(), ", ",
                                                to_string(layer.mode()));
        layer.copy_from(full);
    });
}

}  // namespace treegate::mpi

#endif
