// treegate/layers/tree_linear.hpp — the paper's layer: weight blocks on a prefix tree of gate bits.
// Composes topology, routing, schedule and a kernel policy; holds its weights as its Storage says.
#ifndef TREEGATE_LAYERS_TREE_LINEAR_HPP
#define TREEGATE_LAYERS_TREE_LINEAR_HPP

#include "../detail/aligned_buffer.hpp"
#include "../exec/grouped.hpp"
#include "../exec/route.hpp"
#include "../detail/random.hpp"
#include "../kernels/policy.hpp"
#include "../parallel/executor.hpp"
#include "../routing.hpp"
#include "../schedule.hpp"
#include "../tree.hpp"
#include "../workspace.hpp"
#include "batch_overloads.hpp"
#include "layer_common.hpp"
#include "storage.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <type_traits>
#include <utility>

namespace treegate {

namespace detail {

/// The state of a tree_linear: sizes, gating and the two buffers of blocks (weights of type W,
/// in the Storage's buffer) and biases. Moving it leaves the source empty (every size 0),
/// which is how a moved-from layer knows it has nothing to compute with.
template <class W, class Scalar, class Storage = storage::owned<W>>
struct tree_state {
    index_t in_ = 0, out_ = 0;
    int depth_ = 0;
    tree_mode mode_ = tree_mode::path_sum;
    bool has_bias_ = false;
    gating gates_;
    index_t blocks_ = 0, stride_ = 0, bias_stride_ = 0;
    typename Storage::template buffer<W> weights_;
    typename Storage::template buffer<Scalar> biases_;

    tree_state() = default;
    tree_state(const tree_state&) = default;
    tree_state& operator=(const tree_state&) = default;
    tree_state(tree_state&& o) noexcept { *this = std::move(o); }
    tree_state& operator=(tree_state&& o) noexcept {
        if (this == &o) return *this;
        in_ = std::exchange(o.in_, 0);
        out_ = std::exchange(o.out_, 0);
        depth_ = std::exchange(o.depth_, 0);
        mode_ = o.mode_;
        has_bias_ = std::exchange(o.has_bias_, false);
        gates_ = std::exchange(o.gates_, gating());
        blocks_ = std::exchange(o.blocks_, 0);
        stride_ = std::exchange(o.stride_, 0);
        bias_stride_ = std::exchange(o.bias_stride_, 0);
        weights_ = std::move(o.weights_);
        biases_ = std::move(o.biases_);
        return *this;
    }

    // The checks of both layers' accessors and single-example calls, naming `layer`.
    void check_block(const char* layer, index_t i, bool bias) const {
        check_live(layer, in_ != 0);
        check_index(layer, "block", i, blocks_);
        if (bias && !has_bias_) raise<usage_error>(layer, ": the layer has no bias (block ", i, ")");
    }

    template <class XRef, class YRef>
    void check_single(const char* layer, const XRef& x, const YRef& y) const {
        check_live(layer, in_ != 0);
        check_vector(layer, "input", x.size(), in_);
        check_vector(layer, "output", y.size(), out_);
        check_no_overlap(layer, x, y);
    }

    index_t path_block(leaf_t code, int level) const noexcept {
        return mode_ == tree_mode::path_sum ? tree::path_node(code, depth_, level) : static_cast<index_t>(code);
    }
};

/// The name a tree_linear reports in errors and files: its storage's, where that is not Scalar.
template <class W, class Scalar>
constexpr const char* tree_linear_name() noexcept {
    return std::is_same_v<W, Scalar> ? "tree_linear" : "tree_linear_bf16";
}

/// A block of n weights of type W padded for the kernels: where that costs at most 1/8 of a
/// block for Scalar weights (block_stride), to a whole cache line always for bf16 weights.
template <class W, class Scalar>
index_t weight_stride(index_t n, const char* layer) {
    if constexpr (std::is_same_v<W, Scalar>)
        return block_stride<Scalar>(n, layer, "block size");
    else
        return checked_add(n, line_padding<W>(n), layer, "block size");
}

}  // namespace detail

/// A linear layer whose weights are selected per example by D gate bits.
///
/// Storage: one contiguous buffer of blocks, each `Out x In` column-major and 64-byte aligned
/// where the padding costs at most 1/8 of a block (detail::block_stride; bf16 blocks are always
/// whole cache lines). In `path_sum` mode block i is tree node i (heap order: level-major); in
/// `leaf_only` mode block i is leaf i (leaf number = node - (2^D - 1)). Biases (Scalar) live in
/// a second buffer, same order. `Storage` (layers/storage.hpp) sets the weights' element type:
/// storage::owned<Scalar> trains; storage::owned<bf16> is tree_linear_bf16, the serving copy;
/// storage::mapped<T> serves blocks read in place from a mapped file (io/mapped.hpp) and has
/// no writing member (non-const accessors, initialize, the sizes-only constructor).
template <class Scalar, int In = dynamic, int Out = dynamic, int Depth = dynamic, class Policy = kernels::default_policy,
          class Storage = storage::owned<Scalar>>
class tree_linear : private detail::tree_state<typename Storage::element, Scalar, Storage>,
                    public detail::batch_overloads<tree_linear<Scalar, In, Out, Depth, Policy, Storage>, matrix<Scalar>,
                                                   workspace<Scalar>> {
    static_assert(std::is_floating_point_v<Scalar>, "tree_linear: Scalar must be a floating-point type");
    using W = typename Storage::element;
    static_assert(std::is_same_v<W, Scalar> || (std::is_same_v<W, bf16> && std::is_same_v<Scalar, float>),
                  "tree_linear: weights are stored as Scalar, or as bf16 for a float layer");
    static constexpr bool exact = std::is_same_v<W, Scalar>;  // weights are the Scalars the kernels multiply by
    static constexpr bool writable = Storage::writable;
    // Moving leaves the source empty (tree_state): every size reads 0 and every call raises usage_error.
    using state = detail::tree_state<W, Scalar, Storage>;
    using state::in_, state::out_, state::depth_, state::mode_, state::has_bias_, state::gates_, state::blocks_,
        state::stride_, state::bias_stride_, state::weights_, state::biases_, state::check_block, state::check_single,
        state::path_block;
    static_assert(In == dynamic || In > 0, "tree_linear: In must be positive or dynamic");
    static_assert(Out == dynamic || Out > 0, "tree_linear: Out must be positive or dynamic");
    static_assert(Depth == dynamic || (Depth >= 0 && Depth <= max_depth), "tree_linear: Depth must be in [0, 30] or dynamic");

public:
    using scalar_type = Scalar;
    using weight_type = W;
    using storage_type = Storage;
    using policy_type = Policy;
    using vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
    using input_vector = Eigen::Matrix<Scalar, In, 1>;
    using output_vector = Eigen::Matrix<Scalar, Out, 1>;
    using gate_vector = Eigen::Matrix<Scalar, Depth, 1>;
    using batch = matrix<Scalar>;
    using weight_map = Eigen::Map<Eigen::Matrix<Scalar, Out, In>>;
    using const_weight_map = Eigen::Map<const Eigen::Matrix<Scalar, Out, In>>;
    using bias_map = Eigen::Map<Eigen::Matrix<Scalar, Out, 1>>;
    using const_bias_map = Eigen::Map<const Eigen::Matrix<Scalar, Out, 1>>;
    static constexpr const char* name = detail::tree_linear_name<W, Scalar>();

    /// Sizes at run time (they must match any that are fixed). Weights start at zero: call
    /// initialize(seed) or write them through weight(i) / bias(i).
    tree_linear(index_t in, index_t out, int depth, tree_mode mode, gating gates = {}, bool bias = true) {
        static_assert(writable, "tree_linear: a storage that is not writable (storage::mapped) holds no blocks of its "
                                "own; build the layer with safetensors::map_layer (io/mapped.hpp)");
        configure(in, out, depth, mode, std::move(gates), bias);
        allocate();
    }

    /// Over blocks someone else holds (storage::mapped; safetensors::map_layer builds these):
    /// `weights` holds block_count() blocks and `biases` as many biases (none without bias) at
    /// the strides storage::owned uses, so that the kernels see exactly an owned layer's layout.
    template <bool B = writable, std::enable_if_t<!B, int> = 0>
    tree_linear(index_t in, index_t out, int depth, tree_mode mode, gating gates, bool bias,
                typename Storage::template buffer<W> weights, typename Storage::template buffer<Scalar> biases) {
        configure(in, out, depth, mode, std::move(gates), bias);
        const buffer_sizes n = layout();
        if (weights.size() != n.weights || biases.size() != n.biases)
            detail::raise<config_error>(name, ": ", blocks_, " blocks of stride ", stride_, " need ", n.weights, " weights and ", n.biases,
                                        " biases, but the storage holds ", weights.size(), " and ", biases.size());
        weights_ = std::move(weights);
        biases_ = std::move(biases);
    }

    /// The serving copy of a trained float layer (bf16 storage only): rounds every weight of `t`
    /// to bf16 (ties to even) and copies its biases, sizes, mode and gating. A finite weight
    /// beyond the largest bf16 would round to infinity: with overflow::refuse (the default) that
    /// is a config_error naming the block, the entry and the value; overflow::saturate stores
    /// +-bf16_max instead.
    template <int I, int O, int D, class P, bool B = !exact && writable, std::enable_if_t<B, int> = 0>
    explicit tree_linear(const tree_linear<float, I, O, D, P>& t, overflow on_overflow = overflow::refuse) {
        if (t.in_size() == 0) detail::raise<usage_error>(name, ": the source tree_linear is empty (moved from)");
        configure(t.in_size(), t.out_size(), t.depth(), t.mode(), t.gates(), t.has_bias());
        allocate();
        for (index_t b = 0; b < blocks_; ++b) {
            const auto w = t.weight(b);
            W* dst = weights_.data() + b * stride_;
            for (index_t c = 0; c < in_; ++c)
                for (index_t r = 0; r < out_; ++r) {
                    const float v = w(r, c);
                    if (on_overflow == overflow::refuse && detail::float_overflows_bf16(v))
                        detail::raise<config_error>(name, ": weight (", r, ", ", c, ") of block ", b, " is ", v,
                                                    ", beyond the largest bf16 (", to_float(bf16_max),
                                                    "): it would round to infinity; pass overflow::saturate to clamp it");
                    dst[r + c * out_] = to_bf16_saturated(v);
                }
            if (has_bias_) bias_map(biases_.data() + b * bias_stride_, out_) = t.bias(b);
        }
    }

    /// All sizes fixed at compile time.
    explicit tree_linear(tree_mode mode, gating gates = {}, bool bias = true)
        : tree_linear(In, Out, Depth, mode, std::move(gates), bias) {
        static_assert(In != dynamic && Out != dynamic && Depth != dynamic,
                      "tree_linear: this constructor needs In, Out and Depth fixed; pass the sizes otherwise");
    }

    index_t in_size() const noexcept { return in_; }
    index_t out_size() const noexcept { return out_; }
    int depth() const noexcept { return depth_; }
    tree_mode mode() const noexcept { return mode_; }
    bool has_bias() const noexcept { return has_bias_; }
    const gating& gates() const noexcept { return gates_; }

    /// Stored blocks: 2^(D+1)-1 nodes (path_sum) or 2^D leaves (leaf_only).
    index_t block_count() const noexcept { return blocks_; }

    index_t parameter_count() const noexcept { return blocks_ * (in_ * out_ + (has_bias_ ? out_ : 0)); }

    /// Bytes the weights and biases occupy, padding between blocks included (README, "Errors").
    index_t memory_bytes() const noexcept { return weights_.bytes() + biases_.bytes(); }

    /// Bytes of the stored weights alone (padding included): about half the float layer's in bf16.
    index_t weight_bytes() const noexcept { return weights_.bytes(); }

    /// Multiply-adds per example: (D+1) blocks on the path (path_sum) or one (leaf_only).
    index_t macs_per_example() const noexcept { return blocks_on_path() * in_ * out_; }

    /// Block i: tree node i (path_sum) or leaf i (leaf_only). With bf16 storage, a copy of the
    /// float values the kernels multiply by (write bf16 blocks through weight_blocks()).
    template <bool B = exact && writable, std::enable_if_t<B, int> = 0>
    weight_map weight(index_t i) {
        check_block(name, i, false);
        return weight_map(weights_.data() + i * stride_, out_, in_);
    }
    auto weight(index_t i) const {
        check_block(name, i, false);
        if constexpr (exact) {
            return const_weight_map(weights_.data() + i * stride_, out_, in_);
        } else {
            Eigen::Matrix<Scalar, Out, In> w(out_, in_);
            const W* src = weights_.data() + i * stride_;
            for (index_t c = 0; c < in_; ++c)
                for (index_t r = 0; r < out_; ++r) w(r, c) = to_float(src[r + c * out_]);
            return w;
        }
    }
    template <bool B = writable, std::enable_if_t<B, int> = 0>
    bias_map bias(index_t i) {
        check_block(name, i, true);
        return bias_map(biases_.data() + i * bias_stride_, out_);
    }
    const_bias_map bias(index_t i) const {
        check_block(name, i, true);
        return const_bias_map(biases_.data() + i * bias_stride_, out_);
    }

    /// The stored blocks as they are (layers/parameters.hpp describes them from these): weights
    /// in the storage's element type, biases in Scalar; block i at data + i * stride.
    template <bool B = writable, std::enable_if_t<B, int> = 0>
    block_run<W> weight_blocks() noexcept {
        return {weights_.data(), blocks_, stride_};
    }
    block_run<const W> weight_blocks() const noexcept { return {weights_.data(), blocks_, stride_}; }
    template <bool B = writable, std::enable_if_t<B, int> = 0>
    block_run<Scalar> bias_blocks() noexcept {
        return {biases_.data(), has_bias_ ? blocks_ : 0, bias_stride_};
    }
    block_run<const Scalar> bias_blocks() const noexcept { return {biases_.data(), has_bias_ ? blocks_ : 0, bias_stride_}; }

    /// Block used at `level` by the path with bit pattern `code` (leaf_only: only level D has one).
    index_t block_on_path(leaf_t code, int level) const {
        detail::check_live(name, in_ != 0);
        detail::check_path(name, code, level, depth_, first_level(), to_string(mode_));
        return path_block(code, level);
    }

    /// Uniform(-b, b) weights and biases with b = 1/sqrt(in) for a leaf table and
    /// 1/sqrt(in * (D+1)) per node for a path sum, so the summed weight has a dense layer's scale.
    /// Block i draws from its own stream: for one seed, block i gets the same draws at any depth
    /// (only the bound above changes with the depth).
    template <bool B = exact && writable, std::enable_if_t<B, int> = 0>
    void initialize(std::uint64_t seed) noexcept {
        const double bound = 1.0 / std::sqrt(static_cast<double>(in_) * static_cast<double>(blocks_on_path()));
        for (index_t i = 0; i < blocks_; ++i) {
            detail::fill_uniform(weights_.data() + i * stride_, in_ * out_, bound, seed, static_cast<std::uint64_t>(2 * i));
            if (has_bias_)
                detail::fill_uniform(biases_.data() + i * bias_stride_, out_, bound, seed, static_cast<std::uint64_t>(2 * i + 1));
        }
    }

    // ---- single example: never allocates -------------------------------------------------------

    /// Gated by input entries (gating::from_input) or depth 0.
    void forward(const Eigen::Ref<const input_vector>& x, Eigen::Ref<output_vector> y) const {
        check_single(name, x, y);
        detail::check_gating_kind(name, "forward", gates_, depth_, false);
        forward_code(route_by_indices(x.data(), gates_.indices().data(), depth_), x.data(), y.data());
    }

    /// Gated by an external vector of D gate values (gates[0] decides level 1).
    void forward(const Eigen::Ref<const input_vector>& x, const Eigen::Ref<const gate_vector>& gates,
                 Eigen::Ref<output_vector> y) const {
        check_single(name, x, y);
        detail::check_gating_kind(name, "forward", gates_, depth_, true);
        detail::check_vector(name, "gate vector", gates.size(), depth_);
        forward_code(route_by_gates(gates.data(), 1, depth_), x.data(), y.data());
    }

    /// y += layer(x): for sums of layers (blocked trees, residual connections).
    void forward_add(const Eigen::Ref<const input_vector>& x, Eigen::Ref<output_vector> y) const {
        check_single(name, x, y);
        detail::check_gating_kind(name, "forward_add", gates_, depth_, false);
        accumulate_code(route_by_indices(x.data(), gates_.indices().data(), depth_), x.data(), y.data());
    }

    void forward_add(const Eigen::Ref<const input_vector>& x, const Eigen::Ref<const gate_vector>& gates,
                     Eigen::Ref<output_vector> y) const {
        check_single(name, x, y);
        detail::check_gating_kind(name, "forward_add", gates_, depth_, true);
        detail::check_vector(name, "gate vector", gates.size(), depth_);
        accumulate_code(route_by_gates(gates.data(), 1, depth_), x.data(), y.data());
    }

    // ---- batches: features x examples ----------------------------------------------------------

    // The serial and the allocating overloads (layers/batch_overloads.hpp).
    using detail::batch_overloads<tree_linear, matrix<Scalar>, workspace<Scalar>>::forward_batch;

    /// The batched forward on an executor (parallel/thread_pool.hpp, or parallel::serial): each
    /// level's work is cut into (node, row-chunk) pieces that do not depend on the thread
    /// count, so the output is bit-identical for any executor, and equal to the calls above.
    template <class Executor>
    void forward_batch(const Eigen::Ref<const batch>& X, Eigen::Ref<batch> Y, workspace<Scalar>& ws, Executor&& ex) const {
        detail::check_live(name, in_ != 0);
        detail::check_batch(name, in_, X.rows(), X.cols(), out_, Y.rows(), Y.cols());
        exec::route_batch(name, "forward_batch", gates_, depth_, X, ws.codes);
        exec::grouped_forward<Policy>(table(), X, Y, ws, ex);
    }

    template <class Executor>
    void forward_batch(const Eigen::Ref<const batch>& X, const Eigen::Ref<const batch>& G, Eigen::Ref<batch> Y,
                       workspace<Scalar>& ws, Executor&& ex) const {
        detail::check_live(name, in_ != 0);
        detail::check_batch(name, in_, X.rows(), X.cols(), out_, Y.rows(), Y.cols());
        exec::route_batch(name, "forward_batch", gates_, depth_, X, G, ws.codes);
        exec::grouped_forward<Policy>(table(), X, Y, ws, ex);
    }


private:
    void configure(index_t in, index_t out, int depth, tree_mode mode, gating gates, bool bias) {
        kernels::prepare<Policy>();  // a bad TREEGATE_ISA is an exception here, not in a kernel
        in_ = detail::resolve_size(name, "input size", In, in);
        out_ = detail::resolve_size(name, "output size", Out, out);
        depth_ = detail::resolve_depth(name, Depth, depth);
        mode_ = mode;
        has_bias_ = bias;
        gates_ = std::move(gates);
    }

    struct buffer_sizes {
        index_t weights, biases;
        detail::footprint total;  // what allocation errors quote
    };

    /// Sets the block count and strides; the scalars of the two buffers, checked to be addressable.
    buffer_sizes layout() {
        detail::check_gating(name, gates_, depth_, in_);
        blocks_ = mode_ == tree_mode::path_sum ? tree::node_count(depth_) : tree::leaf_count(depth_);
        const index_t block = detail::checked_mul(in_, out_, name, "block size");
        stride_ = detail::weight_stride<W, Scalar>(block, name);
        bias_stride_ = detail::block_stride<Scalar>(out_, name, "bias size");
        const index_t wn = detail::checked_mul(blocks_, stride_, name, "parameter count");
        const index_t bn = has_bias_ ? detail::checked_mul(blocks_, bias_stride_, name, "bias count") : 0;
        const index_t params =
            detail::checked_mul(blocks_, detail::checked_sum({block, has_bias_ ? out_ : 0}, name, "parameter count"), name,
                                "parameter count");
        index_t bytes = 0;
        if constexpr (exact)
            bytes = detail::checked_bytes<Scalar>({wn, bn}, name);
        else
            bytes = detail::checked_add(detail::checked_bytes<W>({wn}, name), detail::checked_bytes<Scalar>({bn}, name), name,
                                        "byte count");
        return {wn, bn, {params, bytes}};
    }

    void allocate() {
        const buffer_sizes n = layout();
        weights_ = typename Storage::template buffer<W>(n.weights, name, n.total);
        biases_ = typename Storage::template buffer<Scalar>(n.biases, name, n.total);
    }

    index_t blocks_on_path() const noexcept { return mode_ == tree_mode::path_sum ? depth_ + 1 : 1; }
    int first_level() const noexcept { return mode_ == tree_mode::path_sum ? 0 : depth_; }


    void forward_code(leaf_t code, const Scalar* x, Scalar* y) const noexcept {
        Eigen::Map<Eigen::Matrix<Scalar, Out, 1>>(y, out_).setZero();
        accumulate_code(code, x, y);
    }

    void accumulate_code(leaf_t code, const Scalar* x, Scalar* y) const noexcept {
        std::array<const W*, max_depth + 1> blocks{};
        int count = 0;
        Eigen::Map<Eigen::Matrix<Scalar, Out, 1>> yv(y, out_);
        for (int level = first_level(); level <= depth_; ++level) {
            const index_t b = path_block(code, level);
            blocks[static_cast<std::size_t>(count++)] = weights_.data() + b * stride_;
            if (has_bias_) yv += const_bias_map(biases_.data() + b * bias_stride_, out_);
        }
        Policy::path_sum(out_, in_, blocks.data(), count, x, y);
    }

    exec::block_table<W, Scalar> table() const noexcept {
        return {in_, out_, depth_, mode_ == tree_mode::path_sum, weights_.data(), stride_,
                has_bias_ ? biases_.data() : nullptr, bias_stride_};
    }
};

}  // namespace treegate

#endif
