// bench/roofline/run.hpp — times every standard case against its roofline and baselines and prints its case= line.
// Part of bench/roofline: above cases.hpp and baselines.hpp; main.cpp calls run_all for the chosen policy.
#ifndef TREEGATE_ROOFLINE_RUN_HPP
#define TREEGATE_ROOFLINE_RUN_HPP

#include "baselines.hpp"
#include "cases.hpp"

#include <treegate/kernels/reference.hpp>
#include <treegate/layers/flatten.hpp>
#include <treegate/layers/tree_linear_bf16.hpp>
#include <treegate/workspace.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace roofline {

/// One pass of a case: every input once (batch 1) or one forward_batch; returns seconds.
template <class Layer>
double tl_pass(const Layer& layer, const matf& X, index_t batch, vecf& y, matf& Y, treegate::workspace<float>& ws) {
    const double t0 = now_seconds();
    if (batch == 1) {
        for (index_t e = 0; e < X.cols(); ++e) {
            layer.forward(X.col(e), y);
            g_sink = g_sink + y(0);
        }
    } else {
        if (g_pool != nullptr)
            layer.forward_batch(X, Y, ws, *g_pool);
        else
            layer.forward_batch(X, Y, ws);
        g_sink = g_sink + Y(0, 0);
    }
    return now_seconds() - t0;
}


/// Times one tree_linear layer on its case; returns the median ms per forward pass (per input
/// for batch 1, where one pass runs every input once).
template <class Layer>
double time_tl(const Layer& layer, const matf& X, index_t batch, const options& o) {
    vecf y(layer.out_size());
    matf Y(layer.out_size(), batch);
    treegate::workspace<float> ws;
    tl_pass(layer, X, batch, y, Y, ws);  // warm-up (and workspace growth)
    const int reps = batch == 1 ? (o.quick ? 5 : 21) : (o.quick ? 3 : 9);
    std::vector<double> t;
    for (int r = 0; r < reps; ++r) t.push_back(tl_pass(layer, X, batch, y, Y, ws));
    return median_of(t) * 1e3 / (batch == 1 ? static_cast<double>(X.cols()) : 1.0);
}

/// The float case `lay` again with its weights stored as bf16 (--bf16): checked against the
/// reference policy on the same bf16 weights, then timed in alternating passes with `lay`.
template <class P, class Layer>
void bf16_variant(const Layer& lay, const char* float_name, double float_ms, const dense_time& dense, const tl_spec& s, const matf& X,
                  index_t sample, const options& o, const machine& m) {
    const std::string name = std::string(float_name) + "-bf16";
    const treegate::tree_linear_bf16<P> half(lay);
    {
        const treegate::tree_linear_bf16<treegate::kernels::reference> ref(lay);
        const matf Xs = X.leftCols(sample);
        check_close(name.c_str(), sample_output(half, X, s.batch, sample), ref.forward_batch(Xs));
    }
    const double flops = 2.0 * static_cast<double>(half.macs_per_example()) * static_cast<double>(s.batch);
    case_figures f;
    f.flops = flops;
    f.bytes = tl_bytes(half, X, s.batch, m.llc_bytes, "sysfs", 2.0);
    f.bytes_eff = tl_bytes(half, X, s.batch, m.llc_eff_bytes, "effective", 2.0, &f.cached_eff);
    f.dense_ms = dense.ms;
    f.dense_by = dense.by;
    const machine lm = case_limits(o, m);
    vecf y(lay.out_size());
    matf Y(lay.out_size(), s.batch);
    treegate::workspace<float> ws_f, ws_h;
    tl_pass(lay, X, s.batch, y, Y, ws_f);  // warm-up (and workspace growth) for both
    tl_pass(half, X, s.batch, y, Y, ws_h);
    const int reps = s.batch == 1 ? (o.quick ? 5 : 21) : (o.quick ? 3 : 9);
    std::vector<double> t_f, t_h, ratio;
    for (int r = 0; r < reps; ++r) {
        t_f.push_back(tl_pass(lay, X, s.batch, y, Y, ws_f));
        t_h.push_back(tl_pass(half, X, s.batch, y, Y, ws_h));
        ratio.push_back(t_f.back() / t_h.back());
    }
    const double per = s.batch == 1 ? 1e3 / static_cast<double>(X.cols()) : 1e3;
    const double ms = median_of(t_h) * per;
    f.ms = ms;
    f.speedup_vs_float = median_of(ratio);
    print_line(name.c_str(), f, lm);
    std::printf("  %s: %d alternating passes, median ms float %.4g, bf16 %.4g; pass ratios float/bf16 min %.2f max %.2f\n",
                name.c_str(), reps, median_of(t_f) * per, ms, *std::min_element(ratio.begin(), ratio.end()),
                *std::max_element(ratio.begin(), ratio.end()));
    // Back-to-back passes of one layer (as the float case was timed) leave part of its weights
    // in the LLC for the next pass, more of the smaller bf16 weights; shown for comparison.
    const double ms_alone = time_tl(half, X, s.batch, o);
    std::printf("  %s: back-to-back medians (as the float case above): float %.4g ms, bf16 %.4g ms, ratio %.2f\n",
                name.c_str(), float_ms, ms_alone, float_ms / ms_alone);
    std::printf("  %s: weight storage %.1f MiB (float layer %.1f MiB)\n", name.c_str(),
                static_cast<double>(half.weight_bytes()) / (1 << 20),
                4.0 * static_cast<double>(lay.block_count() * lay.in_size() * lay.out_size()) / (1 << 20));
}


template <class P>
void tree_linear_case(const tl_spec& s, bool with_flat, const options& o, const machine& m, bool with_bf16 = false) {
    const tl<P> layer = make_tl<P>(s);
    const matf X = tl_inputs(s);
    const index_t cols = X.cols();

    // Reference check on a sample (the reference layer has the same seed, hence the same weights).
    const index_t sample = std::min<index_t>(cols, 16);
    matf ref_out;
    {
        const tl<treegate::kernels::reference> ref = make_tl<treegate::kernels::reference>(s);
        const matf Xs = X.leftCols(sample);
        ref_out = ref.forward_batch(Xs);
    }
    const int dense_reps = o.quick ? 1 : 3;
    const index_t dense_cols = o.quick ? 128 : 1024;

    auto run = [&](const auto& lay, const char* name) {
        const matf got = sample_output(lay, X, s.batch, sample);
        check_close(name, got, ref_out);
        const double flops = 2.0 * static_cast<double>(lay.macs_per_example()) * static_cast<double>(s.batch);
        case_figures f;
        f.flops = flops;
        f.bytes = tl_bytes(lay, X, s.batch, m.llc_bytes, "sysfs");
        f.bytes_eff = tl_bytes(lay, X, s.batch, m.llc_eff_bytes, "effective", 4.0, &f.cached_eff);
        const machine lm = case_limits(o, m);
        f.ms = time_tl(lay, X, s.batch, o);
        const index_t eq_out = (lay.parameter_count() + s.in - 1) / s.in;
        const dense_time dense = dense_ms(s.in, eq_out, s.batch, dense_cols, dense_reps);
        f.dense_ms = dense.ms;
        f.dense_by = dense.by;
        print_line(name, f, lm);
        print_routing(name, route_stats(lay, X));
        if (with_bf16) bf16_variant<P>(lay, name, f.ms, dense, s, X, sample, o, m);
    };
    run(layer, s.name);
    if (with_flat) {
        const tl<P> flat = treegate::flatten(layer);
        const std::string name = std::string(s.name) + "-flat";
        run(flat, name.c_str());
    }
}


template <class P>
void fff_case(const options& o, const machine& m) {
    const char* name = "UF-fff";
    const index_t in = fff_in, out = fff_out, batch = fff_batch;
    const int depth = fff_depth;
    const tff<P> layer = make_fff<P>();
    const matf X = fff_inputs();

    // Check a sample against the reference policy (batched and single-example paths).
    const index_t sample = 16;
    {
        const tff<treegate::kernels::reference> ref = make_fff<treegate::kernels::reference>();
        const matf Xs = X.leftCols(sample);
        const matf want = ref.forward_batch(Xs);
        check_close(name, layer.forward_batch(Xs), want);
        matf got(out, sample);
        vecf y(out);
        for (index_t e = 0; e < sample; ++e) {
            layer.forward(X.col(e), y);
            got.col(e) = y;
        }
        check_close(name, got, want);
    }

    // Routing statistics and bytes: every example's path through the node pre-activations.
    const routing_stats r = fff_route_stats(layer, X);
    const double node_bytes = 4.0 * static_cast<double>(in + 1 + out);
    std::vector<double> level_bytes;
    for (int j = 0; j <= depth; ++j) level_bytes.push_back(node_bytes * std::ldexp(1.0, j));
    auto fff_bytes = [&](double llc, const char* model, double* cached = nullptr) {
        const int k = cached_levels(level_bytes, llc);
        double b = 4.0 * static_cast<double>(batch * (in + out));
        for (int j = k + 1; j <= depth; ++j) b += node_bytes * static_cast<double>(r.visited[static_cast<std::size_t>(j)]);
        if (cached != nullptr)
            for (int j = 0; j <= k; ++j) *cached += node_bytes * static_cast<double>(r.visited[static_cast<std::size_t>(j)]);
        std::printf("  cached levels 0..%d (half %s LLC = %.1f MiB)\n", k, model, llc / 2 / (1 << 20));
        return b;
    };
    case_figures f;
    f.bytes = fff_bytes(m.llc_bytes, "sysfs");
    f.bytes_eff = fff_bytes(m.llc_eff_bytes, "effective", &f.cached_eff);
    f.flops = 2.0 * static_cast<double>(layer.macs_per_example()) * static_cast<double>(batch);

    const machine lm = case_limits(o, m);
    matf Y(out, batch);
    treegate::workspace<float> ws;
    const int reps = o.quick ? 3 : 7;
    f.ms = median_time(reps, 1, [&] {
               if (g_pool != nullptr)
                   layer.forward_batch(X, Y, ws, *g_pool);
               else
                   layer.forward_batch(X, Y, ws);
               g_sink = g_sink + Y(0, 0);
           }) *
           1e3;

    // The same layer as a plain per-example Eigen loop over the same weights: per example, the
    // 12 dependent dot / GELU / axpy steps on mapped vectors (the batch split over the threads).
    {
        const float c_inv_sqrt2 = 0.70710678118654752f;
        matf Ye(out, batch);
        const double t = median_time(o.quick ? 1 : 3, 1, [&] {
            on_all_threads([&](index_t part) {
                const auto [b, e] = part_range(batch, part);
                for (index_t ex = b; ex < e; ++ex) {
                    const Eigen::Map<const vecf> x(X.col(ex).data(), in);
                    Eigen::Map<vecf> y(Ye.col(ex).data(), out);
                    y = layer.output_bias();
                    index_t node = 0;
                    for (int j = 0; j <= depth; ++j) {
                        const float pre = Eigen::Map<const vecf>(layer.hidden_weight(0, node).data(), in).dot(x) +
                                          layer.hidden_bias(0, node)(0);
                        y += (0.5f * pre * (1.0f + std::erf(pre * c_inv_sqrt2))) *
                             Eigen::Map<const vecf>(layer.output_weight(0, node).data(), out);
                        node = treegate::tree::child(node, treegate::tree::gate_bit(pre));
                    }
                }
            });
            g_sink = g_sink + Ye(0, 0);
        });
        f.eigen_loop_ms = t * 1e3;
        check_close("UF-fff eigen loop", Ye.leftCols(sample), Y.leftCols(sample));
    }

    // Baselines on a sub-batch, scaled: one dense layer of the same parameter count, and the
    // dense 768 -> 4095 -> 768 GELU feed-forward the tree replaces (each GEMM on the fastest
    // GEMM of the process for its shape, Eigen's vectorized erf).
    const index_t cols = o.quick ? 512 : 2048;
    const int dreps = o.quick ? 1 : 3;
    const index_t eq_out = (layer.parameter_count() + in - 1) / in;
    const dense_time dense = dense_ms(in, eq_out, batch, cols, dreps);
    f.dense_ms = dense.ms;
    f.dense_by = dense.by;
    const dense_time ff = dense_ff_ms(X, out, 4095, batch, cols, dreps);
    f.dense_ff_ms = ff.ms;
    f.dense_ff_by = ff.by;
    print_line(name, f, lm);
    print_routing(name, r);
    std::printf("  %s: dense baselines timed on %ld columns and scaled to %ld\n", name, static_cast<long>(cols),
                static_cast<long>(batch));

    // The same batch example by example (single-example forward: x and y stay in L1 while the
    // path's nodes come from the LLC), to show what an example-major batch path would give.
    vecf y(out);
    const double ms_ex = median_time(o.quick ? 1 : 3, 0, [&] {
                             for (index_t e = 0; e < batch; ++e) {
                                 layer.forward(X.col(e), y);
                                 g_sink = g_sink + y(0);
                             }
                         }) *
                         1e3;
    std::printf("  %s: example-by-example forward() over the same batch: ms=%.4g (ratio %.3f)\n", name, ms_ex,
                ms_ex / (std::max(f.flops / lm.peak_flops, f.bytes / lm.peak_bw) * 1e3));
}



template <class P>
void run_all(const options& o, const machine& m) {
    std::printf("policy=%s threads=%d clock=%s\n", P::name(), g_threads, g_cpu_time ? "thread-cpu-time" : "wall");
    g_report.run.set("policy", P::name());
    auto wanted = [&](const char* name) { return std::string(name).rfind(o.only, 0) == 0; };
    for (const tl_case& c : tl_cases) {
        if (c.spec.batch == 1 && g_threads > 1)
            std::printf("%s skipped: one example per call runs on one thread\n", c.spec.name);
        else if (wanted(c.spec.name))
            tree_linear_case<P>(c.spec, c.flat, o, m, c.bf16 && o.bf16);
        if (std::strcmp(c.spec.name, "PS-deep") == 0 && wanted("UF-fff")) fff_case<P>(o, m);
    }
}


}  // namespace roofline

#endif  // TREEGATE_ROOFLINE_RUN_HPP
