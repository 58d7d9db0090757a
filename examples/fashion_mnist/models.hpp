// examples/fashion_mnist/models.hpp — the model families the Fashion-MNIST example compares:
// dense MLPs, tree_linear heads and first layers, tree_feedforward blocks (hard and soft-routed).
#ifndef TREEGATE_EXAMPLE_FASHION_MNIST_MODELS_HPP
#define TREEGATE_EXAMPLE_FASHION_MNIST_MODELS_HPP

#include "training.hpp"

#include <treegate/layers/flatten.hpp>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace fashion_mnist {

/// One row of the comparison: how to build, train and serve a model. `cost` is the training work
/// per example (MACs of the trained form), used to weight the progress display.
struct model_spec {
    std::string name, family;
    index_t cost = 0;
    index_t params = 0, macs = 0;  // of the served model
    std::function<run_result(const dataset&, const train_config&, std::uint64_t seed, progress*, long long unit)> run;
};

/// Builds a spec from a factory of the trained model, a function turning it into the served
/// model (identity, or flattening a path_sum tree) and the weight decay.
template <class Make, class Serve>
model_spec make_spec(std::string name, std::string family, Make make, Serve serve, tt::weight_decay decay = {},
                     soft_schedule soft = {}, double cost_factor = 1.0) {
    model_spec s;
    s.name = std::move(name);
    s.family = std::move(family);
    s.cost = static_cast<index_t>(static_cast<double>(make().macs_per_example()) * cost_factor);
    const auto served = serve(make());
    s.params = served.parameter_count();
    s.macs = served.macs_per_example();
    s.run = [make, serve, decay, soft, name = s.name, family = s.family](const dataset& d, const train_config& cfg,
                                                                   std::uint64_t seed, progress* prog, long long unit) {
        auto model = make();
        model.initialize(seed * 1000 + 17);
        run_result r;
        r.model = name;
        r.family = family;
        r.seed = seed;
        r.train_params = model.parameter_count();
        r.train_macs = model.macs_per_example();
        const train_outcome o = train(model, d, cfg, decay, soft, seed, prog, unit);
        r.train_seconds = o.seconds;
        r.epoch_seconds = o.first_epoch_seconds;
        r.touched_per_step = o.touched_per_step;
        r.val_accuracy = o.val_accuracy;
        r.kept_epoch = o.kept_epoch;
        auto served = std::make_shared<decltype(serve(model))>(serve(model));
        r.params = served->parameter_count();
        r.macs = served->macs_per_example();
        // The test set stays unread until the caller has made every choice (run_result::test_once).
        const split* test = &d.test;
        r.test_accuracy = [served, test] { return evaluate(*served, *test); };
        r.time_inference = [served, test] { return inference_us(*served, *test); };
        return r;
    };
    return s;
}

struct identity_serve {
    template <class Model>
    Model operator()(const Model& m) const {
        return m;
    }
};

/// Replaces layer I (a path_sum tree_linear) by its flattened leaf_only table.
template <std::size_t I>
struct flatten_serve {
    template <class Model>
    Model operator()(const Model& m) const {
        Model s = m;
        s.template layer<I>() = treegate::flatten(m.template layer<I>());
        return s;
    }
};

/// A weight as it appears in a model's name: the shortest decimal form ("0.1", "0.01").
inline std::string number(double x) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", x);
    return buf;
}

inline std::vector<index_t> first_units(int depth) {
    std::vector<index_t> v;
    for (int j = 0; j < depth; ++j) v.push_back(j);
    return v;
}

inline model_spec dense_mlp(index_t h) {
    return make_spec("dense 784-" + std::to_string(h) + "-10", "dense MLP", [h] {
        return treegate::sequential(treegate::dense<float>(784, h), treegate::activation_layer<float>(activation::relu, h),
                                    treegate::dense<float>(h, 10));
    }, identity_serve{});
}

/// (a)/(b)/(c): dense 784 -> h, ReLU, then a tree_linear h -> 10 gated by hidden units 0..D-1.
inline model_spec tree_head(index_t h, int depth, tree_mode mode, tt::weight_decay decay, const std::string& family) {
    const bool ps = mode == tree_mode::path_sum;
    std::string name = "head 784-" + std::to_string(h) + "-T" + std::to_string(depth) + "-10 " +
                       (ps ? "path_sum" : "leaf_only");
    if (decay.lambda > 0) name += " +decay";
    if (ps) name += " (flat)";
    auto make = [h, depth, mode] {
        return treegate::sequential(treegate::dense<float>(784, h), treegate::activation_layer<float>(activation::relu, h),
                                    treegate::tree_linear<float>(h, 10, depth, mode, gating::from_input(first_units(depth))));
    };
    if (ps) return make_spec(name, family, make, flatten_serve<2>{}, decay);
    return make_spec(name, family, make, identity_serve{}, decay);
}

/// (e): a tree_linear first layer 784 -> h gated by D pixels, ReLU, dense h -> 10.
inline model_spec tree_first(index_t h, int depth, tree_mode mode, tt::weight_decay decay, const std::vector<index_t>& pixels,
                      const std::string& family) {
    const bool ps = mode == tree_mode::path_sum;
    std::string name = "first 784-T" + std::to_string(depth) + "-" + std::to_string(h) + "-10 " +
                       (ps ? "path_sum" : "leaf_only");
    if (decay.lambda > 0) name += " +decay";
    if (ps) name += " (flat)";
    std::vector<index_t> gates(pixels.begin(), pixels.begin() + depth);
    auto make = [h, depth, mode, gates] {
        return treegate::sequential(treegate::tree_linear<float>(784, h, depth, mode, gating::from_input(gates)),
                                    treegate::activation_layer<float>(activation::relu, h), treegate::dense<float>(h, 10));
    };
    if (ps) return make_spec(name, family, make, flatten_serve<0>{}, decay);
    return make_spec(name, family, make, identity_serve{}, decay);
}

/// (d): a tree_feedforward block 784 -> 10 (K trees of depth D, node width w, ReLU).
inline model_spec fff(index_t width, int depth, index_t trees, treegate::tree_mode mode, tt::weight_decay decay) {
    std::string name = std::string("fff ") + treegate::to_string(mode) + " K" + std::to_string(trees) + " D" +
                       std::to_string(depth) + " w" + std::to_string(width);
    if (decay.lambda > 0) name += " +decay";
    return make_spec(name, std::string("tree_feedforward ") + treegate::to_string(mode), [=] {
        return treegate::sequential(
            treegate::tree_feedforward<float>(784, 10, width, depth, trees, activation::relu, mode));
    }, identity_serve{}, decay);
}

/// (d) trained with soft routing for the first part of training, then hard; served hard. Soft
/// steps evaluate every node: 2^(D+1) - 1 node MLPs (node_sum) or 2^D leaf MLPs (leaf_mlp) per
/// example instead of D + 1 or 1, which `cost_factor` tells the progress display.
inline model_spec fff_soft(index_t width, int depth, index_t trees, treegate::tree_mode mode, const soft_schedule& soft) {
    const std::string v = treegate::to_string(mode);
    const std::string name = "fff " + v + " K" + std::to_string(trees) + " D" + std::to_string(depth) + " w" +
                             std::to_string(width) + " soft" + (soft.balance > 0 ? " balance " + number(soft.balance) : "");
    const double nodes = mode == treegate::tree_mode::path_sum ? std::ldexp(1.0, depth + 1) - 1.0 : std::ldexp(1.0, depth);
    const double hard = mode == treegate::tree_mode::path_sum ? depth + 1.0 : 1.0;
    const double factor = 1.0 + soft.soft_fraction * (nodes / hard - 1.0);
    return make_spec(name, "tree_feedforward " + v + ", soft-routed", [=] {
        return treegate::sequential(
            treegate::tree_feedforward<float>(784, 10, width, depth, trees, activation::relu, mode));
    }, identity_serve{}, tt::weight_decay{}, soft, factor);
}

}  // namespace fashion_mnist

#endif
