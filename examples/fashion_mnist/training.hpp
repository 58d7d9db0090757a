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

#include <atomic>
#include <functional>
#include <memory>
#include <utility>

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
/// soft_fraction = 0: hard training throughout.
struct soft_schedule {
    double soft_fraction = 0.0;
    double t_start = 1.0, t_end = 0.1;
    double hardening = 0.0;
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
    std::function<double()> time_inference;  // µs per example of the served model on the test set
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
    auto grad = tt::make_gradient(model);
    tt::adam<float>::options o;
    o.lr = cfg.lr;
    o.decay = decay;
    tt::adam<float> opt(o);
    typename Model::workspace_type fws;
    tt::sequential_backward_workspace<float> bws;
    tt::soft_sequential_workspace<float> sws;
    mat Xb(784, batch), Yb(10, batch), dY(10, batch);
    std::vector<std::uint8_t> lb(static_cast<std::size_t>(batch));
    const long long steps_per_epoch = n / batch;
    const long long total_steps = steps_per_epoch * cfg.epochs;
    long long step = 0;
    double touched = 0;
    tt::param_list<float> blocks;
    const auto t0 = clock_type::now();
    for (int epoch = 0; epoch < cfg.epochs; ++epoch) {
        const auto te = clock_type::now();
        const auto order = tt::shuffled_indices(n, seed, static_cast<std::uint64_t>(epoch));
        for (index_t b = 0; b + batch <= n; b += batch, ++step) {
            const double frac = static_cast<double>(step) / static_cast<double>(total_steps);
            opt.set_learning_rate(frac < 0.5 ? cfg.lr : cfg.lr * 2.0 * (1.0 - frac) + 1e-2 * cfg.lr);
            tt::gather_columns(d.train.X, order.data() + b, batch, Xb);
            for (index_t k = 0; k < batch; ++k)
                lb[static_cast<std::size_t>(k)] = d.train.labels[static_cast<std::size_t>(order[static_cast<std::size_t>(b + k)])];
            grad.zero();
            if (frac < soft.soft_fraction) {
                const double s = frac / soft.soft_fraction;  // 0 -> 1 over the soft phase
                const tt::soft_routing_options so{soft.t_start * std::pow(soft.t_end / soft.t_start, s), soft.hardening * s};
                tt::soft_forward(model, Xb, Yb, fws, sws, so);
                tt::softmax_cross_entropy(Yb, lb.data(), dY);
                tt::soft_backward(model, Xb, fws, dY, grad, sws, so);
            } else {
                model.forward_batch(Xb, Yb, fws);
                tt::softmax_cross_entropy(Yb, lb.data(), dY);
                tt::backward(model, Xb, fws, dY, grad, bws);
            }
            blocks.clear();
            grad.collect(model, blocks);
            for (const auto& blk : blocks) touched += blk.visited ? static_cast<double>(blk.size) : 0.0;
            opt.step(blocks);
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
