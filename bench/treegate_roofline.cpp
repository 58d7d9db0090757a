// treegate_roofline — measures this machine's GEMM peak and read bandwidth, then runs the
// standard cases of the README's "Benchmarks" section (plus the flattened path_sum cases) and prints each one's
// time against its roofline and against dense baselines, one `case=...` line per case.
//
//   treegate_roofline [--policy auto|eigen|avx2|avx512|dispatch|native] [--quick] [--threads N] [--per-case-limits] [--cpu-time] [--bf16]
//                     [--json FILE] [--only NAME] [--hash]
//
// --hash skips every measurement: each standard case (and its -flat and, with --bf16, -bf16
// variants) runs one forward on its fixed-seed inputs and prints
// `hash NAME isa=ISA out=ROWSxCOLS fnv1a=HEX` (FNV-1a 64 of the output's float bytes), so two
// builds can be checked for bit-identical outputs per policy (TREEGATE_ISA picks dispatch's).
//
// --bf16 also runs PS-latency, PS-deep and LO-batch (and their -flat variants) with the weights
// stored as bf16 (tree_linear_bf16, float activations and accumulation): case names get a
// `-bf16` suffix, the roofline counts 2 bytes per weight, and `speedup_vs_float` is the median,
// over alternating passes of the float and the bf16 layer on the same inputs, of the float
// pass's time over the following bf16 pass's time (pairing cancels most of the drift of a
// shared machine, which sequential medians of the two cases do not). The bf16 kernels widen the
// weights to float in registers (no AVX-512 BF16 dot products, which would round the inputs too).
//
// The limits (GEMM peak, read bandwidth) are measured at start-up and, as a drift check, again
// at the end. On a shared machine whose load changes during the run, --per-case-limits measures
// them again just before each case and holds the case to those, and --cpu-time times limits and
// cases alike in this thread's CPU time instead of wall-clock time (time spent descheduled by
// other tenants is then not counted).
// Every case is checked against the reference policy on a sample of examples before it is
// timed; a disagreement aborts the run. Times are wall-clock medians after a warm-up.
// --threads N runs the batched cases on a pool of N threads (PS-latency, one example per call,
// stays on one thread) and holds them to limits measured with N threads: N GEMMs at once for
// the peak, N readers of disjoint parts of the buffer for the bandwidth; the dense baselines
// split their columns over the same pool.
#include <treegate/kernels/avx2.hpp>
#include <treegate/kernels/avx512.hpp>
#include <treegate/kernels/dispatch.hpp>
#include <treegate/kernels/eigen.hpp>
#include <treegate/kernels/native.hpp>
#include <treegate/kernels/reference.hpp>
#include <treegate/layers/flatten.hpp>
#include <treegate/layers/tree_feedforward.hpp>
#include <treegate/layers/tree_linear.hpp>
#include <treegate/layers/tree_linear_bf16.hpp>
#include <treegate/parallel/thread_pool.hpp>
#include <treegate/routing.hpp>
#include <treegate/tree.hpp>

#include <Eigen/Core>
#include <unsupported/Eigen/SpecialFunctions>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define TG_BENCH_X86 1
#else
#define TG_BENCH_X86 0
#endif
#include <unistd.h>

#if TREEGATE_ROOFLINE_JSON
#include <nlohmann/json.hpp>
#endif

namespace {

using treegate::index_t;
using treegate::leaf_t;
using treegate::tree_mode;
using matf = Eigen::MatrixXf;
using vecf = Eigen::VectorXf;
using clock_type = std::chrono::steady_clock;

struct options {
    std::string policy = "auto";  // dispatch: the widest ISA this CPU runs (or TREEGATE_ISA)
    std::string json;             // --json FILE: the same figures as one JSON document
    std::string only;             // --only NAME: just the cases whose names start with NAME
    bool quick = false;
    bool per_case_limits = false;
    bool bf16 = false;
    bool hash = false;            // --hash: one forward per case, its output's FNV-1a hash, no timing
    int threads = 1;
};

// Wall-clock time by default (README, "Benchmarks"). With --cpu-time, this thread's CPU time instead:
// on an oversubscribed machine the wall clock also counts the time the thread was not running,
// which no roofline describes; CPU time keeps that out of limits and cases alike.
bool g_cpu_time = false;

struct machine {
    double peak_flops = 0;     // FLOP/s
    double peak_bw = 0;        // bytes/s
    double llc_bytes = 0;      // sysfs last-level cache (the standard model: half of it holds top levels)
    double llc_eff_bytes = 0;  // measured: the largest buffer still read at cache speed (see measure_llc)
};

// ---- what the run reports, kept for --json -----------------------------------------------------

/// One printed record: numeric and text fields in print order.
struct record {
    std::vector<std::pair<std::string, double>> num;
    std::vector<std::pair<std::string, std::string>> text;
    record& set(const std::string& k, double v) {
        num.emplace_back(k, v);
        return *this;
    }
    record& set(const std::string& k, const std::string& v) {
        text.emplace_back(k, v);
        return *this;
    }
};

struct report {
    record run;                    // CPU, ISA, policy, threads, clock
    record limits;                 // start-up limits
    record limits_end;             // the same measured again at the end
    std::vector<record> probes;    // every GEMM and bandwidth probe (kind, name, shape, rate)
    std::vector<record> cases;     // every case= line's fields
};
report g_report;

volatile float g_sink = 0;

// The pool of --threads N (null for one thread) and its size.
treegate::parallel::thread_pool* g_pool = nullptr;
int g_threads = 1;

/// Runs f(part) for part = 0 .. g_threads-1, one per worker of the pool, and waits.
template <class F>
void on_all_threads(F&& f) {
    if (g_pool == nullptr) {
        f(index_t{0});
        return;
    }
    g_pool->run(g_threads, [&](index_t part, int) { f(part); });
}

/// [begin, end) of part `part` of `n` items split into g_threads parts.
std::pair<index_t, index_t> part_range(index_t n, index_t part) {
    return {n * part / g_threads, n * (part + 1) / g_threads};
}

double seconds_since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

double now_seconds() {
    if (g_cpu_time) {
        timespec ts{};
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
        return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
    }
    return std::chrono::duration<double>(clock_type::now().time_since_epoch()).count();
}

/// Median wall time (seconds) of `reps` calls of f after `warmup` calls.
double median_time(int reps, int warmup, const std::function<void()>& f) {
    for (int i = 0; i < warmup; ++i) f();
    std::vector<double> t;
    for (int i = 0; i < reps; ++i) {
        const double t0 = now_seconds();
        f();
        t.push_back(now_seconds() - t0);
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

double best_time(int reps, const std::function<void()>& f) {
    double best = 1e30;
    for (int i = 0; i < reps; ++i) {
        const double t0 = now_seconds();
        f();
        best = std::min(best, now_seconds() - t0);
    }
    return best;
}

[[noreturn]] void fail(const std::string& msg) {
    std::fprintf(stderr, "treegate_roofline: %s\n", msg.c_str());
    std::exit(1);
}

// ---- the machine's limits ----------------------------------------------------------------------

/// Last-level cache size: /sys (the cache this core shares) first, since sysconf may report
/// the whole package's L3 on multi-die parts; sysconf as a fallback.
double llc_bytes() {
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
__attribute__((target("avx2,fma"))) float sum_avx2(const float* p, index_t n) {
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

void gemm_eigen(index_t rows, index_t depth, index_t n, const float* A, const float* B, float* C) {
    Eigen::Map<matf>(C, rows, n).noalias() = Eigen::Map<const matf>(A, rows, depth) * Eigen::Map<const matf>(B, depth, n);
}

template <class P>
void gemm_policy(index_t rows, index_t depth, index_t n, const float* A, const float* B, float* C) {
    std::fill(C, C + rows * n, 0.0f);
    P::gemm(rows, depth, n, A, rows, B, depth, C, rows);
}

/// Every dense GEMM this process can run on this CPU: Eigen's own (which the `eigen` policy
/// calls) and each SIMD policy the CPU supports.
const std::vector<gemm_impl>& gemm_impls() {
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
gemm_choice pick_gemm(const char* label, index_t rows, index_t depth, index_t n, int reps, bool shared) {
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
double sysfs_cache(int index) {
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
double measure_llc(const options& o, const float* p, index_t n_max, double dram) {
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
machine measure_machine(const options& o, bool verbose) {
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
        m.llc_eff_bytes = measure_llc(o, p, n, m.peak_bw);
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
machine case_limits(const options& o, const machine& startup) {
    if (!o.per_case_limits) return startup;
    machine m = measure_machine(o, false);
    m.llc_bytes = startup.llc_bytes;
    m.llc_eff_bytes = startup.llc_eff_bytes;
    return m;
}

// ---- roofline bookkeeping ----------------------------------------------------------------------

/// Levels 0..k count as cached, k the largest with levels 0..k fitting half the LLC (-1: none).
int cached_levels(const std::vector<double>& level_bytes, double llc) {
    double sum = 0;
    int k = -1;
    for (std::size_t j = 0; j < level_bytes.size(); ++j) {
        sum += level_bytes[j];
        if (sum > llc / 2) break;
        k = static_cast<int>(j);
    }
    return k;
}

struct routing_stats {
    std::vector<index_t> visited;  // distinct nodes per level
    double examples = 0;
};

/// A case's measured figures; negative baselines are absent.
struct case_figures {
    double ms = 0, flops = 0, bytes = 0, bytes_eff = 0;
    double dense_ms = -1;  // dense layer of the same parameter count, on the fastest GEMM
    std::string dense_by;
    double dense_ff_ms = -1;  // UF-fff: the dense feed-forward the tree replaces
    std::string dense_ff_by;
    double speedup_vs_float = -1;
    double eigen_loop_ms = -1;  // UF-fff: the per-example Eigen loop
};

void print_line(const char* name, const case_figures& f, const machine& m) {
    const double roof_ms = std::max(f.flops / m.peak_flops, f.bytes / m.peak_bw) * 1e3;
    const double roof_eff_ms = std::max(f.flops / m.peak_flops, f.bytes_eff / m.peak_bw) * 1e3;
    std::printf("case=%s ms=%.4g roofline_ms=%.4g ratio=%.3f vs_dense_equal_params=%.1f", name, f.ms, roof_ms, f.ms / roof_ms,
                f.dense_ms / f.ms);
    if (f.dense_ff_ms > 0) std::printf(" vs_dense_ff=%.1f", f.dense_ff_ms / f.ms);
    if (f.speedup_vs_float > 0) std::printf(" speedup_vs_float=%.2f", f.speedup_vs_float);
    if (f.eigen_loop_ms > 0) std::printf(" vs_eigen_loop=%.2f", f.eigen_loop_ms / f.ms);
    std::printf(" roofline_eff_ms=%.4g ratio_eff=%.3f\n", roof_eff_ms, f.ms / roof_eff_ms);
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
    r.set("flops", f.flops).set("bytes", f.bytes).set("bytes_eff", f.bytes_eff);
    r.set("compute_ms", f.flops / m.peak_flops * 1e3).set("memory_ms", f.bytes / m.peak_bw * 1e3);
    r.set("peak_flops", m.peak_flops).set("peak_bw", m.peak_bw);
    r.set("dense_equal_params_ms", f.dense_ms).set("dense_equal_params_by", f.dense_by);
    if (f.dense_ff_ms > 0) r.set("dense_ff_ms", f.dense_ff_ms).set("dense_ff_by", f.dense_ff_by);
    if (f.eigen_loop_ms > 0) r.set("eigen_loop_ms", f.eigen_loop_ms);
    g_report.cases.push_back(std::move(r));
}

void print_routing(const char* name, const routing_stats& r) {
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
void check_close(const char* name, const matf& got, const matf& want) {
    const double err = static_cast<double>((got - want).cwiseAbs().maxCoeff());
    const double scale = 1.0 + static_cast<double>(want.cwiseAbs().maxCoeff());
    if (!(err <= 1e-3 * scale))
        fail(std::string("case ") + name + ": output disagrees with the reference policy (max error " +
             std::to_string(err) + ", scale " + std::to_string(scale) + ")");
}

/// A dense baseline's time (ms) and the GEMM that ran it.
struct dense_time {
    double ms;
    std::string by;
};

/// Dense layer time (ms) for one forward of `batch` examples through `out x in` weights, on the
/// fastest GEMM of the process for that shape; huge baselines are timed on `cols` columns and
/// scaled linearly (GEMM time is linear in n there).
dense_time dense_ms(index_t in, index_t out, index_t batch, index_t cols, int reps) {
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

std::vector<index_t> gating_units(int depth) {
    std::vector<index_t> idx(static_cast<std::size_t>(depth));
    std::iota(idx.begin(), idx.end(), index_t{0});
    return idx;
}

template <class Layer>
routing_stats route_stats(const Layer& layer, const matf& X) {
    routing_stats r;
    const int D = layer.depth();
    std::vector<std::vector<char>> seen(static_cast<std::size_t>(D + 1));
    for (int j = 0; j <= D; ++j) seen[static_cast<std::size_t>(j)].assign(std::size_t{1} << j, 0);
    for (index_t e = 0; e < X.cols(); ++e) {
        const leaf_t code = treegate::route_by_indices(X.col(e).data(), layer.gates().indices().data(), D);
        for (int j = 0; j <= D; ++j) seen[static_cast<std::size_t>(j)][code >> (D - j)] = 1;
    }
    for (int j = 0; j <= D; ++j) {
        const auto& s = seen[static_cast<std::size_t>(j)];
        r.visited.push_back(static_cast<index_t>(std::count(s.begin(), s.end(), 1)));
    }
    r.examples = static_cast<double>(X.cols());
    return r;
}

/// Bytes per forward pass: the uncached visited blocks (and biases) plus activations.
/// `weight_size`: bytes per stored weight (4 for float, 2 for bf16; biases are float).
template <class Layer>
double tl_bytes(const Layer& layer, const matf& X, index_t batch, double llc, const char* model, double weight_size = 4.0) {
    const int D = layer.depth();
    const bool ps = layer.mode() == tree_mode::path_sum;
    const double block = weight_size * static_cast<double>(layer.in_size() * layer.out_size()) +
                         4.0 * static_cast<double>(layer.has_bias() ? layer.out_size() : 0);
    std::vector<double> level_bytes(static_cast<std::size_t>(D + 1), 0.0);
    for (int j = 0; j <= D; ++j)
        if (ps || j == D) level_bytes[static_cast<std::size_t>(j)] = block * std::ldexp(1.0, j);
    const int k = cached_levels(level_bytes, llc);
    double blocks = 0;
    if (batch == 1) {  // one pass per input: the path's uncached blocks, averaged over inputs
        for (int j = k + 1; j <= D; ++j)
            if (level_bytes[static_cast<std::size_t>(j)] > 0) blocks += 1;
    } else {
        const routing_stats r = route_stats(layer, X);
        for (int j = k + 1; j <= D; ++j)
            if (level_bytes[static_cast<std::size_t>(j)] > 0) blocks += static_cast<double>(r.visited[static_cast<std::size_t>(j)]);
    }
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

double median_of(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
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
    f.bytes_eff = tl_bytes(half, X, s.batch, m.llc_eff_bytes, "effective", 2.0);
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

/// A case's layer with the fixed seed every policy shares (hence the same weights).
template <class P>
tl<P> make_tl(const tl_spec& s) {
    tl<P> layer(s.in, s.out, s.depth, s.mode, treegate::gating::from_input(gating_units(s.depth)));
    layer.initialize(42);
    return layer;
}

/// A case's fixed-seed inputs: `batch` columns, or 256 distinct inputs for the latency case.
matf tl_inputs(const tl_spec& s) {
    std::mt19937 g(7);
    const index_t cols = s.batch == 1 ? 256 : s.batch;
    matf X(s.in, cols);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (index_t i = 0; i < X.size(); ++i) X.data()[i] = u(g);
    return X;
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
        f.bytes_eff = tl_bytes(lay, X, s.batch, m.llc_eff_bytes, "effective");
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

matf fff_inputs() {
    std::mt19937 g(9);
    matf X(fff_in, fff_batch);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (index_t i = 0; i < X.size(); ++i) X.data()[i] = u(g);
    return X;
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

    // Routing statistics and bytes: walk every example's path with the node pre-activations.
    routing_stats r;
    {
        std::vector<std::vector<char>> seen(static_cast<std::size_t>(depth + 1));
        for (int j = 0; j <= depth; ++j) seen[static_cast<std::size_t>(j)].assign(std::size_t{1} << j, 0);
        for (index_t e = 0; e < batch; ++e) {
            index_t node = 0;
            for (int j = 0; j <= depth; ++j) {
                seen[static_cast<std::size_t>(j)][static_cast<std::size_t>(node - treegate::tree::level_begin(j))] = 1;
                const float pre = layer.hidden_weight(0, node).row(0).dot(X.col(e).transpose()) + layer.hidden_bias(0, node)(0);
                node = treegate::tree::child(node, treegate::tree::gate_bit(pre));
            }
        }
        for (int j = 0; j <= depth; ++j) {
            const auto& s = seen[static_cast<std::size_t>(j)];
            r.visited.push_back(static_cast<index_t>(std::count(s.begin(), s.end(), 1)));
        }
        r.examples = static_cast<double>(batch);
    }
    const double node_bytes = 4.0 * static_cast<double>(in + 1 + out);
    std::vector<double> level_bytes;
    for (int j = 0; j <= depth; ++j) level_bytes.push_back(node_bytes * std::ldexp(1.0, j));
    auto fff_bytes = [&](double llc, const char* model) {
        const int k = cached_levels(level_bytes, llc);
        double b = 4.0 * static_cast<double>(batch * (in + out));
        for (int j = k + 1; j <= depth; ++j) b += node_bytes * static_cast<double>(r.visited[static_cast<std::size_t>(j)]);
        std::printf("  cached levels 0..%d (half %s LLC = %.1f MiB)\n", k, model, llc / 2 / (1 << 20));
        return b;
    };
    case_figures f;
    f.bytes = fff_bytes(m.llc_bytes, "sysfs");
    f.bytes_eff = fff_bytes(m.llc_eff_bytes, "effective");
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
    {
        const index_t hidden = 4095;
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
        f.dense_ff_ms = t * 1e3 * static_cast<double>(batch) / static_cast<double>(cols);
        f.dense_ff_by = std::string(up.impl->name) + "+" + down.impl->name;
    }
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

// ---- driver ------------------------------------------------------------------------------------

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

// ---- --hash: the output bytes of every case, for bit-identity checks across versions ---------

/// FNV-1a, 64 bits, over the bytes of a float matrix (column-major, as stored).
std::uint64_t fnv1a(const matf& Y) {
    std::uint64_t h = 14695981039346656037ull;
    const auto* b = reinterpret_cast<const unsigned char*>(Y.data());
    for (std::size_t i = 0; i < static_cast<std::size_t>(Y.size()) * sizeof(float); ++i) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}

template <class P>
const char* policy_isa() {
    return std::strcmp(P::name(), "dispatch") == 0 ? treegate::kernels::to_string(treegate::kernels::active_isa()) : P::name();
}

template <class P>
void print_hash(const std::string& name, const matf& Y) {
    std::printf("hash %s isa=%s out=%ldx%ld fnv1a=%016llx\n", name.c_str(), policy_isa<P>(), static_cast<long>(Y.rows()),
                static_cast<long>(Y.cols()), static_cast<unsigned long long>(fnv1a(Y)));
    std::fflush(stdout);
}

/// One forward of every standard case on its fixed-seed inputs (the latency case: its 256
/// inputs one per call, as timed), hashed; no timing, no machine limits.
template <class P>
void hash_all(const options& o) {
    std::printf("policy=%s hash mode\n", P::name());
    auto wanted = [&](const std::string& name) { return name.rfind(o.only, 0) == 0; };
    auto hash_tl = [&](const tl_case& c) {
        const tl<P> layer = make_tl<P>(c.spec);
        const matf X = tl_inputs(c.spec);
        const std::string name = c.spec.name;
        print_hash<P>(name, sample_output(layer, X, c.spec.batch, X.cols()));
        if (c.flat) print_hash<P>(name + "-flat", sample_output(treegate::flatten(layer), X, c.spec.batch, X.cols()));
        if (o.bf16 && c.bf16) {
            print_hash<P>(name + "-bf16", sample_output(treegate::tree_linear_bf16<P>(layer), X, c.spec.batch, X.cols()));
            if (c.flat) {
                const tl<P> flat = treegate::flatten(layer);
                print_hash<P>(name + "-flat-bf16", sample_output(treegate::tree_linear_bf16<P>(flat), X, c.spec.batch, X.cols()));
            }
        }
    };
    for (const tl_case& c : tl_cases) {
        if (wanted(c.spec.name)) hash_tl(c);
        if (std::strcmp(c.spec.name, "PS-deep") == 0 && wanted("UF-fff")) print_hash<P>("UF-fff", make_fff<P>().forward_batch(fff_inputs()));
    }
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

template <class P>
void run_policy(const options& o) {
    if (o.hash) {
        hash_all<P>(o);
        return;
    }
    const machine m = measure_machine(o, true);
    g_report.limits.set("llc_sysfs_bytes", m.llc_bytes).set("llc_effective_bytes", m.llc_eff_bytes);
    run_all<P>(o, m);
    std::printf("end of run:\n");
    measure_machine(o, false);
}

/// The CPU's "model name" from /proc/cpuinfo ("unknown" elsewhere).
std::string cpu_model() {
    std::ifstream f("/proc/cpuinfo");
    std::string line;
    while (std::getline(f, line))
        if (line.rfind("model name", 0) == 0) {
            const auto colon = line.find(':');
            if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
        }
    return "unknown";
}

/// The widest instruction set the kernels use on this CPU.
const char* active_isa() { return treegate::kernels::to_string(treegate::kernels::active_isa()); }

#if TREEGATE_ROOFLINE_JSON
nlohmann::json to_json(const record& r) {
    nlohmann::json j = nlohmann::json::object();
    for (const auto& [k, v] : r.text) j[k] = v;
    for (const auto& [k, v] : r.num) j[k] = v;
    return j;
}

void write_json(const std::string& path) {
    nlohmann::json doc;
    doc["run"] = to_json(g_report.run);
    doc["limits"] = to_json(g_report.limits);
    doc["limits_end"] = to_json(g_report.limits_end);
    doc["probes"] = nlohmann::json::array();
    for (const record& r : g_report.probes) doc["probes"].push_back(to_json(r));
    doc["cases"] = nlohmann::json::array();
    for (const record& r : g_report.cases) doc["cases"].push_back(to_json(r));
    std::ofstream f(path);
    f << doc.dump(2) << "\n";
    if (!f) fail("--json: cannot write '" + path + "'");
    std::printf("json: %s\n", path.c_str());
}
#else
void write_json(const std::string&) {}
#endif

options parse(int argc, char** argv) {
    options o;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--quick") {
            o.quick = true;
        } else if (a == "--per-case-limits") {
            o.per_case_limits = true;
        } else if (a == "--cpu-time") {
            g_cpu_time = true;
        } else if (a == "--bf16") {
            o.bf16 = true;
        } else if (a == "--hash") {
            o.hash = true;
        } else if (a == "--json" && i + 1 < argc) {
            o.json = argv[++i];
        } else if (a.rfind("--json=", 0) == 0) {
            o.json = a.substr(7);
        } else if (a == "--only" && i + 1 < argc) {
            o.only = argv[++i];
        } else if (a == "--policy" && i + 1 < argc) {
            o.policy = argv[++i];
        } else if (a.rfind("--policy=", 0) == 0) {
            o.policy = a.substr(9);
        } else if (a == "--threads" && i + 1 < argc) {
            o.threads = std::atoi(argv[++i]);
        } else if (a.rfind("--threads=", 0) == 0) {
            o.threads = std::atoi(a.c_str() + 10);
        } else if (a == "--help" || a == "-h") {
            std::printf("usage: treegate_roofline [--policy auto|eigen|avx2|avx512|dispatch|native] [--quick] [--threads N] [--per-case-limits] [--cpu-time] [--bf16] [--json FILE] [--only NAME] [--hash]\n");
            std::exit(0);
        } else {
            fail("unknown option '" + a + "' (try --help)");
        }
    }
    if (o.policy != "auto" && o.policy != "eigen" && o.policy != "avx2" && o.policy != "avx512" && o.policy != "dispatch" &&
        o.policy != "native")
        fail("--policy must be auto, eigen, avx2, avx512, dispatch or native");
    if (o.policy == "auto") o.policy = "dispatch";
    if (o.threads < 1) fail("--threads must be at least 1");
    return o;
}

}  // namespace

int main(int argc, char** argv) {
    const options o = parse(argc, argv);
    Eigen::setNbThreads(1);
    std::unique_ptr<treegate::parallel::thread_pool> pool;
    if (o.threads > 1) {
        if (g_cpu_time) fail("--cpu-time measures one thread's CPU time; use it with --threads 1");
        pool = std::make_unique<treegate::parallel::thread_pool>(o.threads);
        g_pool = pool.get();
        g_threads = o.threads;
        std::printf("threads=%d: batched cases on a pool of %d threads\n", o.threads, o.threads);
    }
    if (o.policy == "avx2" && !treegate::kernels::cpu_supports_avx2()) fail("--policy avx2: this CPU or build has no AVX2+FMA");
    if (o.policy == "avx512" && !treegate::kernels::cpu_supports_avx512())
        fail("--policy avx512: this CPU or build has no AVX-512 F/BW/VL/DQ");
#if !TREEGATE_ROOFLINE_JSON
    if (!o.json.empty()) fail("--json: this build has no nlohmann_json (Debian: nlohmann-json3-dev)");
#endif
    const auto t0 = clock_type::now();
    std::printf("cpu: %s; isa: %s\n", cpu_model().c_str(), active_isa());
    g_report.run.set("cpu", cpu_model()).set("isa", active_isa()).set("threads", static_cast<double>(g_threads));
    g_report.run.set("clock", g_cpu_time ? "thread-cpu-time" : "wall").set("quick", o.quick ? 1.0 : 0.0);
    if (o.policy == "eigen")
        run_policy<treegate::kernels::eigen>(o);
    else if (o.policy == "avx2")
        run_policy<treegate::kernels::avx2>(o);
    else if (o.policy == "avx512")
        run_policy<treegate::kernels::avx512>(o);
    else if (o.policy == "dispatch")
        run_policy<treegate::kernels::dispatch>(o);
    else
        run_policy<treegate::kernels::native>(o);
    std::printf("total %.1f s\n", seconds_since(t0));
    g_report.run.set("total_s", seconds_since(t0));
    if (!o.json.empty()) write_json(o.json);
    return 0;
}
