// treegate/layers/tree_feedforward.hpp — the FFF / UltraFastBERT family: a tree of small MLPs
// routed by the sign of each node's own pre-activation. Composes topology, node routing, the
// exec/ engine's level-by-level driver and a kernel policy; owns its weights in level-major buffers.
#ifndef TREEGATE_LAYERS_TREE_FEEDFORWARD_HPP
#define TREEGATE_LAYERS_TREE_FEEDFORWARD_HPP

#include "../activation.hpp"
#include "../detail/aligned_buffer.hpp"
#include "../detail/random.hpp"
#include "../exec/ff_units.hpp"
#include "../exec/fused_paths.hpp"
#include "../exec/grouped.hpp"
#include "../exec/levels.hpp"
#include "../kernels/policy.hpp"
#include "../parallel/executor.hpp"
#include "../routing.hpp"
#include "../schedule.hpp"
#include "../tree.hpp"
#include "../workspace.hpp"
#include "batch_overloads.hpp"
#include "layer_common.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <type_traits>
#include <utility>

namespace treegate {

// The mode (layer_common.hpp) names what each node holds here. path_sum ("node_sum" in
// UltraFastBERT's terms): every node on the path holds an MLP (U, a, V) and contributes
// V act(U x + a); the sign of its first pre-activation picks the child (UltraFastBERT when
// width = 1 and GELU). leaf_only ("leaf_mlp", the original FFF): internal nodes hold only a
// router hyperplane (r, s), sign(r.x + s) picks the child; the reached leaf's MLP alone
// produces the output.

/// K parallel trees of depth D over the same input, outputs summed, plus an optional output bias.
///
/// Storage, per tree t and unit i (a node in path_sum, a leaf in leaf_only), each block aligned
/// where that costs at most 1/8 of it (detail::block_stride):
/// hidden_weight(t, i) `Width x In`, hidden_bias(t, i) `Width`, output_weight(t, i) `Out x Width`
/// (column-major); leaf_only adds router_weight(t, i) `In` and router_bias(t, i) for the
/// internal nodes and, when built with leaf biases, leaf_bias(t, i) `Out` per leaf (the
/// `fastfeedforward` package's b2s). Units are numbered in heap order, tree-major. The tie rule
/// (routing.hpp) says where a route score of exactly zero goes, in both modes.
template <class Scalar, int In = dynamic, int Out = dynamic, int Width = dynamic, int Depth = dynamic,
          class Policy = kernels::default_policy>
class tree_feedforward
    : public detail::batch_overloads<tree_feedforward<Scalar, In, Out, Width, Depth, Policy>, matrix<Scalar>, workspace<Scalar>> {
    static_assert(std::is_floating_point_v<Scalar>, "tree_feedforward: Scalar must be a floating-point type");
    static_assert(In == dynamic || In > 0, "tree_feedforward: In must be positive or dynamic");
    static_assert(Out == dynamic || Out > 0, "tree_feedforward: Out must be positive or dynamic");
    static_assert(Width == dynamic || Width > 0, "tree_feedforward: Width must be positive or dynamic");
    static_assert(Depth == dynamic || (Depth >= 0 && Depth <= max_depth),
                  "tree_feedforward: Depth must be in [0, 30] or dynamic");

    // Hidden units are produced in chunks of this many, so the single-example path needs only
    // a small stack buffer whatever the width.
    static constexpr index_t chunk = 64;

public:
    /// How forward_batch streams the node weights (exec/grouped.hpp): once per 64-example tile,
    /// so that a tile's inputs and outputs stay in L2 through every level.
    static constexpr exec::stream batch_stream = exec::stream::per_tile;

    using scalar_type = Scalar;
    using policy_type = Policy;
    using input_vector = Eigen::Matrix<Scalar, In, 1>;
    using output_vector = Eigen::Matrix<Scalar, Out, 1>;
    using batch = matrix<Scalar>;
    using hidden_weight_map = Eigen::Map<Eigen::Matrix<Scalar, Width, In>>;
    using const_hidden_weight_map = Eigen::Map<const Eigen::Matrix<Scalar, Width, In>>;
    using hidden_bias_map = Eigen::Map<Eigen::Matrix<Scalar, Width, 1>>;
    using const_hidden_bias_map = Eigen::Map<const Eigen::Matrix<Scalar, Width, 1>>;
    using output_weight_map = Eigen::Map<Eigen::Matrix<Scalar, Out, Width>>;
    using const_output_weight_map = Eigen::Map<const Eigen::Matrix<Scalar, Out, Width>>;
    using router_map = Eigen::Map<Eigen::Matrix<Scalar, In, 1>>;
    using const_router_map = Eigen::Map<const Eigen::Matrix<Scalar, In, 1>>;
    using output_bias_map = Eigen::Map<Eigen::Matrix<Scalar, Out, 1>>;
    using const_output_bias_map = Eigen::Map<const Eigen::Matrix<Scalar, Out, 1>>;
    static constexpr const char* name = "tree_feedforward";

    /// `leaf_bias` (leaf_only only) gives every leaf its own output bias, added when the leaf is
    /// reached; off, the layer and its files are what they were before leaf biases existed.
    tree_feedforward(index_t in, index_t out, index_t width, int depth, index_t trees = 1,
                     activation act = activation::gelu, tree_mode mode = tree_mode::path_sum,
                     bool output_bias = true, tie_rule tie = tie_rule::greater, bool leaf_bias = false)
        : in_(detail::resolve_size(name, "input size", In, in)),
          out_(detail::resolve_size(name, "output size", Out, out)),
          width_(detail::resolve_size(name, "node width", Width, width)),
          depth_(detail::resolve_depth(name, Depth, depth)),
          trees_(trees),
          act_(act),
          mode_(mode),
          tie_(tie),
          has_output_bias_(output_bias),
          has_leaf_bias_(leaf_bias) {
        kernels::prepare<Policy>();  // a bad TREEGATE_ISA is an exception here, not in a kernel
        detail::check_config(trees >= 1, name, ": tree count must be positive, got ", trees);
        detail::check_config(!leaf_bias || mode == tree_mode::leaf_only, name,
                             ": leaf biases need mode leaf_only (path_sum has no single leaf output)");
        units_ = mode_ == tree_mode::path_sum ? tree::node_count(depth_) : tree::leaf_count(depth_);
        routers_ = mode_ == tree_mode::leaf_only ? tree::internal_count(depth_) : 0;
        const index_t u_size = detail::checked_mul(width_, in_, name, "hidden block size");
        const index_t v_size = detail::checked_mul(out_, width_, name, "output block size");
        u_stride_ = detail::block_stride<Scalar>(u_size, name, "hidden block size");
        a_stride_ = detail::block_stride<Scalar>(width_, name, "hidden bias size");
        v_stride_ = detail::block_stride<Scalar>(v_size, name, "output block size");
        r_stride_ = detail::block_stride<Scalar>(in_, name, "router size");
        b_stride_ = has_leaf_bias_ ? detail::block_stride<Scalar>(out_, name, "leaf bias size") : 0;
        const index_t all_units = detail::checked_mul(trees_, units_, name, "unit count");
        const index_t all_routers = detail::checked_mul(trees_, routers_, name, "router count");
        const index_t un = detail::checked_mul(all_units, u_stride_, name, "parameter count");
        const index_t an = detail::checked_mul(all_units, a_stride_, name, "parameter count");
        const index_t vn = detail::checked_mul(all_units, v_stride_, name, "parameter count");
        const index_t rn = detail::checked_mul(all_routers, r_stride_, name, "parameter count");
        const index_t cn = has_output_bias_ ? out_ : 0;
        const index_t bn = detail::checked_mul(all_units, b_stride_, name, "parameter count");
        const index_t per_unit =
            detail::checked_sum({u_size, width_, v_size, has_leaf_bias_ ? out_ : 0}, name, "parameter count");
        const index_t per_router = detail::checked_add(in_, 1, name, "parameter count");
        const detail::footprint total{
            detail::checked_sum({detail::checked_mul(all_units, per_unit, name, "parameter count"),
                                 detail::checked_mul(all_routers, per_router, name, "parameter count"), cn},
                                name, "parameter count"),
            detail::checked_bytes<Scalar>({un, an, vn, rn, all_routers, cn, bn}, name)};
        U_ = detail::aligned_buffer<Scalar>(un, name, total);
        A_ = detail::aligned_buffer<Scalar>(an, name, total);
        V_ = detail::aligned_buffer<Scalar>(vn, name, total);
        R_ = detail::aligned_buffer<Scalar>(rn, name, total);
        S_ = detail::aligned_buffer<Scalar>(all_routers, name, total);
        c_ = detail::aligned_buffer<Scalar>(cn, name, total);
        B_ = detail::aligned_buffer<Scalar>(bn, name, total);
    }

    /// All sizes fixed at compile time.
    explicit tree_feedforward(index_t trees = 1, activation act = activation::gelu,
                              tree_mode mode = tree_mode::path_sum, bool output_bias = true,
                              tie_rule tie = tie_rule::greater, bool leaf_bias = false)
        : tree_feedforward(In, Out, Width, Depth, trees, act, mode, output_bias, tie, leaf_bias) {
        static_assert(In != dynamic && Out != dynamic && Width != dynamic && Depth != dynamic,
                      "tree_feedforward: this constructor needs In, Out, Width and Depth fixed");
    }

    tree_feedforward(const tree_feedforward&) = default;
    tree_feedforward& operator=(const tree_feedforward&) = default;
    /// Moving leaves the source empty: every size reads 0 and every call raises usage_error.
    tree_feedforward(tree_feedforward&& o) noexcept { *this = std::move(o); }
    tree_feedforward& operator=(tree_feedforward&& o) noexcept {
        if (this == &o) return *this;
        in_ = std::exchange(o.in_, 0);
        out_ = std::exchange(o.out_, 0);
        width_ = std::exchange(o.width_, 0);
        depth_ = std::exchange(o.depth_, 0);
        trees_ = std::exchange(o.trees_, 0);
        act_ = o.act_;
        mode_ = o.mode_;
        tie_ = o.tie_;
        has_output_bias_ = std::exchange(o.has_output_bias_, false);
        has_leaf_bias_ = std::exchange(o.has_leaf_bias_, false);
        units_ = std::exchange(o.units_, 0);
        routers_ = std::exchange(o.routers_, 0);
        u_stride_ = std::exchange(o.u_stride_, 0);
        a_stride_ = std::exchange(o.a_stride_, 0);
        v_stride_ = std::exchange(o.v_stride_, 0);
        r_stride_ = std::exchange(o.r_stride_, 0);
        b_stride_ = std::exchange(o.b_stride_, 0);
        U_ = std::move(o.U_);
        A_ = std::move(o.A_);
        V_ = std::move(o.V_);
        R_ = std::move(o.R_);
        S_ = std::move(o.S_);
        c_ = std::move(o.c_);
        B_ = std::move(o.B_);
        return *this;
    }

    index_t in_size() const noexcept { return in_; }
    index_t out_size() const noexcept { return out_; }
    index_t width() const noexcept { return width_; }
    int depth() const noexcept { return depth_; }
    index_t tree_count() const noexcept { return trees_; }
    activation activation_kind() const noexcept { return act_; }
    tree_mode mode() const noexcept { return mode_; }
    bool has_output_bias() const noexcept { return has_output_bias_; }
    /// Where a route score of exactly zero goes (routing.hpp): every router and node of the layer.
    tie_rule tie() const noexcept { return tie_; }
    /// Per-leaf output biases (leaf_only only).
    bool has_leaf_bias() const noexcept { return has_leaf_bias_; }

    /// MLP units per tree: every node (path_sum) or every leaf (leaf_only).
    index_t unit_count() const noexcept { return units_; }
    /// Router hyperplanes per tree: the internal nodes in leaf_only, none in path_sum.
    index_t router_count() const noexcept { return routers_; }

    index_t parameter_count() const noexcept {
        return trees_ * (units_ * (width_ * in_ + width_ + out_ * width_ + (has_leaf_bias_ ? out_ : 0)) +
                         routers_ * (in_ + 1)) +
               (has_output_bias_ ? out_ : 0);
    }

    /// Bytes all weights and biases occupy, padding between blocks included.
    index_t memory_bytes() const noexcept {
        return U_.bytes() + A_.bytes() + V_.bytes() + R_.bytes() + S_.bytes() + c_.bytes() + B_.bytes();
    }

    index_t macs_per_example() const noexcept {
        const index_t mlp = width_ * in_ + out_ * width_;
        return mode_ == tree_mode::path_sum ? trees_ * (depth_ + 1) * mlp : trees_ * (depth_ * in_ + mlp);
    }

    // Unit i of tree t: node i (path_sum) or leaf i (leaf_only); router i: internal node i.
    hidden_weight_map hidden_weight(index_t t, index_t i) { return {U_.data() + checked_unit(t, i) * u_stride_, width_, in_}; }
    const_hidden_weight_map hidden_weight(index_t t, index_t i) const {
        return {U_.data() + checked_unit(t, i) * u_stride_, width_, in_};
    }
    hidden_bias_map hidden_bias(index_t t, index_t i) { return {A_.data() + checked_unit(t, i) * a_stride_, width_}; }
    const_hidden_bias_map hidden_bias(index_t t, index_t i) const { return {A_.data() + checked_unit(t, i) * a_stride_, width_}; }
    output_weight_map output_weight(index_t t, index_t i) { return {V_.data() + checked_unit(t, i) * v_stride_, out_, width_}; }
    const_output_weight_map output_weight(index_t t, index_t i) const {
        return {V_.data() + checked_unit(t, i) * v_stride_, out_, width_};
    }
    router_map router_weight(index_t t, index_t i) { return {R_.data() + checked_router(t, i) * r_stride_, in_}; }
    const_router_map router_weight(index_t t, index_t i) const { return {R_.data() + checked_router(t, i) * r_stride_, in_}; }
    Scalar& router_bias(index_t t, index_t i) { return S_.data()[checked_router(t, i)]; }
    const Scalar& router_bias(index_t t, index_t i) const { return S_.data()[checked_router(t, i)]; }
    /// The output bias of leaf i of tree t (a layer built with leaf biases).
    output_bias_map leaf_bias(index_t t, index_t i) { return {B_.data() + checked_leaf_bias(t, i) * b_stride_, out_}; }
    const_output_bias_map leaf_bias(index_t t, index_t i) const {
        return {B_.data() + checked_leaf_bias(t, i) * b_stride_, out_};
    }
    output_bias_map output_bias() {
        check_output_bias();
        return {c_.data(), out_};
    }
    const_output_bias_map output_bias() const {
        check_output_bias();
        return {c_.data(), out_};
    }

    /// Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) per matrix, scaled by 1/sqrt(D+1) for the output
    /// blocks of path_sum (D+1 of them are summed). Each block draws from its own stream.
    void initialize(std::uint64_t seed) noexcept {
        const double b_in = 1.0 / std::sqrt(static_cast<double>(in_));
        const double sum_scale = mode_ == tree_mode::path_sum ? std::sqrt(static_cast<double>(depth_ + 1)) : 1.0;
        const double b_out = 1.0 / std::sqrt(static_cast<double>(width_)) / sum_scale;
        for (index_t g = 0; g < trees_ * units_; ++g) {
            const auto s = static_cast<std::uint64_t>(8 * g);
            detail::fill_uniform(U_.data() + g * u_stride_, width_ * in_, b_in, seed, s);
            detail::fill_uniform(A_.data() + g * a_stride_, width_, b_in, seed, s + 1);
            detail::fill_uniform(V_.data() + g * v_stride_, out_ * width_, b_out, seed, s + 2);
            if (has_leaf_bias_) detail::fill_uniform(B_.data() + g * b_stride_, out_, b_out, seed, s + 5);
        }
        for (index_t g = 0; g < trees_ * routers_; ++g) {
            const auto s = static_cast<std::uint64_t>(8 * g + 3);
            detail::fill_uniform(R_.data() + g * r_stride_, in_, b_in, seed, s);
            detail::fill_uniform(S_.data() + g, 1, b_in, seed, s + 1);
        }
        if (has_output_bias_) detail::fill_uniform(c_.data(), out_, b_out, seed, ~std::uint64_t{0});
    }

    // ---- single example: never allocates -------------------------------------------------------

    void forward(const Eigen::Ref<const input_vector>& x, Eigen::Ref<output_vector> y) const {
        detail::check_live(name, in_ != 0);
        detail::check_vector(name, "input", x.size(), in_);
        detail::check_vector(name, "output", y.size(), out_);
        detail::check_no_overlap(name, x, y);
        if (has_output_bias_)
            y = const_output_bias_map(c_.data(), out_);
        else
            y.setZero();
        if (fused()) {
            const Scalar* xs[1] = {x.data()};
            Scalar* ys[1] = {y.data()};
            for (index_t t = 0; t < trees_; ++t) fused_view(t).forward(1, xs, ys);
            return;
        }
        for (index_t t = 0; t < trees_; ++t) {
            index_t node = 0;
            if (mode_ == tree_mode::path_sum) {
                for (int level = 0; level <= depth_; ++level) {
                    const int bit = unit_forward(unit(t, node), x.data(), y.data());
                    node = tree::child(node, bit);
                }
            } else {
                for (int level = 0; level < depth_; ++level) node = tree::child(node, route_bit(router(t, node), x.data()));
                const index_t g = unit(t, node - tree::level_begin(depth_));
                unit_forward(g, x.data(), y.data());
                if (has_leaf_bias_) y += const_output_bias_map(B_.data() + g * b_stride_, out_);
            }
        }
    }

    // ---- batches: features x examples ----------------------------------------------------------

    // The serial and the allocating overloads (layers/batch_overloads.hpp).
    using detail::batch_overloads<tree_feedforward, matrix<Scalar>, workspace<Scalar>>::forward_batch;

    /// The batched forward on an executor (parallel/thread_pool.hpp, or parallel::serial).
    /// With batch_stream = per_tile, all levels run on one tile of 64 examples before the next
    /// tile starts, so the tile's inputs and outputs stay in L2 instead of streaming the whole
    /// batch from memory once per level; the node weights still serve every example of the
    /// tile that visits them. The tiles are the pieces: each writes its own columns of Y with
    /// its worker's scratch, so the output is bit-identical for any executor and thread count.
    template <class Executor>
    void forward_batch(const Eigen::Ref<const batch>& X, Eigen::Ref<batch> Y, workspace<Scalar>& ws, Executor&& ex) const {
        detail::check_live(name, in_ != 0);
        detail::check_batch(name, in_, X.rows(), X.cols(), out_, Y.rows(), Y.cols());
        if (detail::rerun_on_copy(X, Y, ws, [&](const auto& C) { forward_batch(C, Y, ws, ex); })) return;
        ws.reserve_workers(ex.size());
        if (fused_sorted(X, Y, ws, ex)) return;
        // The level driver inside a stream unit is serial, so the inner executor goes unused.
        exec::run_streamed(batch_stream, X.cols(), ws, ex, [&](index_t t0, index_t end, workspace<Scalar>& w, auto&) {
            forward_tile(X.middleCols(t0, end - t0), Y.middleCols(t0, end - t0), w);
        });
    }

private:
    // The accessors' checks, made in every build (the forward passes use unit() and router()).
    index_t checked_unit(index_t t, index_t i) const {
        detail::check_live(name, in_ != 0);
        detail::check_index(name, "tree", t, trees_);
        detail::check_index(name, "unit", i, units_);
        return unit(t, i);
    }
    index_t checked_router(index_t t, index_t i) const {
        detail::check_live(name, in_ != 0);
        detail::check_index(name, "tree", t, trees_);
        detail::check_index(name, "router", i, routers_);
        return router(t, i);
    }
    index_t checked_leaf_bias(index_t t, index_t i) const {
        const index_t g = checked_unit(t, i);
        if (!has_leaf_bias_) detail::raise<usage_error>(name, ": the layer has no leaf biases");
        return g;
    }
    void check_output_bias() const {
        detail::check_live(name, in_ != 0);
        if (!has_output_bias_) detail::raise<usage_error>(name, ": the layer has no output bias");
    }

    index_t unit(index_t t, index_t i) const noexcept {
        eigen_assert(t >= 0 && t < trees_ && i >= 0 && i < units_);
        return t * units_ + i;
    }
    index_t router(index_t t, index_t i) const noexcept {
        eigen_assert(t >= 0 && t < trees_ && i >= 0 && i < routers_);
        return t * routers_ + i;
    }

    int route_bit(index_t g, const Scalar* x) const noexcept {
        return hyperplane_bit<Policy>(in_, R_.data() + g * r_stride_, S_.data()[g], x, tie_);
    }

    void forward_tile(const Eigen::Ref<const batch>& X, Eigen::Ref<batch> Y, workspace<Scalar>& ws) const {
        const index_t n = X.cols();
        if (has_output_bias_)
            Y.colwise() = output_bias();
        else
            Y.setZero();
        if (fused()) {
            const Scalar* xs[fused_group];
            Scalar* ys[fused_group];
            for (index_t e0 = 0; e0 < n; e0 += fused_group) {
                const int m = static_cast<int>(std::min<index_t>(fused_group, n - e0));
                for (int k = 0; k < m; ++k) {
                    xs[k] = X.data() + (e0 + k) * X.outerStride();
                    ys[k] = Y.data() + (e0 + k) * Y.outerStride();
                }
                for (index_t t = 0; t < trees_; ++t) fused_view(t).forward(m, xs, ys);
            }
            return;
        }
        for (index_t t = 0; t < trees_; ++t) {
            const auto visit = [&](int level, index_t k, group_range r, const index_t* order, unsigned char* bits) {
                const index_t node = tree::level_begin(level) + k;
                if (mode_ == tree_mode::path_sum || level == depth_) {
                    group_forward(unit(t, mode_ == tree_mode::path_sum ? node : k), r, order, bits, X, Y, ws);
                } else {
                    const index_t g = router(t, node);
                    for (index_t p = r.begin; p < r.end; ++p)
                        bits[p] = static_cast<unsigned char>(route_bit(g, X.data() + order[p] * X.outerStride()));
                }
            };
            exec::walk_levels(ws.levels, ws.bits, n, depth_, visit);
        }
    }

    // Width-1 path_sum (UltraFastBERT) takes the fused path below in both forwards; leaf_only and
    // wider nodes keep the level-by-level groups, whose per-node GEMMs it would not speed up.
    bool fused() const noexcept { return width_ == 1 && mode_ == tree_mode::path_sum; }

    detail::fused_tree<Scalar, Policy> fused_view(index_t t) const noexcept {
        const index_t g = unit(t, 0);
        return {in_,     out_,     depth_,    act_,     U_.data() + g * u_stride_, A_.data() + g * a_stride_,
                V_.data() + g * v_stride_, u_stride_, a_stride_, v_stride_, tie_};
    }

    // The deep levels' weights the sorted batch path keeps in L2 per subtree (a few hundred KiB
    // leaves room for the top levels and the streamed inputs in a 1-2 MiB L2).
    static constexpr std::size_t fused_subtree_bytes = std::size_t{512} << 10;

    // Large fused batches (width-1 path_sum, at least 8 examples per subtree): each tree in two
    // phases (detail::fused_tree::split): the top levels tile by tile, then the subtrees, one
    // piece per subtree, on the examples sorted by the subtree they reached. Each example's
    // column of Y is written by one piece only and its result does not depend on the pieces,
    // so the output is bit-identical for any thread count (and to the tiled path). Returns
    // false where the tiled path serves instead (small batches, trees whose weights fit).
    template <class Executor>
    bool fused_sorted(const Eigen::Ref<const batch>& X, Eigen::Ref<batch> Y, workspace<Scalar>& ws, Executor& ex) const {
        if (!fused()) return false;
        const index_t n = X.cols();
        const int s = fused_view(0).split(fused_subtree_bytes);
        if (s == 0 || n < (index_t{8} << s)) return false;
        Scalar* top = ws.route_activations.view(s, n).data();
        ws.codes.resize(static_cast<std::size_t>(n));
        for (index_t t = 0; t < trees_; ++t) {
            const detail::fused_tree<Scalar, Policy> f = fused_view(t);
            parallel::for_each_chunk(ex, n, exec::tile_examples, [&](index_t b, index_t e, int) {
                f.route_top(X.data(), X.outerStride(), b, e, s, top, ws.codes.data());
            });
            ws.leaves.build(ws.codes.data(), n, s);
            const Scalar* init = t == 0 && has_output_bias_ ? c_.data() : nullptr;
            const bool zero = t == 0 && !has_output_bias_;
            parallel::for_each_chunk(ex, tree::leaf_count(s), 1, [&](index_t k, index_t, int) {
                const group_range r = ws.leaves.node_range(s, k);
                f.route_bottom(X.data(), X.outerStride(), Y.data(), Y.outerStride(), ws.leaves.order(), r.begin, r.end, s,
                               static_cast<leaf_t>(k), top, init, zero);
            });
        }
        return true;
    }

    // Examples per group of the tiled fused path.
    static constexpr int fused_group = detail::fused_tree<Scalar, Policy>::group;

    // y += V act(U x + a) for one example; returns the bit of the first pre-activation.
    int unit_forward(index_t g, const Scalar* x, Scalar* y) const noexcept {
        const Scalar* U = U_.data() + g * u_stride_;
        const Scalar* a = A_.data() + g * a_stride_;
        const Scalar* V = V_.data() + g * v_stride_;
        if (width_ == 1) {
            const Scalar pre = Policy::dot(in_, U, x) + a[0];
            Policy::axpy(out_, apply(act_, pre), V, y);
            return unit_bit(&pre, tie_);
        }
        int bit = 0;
        std::array<Scalar, chunk> h;
        for (index_t r0 = 0; r0 < width_; r0 += chunk) {
            const index_t rows = std::min(chunk, width_ - r0);
            std::copy(a + r0, a + r0 + rows, h.data());
            Policy::gemv(rows, in_, U + r0, width_, x, h.data());
            if (r0 == 0) bit = unit_bit(h.data(), tie_);
            apply_inplace(act_, h.data(), rows);
            Policy::gemv(out_, rows, V + r0 * out_, out_, h.data(), y);
        }
        return bit;
    }

    // The examples at positions [r.begin, r.end) of `order` all use unit g (exec/ff_units.hpp);
    // a leaf bias is added after the leaf's product, in the order the single-example path adds it.
    void group_forward(index_t g, group_range r, const index_t* order, unsigned char* bits,
                       const Eigen::Ref<const batch>& X, Eigen::Ref<batch> Y, workspace<Scalar>& ws) const {
        const exec::ff_unit<Scalar> u{U_.data() + g * u_stride_, A_.data() + g * a_stride_, V_.data() + g * v_stride_,
                                      has_leaf_bias_ ? B_.data() + g * b_stride_ : nullptr, in_, out_, width_, act_, tie_};
        exec::ff_unit_group<Policy>(u, r, order, bits, X, Y, ws);
    }

    index_t in_ = 0, out_ = 0, width_ = 0;
    int depth_ = 0;
    index_t trees_ = 0;
    activation act_ = activation::gelu;
    tree_mode mode_ = tree_mode::path_sum;
    tie_rule tie_ = tie_rule::greater;
    bool has_output_bias_ = false;
    bool has_leaf_bias_ = false;
    index_t units_ = 0, routers_ = 0;
    index_t u_stride_ = 0, a_stride_ = 0, v_stride_ = 0, r_stride_ = 0, b_stride_ = 0;
    detail::aligned_buffer<Scalar> U_, A_, V_, R_, S_, c_, B_;
};

}  // namespace treegate

#endif
