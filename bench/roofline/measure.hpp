// bench/roofline/measure.hpp — options, the clock (wall or --cpu-time), medians and best-of timing, the thread pool.
// Part of bench/roofline (the treegate_roofline program); included by every other file of it.
#ifndef TREEGATE_ROOFLINE_MEASURE_HPP
#define TREEGATE_ROOFLINE_MEASURE_HPP

#include <treegate/config.hpp>
#include <treegate/parallel/thread_pool.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace roofline {

using treegate::index_t;
using treegate::leaf_t;
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
inline bool g_cpu_time = false;

inline volatile float g_sink = 0;

// The pool of --threads N (null for one thread) and its size.
inline treegate::parallel::thread_pool* g_pool = nullptr;
inline int g_threads = 1;

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

inline double seconds_since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

inline double now_seconds() {
    if (g_cpu_time) {
        timespec ts{};
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
        return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
    }
    return std::chrono::duration<double>(clock_type::now().time_since_epoch()).count();
}

/// Median wall time (seconds) of `reps` calls of f after `warmup` calls.
inline double median_time(int reps, int warmup, const std::function<void()>& f) {
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

inline double best_time(int reps, const std::function<void()>& f) {
    double best = 1e30;
    for (int i = 0; i < reps; ++i) {
        const double t0 = now_seconds();
        f();
        best = std::min(best, now_seconds() - t0);
    }
    return best;
}

[[noreturn]] inline void fail(const std::string& msg) {
    std::fprintf(stderr, "treegate_roofline: %s\n", msg.c_str());
    std::exit(1);
}

inline double median_of(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}


}  // namespace roofline

#endif  // TREEGATE_ROOFLINE_MEASURE_HPP
