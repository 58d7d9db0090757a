// treegate/exec/fused_paths.hpp — an execution schedule of the engine below layers/: the fused
// forward of width-1 path_sum trees (UltraFastBERT), whole paths routed first, then summed into y.
#ifndef TREEGATE_EXEC_FUSED_PATHS_HPP
#define TREEGATE_EXEC_FUSED_PATHS_HPP

#include "../activation.hpp"
#include "../config.hpp"
#include "../kernels/paths.hpp"
#include "../routing.hpp"
#include "../tree.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>

namespace treegate::detail {

// Asks for the lines of [p, p + bytes) ahead of use (a hint; no-op where the compiler lacks it):
// the next group's x and y columns, requested while the current group routes, arrive while it
// computes from the caches instead of stalling its first level.
inline void prefetch_bytes(const void* p, std::size_t bytes, bool write) noexcept {
#if defined(__GNUC__)
    const char* c = static_cast<const char*>(p);
    if (write)
        for (std::size_t b = 0; b < bytes; b += 64) __builtin_prefetch(c + b, 1, 3);
    else
        for (std::size_t b = 0; b < bytes; b += 64) __builtin_prefetch(c + b, 0, 3);
#else
    (void)p, (void)bytes, (void)write;
#endif
}

/// One tree of width-1 nodes in heap order: node i has the hidden row U + i u_stride (`in`
/// values), the bias A[i a_stride] and the output column V + i v_stride (`out` values).
///
/// Per example, y += sum_j act(pre_j) V_{p_j} over the path p_0 .. p_D, pre_j = U_{p_j} . x +
/// a_{p_j}, the sign of pre_j picking the child. The path is routed first (each dot decides the
/// next node, so the dots form a dependent chain; `group` examples are routed side by side with
/// Policy::dot_many so that their latencies overlap), then its D+1 output columns are summed
/// into y by one kernels::axpy_paths (README, "Kernel policies"), which holds chunks of the
/// group's y in registers and reads the columns the group shares once: y is read and
/// written once per tree instead of once per level. Every example's result depends only on its
/// own path, never on which examples share its group, so every caller below gives the same bits.
template <class Scalar, class Policy>
struct fused_tree {
    static constexpr int group = 8;
    static constexpr std::size_t levels_max = max_depth + 1;

    index_t in, out;
    int depth;
    activation act;
    const Scalar *U, *A, *V;
    index_t u_stride, a_stride, v_stride;
    tie_rule tie = tie_rule::greater;  // the layer's (routing.hpp)

    static std::size_t bytes(index_t values) noexcept { return static_cast<std::size_t>(values) * sizeof(Scalar); }

    /// A group's route state: per example, the current node and, per level, act(pre) and V.
    struct paths {
        std::array<index_t, group> node{};
        std::array<Scalar, group * levels_max> alpha;
        std::array<const Scalar*, group * levels_max> v;
    };

    /// Routes examples xs[0..m) (m <= group) from p.node[k] on level `from` through levels
    /// [from, to), filling p.alpha and p.v at [k * levels_max + level].
    void route(int m, const Scalar* const* xs, int from, int to, paths& p) const noexcept {
        std::array<const Scalar*, group> u{};
        std::array<Scalar, group> pre{};
        for (int level = from; level < to; ++level) {
            for (int k = 0; k < m; ++k) u[static_cast<std::size_t>(k)] = U + p.node[static_cast<std::size_t>(k)] * u_stride;
            Policy::dot_many(in, m, u.data(), xs, pre.data());
            for (int k = 0; k < m; ++k) {
                const auto kk = static_cast<std::size_t>(k);
                const index_t node = p.node[kk];
                const Scalar s = pre[kk] + A[node * a_stride];
                const std::size_t at = kk * levels_max + static_cast<std::size_t>(level);
                p.alpha[at] = apply(act, s);
                p.v[at] = V + node * v_stride;
                p.node[kk] = tree::child(node, treegate::gate_bit(s, tie));
            }
        }
    }

    /// ys[k] += the sum over example k's routed path, whose first `shared` nodes are the same
    /// for every k (at least the root): their output columns are read once for the group.
    void accumulate(int m, const paths& p, Scalar* const* ys, int shared) const noexcept {
        kernels::axpy_paths<Policy>(out, m, depth + 1, shared, p.alpha.data(), p.v.data(),
                                    static_cast<index_t>(levels_max), ys);
    }

    /// ys[k] += the tree's output for xs[k], k < m <= group.
    void forward(int m, const Scalar* const* xs, Scalar* const* ys) const noexcept {
        paths p;
        route(m, xs, 0, depth + 1, p);
        accumulate(m, p, ys, 1);
    }

    /// Levels routed before the examples are sorted by their node on level `split` (0: none).
    /// Past the first levels each example visits nodes that few others share, and reading a
    /// node's two vectors from beyond L2 for every visit makes the deep levels bound by the
    /// outer cache's bandwidth. Sorting the batch by the node reached on level `split` lets each
    /// subtree (every level from `split` down, at most `subtree_bytes` of weights) serve all
    /// of its examples while it stays in L2, at the price of reading each x twice.
    int split(std::size_t subtree_bytes) const noexcept {
        const double node = static_cast<double>((in + out + 1) * static_cast<index_t>(sizeof(Scalar)));
        int below = depth + 1;
        while (below > 1 && (std::ldexp(1.0, below) - 1.0) * node > static_cast<double>(subtree_bytes)) --below;
        return depth + 1 - below;
    }

    /// Phase 1 for examples [e0, e1) of X (column stride ldx): routes levels [0, s) and stores,
    /// per example e, act(pre_j) in alpha_top[e * s + j] and its node on level s as a code
    /// (node - level_begin(s)) in codes[e].
    void route_top(const Scalar* X, index_t ldx, index_t e0, index_t e1, int s, Scalar* alpha_top,
                   leaf_t* codes) const noexcept {
        const Scalar* xs[group];
        for (index_t g0 = e0; g0 < e1; g0 += group) {
            const int m = static_cast<int>(std::min<index_t>(group, e1 - g0));
            paths p;
            for (int k = 0; k < m; ++k) xs[k] = X + (g0 + k) * ldx;
            for (index_t k = g0 + group; k < std::min(e1, g0 + 2 * group); ++k) prefetch_bytes(X + k * ldx, bytes(in), false);
            route(m, xs, 0, s, p);
            for (int k = 0; k < m; ++k) {
                const index_t e = g0 + k;
                for (int j = 0; j < s; ++j)
                    alpha_top[e * s + j] = p.alpha[static_cast<std::size_t>(k) * levels_max + static_cast<std::size_t>(j)];
                codes[e] = static_cast<leaf_t>(p.node[static_cast<std::size_t>(k)] - tree::level_begin(s));
            }
        }
    }

    /// Phase 2 for the examples order[b..e) that all reached node `code` of level s: rebuilds
    /// their top paths from the code and the stored activations, routes the subtree, and adds
    /// the whole path's sum into their columns of Y (column stride ldy). With `init`, each
    /// column is first set to init[0..out) (the output bias of the first tree), so that Y is
    /// touched only here.
    void route_bottom(const Scalar* X, index_t ldx, Scalar* Y, index_t ldy, const index_t* order, index_t b, index_t e,
                      int s, leaf_t code, const Scalar* alpha_top, const Scalar* init, bool zero) const noexcept {
        const Scalar* xs[group];
        Scalar* ys[group];
        for (index_t g0 = b; g0 < e; g0 += group) {
            const int m = static_cast<int>(std::min<index_t>(group, e - g0));
            paths p;
            for (int k = 0; k < m; ++k) {
                const auto kk = static_cast<std::size_t>(k);
                const index_t ex = order[g0 + k];
                xs[k] = X + ex * ldx;
                ys[k] = Y + ex * ldy;
                if (init != nullptr) std::copy(init, init + out, ys[k]);
                if (zero) std::fill(ys[k], ys[k] + out, Scalar(0));
                for (int j = 0; j < s; ++j) {
                    const index_t node = tree::level_begin(j) + static_cast<index_t>(code >> (s - j));
                    p.alpha[kk * levels_max + static_cast<std::size_t>(j)] = alpha_top[ex * s + j];
                    p.v[kk * levels_max + static_cast<std::size_t>(j)] = V + node * v_stride;
                }
                p.node[kk] = tree::level_begin(s) + static_cast<index_t>(code);
            }
            for (index_t k = g0 + group; k < std::min(e, g0 + 2 * group); ++k) {
                prefetch_bytes(X + order[k] * ldx, bytes(in), false);
                prefetch_bytes(Y + order[k] * ldy, bytes(out), true);
            }
            route(m, xs, s, depth + 1, p);
            accumulate(m, p, ys, s + 1);
        }
    }
};

}  // namespace treegate::detail

#endif
