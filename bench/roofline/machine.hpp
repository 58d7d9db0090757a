// bench/roofline/machine.hpp — this machine's limits: GEMM peak, read bandwidth, sysfs and effective LLC.
// Part of bench/roofline; the one place the limits are measured (pick_gemm also serves the dense baselines).
#ifndef TREEGATE_ROOFLINE_MACHINE_HPP
#define TREEGATE_ROOFLINE_MACHINE_HPP

#include "report.hpp"

#include <treegate/kernels/avx2.hpp>
#include <treegate/kernels/avx512.hpp>
#include <treegate/kernels/dispatch.hpp>

#include <Eigen/Core>

#include <cstdint>
#include <fstream>
#include <memory>
#include <new>
#include <string>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define TG_BENCH_X86 1
#else
#define TG_BENCH_X86 0
#endif
#include <unistd.h>

namespace roofline {

struct machine {
    double peak_flops = 0;     // FLOP/s
    double peak_bw = 0;        // bytes/s
    double llc_bytes = 0;      // sysfs last-level cache (the standard model: half of it holds top levels)
    double llc_eff_bytes = 0;  // measured: the largest buffer still read at cache speed (see measure_llc)
    double llc_bw = 0;         // measured: the read rate of that cache (the plateau past 2 x L2)
};

// ---- the machine's limits ----------------------------------------------------------------------

/// Last-level cache size: /sys (the cache this core shares) first, since sysconf may report
/// the whole package's L3 on multi-die parts; sysconf as a fallback.
inline double llc_bytes() {
    double sys = 0;
    std::ifstream f("/sys/devices/system/cpu/cpu0/cache/index3/size");
    std::string s;
    if (f >> s && !s.empty()) {
        double v = std::atof(s.c_str());
        const char unit = s.back();
        if (unit == 'K') v *= 1024;
        if (unit == 'M') v *= 1024 * 1024;
        sys = v;
    }
    double conf = 0;
#if defined(_SC_LEVEL3_CACHE_SIZE)
    conf = static_cast<double>(sysconf(_SC_LEVEL3_CACHE_SIZE));
#endif
    std::printf("llc: /sys index3 = %.0f KiB, sysconf(_SC_LEVEL3_CACHE_SIZE) = %.0f KiB; using %s\n", sys / 1024,
                conf / 1024, sys > 0 ? "/sys" : "sysconf");
    const double llc = sys > 0 ? sys : conf;
    if (!(llc > 0)) fail("cannot read the last-level cache size");
    return llc;
}

#if TG_BENCH_X86
__attribute__((target("avx2,fma"))) inline float sum_avx2(const float* p, index_t n) {
    __m256 a = _mm256_setzero_ps(), b = a, c = a, d = a;
    for (index_t i = 0; i + 32 <= n; i += 32) {
        a = _mm256_add_ps(a, _mm256_load_ps(p + i));
        b = _mm256_add_ps(b, _mm256_load_ps(p + i + 8));
        c = _mm256_add_ps(c, _mm256_load_ps(p + i + 16));
        d = _mm256_add_ps(d, _mm256_load_ps(p + i + 24));
    }
    alignas(32) float t[8];
    _mm256_store_ps(t, _mm256_add_ps(_mm256_add_ps(a, b), _mm256_add_ps(c, d)));
    return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}

template <index_t Ahead>
__attribute__((target("avx2,fma"))) float sum_avx2_prefetch(const float* p, index_t n) {
    __m256 a = _mm256_setzero_ps(), b = a, c = a, d = a;
    const auto base = reinterpret_cast<std::uintptr_t>(p);
    for (index_t i = 0; i + 32 <= n; i += 32) {
        const std::uintptr_t ahead = base + static_cast<std::uintptr_t>(i) * 4 + static_cast<std::uintptr_t>(Ahead);
        _mm_prefetch(reinterpret_cast<const char*>(ahead), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(ahead + 64), _MM_HINT_T0);
        a = _mm256_add_ps(a, _mm256_load_ps(p + i));
        b = _mm256_add_ps(b, _mm256_load_ps(p + i + 8));
        c = _mm256_add_ps(c, _mm256_load_ps(p + i + 16));
        d = _mm256_add_ps(d, _mm256_load_ps(p + i + 24));
    }
    alignas(32) float t[8];
    _mm256_store_ps(t, _mm256_add_ps(_mm256_add_ps(a, b), _mm256_add_ps(c, d)));
    return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}
#endif

// ---- dense GEMMs: every one the process has, fastest per shape ---------------------------------

/// C = A B for column-major contiguous A (rows x depth), B (depth x n), C (rows x n).
struct gemm_impl {
    const char* name;
    void (*run)(index_t rows, index_t depth, index_t n, const float* A, const float* B, float* C);
};

inline void gemm_eigen(index_t rows, index_t depth, index_t n, const float* A, const float* B, float* C) {
    Eigen::Map<matf>(C, rows, n).noalias() = Eigen::Map<const matf>(A, rows, depth) * Eigen::Map<const matf>(B, depth, n);
}

template <class P>
void gemm_policy(index_t rows, index_t depth, index_t n, const float* A, const float* B, float* C) {
    std::fill(C, C + rows * n, 0.0f);
    P::gemm(rows, depth, n, A, rows, B, depth, C, rows);
}

/// Every dense GEMM this process can run on this CPU: Eigen's own (which the `eigen` policy
/// calls) and each SIMD policy the CPU supports.
inline const std::vector<gemm_impl>& gemm_impls() {
    static const std::vector<gemm_impl> impls = [] {
        std::vector<gemm_impl> v{{"eigen", &gemm_eigen}};
        if (treegate::kernels::cpu_supports_avx2()) v.push_back({"avx2", &gemm_policy<treegate::kernels::avx2>});
        if (treegate::kernels::cpu_supports_avx512()) v.push_back({"avx512", &gemm_policy<treegate::kernels::avx512>});
        v.push_back({"dispatch", &gemm_policy<treegate::kernels::dispatch>});
        return v;
    }();
    return impls;
}

/// The GEMM chosen for one shape, and the rate every candidate reached on it.
struct gemm_choice {
    const gemm_impl* impl = nullptr;
    double gflops = 0;
    std::string summary;  // "eigen 23.1, avx2 60.2 GFLOP/s -> avx2"
};

/// Times every GEMM on rows x depth x n (best of `reps`). shared: one A, and the n columns split
/// over the threads (a dense layer on the pool); otherwise each thread multiplies its own
/// matrices of that shape at once (the peak). Records each rate as a probe named `label`.
inline gemm_choice pick_gemm(const char* label, index_t rows, index_t depth, index_t n, int reps, bool shared) {
    const std::size_t copies = shared ? 1 : static_cast<std::size_t>(g_threads);
    std::vector<matf> A, B, C;
    for (std::size_t t = 0; t < copies; ++t) {
        A.push_back(matf::Random(rows, depth));
        B.push_back(matf::Random(depth, n));
        C.push_back(matf::Zero(rows, n));
    }
    const double flops = 2.0 * static_cast<double>(rows) * static_cast<double>(depth) * static_cast<double>(n) *
                         static_cast<double>(copies);
    gemm_choice best;
    char buf[96];
    for (const gemm_impl& g : gemm_impls()) {
        const double t = best_time(reps, [&] {
            on_all_threads([&](index_t part) {
                if (shared) {
                    const auto [b, e] = part_range(n, part);
                    g.run(rows, depth, e - b, A[0].data(), B[0].data() + b * depth, C[0].data() + b * rows);
                } else {
                    const auto i = static_cast<std::size_t>(part);
                    g.run(rows, depth, n, A[i].data(), B[i].data(), C[i].data());
                }
            });
            g_sink = g_sink + C[0](0, 0);
        });
        const double rate = flops / t * 1e-9;
        std::snprintf(buf, sizeof buf, "%s%s %.1f", best.summary.empty() ? "" : ", ", g.name, rate);
        best.summary += buf;
        g_report.probes.push_back(record()
                                      .set("kind", "gemm")
                                      .set("label", label)
                                      .set("impl", g.name)
                                      .set("rows", static_cast<double>(rows))
                                      .set("depth", static_cast<double>(depth))
                                      .set("n", static_cast<double>(n))
                                      .set("gflops", rate));
        if (rate > best.gflops) {
            best.gflops = rate;
            best.impl = &g;
        }
    }
    best.summary += std::string(" GFLOP/s -> ") + best.impl->name;
    return best;
}

/// Size of a sysfs cache level of cpu0 (index2: L2, index3: L3) in bytes, 0 if unknown.
inline double sysfs_cache(int index) {
    std::ifstream f("/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/size");
    std::string s;
    if (!(f >> s) || s.empty()) return 0;
    double v = std::atof(s.c_str());
    if (s.back() == 'K') v *= 1024;
    if (s.back() == 'M') v *= 1024 * 1024;
    return v;
}

/// The cache this process really gets, measured: read bandwidth against buffer size (each
/// size read repeatedly, warm, by every thread on its own part), from half the L2 up to the
/// bandwidth buffer. A virtual machine's sysfs may report the whole host's
/// L3, of which a tenant gets far less. The estimate is the largest size still read faster
/// than half-way between the plateau beyond L2 and memory (`dram`, the 256 MiB bandwidth);
/// with no plateau clearly above memory (less than 1.2 x), it is the L2 size.
inline double measure_llc(const options& o, const float* p, index_t n_max, double dram, double& plateau_bw) {
    const double l2 = sysfs_cache(2) > 0 ? sysfs_cache(2) : 1 << 20;
    std::vector<std::pair<double, double>> curve;  // (bytes, bytes/s)
    std::printf("read bandwidth against buffer size (warm, %d thread(s)):", g_threads);
    for (double size = l2 / 2; size <= 4.0 * static_cast<double>(n_max); size *= 2) {
        const index_t n = std::min<index_t>(n_max, static_cast<index_t>(size / 4) / 64 * 64);
        const int passes = static_cast<int>(std::max(1.0, (o.quick ? 64.0 : 256.0) * (1 << 20) / (4.0 * static_cast<double>(n))));
        std::vector<float> sums(static_cast<std::size_t>(g_threads));
        const double t = best_time(o.quick ? 2 : 3, [&] {
            on_all_threads([&](index_t part) {
                const auto [b, e] = part_range(n / 64, part);
                float acc = 0;
                for (int r = 0; r < passes; ++r) {
#if TG_BENCH_X86
                    if (treegate::kernels::cpu_supports_avx2()) {
                        acc += sum_avx2(p + b * 64, (e - b) * 64);
                        continue;
                    }
#endif
                    acc += Eigen::Map<const vecf>(p + b * 64, (e - b) * 64).sum();
                }
                sums[static_cast<std::size_t>(part)] = acc;
            });
        });
        for (float v : sums) g_sink = g_sink + v;
        const double bytes = 4.0 * static_cast<double>(n);
        curve.emplace_back(bytes, bytes * passes / t);
        std::printf(" %.4g MiB %.1f GB/s;", bytes / (1 << 20), bytes * passes / t * 1e-9);
        g_report.probes.push_back(record().set("kind", "bandwidth_vs_size").set("bytes", bytes).set("gbps", bytes * passes / t * 1e-9));
        if (n == n_max) break;
    }
    // The plateau: the best rate at sizes past 2 x L2 (the private caches are then exceeded).
    double plateau = 0;
    for (const auto& [bytes, bw] : curve)
        if (bytes >= 2 * l2) plateau = std::max(plateau, bw);
    plateau_bw = std::max(plateau, dram);  // no plateau above memory: cached reads at memory speed
    double llc = l2;
    if (plateau >= 1.2 * dram)
        for (const auto& [bytes, bw] : curve)
            if (bytes >= 2 * l2 && bw >= (plateau + dram) / 2) llc = std::max(llc, bytes);
    std::printf("\nllc_effective=%.4g MiB (plateau past 2 x L2 %.1f GB/s, memory %.1f GB/s, L2 %.4g MiB)\n", llc / (1 << 20),
                plateau * 1e-9, dram * 1e-9, l2 / (1 << 20));
    return llc;
}

/// The machine's limits; `verbose` prints every probe (the start-up call), otherwise only the
/// summary (the end-of-run call, which shows how much a shared machine drifted during the run).
inline machine measure_machine(const options& o, bool verbose) {
    machine m;
    m.llc_bytes = verbose ? llc_bytes() : 0;
    if (verbose) std::printf("eigen: %s, %d thread(s)\n", Eigen::SimdInstructionSetsInUse(), Eigen::nbThreads());

    // Peak: the fastest dense float GEMM of the process (every policy the CPU runs, and Eigen),
    // best of a few, on two shapes: 2048^3, and 512 x 512 times 2048 columns (the shape of a
    // tree node's group, which K = 512 keeps in L2 and which often runs faster than 2048^3).
    const int reps = o.quick ? 2 : 3;
    double best_rate = 0;
    std::string best_name;
    struct shape {
        index_t rows, cols, n;
        const char* name;
    };
    for (const shape sh : {shape{2048, 2048, 2048, "2048^3"}, shape{512, 512, 2048, "512x512x2048"}}) {
        const gemm_choice c = pick_gemm(verbose ? "peak" : "peak_end", sh.rows, sh.cols, sh.n, reps, false);
        if (verbose) std::printf("peak gemm %s float: %s\n", sh.name, c.summary.c_str());
        if (c.gflops * 1e9 > best_rate) {
            best_rate = c.gflops * 1e9;
            best_name = std::string(c.impl->name) + " " + sh.name;
        }
    }
    m.peak_flops = best_rate;

    // Bandwidth: 256 MiB read by several kernels, best of each; the highest wins.
    const index_t n = index_t{64} << 20;  // floats
    std::unique_ptr<float, void (*)(float*)> buf(
        static_cast<float*>(::operator new(static_cast<std::size_t>(n) * 4, std::align_val_t{64})),
        [](float* p) { ::operator delete(p, std::align_val_t{64}); });
    float* p = buf.get();
    for (index_t i = 0; i < n; ++i) p[i] = static_cast<float>(i & 1023) * 1e-3f;
    const double bytes = static_cast<double>(n) * 4;
    // Each probe reads [b, e) of the buffer; with N threads, N of them read disjoint parts at once.
    struct probe {
        const char* name;
        std::function<float(const float*, index_t)> run;
    };
    std::vector<probe> probes = {{"eigen_sum", [](const float* q, index_t m) { return Eigen::Map<const vecf>(q, m).sum(); }}};
#if TG_BENCH_X86
    if (treegate::kernels::cpu_supports_avx2()) {
        probes.push_back({"avx2_4acc", [](const float* q, index_t m) { return sum_avx2(q, m); }});
        probes.push_back({"avx2_4acc_prefetch_1KiB", [](const float* q, index_t m) { return sum_avx2_prefetch<1024>(q, m); }});
        probes.push_back({"avx2_4acc_prefetch_2KiB", [](const float* q, index_t m) { return sum_avx2_prefetch<2048>(q, m); }});
        probes.push_back({"avx2_4acc_prefetch_4KiB", [](const float* q, index_t m) { return sum_avx2_prefetch<4096>(q, m); }});
    }
#endif
    const char* winner = "";
    if (verbose) std::printf("read bandwidth over %.0f MiB:", bytes / (1 << 20));
    for (auto& pr : probes) {
        std::vector<float> sums(static_cast<std::size_t>(g_threads));
        const double t = best_time(o.quick ? 2 : 4, [&] {
            on_all_threads([&](index_t part) {
                // Parts start on 64-float boundaries so every reader stays aligned.
                const auto [b, e] = part_range(n / 64, part);
                sums[static_cast<std::size_t>(part)] = pr.run(p + b * 64, (e - b) * 64);
            });
        });
        for (float v : sums) g_sink = g_sink + v;
        if (verbose) std::printf(" %s %.1f GB/s;", pr.name, bytes / t * 1e-9);
        g_report.probes.push_back(record()
                                      .set("kind", verbose ? "bandwidth" : "bandwidth_end")
                                      .set("impl", pr.name)
                                      .set("bytes", bytes)
                                      .set("gbps", bytes / t * 1e-9));
        if (bytes / t > m.peak_bw) {
            m.peak_bw = bytes / t;
            winner = pr.name;
        }
    }
    if (verbose) {
        std::printf("\n");
        m.llc_eff_bytes = measure_llc(o, p, n, m.peak_bw, m.llc_bw);
    }
    if (verbose)
        std::printf("peak_flops=%.1f GFLOP/s (%s) peak_bw=%.1f GB/s (bandwidth winner: %s) llc=%.0f MiB\n",
                    m.peak_flops * 1e-9, best_name.c_str(), m.peak_bw * 1e-9, winner, m.llc_bytes / (1 << 20));
    else
        std::printf("  limits measured again: peak_flops=%.1f GFLOP/s (%s) peak_bw=%.1f GB/s (%s)\n", m.peak_flops * 1e-9,
                    best_name.c_str(), m.peak_bw * 1e-9, winner);
    record& lim = verbose ? g_report.limits : g_report.limits_end;
    lim = record();
    lim.set("peak_flops", m.peak_flops).set("peak_flops_by", best_name).set("peak_bw", m.peak_bw).set("peak_bw_by", winner);
    return m;
}

/// The limits a case is held to: the start-up ones, or with --per-case-limits ones measured
/// again just before the case (on a shared machine whose load changes during the run).
inline machine case_limits(const options& o, const machine& startup) {
    if (!o.per_case_limits) return startup;
    machine m = measure_machine(o, false);
    m.llc_bytes = startup.llc_bytes;
    m.llc_eff_bytes = startup.llc_eff_bytes;
    m.llc_bw = startup.llc_bw;
    return m;
}


}  // namespace roofline

#endif  // TREEGATE_ROOFLINE_MACHINE_HPP
