// examples/showcase.cpp — what treegate buys: parameters grow as 2^D, work per example as D.
// Builds tree layers and dense layers of equal parameter count, runs them, and prints the
// capacity-to-computation ratio (parameters / MACs per example) next to measured timings.
#include <treegate/kernels/avx2.hpp>
#include <treegate/kernels/avx512.hpp>
#include <treegate/kernels/dispatch.hpp>
#include <treegate/treegate.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;
using treegate::index_t;
using mat = Eigen::MatrixXf;

// Median wall time in milliseconds of `reps` calls of f (after one warm-up call).
template <class F>
double median_ms(int reps, F&& f) {
    f();
    std::vector<double> t;
    for (int r = 0; r < reps; ++r) {
        const auto t0 = clock_type::now();
        f();
        t.push_back(std::chrono::duration<double, std::milli>(clock_type::now() - t0).count());
    }
    std::nth_element(t.begin(), t.begin() + static_cast<std::ptrdiff_t>(t.size() / 2), t.end());
    return t[t.size() / 2];
}

/// A dense baseline on the fastest kernel policy the CPU runs for its shape.
struct fastest {
    double ms = 1e300;
    std::string by, rates;
};

/// Runs time_with(P{}) (the milliseconds of the baseline built on policy P) for every policy
/// this CPU runs and keeps the fastest; `flops` per call gives each one's GFLOP/s.
template <class F>
fastest fastest_policy(double flops, F&& time_with) {
    fastest best;
    auto one = [&](auto policy) {
        const double ms = time_with(policy);
        char buf[64];
        std::snprintf(buf, sizeof buf, "%s%s %.1f", best.rates.empty() ? "" : ", ", decltype(policy)::name(),
                      flops / ms * 1e-6);
        best.rates += buf;
        if (ms < best.ms) {
            best.ms = ms;
            best.by = decltype(policy)::name();
        }
    };
    one(treegate::kernels::eigen{});
    if (treegate::kernels::cpu_supports_avx2()) one(treegate::kernels::avx2{});
    if (treegate::kernels::cpu_supports_avx512()) one(treegate::kernels::avx512{});
    one(treegate::kernels::dispatch{});
    best.rates += " GFLOP/s, fastest " + best.by;
    return best;
}

std::string cpu_model() {
    std::ifstream f("/proc/cpuinfo");
    std::string line;
    while (std::getline(f, line))
        if (line.rfind("model name", 0) == 0 && line.find(':') != std::string::npos)
            return line.substr(line.find(':') + 2);
    return "unknown CPU";
}

void row(const char* name, index_t params, index_t macs, double ms, index_t batch) {
    std::printf("%-44s %12lld %12lld %10.1f %10.3f %10.2f\n", name, static_cast<long long>(params),
                static_cast<long long>(macs), static_cast<double>(params) / static_cast<double>(macs), ms,
                1000.0 * ms / static_cast<double>(batch));
}

void header(const char* title) {
    std::printf("\n%s\n%-44s %12s %12s %10s %10s %10s\n", title, "layer", "params", "MACs/example", "params/MAC",
                "ms/batch", "us/example");
}

}  // namespace

int main() {
    std::printf("treegate %s showcase: tree-gated layers against dense layers of equal parameters\n",
                treegate::version_string());
    std::printf("cpu: %s; isa: %s; tree layers on the default policy (%s); each dense baseline on the fastest "
                "policy for its shape\n",
                cpu_model().c_str(), treegate::kernels::to_string(treegate::kernels::active_isa()),
                treegate::kernels::default_policy::name());

    // 1. The paper's layer: a tree of 512 x 512 blocks selected by 6 sign bits of the input.
    {
        const index_t n = 512, batch = 1024;
        const int depth = 6;
        std::vector<index_t> gates;
        for (int j = 0; j < depth; ++j) gates.push_back(j * 37);  // six input entries act as gating units
        treegate::tree_linear<float> tree(n, n, depth, treegate::tree_mode::path_sum, treegate::gating::from_input(gates));
        tree.initialize(1);
        // A dense layer with the same number of parameters must be 127 times wider.
        const index_t wide = tree.block_count() * n;
        const index_t work = n * (depth + 1);

        std::mt19937 rng(7);
        std::normal_distribution<float> normal;
        mat X = mat::NullaryExpr(n, batch, [&] { return normal(rng); });
        mat Yt(n, batch), Yp(wide, batch), Yw(n * (depth + 1), batch);
        treegate::workspace<float> ws;
        header("tree_linear, path_sum, 512 -> 512, depth 6 (127 nodes), batch 1024");
        row("tree_linear (7 of 127 blocks per example)", tree.parameter_count(), tree.macs_per_example(),
            median_ms(5, [&] { tree.forward_batch(X, Yt, ws); }), batch);
        auto dense_row = [&](const char* label, index_t out, mat& Y, int reps, std::uint64_t seed) {
            const double flops = 2.0 * double(n) * double(out) * double(batch);
            const fastest f = fastest_policy(flops, [&](auto policy) {
                treegate::dense<float, treegate::dynamic, treegate::dynamic, decltype(policy)> d(n, out);
                d.initialize(seed);
                return median_ms(reps, [&] { d.forward_batch(X, Y, ws); });
            });
            row(label, n * out + out, n * out, f.ms, batch);
            std::printf("  (%s)\n", f.rates.c_str());
        };
        dense_row("dense 512 -> 65024 (same parameters)", wide, Yp, 3, 2);
        dense_row("dense 512 -> 3584 (same work per example)", work, Yw, 5, 3);

        // Serving one example at a time: only the 7 blocks on its path are read.
        Eigen::VectorXf x = X.col(0), y(n);
        const double one_ms = median_ms(200, [&] { tree.forward(x, y); });
        std::printf("single example, tree_linear: %.1f us (reads %lld of %lld weights)\n", 1000.0 * one_ms,
                    static_cast<long long>(tree.macs_per_example()), static_cast<long long>(tree.parameter_count()));
    }

    // 2. UltraFastBERT's layer: width-1 nodes, GELU, 11 levels below the root (4095 nodes, 12 visited).
    {
        const index_t n = 768, batch = 2048;
        const int depth = 11;
        treegate::tree_feedforward<float> fff(n, n, 1, depth, 1, treegate::activation::gelu);
        fff.initialize(4);

        std::mt19937 rng(8);
        std::normal_distribution<float> normal;
        mat X = mat::NullaryExpr(n, batch, [&] { return normal(rng); });
        mat Y1(n, batch), Y2(n, batch);
        treegate::workspace<float> ws;
        header("tree_feedforward (UltraFastBERT: w = 1, GELU, 4095 nodes), 768 -> 768, batch 2048");
        const double t_fff = median_ms(5, [&] { fff.forward_batch(X, Y1, ws); });
        const index_t ff_macs = 2 * n * 4095;
        const fastest ff = fastest_policy(2.0 * double(ff_macs) * double(batch), [&](auto policy) {
            using dense_p = treegate::dense<float, treegate::dynamic, treegate::dynamic, decltype(policy)>;
            dense_p up(n, 4095), down(4095, n);
            up.initialize(5);
            down.initialize(6);
            treegate::activation_layer<float> gelu(treegate::activation::gelu, 4095);
            treegate::sequential<dense_p, treegate::activation_layer<float>, dense_p> seq(up, gelu, down);
            typename decltype(seq)::workspace_type fws;
            return median_ms(3, [&] { seq.forward_batch(X, Y2, fws); });
        });
        const index_t ff_params = n * 4095 + 4095 + 4095 * n + n;
        row("tree_feedforward (12 of 4095 nodes)", fff.parameter_count(), fff.macs_per_example(), t_fff, batch);
        row("dense feed-forward 768 -> 4095 -> 768", ff_params, ff_macs, ff.ms, batch);
        std::printf("  (%s)\n", ff.rates.c_str());
        std::printf("tree_feedforward is %.0fx faster than the dense feed-forward of the same width on its fastest "
                    "policy (%.0fx fewer MACs)\n",
                    ff.ms / t_fff, static_cast<double>(ff_macs) / static_cast<double>(fff.macs_per_example()));
    }
    return 0;
}
