// treegate/layers/tree_linear_bf16.hpp — a serving copy of a float tree_linear with bf16 weights.
// Same routing, grouping and block layout as tree_linear; half the weight bytes to stream.
//
// Weights are rounded once, at construction, to bfloat16 (round to nearest even; see bf16.hpp)
// and widened back to float inside the kernels, which multiply and accumulate in float; biases,
// activations and outputs stay float. Memory-bound cases (one example per path, tiny groups)
// read half the bytes of the float layer. The x86 kernels widen with AVX2 (VPMOVZXWD + VPSLLD)
// and need no AVX-512: the AVX-512 BF16 dot-product instructions (VDPBF16PS) would also round
// the activations to bf16, and are not available on every machine this library targets.
//
// Accuracy: bf16 keeps 8 significant bits, so rounding moves a weight by at most half an ulp,
// a relative 2^-8 (the unit roundoff; reached just above a power of two). Per output entry,
// |y_bf16 - y_f32| <= 2^-8 * sum over the path's blocks of sum_k |W_ik x_k| plus the float
// accumulation error of the two layers (tests/test_bf16.cpp checks exactly that bound).
#ifndef TREEGATE_LAYERS_TREE_LINEAR_BF16_HPP
#define TREEGATE_LAYERS_TREE_LINEAR_BF16_HPP

#include "../bf16.hpp"
#include "../detail/aligned_buffer.hpp"
#include "../exec/grouped.hpp"
#include "../exec/route.hpp"
#include "../kernels/policy.hpp"
#include "../parallel/executor.hpp"
#include "../routing.hpp"
#include "../schedule.hpp"
#include "../tree.hpp"
#include "../workspace.hpp"
#include "layer_common.hpp"
#include "tree_linear.hpp"

#include <array>
#include <utility>

namespace treegate {

/// A tree_linear (path_sum or leaf_only, any gating, with or without bias) whose blocks are
/// stored as bf16, for serving. Built from a trained float layer; not trainable itself.
/// Sizes are dynamic; inputs, gates and outputs are float. The policy must provide the bf16
/// overloads of gemm and path_sum (reference, eigen and avx2 do).
///
/// Storage: like tree_linear, one buffer of blocks, each `Out x In` column-major and 64-byte
/// aligned (stride padded to 32 bf16), block i = node i (path_sum) or leaf i (leaf_only); a
/// second buffer of float biases in the same order. To serve a path_sum tree as a flat table,
/// flatten it first (in float, see layers/flatten.hpp) and convert the result.
template <class Policy = kernels::default_policy>
class tree_linear_bf16 : private detail::tree_state<bf16, float> {
    // Moving leaves the source empty (tree_state): every size reads 0 and every call raises usage_error.
    using state = detail::tree_state<bf16, float>;
    using state::in_, state::out_, state::depth_, state::mode_, state::has_bias_, state::gates_, state::blocks_,
        state::stride_, state::bias_stride_, state::weights_, state::biases_, state::check_block, state::check_single,
        state::path_block;

public:
    using scalar_type = float;
    using policy_type = Policy;
    using vector = Eigen::VectorXf;
    using batch = matrix<float>;
    using const_bias_map = Eigen::Map<const Eigen::VectorXf>;
    static constexpr const char* name = "tree_linear_bf16";

    /// Rounds every weight of `t` to bf16 (ties to even) and copies its biases, sizes, mode and gating.
    template <int In, int Out, int Depth, class P>
    explicit tree_linear_bf16(const tree_linear<float, In, Out, Depth, P>& t) {
        kernels::prepare<Policy>();  // a bad TREEGATE_ISA is an exception here, not in a kernel
        in_ = source_size(t.in_size());
        out_ = t.out_size();
        depth_ = t.depth();
        mode_ = t.mode();
        has_bias_ = t.has_bias();
        gates_ = t.gates();
        blocks_ = t.block_count();
        // Weight blocks are always whole cache lines (the documented layout above), biases only
        // where that pays (detail::block_stride).
        stride_ = detail::checked_add(detail::checked_mul(in_, out_, name, "block size"),
                                      detail::line_padding<bf16>(in_ * out_), name, "block size");
        bias_stride_ = detail::block_stride<float>(out_, name, "bias size");
        const index_t wn = detail::checked_mul(blocks_, stride_, name, "parameter count");
        const index_t bn = has_bias_ ? detail::checked_mul(blocks_, bias_stride_, name, "bias count") : 0;
        const detail::footprint total{t.parameter_count(), detail::checked_add(detail::checked_bytes<bf16>({wn}, name),
                                                                               detail::checked_bytes<float>({bn}, name), name,
                                                                               "byte count")};
        weights_ = detail::aligned_buffer<bf16>(wn, name, total);
        biases_ = detail::aligned_buffer<float>(bn, name, total);
        for (index_t b = 0; b < blocks_; ++b) {
            const auto w = t.weight(b);
            bf16* dst = weights_.data() + b * stride_;
            for (index_t c = 0; c < in_; ++c)
                for (index_t r = 0; r < out_; ++r) dst[r + c * out_] = to_bf16(w(r, c));
            if (has_bias_) Eigen::Map<Eigen::VectorXf>(biases_.data() + b * bias_stride_, out_) = t.bias(b);
        }
    }

    index_t in_size() const noexcept { return in_; }
    index_t out_size() const noexcept { return out_; }
    int depth() const noexcept { return depth_; }
    tree_mode mode() const noexcept { return mode_; }
    bool has_bias() const noexcept { return has_bias_; }
    const gating& gates() const noexcept { return gates_; }
    index_t block_count() const noexcept { return blocks_; }

    index_t parameter_count() const noexcept { return blocks_ * (in_ * out_ + (has_bias_ ? out_ : 0)); }
    index_t macs_per_example() const noexcept { return blocks_on_path() * in_ * out_; }

    /// Bytes of stored weights (bf16, padding between blocks included; biases not counted):
    /// about half of the float layer's.
    index_t weight_bytes() const noexcept { return weights_.bytes(); }

    /// Bytes of the bf16 weights and the float biases, padding included.
    index_t memory_bytes() const noexcept { return weights_.bytes() + biases_.bytes(); }

    /// Block i as the float values the kernels multiply by (a copy: the storage is bf16).
    Eigen::MatrixXf weight(index_t i) const {
        check_block(name, i, false);
        Eigen::MatrixXf w(out_, in_);
        const bf16* src = weights_.data() + i * stride_;
        for (index_t c = 0; c < in_; ++c)
            for (index_t r = 0; r < out_; ++r) w(r, c) = to_float(src[r + c * out_]);
        return w;
    }
    const_bias_map bias(index_t i) const {
        check_block(name, i, true);
        return const_bias_map(biases_.data() + i * bias_stride_, out_);
    }

    /// Block used at `level` by the path with bit pattern `code` (leaf_only: only level D has one).
    index_t block_on_path(leaf_t code, int level) const {
        detail::check_live(name, in_ != 0);
        detail::check_path(name, code, level, depth_, first_level(), to_string(mode_));
        return path_block(code, level);
    }

    // ---- single example: never allocates -------------------------------------------------------

    void forward(const Eigen::Ref<const vector>& x, Eigen::Ref<vector> y) const {
        check_single(name, x, y);
        detail::check_gating_kind(name, "forward", gates_, depth_, false);
        forward_code(route_by_indices(x.data(), gates_.indices().data(), depth_), x.data(), y.data());
    }

    void forward(const Eigen::Ref<const vector>& x, const Eigen::Ref<const vector>& gates, Eigen::Ref<vector> y) const {
        check_single(name, x, y);
        detail::check_gating_kind(name, "forward", gates_, depth_, true);
        detail::check_vector(name, "gate vector", gates.size(), depth_);
        forward_code(route_by_gates(gates.data(), 1, depth_), x.data(), y.data());
    }

    // ---- batches: features x examples ----------------------------------------------------------

    void forward_batch(const Eigen::Ref<const batch>& X, Eigen::Ref<batch> Y, workspace<float>& ws) const {
        forward_batch(X, Y, ws, parallel::serial{});
    }

    void forward_batch(const Eigen::Ref<const batch>& X, const Eigen::Ref<const batch>& G, Eigen::Ref<batch> Y,
                       workspace<float>& ws) const {
        forward_batch(X, G, Y, ws, parallel::serial{});
    }

    /// The batched forward on an executor, as tree_linear's (bit-identical for any thread count).
    template <class Executor>
    void forward_batch(const Eigen::Ref<const batch>& X, Eigen::Ref<batch> Y, workspace<float>& ws, Executor&& ex) const {
        detail::check_live(name, in_ != 0);
        detail::check_batch(name, in_, X.rows(), X.cols(), out_, Y.rows(), Y.cols());
        exec::route_batch(name, "forward_batch", gates_, depth_, X, ws.codes);
        exec::grouped_forward<Policy>(table(), X, Y, ws, ex);
    }

    template <class Executor>
    void forward_batch(const Eigen::Ref<const batch>& X, const Eigen::Ref<const batch>& G, Eigen::Ref<batch> Y,
                       workspace<float>& ws, Executor&& ex) const {
        detail::check_live(name, in_ != 0);
        detail::check_batch(name, in_, X.rows(), X.cols(), out_, Y.rows(), Y.cols());
        exec::route_batch(name, "forward_batch", gates_, depth_, X, G, ws.codes);
        exec::grouped_forward<Policy>(table(), X, Y, ws, ex);
    }

    batch forward_batch(const Eigen::Ref<const batch>& X) const {
        batch Y(out_, X.cols());
        workspace<float> ws;
        forward_batch(X, Y, ws);
        return Y;
    }

    batch forward_batch(const Eigen::Ref<const batch>& X, const Eigen::Ref<const batch>& G) const {
        batch Y(out_, X.cols());
        workspace<float> ws;
        forward_batch(X, G, Y, ws);
        return Y;
    }

private:
    index_t blocks_on_path() const noexcept { return mode_ == tree_mode::path_sum ? depth_ + 1 : 1; }
    int first_level() const noexcept { return mode_ == tree_mode::path_sum ? 0 : depth_; }

    static index_t source_size(index_t in) {
        if (in == 0) detail::raise<usage_error>(name, ": the source tree_linear is empty (moved from)");
        return in;
    }


    void forward_code(leaf_t code, const float* x, float* y) const noexcept {
        std::array<const bf16*, max_depth + 1> blocks{};
        int count = 0;
        Eigen::Map<Eigen::VectorXf> yv(y, out_);
        yv.setZero();
        for (int level = first_level(); level <= depth_; ++level) {
            const index_t b = path_block(code, level);
            blocks[static_cast<std::size_t>(count++)] = weights_.data() + b * stride_;
            if (has_bias_) yv += const_bias_map(biases_.data() + b * bias_stride_, out_);
        }
        Policy::path_sum(out_, in_, blocks.data(), count, x, y);
    }

    exec::block_table<bf16, float> table() const noexcept {
        return {in_, out_, depth_, mode_ == tree_mode::path_sum, weights_.data(), stride_,
                has_bias_ ? biases_.data() : nullptr, bias_stride_};
    }
};

}  // namespace treegate

#endif
