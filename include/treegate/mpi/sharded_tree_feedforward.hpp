// treegate/mpi/sharded_tree_feedforward.hpp — a tree_feedforward whose subtrees are sharded over
// MPI ranks (mpi/): each tree's top levels route locally, the owner continues the walk from level L.
#ifndef TREEGATE_MPI_SHARDED_TREE_FEEDFORWARD_HPP
#define TREEGATE_MPI_SHARDED_TREE_FEEDFORWARD_HPP

#include "../activation.hpp"
#include "../detail/aligned_buffer.hpp"
#include "../detail/random.hpp"
#include "../exec/ff_units.hpp"
#include "../exec/fused_paths.hpp"
#include "../exec/levels.hpp"
#include "../kernels/policy.hpp"
#include "../layers/layer_common.hpp"
#include "../layers/tree_feedforward.hpp"
#include "../routing.hpp"
#include "../workspace.hpp"
#include "../exec/subtree.hpp"
#include "comm.hpp"
#include "exchange.hpp"
#include "layout.hpp"

#include <cmath>
#include <cstdint>
#include <vector>

namespace treegate::mpi {


/// tree_feedforward (README, formula section: K trees, path_sum or leaf_only, an output bias)
/// over the ranks of a communicator, each tree laid out by mpi::layout: levels 0 .. L-1 (their
/// MLP units for path_sum, their routers for leaf_only) on every rank, the subtrees rooted at
/// level L on their owners. Routes depend on the weights met on the way, so a path is walked
/// where its nodes are: the replicated levels locally, then (x, the output so far, the node
/// reached on level L) go to the subtree's owner, which walks on to the leaf and sends the
/// output back; the trees run one after the other, each adding to the output in turn.
///
/// Units (U `width x in`, a `width`, V `out x width`) and routers (r `in`, s) live in local
/// order: the replicated ones of tree t first, then tree t's owned subtrees, each in its heap
/// order. forward_batch and every function taking the communicator are collective.
template <class Scalar, class Policy = kernels::default_policy>
class sharded_tree_feedforward {
public:
    using batch = matrix<Scalar>;
    static constexpr const char* name = "sharded_tree_feedforward";

    sharded_tree_feedforward(MPI_Comm comm, index_t in, index_t out, index_t width, int depth, index_t trees = 1,
                             activation act = activation::gelu, tree_mode mode = tree_mode::path_sum,
                             bool output_bias = true, int split = -1, tie_rule tie = tie_rule::greater,
                             bool leaf_bias = false)
        : comm_(comm), layout_(make_layout(comm, depth, split)), in_(in), out_(out), width_(width), depth_(depth),
          trees_(trees), act_(act), mode_(mode), tie_(tie), has_output_bias_(output_bias), has_leaf_bias_(leaf_bias) {
        kernels::prepare<Policy>();
        detail::check_config(in > 0 && out > 0 && width > 0 && trees > 0, name,
                             ": input, output, width and tree count must be positive, got ", in, ", ", out, ", ", width,
                             ", ", trees);
        detail::check_config(!leaf_bias || mode == tree_mode::leaf_only, name,
                             ": leaf biases need mode leaf_only (path_sum has no single leaf output)");
        const int sd = layout_.subtree_depth(), L = layout_.split();
        const bool ps = mode_ == tree_mode::path_sum;
        top_units_ = ps ? tree::internal_count(L) : 0;
        top_routers_ = ps ? 0 : tree::internal_count(L);
        sub_units_ = ps ? tree::node_count(sd) : tree::leaf_count(sd);
        sub_routers_ = ps ? 0 : tree::internal_count(sd);
        units_per_tree_ = top_units_ + layout_.owned() * sub_units_;
        routers_per_tree_ = top_routers_ + layout_.owned() * sub_routers_;
        u_stride_ = detail::block_stride<Scalar>(detail::checked_mul(width_, in_, name, "hidden block size"), name, "hidden block size");
        a_stride_ = detail::block_stride<Scalar>(width_, name, "hidden bias size");
        v_stride_ = detail::block_stride<Scalar>(detail::checked_mul(out_, width_, name, "output block size"), name, "output block size");
        r_stride_ = detail::block_stride<Scalar>(in_, name, "router size");
        b_stride_ = has_leaf_bias_ ? detail::block_stride<Scalar>(out_, name, "leaf bias size") : 0;
        const index_t units = trees_ * units_per_tree_, routers = trees_ * routers_per_tree_;
        U_ = buffer(units * u_stride_);
        A_ = buffer(units * a_stride_);
        V_ = buffer(units * v_stride_);
        R_ = buffer(routers * r_stride_);
        S_ = buffer(routers);
        c_ = buffer(has_output_bias_ ? out_ : 0);
        B_ = buffer(units * b_stride_);
    }

    sharded_tree_feedforward(const sharded_tree_feedforward&) = delete;
    sharded_tree_feedforward& operator=(const sharded_tree_feedforward&) = delete;
    /// A moved-from layer holds no units; every call on it raises usage_error on every rank.
    sharded_tree_feedforward(sharded_tree_feedforward&&) noexcept = default;
    sharded_tree_feedforward& operator=(sharded_tree_feedforward&&) noexcept = default;

    /// Every rank owns at least one subtree of units, so a layer that holds none was moved from.
    bool live() const noexcept { return V_.size() != 0; }

    const mpi::layout& layout() const noexcept { return layout_; }
    index_t in_size() const noexcept { return in_; }
    index_t out_size() const noexcept { return out_; }
    tree_mode mode() const noexcept { return mode_; }
    MPI_Comm comm() const noexcept { return comm_; }
    index_t width() const noexcept { return width_; }
    int depth() const noexcept { return depth_; }
    index_t tree_count() const noexcept { return trees_; }
    activation activation_kind() const noexcept { return act_; }
    tie_rule tie() const noexcept { return tie_; }
    bool has_output_bias() const noexcept { return has_output_bias_; }
    bool has_leaf_bias() const noexcept { return has_leaf_bias_; }

    /// Units and routers this rank holds, all trees (local index l = t * per tree + local in t).
    index_t local_unit_count() const noexcept { return trees_ * units_per_tree_; }
    index_t local_router_count() const noexcept { return trees_ * routers_per_tree_; }
    /// Per tree: units (routers) of the replicated levels, then of each owned subtree.
    index_t units_per_tree() const noexcept { return units_per_tree_; }
    index_t replicated_units() const noexcept { return top_units_; }
    index_t subtree_units() const noexcept { return sub_units_; }
    index_t routers_per_tree() const noexcept { return routers_per_tree_; }
    index_t replicated_routers() const noexcept { return top_routers_; }
    index_t subtree_routers() const noexcept { return sub_routers_; }

    /// Local unit l's blocks as the engine's unit step reads them (exec/ff_units.hpp).
    exec::ff_unit<Scalar> local_unit(index_t l) const noexcept {
        return {U_.data() + l * u_stride_, A_.data() + l * a_stride_, V_.data() + l * v_stride_,
                has_leaf_bias_ ? B_.data() + l * b_stride_ : nullptr, in_, out_, width_, act_, tie_};
    }
    /// Its blocks for an optimizer: U (width x in), a, V (out x width), the leaf bias (out).
    Scalar* hidden_weight_data(index_t l) noexcept { return U_.data() + l * u_stride_; }
    Scalar* hidden_bias_data(index_t l) noexcept { return A_.data() + l * a_stride_; }
    Scalar* output_weight_data(index_t l) noexcept { return V_.data() + l * v_stride_; }
    Scalar* leaf_bias_data(index_t l) noexcept { return has_leaf_bias_ ? B_.data() + l * b_stride_ : nullptr; }
    Scalar* output_bias_data() noexcept { return has_output_bias_ ? c_.data() : nullptr; }
    const Scalar* output_bias_data() const noexcept { return has_output_bias_ ? c_.data() : nullptr; }
    /// Local router l: its weights (in) and bias.
    Scalar* router_weight_data(index_t l) noexcept { return R_.data() + l * r_stride_; }
    Scalar* router_bias_data(index_t l) noexcept { return S_.data() + l; }
    const Scalar* router_weight_data(index_t l) const noexcept { return R_.data() + l * r_stride_; }
    const Scalar* router_bias_data(index_t l) const noexcept { return S_.data() + l; }
    /// Route bit of local router l for the example at x (under the layer's tie rule).
    int route_bit(index_t l, const Scalar* x) const noexcept {
        return hyperplane_bit<Policy>(in_, R_.data() + l * r_stride_, S_.data()[l], x, tie_);
    }

    /// Bytes of this rank's weights, and of one process holding every tree whole.
    index_t memory_bytes() const noexcept {
        return U_.bytes() + A_.bytes() + V_.bytes() + R_.bytes() + S_.bytes() + c_.bytes() + B_.bytes();
    }
    index_t full_memory_bytes() const noexcept {
        const bool ps = mode_ == tree_mode::path_sum;
        const index_t units = ps ? tree::node_count(depth_) : tree::leaf_count(depth_);
        const index_t routers = ps ? 0 : tree::internal_count(depth_);
        return (trees_ * (units * (u_stride_ + a_stride_ + v_stride_ + b_stride_) + routers * (r_stride_ + 1)) +
                (has_output_bias_ ? out_ : 0)) *
               index_t(sizeof(Scalar));
    }

    /// Calls f(tree, whole-tree unit index, local unit) for every unit this rank holds, and
    /// g(tree, whole-tree router index, local router) for every router.
    template <class F, class G>
    void for_each_local(F&& f, G&& g) const {
        const index_t first = layout_.first_owned();
        for (index_t t = 0; t < trees_; ++t) {
            for (index_t i = 0; i < top_units_; ++i) f(t, i, unit(t, i));
            for (index_t i = 0; i < top_routers_; ++i) g(t, i, router(t, i));
            for (index_t st = 0; st < layout_.owned(); ++st) {
                for (index_t k = 0; k < sub_units_; ++k) {
                    const index_t whole = mode_ == tree_mode::path_sum ? layout_.global_node(first + st, k)
                                                                      : ((first + st) << layout_.subtree_depth()) + k;
                    f(t, whole, unit(t, top_units_ + st * sub_units_ + k));
                }
                for (index_t k = 0; k < sub_routers_; ++k)
                    g(t, layout_.global_node(first + st, k), router(t, top_routers_ + st * sub_routers_ + k));
            }
        }
    }

    /// The draws tree_feedforward::initialize(seed) gives the whole layer, each block from its
    /// own stream, so each rank fills its part alone.
    void initialize(std::uint64_t seed) noexcept {
        const bool ps = mode_ == tree_mode::path_sum;
        const index_t units = ps ? tree::node_count(depth_) : tree::leaf_count(depth_);
        const index_t routers = ps ? 0 : tree::internal_count(depth_);
        const double b_in = 1.0 / std::sqrt(static_cast<double>(in_));
        const double b_out = 1.0 / std::sqrt(static_cast<double>(width_)) / (ps ? std::sqrt(static_cast<double>(depth_ + 1)) : 1.0);
        for_each_local(
            [&](index_t t, index_t i, index_t l) {
                const auto s = static_cast<std::uint64_t>(8 * (t * units + i));
                treegate::detail::fill_uniform(U_.data() + l * u_stride_, width_ * in_, b_in, seed, s);
                treegate::detail::fill_uniform(A_.data() + l * a_stride_, width_, b_in, seed, s + 1);
                treegate::detail::fill_uniform(V_.data() + l * v_stride_, out_ * width_, b_out, seed, s + 2);
                if (has_leaf_bias_) treegate::detail::fill_uniform(B_.data() + l * b_stride_, out_, b_out, seed, s + 5);
            },
            [&](index_t t, index_t i, index_t l) {
                const auto s = static_cast<std::uint64_t>(8 * (t * routers + i) + 3);
                treegate::detail::fill_uniform(R_.data() + l * r_stride_, in_, b_in, seed, s);
                treegate::detail::fill_uniform(S_.data() + l, 1, b_in, seed, s + 1);
            });
        if (has_output_bias_) treegate::detail::fill_uniform(c_.data(), out_, b_out, seed, ~std::uint64_t{0});
    }

    /// Takes this rank's part of a whole layer of the same configuration (config_error if not).
    template <int I, int O, int W, int D, class P>
    void copy_from(const tree_feedforward<Scalar, I, O, W, D, P>& full) {
        detail::check_config(full.in_size() == in_ && full.out_size() == out_ && full.width() == width_ &&
                                 full.depth() == depth_ && full.tree_count() == trees_ && full.mode() == mode_ &&
                                 full.activation_kind() == act_ && full.has_output_bias() == has_output_bias_ &&
                                 full.tie() == tie_ && full.has_leaf_bias() == has_leaf_bias_,
                             name, ": copy_from needs a tree_feedforward of the same sizes, trees, mode, activation, biases "
                             "and tie rule; it has tie rule ", to_string(full.tie()), " and leaf biases ",
                             full.has_leaf_bias() ? "on" : "off", ", this layer ", to_string(tie_), " and ",
                             has_leaf_bias_ ? "on" : "off");
        for_each_local(
            [&](index_t t, index_t i, index_t l) {
                umap(U_.data() + l * u_stride_, width_, in_) = full.hidden_weight(t, i);
                umap(A_.data() + l * a_stride_, width_, 1) = full.hidden_bias(t, i);
                umap(V_.data() + l * v_stride_, out_, width_) = full.output_weight(t, i);
                if (has_leaf_bias_) umap(B_.data() + l * b_stride_, out_, 1) = full.leaf_bias(t, i);
            },
            [&](index_t t, index_t i, index_t l) {
                umap(R_.data() + l * r_stride_, in_, 1) = full.router_weight(t, i);
                S_.data()[l] = full.router_bias(t, i);
            });
        if (has_output_bias_) umap(c_.data(), out_, 1) = full.output_bias();
    }

    /// Y = layer(X) for this rank's examples; Y may overlap X (X is then copied first, as the
    /// whole layer does). Collective.
    void forward_batch(const Eigen::Ref<const batch>& X, Eigen::Ref<batch> Y, exchange_workspace<Scalar>& ws) const {
        agree(comm_, [&] {
            detail::check_live(name, live());
            detail::check_batch(name, in_, X.rows(), X.cols(), out_, Y.rows(), Y.cols());
        });
        if (detail::overlaps(X, Y)) {
            auto copy = ws.local.input.view(X.rows(), X.cols());
            copy = X;
            run(copy, Y, ws);
        } else {
            run(X, Y, ws);
        }
    }

private:
    void run(const Eigen::Ref<const batch>& X, Eigen::Ref<batch> Y, exchange_workspace<Scalar>& ws) const {
        const index_t n = X.cols();
        if (has_output_bias_)
            Y.colwise() = Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>>(c_.data(), out_);
        else
            Y.setZero();
        if (fused()) return fused_forward(X, Y, ws);
        const int L = layout_.split(), sd = layout_.subtree_depth();
        for (index_t t = 0; t < trees_; ++t) {
            // The replicated levels, then each example's node on level L (exec::codes_at_split).
            ws.local.codes.assign(static_cast<std::size_t>(n), 0);
            if (L > 0 && n > 0) {
                exec::walk_levels(ws.local.levels, ws.local.bits, n, L - 1, [&](int level, index_t k, group_range r, const index_t* order, unsigned char* bits) {
                    visit(t, 0, level, tree::level_begin(level) + k, r, order, bits, X, Y, ws.local);
                });
                exec::codes_at_split(ws.local, L, sd);
            }
            ws.send(comm_, layout_, X, &Y);
            const index_t m = ws.received();
            auto Xs = ws.sorted_input.view(in_, m);
            auto Ys = ws.sorted_output.view(out_, m);
            ws.sort_received(layout_, in_, out_, Xs, Ys);
            for (index_t st = 0; st < layout_.owned(); ++st) {
                const index_t b = ws.subtree_begin[static_cast<std::size_t>(st)], e = ws.subtree_begin[static_cast<std::size_t>(st + 1)];
                if (b == e) continue;
                const auto Xt = Xs.middleCols(b, e - b);
                auto Yt = Ys.middleCols(b, e - b);
                exec::walk_levels(ws.local.levels, ws.local.bits, e - b, sd, [&](int level, index_t k, group_range r, const index_t* order, unsigned char* bits) {
                    visit(t, st + 1, level, tree::level_begin(level) + k, r, order, bits, Xt, Yt, ws.local);
                });
            }
            ws.send_back(comm_, out_, Ys, Y);
        }
    }

    // Width-1 path_sum (UltraFastBERT): the whole layer runs the fused schedule (exec/
    // fused_paths.hpp), which routes a path and then adds its D+1 terms to y in one
    // Policy::axpy_many. So here too: the replicated levels route locally, and x, y so far and
    // their act(pre) values travel to the owner, which routes its subtree and makes the same
    // axpy_many over all D+1 levels (the replicated V are on every rank) into that y.
    bool fused() const noexcept { return width_ == 1 && mode_ == tree_mode::path_sum; }

    using fused_view = treegate::detail::fused_tree<Scalar, Policy>;
    static constexpr int group = fused_view::group;
    static constexpr std::size_t levels_max = fused_view::levels_max;

    // The fused view of tree t's units from local unit `first` on: route() reads node k there.
    fused_view fused_at(index_t t, index_t first) const noexcept {
        const index_t g = unit(t, first);
        return {in_, out_, depth_, act_, U_.data() + g * u_stride_, A_.data() + g * a_stride_, V_.data() + g * v_stride_,
                u_stride_, a_stride_, v_stride_, tie_};
    }

    void fused_forward(const Eigen::Ref<const batch>& X, Eigen::Ref<batch> Y, exchange_workspace<Scalar>& ws) const {
        const index_t n = X.cols();
        const int L = layout_.split(), sd = layout_.subtree_depth();
        const Scalar* xs[group];
        for (index_t t = 0; t < trees_; ++t) {
            // Per example: y so far (out rows), then act(pre) of the replicated levels (L rows).
            auto T = ws.top_output.view(out_ + L, n);
            // One rank owns every subtree: its examples stay where they are, unpacked.
            const bool alone = layout_.ranks() == 1;
            if (!alone) T.topRows(out_) = Y;
            ws.local.codes.assign(static_cast<std::size_t>(n), 0);
            if (L > 0) {
                const fused_view top = fused_at(t, 0);
                for (index_t g0 = 0; g0 < n; g0 += group) {
                    const int m = static_cast<int>(std::min<index_t>(group, n - g0));
                    typename fused_view::paths p;
                    for (int k = 0; k < m; ++k) xs[k] = X.data() + (g0 + k) * X.outerStride();
                    top.route(m, xs, 0, L, p);
                    for (int k = 0; k < m; ++k) {
                        const auto kk = static_cast<std::size_t>(k);
                        for (int j = 0; j < L; ++j) T(out_ + j, g0 + k) = p.alpha[kk * levels_max + static_cast<std::size_t>(j)];
                        ws.local.codes[static_cast<std::size_t>(g0 + k)] =
                            static_cast<leaf_t>((p.node[kk] - tree::level_begin(L)) << sd);
                    }
                }
            }
            if (alone) {
                ws.keep_local(n);
                const int sd_ = sd;
                exec::counting_sort(
                    n, layout_.owned(), [&](index_t e) { return static_cast<index_t>(ws.local.codes[static_cast<std::size_t>(e)] >> sd_); },
                    ws.send_order, ws.send_begin);
                const index_t* col = ws.send_order.data();
                for (index_t st = 0; st < layout_.owned(); ++st) {
                    const index_t b = ws.send_begin[static_cast<std::size_t>(st)], e = ws.send_begin[static_cast<std::size_t>(st + 1)];
                    if (b < e)
                        finish_subtree(
                            t, st, e - b, [&](index_t i) { return X.data() + col[b + i] * X.outerStride(); },
                            [&](index_t i) { return Y.data() + col[b + i] * Y.outerStride(); },
                            [&](index_t i, int j) { return T(out_ + j, col[b + i]); }, ws);
                }
                continue;
            }
            ws.send(comm_, layout_, X, &T);
            const index_t m = ws.received();
            auto Xs = ws.sorted_input.view(in_, m);
            auto Bs = ws.sorted_output.view(out_ + L, m);
            ws.sort_received(layout_, in_, out_ + L, Xs, Bs);
            for (index_t st = 0; st < layout_.owned(); ++st) {
                const index_t b = ws.subtree_begin[static_cast<std::size_t>(st)], e = ws.subtree_begin[static_cast<std::size_t>(st + 1)];
                if (b < e)
                    finish_subtree(
                        t, st, e - b, [&](index_t i) { return Xs.data() + (b + i) * in_; },
                        [&](index_t i) { return Bs.data() + (b + i) * (out_ + L); },
                        [&](index_t i, int j) { return Bs(out_ + j, b + i); }, ws);
            }
            const auto done = Bs.topRows(out_);
            ws.send_back(comm_, out_, done, Y);
        }
    }

    // The deep levels' weights a subtree's sorted pass keeps in L2 (as tree_feedforward's).
    static constexpr std::size_t fused_subtree_bytes = std::size_t{512} << 10;

    // The owner's part of the fused path for the n examples of owned subtree st: example i's
    // input at x(i), its y so far at y(i), act(pre) of replicated level j in a(i, j). As the whole layer's
    // sorted path: when the subtree's weights overflow L2 and it has at least 8 examples per
    // part, its first s levels are routed for all examples, which are then sorted by the node
    // reached on level L + s, so that each part's weights serve its examples while they stay
    // in L2. Each example's arithmetic does not depend on its group, so the bits do not change.
    template <class XAt, class YAt, class AAt>
    void finish_subtree(index_t t, index_t st, index_t n, XAt&& x, YAt&& y, AAt&& a, exchange_workspace<Scalar>& ws) const {
        const int L = layout_.split(), sd = layout_.subtree_depth();
        const index_t root = layout_.first_owned() + st;
        fused_view sub = fused_at(t, top_units_ + st * sub_units_);
        fused_view part = sub;
        part.depth = sd;
        int s = part.split(fused_subtree_bytes);
        if (n < (index_t{8} << s)) s = 0;
        auto top = ws.local.route_activations.view(std::max(s, 1), n);
        ws.local.codes.assign(static_cast<std::size_t>(n), 0);
        const Scalar* xs[group];
        Scalar* ys[group];
        typename fused_view::paths p;
        if (s > 0) {
            for (index_t g0 = 0; g0 < n; g0 += group) {
                const int m = static_cast<int>(std::min<index_t>(group, n - g0));
                for (int k = 0; k < m; ++k) xs[k] = x(g0 + k), p.node[static_cast<std::size_t>(k)] = 0;
                sub.route(m, xs, L, L + s, p);
                for (int k = 0; k < m; ++k) {
                    const auto kk = static_cast<std::size_t>(k);
                    for (int j = 0; j < s; ++j) top(j, g0 + k) = p.alpha[kk * levels_max + static_cast<std::size_t>(L + j)];
                    ws.local.codes[static_cast<std::size_t>(g0 + k)] = static_cast<leaf_t>(p.node[kk] - tree::level_begin(s));
                }
            }
        }
        ws.local.leaves.build(ws.local.codes.data(), n, s);
        const index_t* order = ws.local.leaves.order();
        for (index_t k = 0; k < (index_t{1} << s); ++k) {
            const group_range r = ws.local.leaves.node_range(s, k);
            for (index_t g0 = r.begin; g0 < r.end; g0 += group) {
                const int m = static_cast<int>(std::min<index_t>(group, r.end - g0));
                for (int q = 0; q < m; ++q) {
                    const auto kk = static_cast<std::size_t>(q);
                    const index_t ex = order[g0 + q];
                    xs[q] = x(ex);
                    ys[q] = y(ex);
                    for (int j = 0; j < L; ++j) {
                        const index_t node = tree::level_begin(j) + (root >> (L - j));
                        p.alpha[kk * levels_max + static_cast<std::size_t>(j)] = a(ex, j);
                        p.v[kk * levels_max + static_cast<std::size_t>(j)] = V_.data() + unit(t, node) * v_stride_;
                    }
                    for (int j = 0; j < s; ++j) {
                        const index_t node = tree::level_begin(j) + (k >> (s - j));
                        p.alpha[kk * levels_max + static_cast<std::size_t>(L + j)] = top(j, ex);
                        p.v[kk * levels_max + static_cast<std::size_t>(L + j)] = sub.V + node * v_stride_;
                    }
                    p.node[kk] = tree::level_begin(s) + k;
                }
                sub.route(m, xs, L + s, depth_ + 1, p);
                sub.accumulate(m, p, ys, L + s + 1);  // one part of one subtree: its top path is shared
            }
        }
    }

    static mpi::layout make_layout(MPI_Comm comm, int depth, int split) {
        const int ranks = comm_size(comm), rank = comm_rank(comm);
        return split < 0 ? mpi::layout::automatic(name, depth, ranks, rank) : mpi::layout(name, depth, ranks, rank, split);
    }
    treegate::detail::aligned_buffer<Scalar> buffer(index_t n) const { return treegate::detail::aligned_buffer<Scalar>(n, name); }
    static Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>> umap(Scalar* p, index_t r, index_t c) { return {p, r, c}; }

    index_t unit(index_t t, index_t local) const noexcept { return t * units_per_tree_ + local; }
    index_t router(index_t t, index_t local) const noexcept { return t * routers_per_tree_ + local; }

    // One visited node of tree t: `part` 0 is the replicated levels, st + 1 owned subtree st;
    // `node` is the heap index inside that part. Writes each example's route bit.
    template <class XRef, class YRef>
    void visit(index_t t, index_t part, int level, index_t node, group_range r, const index_t* order, unsigned char* bits,
               const XRef& X, YRef& Y, workspace<Scalar>& ws) const {
        const bool ps = mode_ == tree_mode::path_sum;
        const bool leaf = !ps && part > 0 && level == layout_.subtree_depth();
        if (ps || leaf) {
            const index_t local = part == 0 ? node : top_units_ + (part - 1) * sub_units_ + (leaf ? node - tree::level_begin(level) : node);
            unit_group(unit(t, local), r, order, bits, X, Y, ws);
            return;
        }
        const index_t g = router(t, part == 0 ? node : top_routers_ + (part - 1) * sub_routers_ + node);
        for (index_t p = r.begin; p < r.end; ++p) bits[p] = static_cast<unsigned char>(route_bit(g, X.data() + order[p] * X.outerStride()));
    }

    // The grouped unit step of tree_feedforward's forward (exec/ff_units.hpp), so that a path
    // gives the same bits.
    template <class XRef, class YRef>
    void unit_group(index_t g, group_range r, const index_t* order, unsigned char* bits, const XRef& X, YRef& Y,
                    workspace<Scalar>& ws) const {
        exec::ff_unit_group<Policy>(local_unit(g), r, order, bits, X, Y, ws);
    }

    MPI_Comm comm_;
    mpi::layout layout_;
    index_t in_, out_, width_;
    int depth_;
    index_t trees_;
    activation act_;
    tree_mode mode_;
    tie_rule tie_;
    bool has_output_bias_, has_leaf_bias_;
    index_t top_units_ = 0, top_routers_ = 0, sub_units_ = 0, sub_routers_ = 0, units_per_tree_ = 0, routers_per_tree_ = 0;
    index_t u_stride_ = 0, a_stride_ = 0, v_stride_ = 0, r_stride_ = 0, b_stride_ = 0;
    treegate::detail::aligned_buffer<Scalar> U_, A_, V_, R_, S_, c_, B_;
};

}  // namespace treegate::mpi

#endif
