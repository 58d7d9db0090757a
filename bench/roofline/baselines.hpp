// bench/roofline/baselines.hpp — the dense baselines a case is compared with, each on the fastest GEMM for its shape.
// Part of bench/roofline: above machine.hpp (pick_gemm); run.hpp calls these beside every case.
#ifndef TREEGATE_ROOFLINE_BASELINES_HPP
#define TREEGATE_ROOFLINE_BASELINES_HPP

#include "machine.hpp"

#include <Eigen/Core>
#include <unsupported/Eigen/SpecialFunctions>

#include <algorithm>
#include <cstdio>
#include <string>

namespace roofline {

/// A dense baseline's time (ms) and the GEMM that ran it.
struct dense_time {
    double ms;
    std::string by;
};

/// Dense layer time (ms) for one forward of `batch` examples through `out x in` weights, on the
/// fastest GEMM of the process for that shape; huge baselines are timed on `cols` columns and
/// scaled linearly (GEMM time is linear in n there).
inline dense_time dense_ms(index_t in, index_t out, index_t batch, index_t cols, int reps) {
    const index_t c = std::min(batch, cols);
    if (c == 1) {
        // One column: a GEMV; Eigen's is as good as any here (memory-bound).
        matf W = matf::Constant(out, in, 0.01f), X = matf::Constant(in, 1, 0.5f), Y(out, 1);
        const double t = median_time(reps, 1, [&] {
            Y.col(0).noalias() = W * X.col(0);
            g_sink = g_sink + Y(0, 0);
        });
        return {t * 1e3 * static_cast<double>(batch), "eigen gemv"};
    }
    const gemm_choice g = pick_gemm("dense", out, in, c, reps, true);
    std::printf("  dense %ldx%ldx%ld: %s\n", static_cast<long>(out), static_cast<long>(in), static_cast<long>(c), g.summary.c_str());
    const double flops = 2.0 * static_cast<double>(out) * static_cast<double>(in) * static_cast<double>(c);
    return {flops / (g.gflops * 1e9) * 1e3 * static_cast<double>(batch) / static_cast<double>(c), g.impl->name};
}

/// The dense GELU feed-forward in -> hidden -> out (X.rows() = in) that a tree_feedforward
/// replaces, on the first `cols` columns of X and scaled to `batch`; each GEMM on the fastest
/// GEMM of the process for its shape, the GELU with Eigen's vectorized erf.
inline dense_time dense_ff_ms(const matf& X, index_t out, index_t hidden, index_t batch, index_t cols, int dreps) {
    const index_t in = X.rows();
    const gemm_choice up = pick_gemm("dense_ff_up", hidden, in, cols, dreps, true);
    const gemm_choice down = pick_gemm("dense_ff_down", out, hidden, cols, dreps, true);
    std::printf("  dense_ff %ldx%ldx%ld: %s; %ldx%ldx%ld: %s\n", static_cast<long>(hidden), static_cast<long>(in),
                static_cast<long>(cols), up.summary.c_str(), static_cast<long>(out), static_cast<long>(hidden),
                static_cast<long>(cols), down.summary.c_str());
    matf W1 = matf::Random(hidden, in) * 0.03f, W2 = matf::Random(out, hidden) * 0.015f;
    vecf b1 = vecf::Random(hidden) * 0.03f;
    const matf Xs = X.leftCols(cols);
    matf H(hidden, cols), Yd(out, cols);
    const double t = median_time(dreps, 1, [&] {
        on_all_threads([&](index_t part) {
            const auto [b, e] = part_range(cols, part);
            auto Hp = H.middleCols(b, e - b);
            up.impl->run(hidden, in, e - b, W1.data(), Xs.data() + b * in, Hp.data());
            Hp.colwise() += b1;
            Hp = (0.5f * Hp.array() * (1.0f + (Hp.array() * 0.70710678f).erf())).matrix();
            down.impl->run(out, hidden, e - b, W2.data(), Hp.data(), Yd.data() + b * out);
        });
        g_sink = g_sink + Yd(0, 0);
    });
    return {t * 1e3 * static_cast<double>(batch) / static_cast<double>(cols), std::string(up.impl->name) + "+" + down.impl->name};
}

}  // namespace roofline

#endif  // TREEGATE_ROOFLINE_BASELINES_HPP
