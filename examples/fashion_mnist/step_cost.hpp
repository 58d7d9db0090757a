// examples/fashion_mnist/step_cost.hpp — --step-cost: the wall time of one soft training step
// against one hard step of the same tree_feedforward, on one thread and on a pool of two.
#ifndef TREEGATE_EXAMPLE_FASHION_MNIST_STEP_COST_HPP
#define TREEGATE_EXAMPLE_FASHION_MNIST_STEP_COST_HPP

#include "training.hpp"

#include <treegate/parallel/thread_pool.hpp>

#include <cstdio>
#include <string>

namespace fashion_mnist {

/// Median step times (forward, loss, backward, Adam) of soft (T = 0.5, hardening 0.05) and hard
/// steps at batch `batch`. The soft passes and the hard forward run on the executor; the hard
/// backward runs on the calling thread (train::backward takes no executor).
inline void report_step_costs(const dataset& d, index_t batch) {
    struct shape {
        index_t width;
        int depth;
        index_t trees;
        tree_mode mode;
    };
    const shape shapes[] = {{4, 3, 1, tree_mode::path_sum}, {8, 3, 1, tree_mode::path_sum}, {4, 3, 2, tree_mode::path_sum},
                            {8, 3, 1, tree_mode::leaf_only}, {29, 3, 1, tree_mode::leaf_only},
                            {28, 4, 1, tree_mode::leaf_only}, {5, 5, 1, tree_mode::path_sum}};
    const tt::soft_routing_options so{0.5, 0.05};
    const int steps = 15;
    treegate::parallel::thread_pool pool(2);
    std::printf("ms per training step, batch %lld, median of %d (soft / hard: the cost of a soft step)\n",
                static_cast<long long>(batch), steps);
    std::printf("%-32s %10s %10s %8s %10s %10s %8s %9s\n", "tree_feedforward 784-10", "hard 1t", "soft 1t", "soft/hard",
                "hard 2t", "soft 2t", "soft/hard", "soft 1t/2t");
    for (const shape& s : shapes) {
        auto model = treegate::sequential(
            treegate::tree_feedforward<float>(784, 10, s.width, s.depth, s.trees, activation::relu, s.mode));
        model.initialize(7);
        const double h1 = step_seconds(model, d, batch, false, so, steps, treegate::parallel::serial{});
        const double s1 = step_seconds(model, d, batch, true, so, steps, treegate::parallel::serial{});
        const double h2 = step_seconds(model, d, batch, false, so, steps, pool);
        const double s2 = step_seconds(model, d, batch, true, so, steps, pool);
        const std::string name = std::string(treegate::to_string(s.mode)) + " K" + std::to_string(s.trees) + " D" +
                                 std::to_string(s.depth) + " w" + std::to_string(s.width);
        std::printf("%-32s %10.3f %10.3f %8.2f %10.3f %10.3f %8.2f %9.2f\n", name.c_str(), 1e3 * h1, 1e3 * s1, s1 / h1,
                    1e3 * h2, 1e3 * s2, s2 / h2, s1 / s2);
    }
}

}  // namespace fashion_mnist

#endif
