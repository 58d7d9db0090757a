// examples/fashion_mnist/grids.hpp — the Fashion-MNIST example's configurations: the fixed row
// list of the plain run and the candidate grid of --search, as slots chosen on validation.
#ifndef TREEGATE_EXAMPLE_FASHION_MNIST_GRIDS_HPP
#define TREEGATE_EXAMPLE_FASHION_MNIST_GRIDS_HPP

#include "models.hpp"
#include "search.hpp"

#include <string>
#include <vector>

namespace fashion_mnist {

/// The soft schedule of every soft row: soft routing for the first 3/4 of the steps, T from 1 to
/// 0.1, hardening weight from 0 to 0.1, then hard. Fixed before any soft run, never searched.
inline soft_schedule default_soft_schedule() {
    soft_schedule soft;
    soft.soft_fraction = 0.75;
    soft.t_start = 1.0;
    soft.t_end = 0.1;
    soft.hardening = 0.1;
    return soft;
}

/// The plain run: every row is its own slot with one candidate (no choice but the epoch).
inline search_grid fixed_grid(bool quick, const std::vector<index_t>& pixels) {
    const tt::weight_decay none{}, depth_decay{0.01, 2.0};
    const soft_schedule soft = default_soft_schedule();
    const std::string head_family = "tree head, path_sum (flat)", first_family = "tree first layer, path_sum (flat)";
    std::vector<model_spec> specs;
    if (quick) {
        for (index_t h : {16, 64, 256}) specs.push_back(dense_mlp(h));
        specs.push_back(tree_head(16, 6, tree_mode::path_sum, none, head_family));
        specs.push_back(tree_first(16, 4, tree_mode::path_sum, none, pixels, first_family));
        specs.push_back(fff(8, 3, 1, tree_mode::path_sum, none));
        specs.push_back(fff_soft(4, 3, 1, tree_mode::path_sum, soft));
    } else {
        for (index_t h : {8, 11, 16, 32, 64, 128, 256}) specs.push_back(dense_mlp(h));
        // (a) the paper's layer as the output layer, gated by 6 hidden units, served flat.
        for (index_t h : {8, 16, 32}) specs.push_back(tree_head(h, 6, tree_mode::path_sum, none, head_family));
        // (b) the same as a flat table from the start: what the path sum's sharing buys.
        for (index_t h : {16, 32}) specs.push_back(tree_head(h, 6, tree_mode::leaf_only, none, "tree head, leaf_only"));
        // (c) depth-scaled weight decay on the path-sum head.
        for (index_t h : {16, 32})
            specs.push_back(tree_head(h, 6, tree_mode::path_sum, depth_decay, "tree head, path_sum + depth decay (flat)"));
        // (e) where the tree sits: the first layer, gated by 4 pixels.
        specs.push_back(tree_first(16, 4, tree_mode::path_sum, none, pixels, first_family));
        specs.push_back(tree_first(16, 4, tree_mode::leaf_only, none, pixels, "tree first layer, leaf_only"));
        // (d) tree_feedforward blocks replacing the whole MLP.
        for (index_t w : {4, 8}) specs.push_back(fff(w, 3, 1, tree_mode::path_sum, none));
        specs.push_back(fff(32, 3, 1, tree_mode::leaf_only, none));
        // (f) the same tree_feedforward shapes trained with soft routing, served hard.
        for (index_t w : {2, 4, 8}) specs.push_back(fff_soft(w, 3, 1, tree_mode::path_sum, soft));
        for (index_t w : {8, 32}) specs.push_back(fff_soft(w, 3, 1, tree_mode::leaf_only, soft));
    }
    search_grid g;
    for (auto& s : specs) {
        std::string family = s.family;
        g.add(std::move(family), "", {std::move(s)});
    }
    return g;
}

/// --search: per family and budget (MACs of the served model at most those of a dense width),
/// the candidates a choice is made among on validation. The candidates of a budget are the shapes
/// that spend it differently: one tree or two, depth against width, path_sum or leaf_only.
inline search_grid protocol_grid(bool quick) {
    const tt::weight_decay none{}, depth_decay{0.01, 2.0};
    const soft_schedule soft = default_soft_schedule();
    const tree_mode ps = tree_mode::path_sum, lo = tree_mode::leaf_only;
    const std::string soft_family = "tree_feedforward, soft-routed";
    auto budget = [](index_t macs) { return "<= " + std::to_string(macs) + " MACs"; };
    search_grid g;
    if (quick) {
        for (index_t h : {16, 64}) g.add("dense MLP", "784-" + std::to_string(h) + "-10", {dense_mlp(h)});
        g.add(soft_family, budget(12704), {fff_soft(4, 3, 1, ps, soft), fff_soft(2, 3, 2, ps, soft)}, 12704);
        return g;
    }
    // The dense curve: one configuration per width; its epoch is chosen on validation as for all.
    for (index_t h : {8, 11, 16, 32, 64, 128, 256}) g.add("dense MLP", "784-" + std::to_string(h) + "-10", {dense_mlp(h)});
    // The path-sum head: with or without depth-scaled decay.
    for (index_t h : {8, 16, 32})
        g.add("tree head, path_sum (flat)", "h = " + std::to_string(h),
              {tree_head(h, 6, ps, none, ""), tree_head(h, 6, ps, depth_decay, "")});
    // tree_feedforward trained hard: one tree or two of the same MACs.
    g.add("tree_feedforward path_sum", budget(12704), {fff(4, 3, 1, ps, none), fff(2, 3, 2, ps, none)}, 12704);
    g.add("tree_feedforward path_sum", budget(25408), {fff(8, 3, 1, ps, none), fff(4, 3, 2, ps, none)}, 25408);
    // Soft-routed tree_feedforward, served hard.
    g.add(soft_family, budget(6352), {fff_soft(2, 3, 1, ps, soft), fff_soft(1, 3, 2, ps, soft), fff_soft(6, 2, 1, lo, soft)},
          6352);
    g.add(soft_family, budget(8734), {fff_soft(8, 3, 1, lo, soft), fff_soft(3, 2, 1, ps, soft)}, 8734);
    g.add(soft_family, budget(12704),
          {fff_soft(4, 3, 1, ps, soft), fff_soft(2, 3, 2, ps, soft), fff_soft(13, 3, 1, lo, soft), fff_soft(12, 4, 1, lo, soft)},
          12704);
    g.add(soft_family, budget(25408),
          {fff_soft(8, 3, 1, ps, soft), fff_soft(4, 3, 2, ps, soft), fff_soft(29, 3, 1, lo, soft), fff_soft(28, 4, 1, lo, soft)},
          25408);
    // Equal parameters: at least those of dense 784-256-10 at no more than 1/8 of its MACs.
    g.add(soft_family, budget(25408) + ", >= 203530 parameters", {fff_soft(28, 4, 1, lo, soft)}, 25408, 203530);
    return g;
}

/// --search-balance: the load-balancing penalty (train/soft_routing.hpp) as more choices, run
/// after the main search on two of its kept soft rows: the one at <= 12704 MACs with weights 0
/// (the same model as in the search), 0.01 and 0.1, and the equal-parameter one with 0 and 0.1.
inline search_grid balance_grid() {
    search_grid g;
    auto with = [](index_t width, int depth, std::vector<double> betas) {
        std::vector<model_spec> c;
        for (double beta : betas) {
            soft_schedule soft = default_soft_schedule();
            soft.balance = beta;
            c.push_back(fff_soft(width, depth, 1, tree_mode::leaf_only, soft));
        }
        return c;
    };
    g.add("tree_feedforward, soft-routed", "<= 12704 MACs, balance weight", with(13, 3, {0.0, 0.01, 0.1}), 12704);
    g.add("tree_feedforward, soft-routed", "<= 25408 MACs, >= 203530 parameters, balance weight", with(28, 4, {0.0, 0.1}),
          25408, 203530);
    return g;
}

}  // namespace fashion_mnist

#endif
