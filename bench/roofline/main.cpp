// bench/roofline/main.cpp — the program's options and entry: measures this machine's limits, then
// times the README's standard "Benchmarks" cases against them (or, with --hash, hashes their outputs).
//
// Files of bench/roofline: measure.hpp (options, clock, medians, thread pool), report.hpp (--json
// records), machine.hpp (GEMM peak, read bandwidth, sysfs and effective LLC), baselines.hpp (dense
// baselines on the fastest GEMM), cases.hpp (the cases table, layers, fixed-seed inputs, bytes
// model, case lines), run.hpp (timing each case), hash.hpp (--hash), this file.
// One `case=...` line per case: its time against its roofline and against dense baselines.
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
#include "hash.hpp"
#include "run.hpp"

#include <treegate/kernels/avx2.hpp>
#include <treegate/kernels/avx512.hpp>
#include <treegate/kernels/dispatch.hpp>
#include <treegate/kernels/eigen.hpp>
#include <treegate/kernels/native.hpp>
#include <treegate/parallel/thread_pool.hpp>

#include <Eigen/Core>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

namespace roofline {
namespace {

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


const char* const usage =
    "usage: treegate_roofline [options]\n"
    "  --policy P         kernels: auto (= dispatch), eigen, avx2, avx512, dispatch or native\n"
    "  --quick            fewer repetitions and smaller probes (a rough run in about a minute)\n"
    "  --threads N        batched cases on a pool of N threads, held to N-thread limits\n"
    "  --per-case-limits  measure the limits again just before each case\n"
    "  --cpu-time         time in this thread's CPU time instead of wall-clock (1 thread only)\n"
    "  --bf16             also the bf16-weight variants of PS-latency, PS-deep and LO-batch\n"
    "  --json FILE        also write every figure as one JSON document to FILE\n"
    "  --only NAME        only the cases whose names start with NAME\n"
    "  --hash             no timing: an FNV-1a hash of every case's output (bit-identity checks)\n"
    "  --help             this text\n"
    "TREEGATE_ISA picks dispatch's level; a bad value exits with rc 2.\n";

inline options parse(int argc, char** argv) {
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
            std::printf("%s", usage);
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
}  // namespace roofline

using namespace roofline;


static int run_main(int argc, char** argv) {
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


int main(int argc, char** argv) {
    try {
        return run_main(argc, argv);
    } catch (const treegate::config_error& e) {
        std::fprintf(stderr, "treegate_roofline: %s\n", e.what());
        return 2;
    } catch (const treegate::error& e) {
        std::fprintf(stderr, "treegate_roofline: %s\n", e.what());
        return 1;
    }
}
