// bench_kernels — Google Benchmark of each kernel-policy function and of the tree_linear layer,
// for the reference, eigen, avx2, avx512 and dispatch policies, with FLOP/s and bytes/s counters.
//
//   bench_kernels [--benchmark_filter=...] [--benchmark_format=json]
//
// Kernel sizes are chosen on both sides of the caches: a 512 x 512 block (1 MiB, from L2/L3)
// and a path of 9 such blocks spread over 512 MiB (from memory). avx2 and avx512 benchmarks
// are registered only when the CPU runs them; `dispatch` runs the level it binds to (in the
// benchmark context, hence in --benchmark_format=json too; TREEGATE_ISA forces one, and a bad
// value exits with rc 2). The `*_bf16` kernels take bf16 weights (float inputs, outputs and
// accumulation); their bytes/s counts 2 bytes per weight.
#include <treegate/bf16.hpp>
#include <treegate/kernels/avx2.hpp>
#include <treegate/kernels/avx512.hpp>
#include <treegate/kernels/dispatch.hpp>
#include <treegate/kernels/eigen.hpp>
#include <treegate/kernels/reference.hpp>
#include <treegate/layers/tree_feedforward.hpp>
#include <treegate/layers/tree_linear.hpp>

#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace {

using treegate::index_t;
using matf = Eigen::MatrixXf;
using vecf = Eigen::VectorXf;
using benchmark::Counter;

void set_counters(benchmark::State& state, double flops, double bytes) {
    state.counters["FLOP/s"] = Counter(flops, Counter::kIsIterationInvariantRate);
    state.counters["bytes/s"] = Counter(bytes, Counter::kIsIterationInvariantRate);
}

template <class P>
void bm_gemv(benchmark::State& state) {
    const index_t rows = state.range(0), cols = state.range(1);
    const matf W = matf::Random(rows, cols);
    const vecf x = vecf::Random(cols);
    vecf y = vecf::Zero(rows);
    for (auto _ : state) {
        P::template gemv<float>(rows, cols, W.data(), rows, x.data(), y.data());
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
    set_counters(state, 2.0 * static_cast<double>(rows * cols), 4.0 * static_cast<double>(rows * cols + rows + cols));
}

// One path of `count` blocks picked at random from a pool of `pool` blocks (from memory when
// the pool is much larger than the LLC), a new path every iteration.
template <class P>
void bm_path_sum(benchmark::State& state) {
    const index_t n = state.range(0), count = state.range(1), pool = state.range(2);
    const index_t stride = treegate::detail::padded<float>(n * n);
    treegate::detail::aligned_buffer<float> store(stride * pool, "bench");
    for (index_t i = 0; i < store.size(); i += 1024) store.data()[i] = 1e-3f;
    const vecf x = vecf::Random(n);
    vecf y = vecf::Zero(n);
    std::mt19937 g(1);
    std::vector<const float*> blocks(static_cast<std::size_t>(count));
    for (auto _ : state) {
        state.PauseTiming();
        for (auto& b : blocks) b = store.data() + static_cast<index_t>(g() % static_cast<std::uint32_t>(pool)) * stride;
        state.ResumeTiming();
        P::template path_sum<float>(n, n, blocks.data(), static_cast<int>(count), x.data(), y.data());
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
    set_counters(state, 2.0 * static_cast<double>(count * n * n), 4.0 * static_cast<double>(count * n * n + 2 * n));
}

template <class P>
void bm_gemm(benchmark::State& state) {
    const index_t rows = state.range(0), cols = state.range(1), n = state.range(2);
    const matf W = matf::Random(rows, cols), X = matf::Random(cols, n);
    matf Y = matf::Zero(rows, n);
    for (auto _ : state) {
        P::template gemm<float>(rows, cols, n, W.data(), rows, X.data(), cols, Y.data(), rows);
        benchmark::DoNotOptimize(Y.data());
        benchmark::ClobberMemory();
    }
    set_counters(state, 2.0 * static_cast<double>(rows * cols * n),
                 4.0 * static_cast<double>(rows * cols + cols * n + 2 * rows * n));
}

// bf16 weights: the same shapes as above with half the weight bytes.
template <class P>
void bm_path_sum_bf16(benchmark::State& state) {
    const index_t n = state.range(0), count = state.range(1), pool = state.range(2);
    const index_t stride = treegate::detail::padded<treegate::bf16>(n * n);
    treegate::detail::aligned_buffer<treegate::bf16> store(stride * pool, "bench");
    for (index_t i = 0; i < store.size(); i += 1024) store.data()[i] = treegate::to_bf16(1e-3f);
    const vecf x = vecf::Random(n);
    vecf y = vecf::Zero(n);
    std::mt19937 g(1);
    std::vector<const treegate::bf16*> blocks(static_cast<std::size_t>(count));
    for (auto _ : state) {
        state.PauseTiming();
        for (auto& b : blocks) b = store.data() + static_cast<index_t>(g() % static_cast<std::uint32_t>(pool)) * stride;
        state.ResumeTiming();
        P::path_sum(n, n, blocks.data(), static_cast<int>(count), x.data(), y.data());
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
    set_counters(state, 2.0 * static_cast<double>(count * n * n), 2.0 * static_cast<double>(count * n * n) + 8.0 * static_cast<double>(n));
}

template <class P>
void bm_gemm_bf16(benchmark::State& state) {
    const index_t rows = state.range(0), cols = state.range(1), n = state.range(2);
    const matf Wf = matf::Random(rows, cols), X = matf::Random(cols, n);
    std::vector<treegate::bf16> W(static_cast<std::size_t>(rows * cols));
    for (index_t i = 0; i < rows * cols; ++i) W[static_cast<std::size_t>(i)] = treegate::to_bf16(Wf.data()[i]);
    matf Y = matf::Zero(rows, n);
    for (auto _ : state) {
        P::gemm(rows, cols, n, W.data(), rows, X.data(), cols, Y.data(), rows);
        benchmark::DoNotOptimize(Y.data());
        benchmark::ClobberMemory();
    }
    set_counters(state, 2.0 * static_cast<double>(rows * cols * n),
                 2.0 * static_cast<double>(rows * cols) + 4.0 * static_cast<double>(cols * n + 2 * rows * n));
}

template <class P>
void bm_dot_axpy(benchmark::State& state) {
    const index_t n = state.range(0);
    const vecf a = vecf::Random(n), b = vecf::Random(n), v = vecf::Random(n);
    vecf y = vecf::Zero(n);
    for (auto _ : state) {
        const float s = P::template dot<float>(n, a.data(), b.data());
        P::template axpy<float>(n, s * 1e-6f, v.data(), y.data());
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
    set_counters(state, 4.0 * static_cast<double>(n), 4.0 * static_cast<double>(4 * n));
}

// dot_many / axpy_many as a fused width-1 node group uses them: `count` dots of length n, then
// y += the count vectors scaled by the results.
template <class P>
void bm_dot_axpy_many(benchmark::State& state) {
    const index_t n = state.range(0);
    const int count = static_cast<int>(state.range(1));
    const matf A = matf::Random(n, count), B = matf::Random(n, count);
    std::vector<const float*> a, b;
    for (int k = 0; k < count; ++k) {
        a.push_back(A.data() + k * n);
        b.push_back(B.data() + k * n);
    }
    std::vector<float> s(static_cast<std::size_t>(count));
    vecf y = vecf::Zero(n);
    for (auto _ : state) {
        P::template dot_many<float>(n, count, a.data(), b.data(), s.data());
        for (auto& v : s) v *= 1e-6f;
        P::template axpy_many<float>(n, count, s.data(), b.data(), y.data());
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
    set_counters(state, 4.0 * static_cast<double>(n * count), 4.0 * static_cast<double>(3 * n * count + 2 * n));
}

template <class P>
void bm_tree_linear_batch(benchmark::State& state) {
    const index_t in = state.range(0), batch = state.range(2);
    const int depth = static_cast<int>(state.range(1));
    std::vector<index_t> idx;
    for (int j = 0; j < depth; ++j) idx.push_back(j);
    treegate::tree_linear<float, treegate::dynamic, treegate::dynamic, treegate::dynamic, P> layer(
        in, in, depth, treegate::tree_mode::path_sum, treegate::gating::from_input(idx));
    layer.initialize(1);
    const matf X = matf::Random(in, batch);
    matf Y(in, batch);
    treegate::workspace<float> ws;
    for (auto _ : state) {
        layer.forward_batch(X, Y, ws);
        benchmark::DoNotOptimize(Y.data());
        benchmark::ClobberMemory();
    }
    set_counters(state, 2.0 * static_cast<double>(layer.macs_per_example() * batch),
                 4.0 * static_cast<double>(layer.block_count() * in * in + 2 * in * batch));
}

template <class P>
void bm_tree_feedforward_batch(benchmark::State& state) {
    const index_t in = state.range(0), batch = state.range(2);
    const int depth = static_cast<int>(state.range(1));
    treegate::tree_feedforward<float, treegate::dynamic, treegate::dynamic, treegate::dynamic, treegate::dynamic, P> layer(
        in, in, 1, depth);
    layer.initialize(1);
    const matf X = matf::Random(in, batch);
    matf Y(in, batch);
    treegate::workspace<float> ws;
    for (auto _ : state) {
        layer.forward_batch(X, Y, ws);
        benchmark::DoNotOptimize(Y.data());
        benchmark::ClobberMemory();
    }
    set_counters(state, 2.0 * static_cast<double>(layer.macs_per_example() * batch),
                 4.0 * static_cast<double>(layer.parameter_count() + 2 * in * batch));
}

template <class P>
void register_policy(bool with_reference_sizes_only) {
    const std::string p = P::name();
    benchmark::RegisterBenchmark(("gemv/" + p).c_str(), bm_gemv<P>)->Args({512, 512})->Args({257, 771})->Args({4096, 1024});
    benchmark::RegisterBenchmark(("path_sum/" + p).c_str(), bm_path_sum<P>)->Args({512, 9, 16})->Args({512, 9, 512});
    auto* gemm = benchmark::RegisterBenchmark(("gemm/" + p).c_str(), bm_gemm<P>);
    for (index_t n : {2, 4, 16, 64}) gemm->Args({512, 512, n});
    if (!with_reference_sizes_only) gemm->Args({512, 512, 1024});
    benchmark::RegisterBenchmark(("path_sum_bf16/" + p).c_str(), bm_path_sum_bf16<P>)->Args({512, 9, 16})->Args({512, 9, 1024});
    auto* gemm16 = benchmark::RegisterBenchmark(("gemm_bf16/" + p).c_str(), bm_gemm_bf16<P>);
    for (index_t n : {1, 2, 4, 16, 64}) gemm16->Args({512, 512, n});
    if (!with_reference_sizes_only) gemm16->Args({512, 512, 1024});
    benchmark::RegisterBenchmark(("dot_axpy/" + p).c_str(), bm_dot_axpy<P>)->Arg(768);
    benchmark::RegisterBenchmark(("dot_axpy_many/" + p).c_str(), bm_dot_axpy_many<P>)->Args({768, 4})->Args({768, 16});
    if (!with_reference_sizes_only) {
        benchmark::RegisterBenchmark(("tree_linear_batch/" + p).c_str(), bm_tree_linear_batch<P>)
            ->Args({512, 6, 1024})
            ->Args({256, 10, 256})
            ->Unit(benchmark::kMillisecond);
        benchmark::RegisterBenchmark(("tree_feedforward_batch/" + p).c_str(), bm_tree_feedforward_batch<P>)
            ->Args({768, 11, 4096})
            ->Unit(benchmark::kMillisecond);
    }
}

}  // namespace

int main(int argc, char** argv) {
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    try {
        register_policy<treegate::kernels::reference>(true);
        register_policy<treegate::kernels::eigen>(false);
        if (treegate::kernels::cpu_supports_avx2()) register_policy<treegate::kernels::avx2>(false);
        if (treegate::kernels::cpu_supports_avx512()) register_policy<treegate::kernels::avx512>(false);
        // Binding here, outside the timed loops, also reports a bad TREEGATE_ISA as an exception.
        // The level goes into the benchmark context (and so into --benchmark_format=json), not
        // onto stdout, which must hold the chosen format's document alone.
        benchmark::AddCustomContext("treegate_dispatch", treegate::kernels::to_string(treegate::kernels::active_isa()));
        benchmark::AddCustomContext("treegate_best_isa", treegate::kernels::to_string(treegate::kernels::best_isa()));
        register_policy<treegate::kernels::dispatch>(false);
    } catch (const treegate::error& e) {
        std::fprintf(stderr, "bench_kernels: %s\n", e.what());
        return 2;
    }
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
