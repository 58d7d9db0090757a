// bench/roofline/cases.hpp — the standard cases (README, "Benchmarks"): layers, fixed-seed inputs, bytes model, case lines.
// Part of bench/roofline: above machine.hpp; run.hpp times these cases and hash.hpp hashes their outputs.
#ifndef TREEGATE_ROOFLINE_CASES_HPP
#define TREEGATE_ROOFLINE_CASES_HPP

#include "machine.hpp"

#include <treegate/layers/tree_feedforward.hpp>
#include <treegate/layers/tree_linear.hpp>
#include <treegate/routing.hpp>
#include <treegate/schedule.hpp>
#include <treegate/tree.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace roofline {

using treegate::tree_mode;

struct routing_stats {
    std::vector<index_t> visited;  // distinct nodes per level
    double examples = 0;
};

/// Levels 0..k count as cached, k the largest with levels 0..k fitting half the LLC (-1: none).
inline int cached_levels(const std::vector<double>& level_bytes, double llc) {
    double sum = 0;
    int k = -1;
    for (std::size_t j = 0; j < level_bytes.size(); ++j) {
        sum += level_bytes[j];
        if (sum > llc / 2) break;
        k = static_cast<int>(j);
    }
    return k;
}


/// A case's measured figures; negative baselines are absent.
struct case_figures {
    double ms = 0, flops = 0, bytes = 0, bytes_eff = 0;
    double cached_eff = 0;  // weight bytes read from the levels the effective LLC holds
    double dense_ms = -1;  // dense layer of the same parameter count, on the fastest GEMM
    std::string dense_by;
    double dense_ff_ms = -1;  // UF-fff: the dense feed-forward the tree replaces
    std::string dense_ff_by;
    double speedup_vs_float = -1;
    double eigen_loop_ms = -1;  // UF-fff: the per-example Eigen loop
};

inline void print_line(const char* name, const case_figures& f, const machine& m) {
    const double roof_ms = std::max(f.flops / m.peak_flops, f.bytes / m.peak_bw) * 1e3;
    const double roof_eff_ms = std::max(f.flops / m.peak_flops, f.bytes_eff / m.peak_bw) * 1e3;
    // An explanation beside the standard model: the effective LLC's levels are not free but read
    // at that cache's measured rate (a single core's L3 stream is far below its L2 rate).
    const double roof_tier_ms =
        std::max(f.flops / m.peak_flops, f.bytes_eff / m.peak_bw + (m.llc_bw > 0 ? f.cached_eff / m.llc_bw : 0.0)) * 1e3;
    std::printf("case=%s ms=%.4g roofline_ms=%.4g ratio=%.3f vs_dense_equal_params=%.1f", name, f.ms, roof_ms, f.ms / roof_ms,
                f.dense_ms / f.ms);
    if (f.dense_ff_ms > 0) std::printf(" vs_dense_ff=%.1f", f.dense_ff_ms / f.ms);
    if (f.speedup_vs_float > 0) std::printf(" speedup_vs_float=%.2f", f.speedup_vs_float);
    if (f.eigen_loop_ms > 0) std::printf(" vs_eigen_loop=%.2f", f.eigen_loop_ms / f.ms);
    std::printf(" roofline_eff_ms=%.4g ratio_eff=%.3f roofline_tiered_ms=%.4g ratio_tiered=%.3f\n", roof_eff_ms,
                f.ms / roof_eff_ms, roof_tier_ms, f.ms / roof_tier_ms);
    std::printf("  %s: flops=%.4g bytes=%.4g (compute %.4g ms, memory %.4g ms: %s-bound); bytes under the effective LLC %.4g\n",
                name, f.flops, f.bytes, f.flops / m.peak_flops * 1e3, f.bytes / m.peak_bw * 1e3,
                f.flops / m.peak_flops > f.bytes / m.peak_bw ? "compute" : "memory", f.bytes_eff);
    std::printf("  %s: dense_equal_params %.4g ms (%s)", name, f.dense_ms, f.dense_by.c_str());
    if (f.dense_ff_ms > 0) std::printf(", dense_ff %.4g ms (%s)", f.dense_ff_ms, f.dense_ff_by.c_str());
    if (f.eigen_loop_ms > 0) std::printf(", eigen_loop %.4g ms", f.eigen_loop_ms);
    std::printf("\n");
    std::fflush(stdout);
    record r;
    r.set("case", name).set("ms", f.ms).set("roofline_ms", roof_ms).set("ratio", f.ms / roof_ms);
    r.set("vs_dense_equal_params", f.dense_ms / f.ms);
    if (f.dense_ff_ms > 0) r.set("vs_dense_ff", f.dense_ff_ms / f.ms);
    if (f.speedup_vs_float > 0) r.set("speedup_vs_float", f.speedup_vs_float);
    if (f.eigen_loop_ms > 0) r.set("vs_eigen_loop", f.eigen_loop_ms / f.ms);
    r.set("roofline_eff_ms", roof_eff_ms).set("ratio_eff", f.ms / roof_eff_ms);
    r.set("roofline_tiered_ms", roof_tier_ms).set("ratio_tiered", f.ms / roof_tier_ms).set("cached_eff", f.cached_eff);
    r.set("flops", f.flops).set("bytes", f.bytes).set("bytes_eff", f.bytes_eff);
    r.set("compute_ms", f.flops / m.peak_flops * 1e3).set("memory_ms", f.bytes / m.peak_bw * 1e3);
    r.set("peak_flops", m.peak_flops).set("peak_bw", m.peak_bw);
    r.set("dense_equal_params_ms", f.dense_ms).set("dense_equal_params_by", f.dense_by);
    if (f.dense_ff_ms > 0) r.set("dense_ff_ms", f.dense_ff_ms).set("dense_ff_by", f.dense_ff_by);
    if (f.eigen_loop_ms > 0) r.set("eigen_loop_ms", f.eigen_loop_ms);
    g_report.cases.push_back(std::move(r));
}

inline void print_routing(const char* name, const routing_stats& r) {
    std::printf("  routing %s: visited nodes per level =", name);
    index_t total = 0;
    for (std::size_t j = 0; j < r.visited.size(); ++j) {
        std::printf("%s%ld", j ? "," : " ", static_cast<long>(r.visited[j]));
        total += r.visited[j];
    }
    std::printf("; mean examples per visited node = %.2f\n",
                r.examples * static_cast<double>(r.visited.size()) / static_cast<double>(total));
}

/// Checks got against want: a wrong block or route is off by O(1); rounding is ~1e-5 here.
inline void check_close(const char* name, const matf& got, const matf& want) {
    const double err = static_cast<double>((got - want).cwiseAbs().maxCoeff());
    const double scale = 1.0 + static_cast<double>(want.cwiseAbs().maxCoeff());
    if (!(err <= 1e-3 * scale))
        fail(std::string("case ") + name + ": output disagrees with the reference policy (max error " +
             std::to_string(err) + ", scale " + std::to_string(scale) + ")");
}

// ---- tree_linear cases -------------------------------------------------------------------------

template <class P>
using tl = treegate::tree_linear<float, treegate::dynamic, treegate::dynamic, treegate::dynamic, P>;

struct tl_spec {
    const char* name;
    index_t in, out;
    int depth;
    tree_mode mode;
    index_t batch;  // 1: latency case, 256 distinct inputs, one per call
};

inline std::vector<index_t> gating_units(int depth) {
    std::vector<index_t> idx(static_cast<std::size_t>(depth));
    std::iota(idx.begin(), idx.end(), index_t{0});
    return idx;
}

/// Distinct nodes per level reached by the examples with these leaf codes: the library's
/// leaf_schedule groups them exactly as the layers' batched paths do, so a node is visited
/// when its group is not empty.
inline routing_stats visited_nodes(const std::vector<leaf_t>& codes, int depth) {
    treegate::leaf_schedule sched;
    sched.build(codes.data(), static_cast<index_t>(codes.size()), depth);
    routing_stats r;
    for (int j = 0; j <= depth; ++j) {
        index_t n = 0;
        for (index_t k = 0; k < treegate::tree::leaf_count(j); ++k) n += sched.node_range(j, k).empty() ? 0 : 1;
        r.visited.push_back(n);
    }
    r.examples = static_cast<double>(codes.size());
    return r;
}

/// A tree_linear layer's routing of the batch X: each example's leaf code from the layer's
/// gating units (route_by_indices, as the layer routes).
template <class Layer>
routing_stats route_stats(const Layer& layer, const matf& X) {
    std::vector<leaf_t> codes(static_cast<std::size_t>(X.cols()));
    for (index_t e = 0; e < X.cols(); ++e)
        codes[static_cast<std::size_t>(e)] =
            treegate::route_by_indices(X.col(e).data(), layer.gates().indices().data(), layer.depth());
    return visited_nodes(codes, layer.depth());
}

/// A tree_feedforward layer's routing of X: the sign of each node's own pre-activation picks
/// the child, so the gate values are only known along the path; route_by_gates turns them
/// into the leaf code.
template <class Layer>
routing_stats fff_route_stats(const Layer& layer, const matf& X) {
    const int depth = layer.depth();
    std::vector<leaf_t> codes(static_cast<std::size_t>(X.cols()));
    std::vector<float> pre(static_cast<std::size_t>(std::max(depth, 1)));
    for (index_t e = 0; e < X.cols(); ++e) {
        index_t node = 0;
        for (int j = 0; j < depth; ++j) {
            const float p = layer.hidden_weight(0, node).row(0).dot(X.col(e).transpose()) + layer.hidden_bias(0, node)(0);
            pre[static_cast<std::size_t>(j)] = p;
            node = treegate::tree::child(node, treegate::tree::gate_bit(p));
        }
        codes[static_cast<std::size_t>(e)] = treegate::route_by_gates(pre.data(), 1, depth);
    }
    return visited_nodes(codes, depth);
}

/// Bytes per forward pass: the uncached visited blocks (and biases) plus activations.
/// `weight_size`: bytes per stored weight (4 for float, 2 for bf16; biases are float).
template <class Layer>
double tl_bytes(const Layer& layer, const matf& X, index_t batch, double llc, const char* model, double weight_size = 4.0,
                double* cached = nullptr) {
    const int D = layer.depth();
    const bool ps = layer.mode() == tree_mode::path_sum;
    const double block = weight_size * static_cast<double>(layer.in_size() * layer.out_size()) +
                         4.0 * static_cast<double>(layer.has_bias() ? layer.out_size() : 0);
    std::vector<double> level_bytes(static_cast<std::size_t>(D + 1), 0.0);
    for (int j = 0; j <= D; ++j)
        if (ps || j == D) level_bytes[static_cast<std::size_t>(j)] = block * std::ldexp(1.0, j);
    const int k = cached_levels(level_bytes, llc);
    // Blocks read per pass at each level: one per stored level for a single input (the path),
    // else the visited nodes; levels 0..k are the cached ones.
    const routing_stats r = batch == 1 ? routing_stats{} : route_stats(layer, X);
    double blocks = 0, cached_blocks = 0;
    for (int j = 0; j <= D; ++j) {
        if (level_bytes[static_cast<std::size_t>(j)] <= 0) continue;
        const double read = batch == 1 ? 1.0 : static_cast<double>(r.visited[static_cast<std::size_t>(j)]);
        (j <= k ? cached_blocks : blocks) += read;
    }
    if (cached != nullptr) *cached = cached_blocks * block;
    if (ps)
        std::printf("  cached levels 0..%d (half %s LLC = %.1f MiB)\n", k, model, llc / 2 / (1 << 20));
    else
        std::printf("  leaf table %s half the %s LLC (%.1f MiB): %s\n", k == D ? "fits" : "exceeds", model, llc / 2 / (1 << 20),
                    k == D ? "counted as cached" : "every visited leaf counted");
    return blocks * block + 4.0 * static_cast<double>(batch * (layer.in_size() + layer.out_size()));
}

/// Output of `layer` on the first `sample` examples of X (single-example path for batch 1).
template <class Layer>
matf sample_output(const Layer& layer, const matf& X, index_t batch, index_t sample) {
    if (batch == 1) {
        matf Y(layer.out_size(), sample);
        vecf y(layer.out_size());
        for (index_t e = 0; e < sample; ++e) {
            layer.forward(X.col(e), y);
            Y.col(e) = y;
        }
        return Y;
    }
    const matf Y = layer.forward_batch(X);
    return Y.leftCols(sample);
}

/// A case's layer with the fixed seed every policy shares (hence the same weights).
template <class P>
tl<P> make_tl(const tl_spec& s) {
    tl<P> layer(s.in, s.out, s.depth, s.mode, treegate::gating::from_input(gating_units(s.depth)));
    layer.initialize(42);
    return layer;
}

/// A case's fixed-seed inputs: `batch` columns, or 256 distinct inputs for the latency case.
inline matf tl_inputs(const tl_spec& s) {
    std::mt19937 g(7);
    const index_t cols = s.batch == 1 ? 256 : s.batch;
    matf X(s.in, cols);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (index_t i = 0; i < X.size(); ++i) X.data()[i] = u(g);
    return X;
}

// ---- UF-fff ------------------------------------------------------------------------------------

template <class P>
using tff = treegate::tree_feedforward<float, treegate::dynamic, treegate::dynamic, treegate::dynamic, treegate::dynamic, P>;

// UF-fff's shape and fixed seeds (shared by the timed case and --hash).
constexpr index_t fff_in = 768, fff_out = 768, fff_batch = 16384;
constexpr int fff_depth = 11;

template <class P>
tff<P> make_fff() {
    tff<P> layer(fff_in, fff_out, 1, fff_depth);
    layer.initialize(42);
    return layer;
}

inline matf fff_inputs() {
    std::mt19937 g(9);
    matf X(fff_in, fff_batch);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (index_t i = 0; i < X.size(); ++i) X.data()[i] = u(g);
    return X;
}

/// The standard tree_linear cases (README, "Benchmarks"), in run order; UF-fff runs after PS-deep.
struct tl_case {
    tl_spec spec;
    bool flat;  // also the flattened layer (path_sum only)
    bool bf16;  // also the bf16-weight layer under --bf16
};
const tl_case tl_cases[] = {
    {{"PS-latency", 512, 512, 8, tree_mode::path_sum, 1}, true, true},
    {{"PS-batch", 512, 512, 6, tree_mode::path_sum, 1024}, true, false},
    {{"PS-deep", 256, 256, 10, tree_mode::path_sum, 256}, true, true},
    {{"LO-batch", 512, 512, 8, tree_mode::leaf_only, 1024}, false, true},
};


}  // namespace roofline

#endif  // TREEGATE_ROOFLINE_CASES_HPP
