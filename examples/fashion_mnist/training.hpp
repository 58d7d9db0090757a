// examples/fashion_mnist/training.hpp — the Fashion-MNIST example's training loop: Adam, soft
// routing schedules, evaluation, and the choice of the epoch to keep on the validation split.
#ifndef TREEGATE_EXAMPLE_FASHION_MNIST_TRAINING_HPP
#define TREEGATE_EXAMPLE_FASHION_MNIST_TRAINING_HPP

#include "data.hpp"

#include <treegate/train/backward.hpp>
#include <treegate/train/gradients.hpp>
#include <treegate/train/loss.hpp>
#include <treegate/train/optimizer.hpp>
#include <treegate/train/soft_routing.hpp>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

namespace fashion_mnist {

struct train_config {
    int epochs = 8;
    index_t batch = 128;
    double lr = 2e-3;
    index_t train_limit = 0;  // 0: the whole training split
    bool select_on_validation = true;  // false: keep the last epoch, skip the validation passes
};

/// Soft routing of the model's tree_feedforward stages (train/soft_routing.hpp) during the first
/// `soft_fraction` of the steps: the temperature falls geometrically from t_start to t_end and
/// the hardening weight rises linearly from 0 to `hardening`; the remaining steps train hard
/// (the ordinary forward and backward), so the leaves adapt to the routes the served model takes.
/// soft_fraction = 0: hard training throughout. `balance` is the load-balancing weight (constant
/// over the soft phase).
struct soft_schedule {
    double soft_fraction = 0.0;
    double t_start = 1.0, t_end = 0.1;
    double hardening = 0.0;
    double balance = 0.0;
};

/// Work shared by every job and read by the progress display.
struct progress {
    std::atomic<long long> done{0};  // weighted work units finished
    long long total = 0;
    std::atomic<int> jobs_done{0};
    int jobs = 0;
};

struct run_result {
    std::string model, family;
    std::uint64_t seed = 0;
    index_t params = 0, macs = 0, train_params = 0, train_macs = 0;
    double accuracy = 0, val_accuracy = 0, train_seconds = 0, epoch_seconds = 0, infer_us = 0;
    int kept_epoch = 0;  // 1-based: the epoch whose model was kept (best validation accuracy)
    double touched_per_step = 0;  // parameters updated per training step (visited blocks)
    bool tested = false;          // `accuracy` holds the test accuracy (set by test_once)
    std::function<double()> time_inference;  // µs per example of the served model on the test set
    std::function<double()> test_accuracy;   // evaluates the served model on the test set

    /// The one test evaluation of this (model, seed): only for configurations already chosen.
    void test_once() {
        if (tested) return;
        accuracy = test_accuracy();
        tested = true;
    }
};

/// Evaluates `model` on a split (validation or test) in batches; returns the accuracy.
template <class Model>
double evaluate(const Model& model, const split& test) {
    typename Model::workspace_type ws;
    const index_t batch = 1000;
    index_t correct = 0;
    mat Y(10, batch);
    for (index_t b = 0; b < test.size(); b += batch) {
        const index_t n = std::min(batch, test.size() - b);
        auto Yn = Y.leftCols(n);
        model.forward_batch(test.X.middleCols(b, n), Yn, ws);
        correct += tt::count_correct(Yn, test.labels.data() + b);
    }
    return static_cast<double>(correct) / static_cast<double>(test.size());
}

/// Median over 3 passes of the wall time per example of a batched forward over the test set.
template <class Model>
double inference_us(const Model& model, const split& test) {
    typename Model::workspace_type ws;
    const index_t batch = 1000;
    mat Y(10, batch);
    std::vector<double> t;
    for (int rep = 0; rep < 4; ++rep) {
        const auto t0 = clock_type::now();
        for (index_t b = 0; b < test.size(); b += batch) {
            const index_t n = std::min(batch, test.size() - b);
            model.forward_batch(test.X.middleCols(b, n), Y.leftCols(n), ws);
        }
        if (rep > 0) t.push_back(seconds_since(t0) * 1e6 / static_cast<double>(test.size()));  // rep 0 warms up
    }
    std::sort(t.begin(), t.end());
    return t[1];
}

/// What train() reports besides the trained model.
struct train_outcome {
    double seconds = 0, first_epoch_seconds = 0, touched_per_step = 0;
    double val_accuracy = 0;  // of the kept model
    int kept_epoch = 0;       // 1-based
};

/// What one training step needs besides the model: the batch, gradients and scratch.
template <class Model>
struct step_state {
    decltype(tt::make_gradient(std::declval<const Model&>())) grad;
    typename Model::workspace_type fws;
    tt::sequential_backward_workspace<float> bws;
    tt::soft_sequential_workspace<float> sws;
    mat X, Y, dY;
    tt::param_list<float> blocks;
    step_state(const Model& model, index_t batch) : grad(tt::make_gradient(model)), X(784, batch), Y(10, batch), dY(10, batch) {}
};

inline tt::adam<float>::options adam_options(double lr, tt::weight_decay decay) {
    tt::adam<float>::options o;
    o.lr = lr;
    o.decay = decay;
    return o;
}

/// One Adam step on the batch st.X with labels `labels`: soft (options `so`) or hard forward and
/// backward, the forward passes on `ex` (the hard backward runs on the calling thread). Returns
/// the parameters of the blocks the step updated.
template <class Model, class Executor>
double train_step(Model& model, step_state<Model>& st, const std::uint8_t* labels, bool soft,
                  const tt::soft_routing_options& so, tt::adam<float>& opt, Executor&& ex) {
    st.grad.zero();
    if (soft) {
        tt::soft_forward(model, st.X, st.Y, st.fws, st.sws, so, ex);
        tt::softmax_cross_entropy(st.Y, labels, st.dY);
        tt::soft_backward(model, st.X, st.fws, st.dY, st.grad, st.sws, so, ex);
    } else {
        model.forward_batch(st.X, st.Y, st.fws, ex);
        tt::softmax_cross_entropy(st.Y, labels, st.dY);
        tt::backward(model, st.X, st.fws, st.dY, st.grad, st.bws);
    }
    st.blocks.clear();
    st.grad.collect(model, st.blocks);
    double touched = 0;
    for (const auto& blk : st.blocks) touched += blk.visited ? static_cast<double>(blk.size) : 0.0;
    opt.step(st.blocks);
    return touched;
}

/// Median wall time of `steps` training steps (after 2 warm-up steps) on the first batches of
/// the training split: soft at options `so`, or hard.
template <class Model, class Executor>
double step_seconds(Model model, const dataset& d, index_t batch, bool soft, const tt::soft_routing_options& so,
                    int steps, Executor&& ex) {
    step_state<Model> st(model, batch);
    tt::adam<float> opt(adam_options(1e-3, {}));
    std::vector<double> t;
    for (int k = 0; k < steps + 2; ++k) {
        const index_t b = (static_cast<index_t>(k) * batch) % (d.train.size() - batch);
        st.X = d.train.X.middleCols(b, batch);
        const auto t0 = clock_type::now();
        train_step(model, st, d.train.labels.data() + b, soft, so, opt, ex);
        if (k >= 2) t.push_back(seconds_since(t0));
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

/// Adam with a linear warm-down of the learning rate over the last half of training; the
/// permutation of every epoch comes from (seed, epoch), so a job is bit-identical for its seed.
/// After every epoch the model (as it would be served: hard routes) is evaluated on the validation
/// split, and `model` ends as the epoch with the best validation accuracy (the first such on ties):
/// the epoch to keep is chosen on validation, never on the test set.
template <class Model>
train_outcome train(Model& model, const dataset& d, const train_config& cfg, tt::weight_decay decay,
                    const soft_schedule& soft, std::uint64_t seed, progress* prog, long long unit_per_batch) {
    train_outcome result;
    std::unique_ptr<Model> best;  // the kept epoch's model, when choosing on validation
    double best_val = -1;
    const index_t n = cfg.train_limit > 0 ? std::min(cfg.train_limit, d.train.size()) : d.train.size();
    const index_t batch = cfg.batch;
    step_state<Model> st(model, batch);
    tt::adam<float> opt(adam_options(cfg.lr, decay));
    std::vector<std::uint8_t> lb(static_cast<std::size_t>(batch));
    const long long steps_per_epoch = n / batch;
    const long long total_steps = steps_per_epoch * cfg.epochs;
    long long step = 0;
    double touched = 0;
    const auto t0 = clock_type::now();
    for (int epoch = 0; epoch < cfg.epochs; ++epoch) {
        const auto te = clock_type::now();
        const auto order = tt::shuffled_indices(n, seed, static_cast<std::uint64_t>(epoch));
        for (index_t b = 0; b + batch <= n; b += batch, ++step) {
            const double frac = static_cast<double>(step) / static_cast<double>(total_steps);
            opt.set_learning_rate(frac < 0.5 ? cfg.lr : cfg.lr * 2.0 * (1.0 - frac) + 1e-2 * cfg.lr);
            tt::gather_columns(d.train.X, order.data() + b, batch, st.X);
            for (index_t k = 0; k < batch; ++k)
                lb[static_cast<std::size_t>(k)] = d.train.labels[static_cast<std::size_t>(order[static_cast<std::size_t>(b + k)])];
            const bool is_soft = frac < soft.soft_fraction;
            const double s = is_soft ? frac / soft.soft_fraction : 0.0;  // 0 -> 1 over the soft phase
            const tt::soft_routing_options so{soft.t_start * std::pow(soft.t_end / soft.t_start, s), soft.hardening * s,
                                             soft.balance};
            touched += train_step(model, st, lb.data(), is_soft, so, opt, treegate::parallel::serial{});
            if (prog != nullptr) prog->done += unit_per_batch;
        }
        if (epoch == 0) result.first_epoch_seconds = seconds_since(te);
        if (cfg.select_on_validation) {
            const double val = evaluate(model, d.val);
            if (val > best_val) {
                best_val = val;
                best = std::make_unique<Model>(model);
                result.kept_epoch = epoch + 1;
            }
        }
    }
    result.touched_per_step = touched / static_cast<double>(std::max(step, 1LL));
    result.seconds = seconds_since(t0);
    if (best) {  // set by the first epoch whenever choosing on validation
        model = std::move(*best);
        result.val_accuracy = best_val;
    }
    return result;
}

}  // namespace fashion_mnist

#endif
