// Concurrent forward calls on one const layer: every thread must see exactly the outputs of a
// single-threaded run. The layers keep no mutable state, so this holds by construction; the test
// (and the sanitizer builds that run it) guard against a cache or scratch buffer creeping in.
#include "test_support.hpp"

#include <treegate/treegate.hpp>

#include <atomic>
#include <random>
#include <thread>
#include <utility>
#include <vector>

using namespace tg_test;
using treegate::index_t;

namespace {

constexpr int thread_count = 8;

// Runs `work(thread_index)` on 8 threads released together; returns how many reported a mismatch.
template <class Work>
int run_concurrently(Work&& work) {
    std::atomic<int> ready{0}, mismatches{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < thread_count; ++t)
        threads.emplace_back([&, t] {
            ready.fetch_add(1);
            while (ready.load() < thread_count) std::this_thread::yield();
            if (!work(t)) mismatches.fetch_add(1);
        });
    for (auto& th : threads) th.join();
    return mismatches.load();
}

// Outputs of a single-threaded run: the batched path and the single-example path (which may sum
// in another order, so each concurrent path is compared with its own single-threaded result).
template <class Layer>
std::pair<mat<float>, mat<float>> sequential_outputs(const Layer& layer, const mat<float>& X) {
    mat<float> batch(layer.out_size(), X.cols()), single(layer.out_size(), X.cols());
    treegate::workspace<float> ws;
    layer.forward_batch(X, batch, ws);
    Eigen::VectorXf y(layer.out_size());
    for (index_t e = 0; e < X.cols(); ++e) {
        layer.forward(X.col(e), y);
        single.col(e) = y;
    }
    return {batch, single};
}

// Single-example and batched forward on 8 threads at once, each thread with its own workspace
// (as documented), compared bit for bit with the single-threaded outputs.
template <class Layer>
int concurrent_mismatches(const Layer& layer, const mat<float>& X) {
    // Named references, not a structured binding: C++17 lambdas cannot capture bindings
    // (GCC accepts it, clang does not).
    const auto expected = sequential_outputs(layer, X);
    const mat<float>& batch = expected.first;
    const mat<float>& single = expected.second;
    return run_concurrently([&](int t) {
        treegate::workspace<float> ws;
        mat<float> Y(batch.rows(), batch.cols());
        Eigen::VectorXf y(batch.rows());
        bool same = true;
        for (int rep = 0; rep < 4; ++rep) {
            layer.forward_batch(X, Y, ws);
            same = same && Y == batch;
            for (index_t e = t; e < X.cols(); e += thread_count) {
                layer.forward(X.col(e), y);
                same = same && y == single.col(e);
            }
        }
        return same;
    });
}

}  // namespace

TEST_CASE("concurrent forward on one const tree_linear gives identical results", "[concurrency]") {
    std::mt19937 g(91);
    for (auto mode : {treegate::tree_mode::path_sum, treegate::tree_mode::leaf_only}) {
        treegate::tree_linear<float> l(37, 29, 5, mode, treegate::gating::from_input({0, 3, 7, 11, 36}));
        l.initialize(5);
        const auto& layer = l;
        CHECK(concurrent_mismatches(layer, random_matrix<float>(37, 150, g)) == 0);
    }
}

TEST_CASE("concurrent forward on one const tree_feedforward and dense gives identical results", "[concurrency]") {
    std::mt19937 g(92);
    for (index_t width : {index_t{1}, index_t{3}}) {
        CAPTURE(width);
        treegate::tree_feedforward<float> ff(33, 21, width, 6, 2);
        ff.initialize(6);
        const auto& layer = ff;
        CHECK(concurrent_mismatches(layer, random_matrix<float>(33, 200, g)) == 0);
    }
    treegate::dense<float> d(40, 17);
    d.initialize(7);
    const auto& dense = d;
    CHECK(concurrent_mismatches(dense, random_matrix<float>(40, 90, g)) == 0);
}
