// examples/fashion_mnist/main.cpp — treegate on real data: dense MLPs against tree-gated models on
// Fashion-MNIST, placed on one axis of inference MACs per example (served form).
// Writes a results CSV, a per-seed CSV, an epoch-time-vs-depth CSV and, with gnuplot, a plot.
//
// Protocol: 10,000 of the 60,000 training images are held out for validation under one fixed
// shuffle; the epoch kept for each (model, seed) is the one with the best validation accuracy;
// with --search every configuration is chosen on validation too (search.hpp, grids.hpp), and the
// test set is evaluated once per kept (configuration, seed).
#include "data.hpp"
#include "grids.hpp"
#include "models.hpp"
#include "report.hpp"
#include "search.hpp"
#include "step_cost.hpp"
#include "training.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <sys/stat.h>

using namespace fashion_mnist;

namespace {
/// Validation images held out of the 60,000 training images.
constexpr index_t validation_examples = 10000;
}  // namespace

int main(int argc, char** argv) {
    std::string data_dir = "/usr/share/datasets/fashion-mnist", out = ".";
    bool quick = false, search = false, balance = false, step_cost = false;
    std::string only;
    int seeds = -1, threads = 2, epochs = 0;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&](const char* what) -> std::string {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "fashion_mnist: %s needs a value (see --help)\n", what);
                std::exit(2);
            }
            return argv[++i];
        };
        auto number = [&](const char* what) {
            const std::string v = value(what);
            char* end = nullptr;
            const long n = std::strtol(v.c_str(), &end, 10);
            if (end == v.c_str() || *end != '\0' || n < 1 || n > 64) {
                std::fprintf(stderr, "fashion_mnist: %s takes a number in [1, 64], got '%s'\n", what, v.c_str());
                std::exit(2);
            }
            return static_cast<int>(n);
        };
        if (a == "--help" || a == "-h") {
            usage(argv[0]);
            return 0;
        } else if (a == "--data") {
            data_dir = value("--data");
        } else if (a == "--out") {
            out = value("--out");
        } else if (a == "--quick") {
            quick = true;
        } else if (a == "--search") {
            search = true;
        } else if (a == "--search-balance") {
            search = balance = true;
        } else if (a == "--step-cost") {
            step_cost = true;
        } else if (a == "--seeds") {
            seeds = number("--seeds");
        } else if (a == "--epochs") {
            epochs = number("--epochs");
        } else if (a == "--models") {
            only = value("--models");
        } else if (a == "--threads") {
            threads = number("--threads");
        } else {
            std::fprintf(stderr, "fashion_mnist: unknown argument '%s' (see --help)\n", a.c_str());
            return 2;
        }
    }
    if (seeds < 0) seeds = quick ? 1 : 3;

    const char* files[] = {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                           "t10k-labels-idx1-ubyte.gz"};
    for (const char* f : files)
        if (!file_exists(data_dir + "/" + f)) {
            std::fprintf(stderr,
                         "fashion_mnist: %s/%s not found.\n"
                         "Install the data with `sudo apt-get install dataset-fashion-mnist` (Debian), or pass\n"
                         "--data DIR with a directory holding the four Fashion-MNIST *-ubyte.gz files.\n",
                         data_dir.c_str(), f);
            return 1;
        }
    if (::mkdir(out.c_str(), 0755) != 0 && !file_exists(out)) {
        std::fprintf(stderr, "fashion_mnist: cannot create the output directory %s\n", out.c_str());
        return 1;
    }

    dataset d;
    try {
        hold_out_validation(load_split(data_dir, "train"), validation_examples, d.train, d.val);
        d.test = load_split(data_dir, "t10k");
    } catch (const data_error& e) {
        std::fprintf(stderr, "fashion_mnist: malformed data: %s\n", e.what());
        return 1;
    }
    normalise(d);

    train_config cfg;
    if (quick) {
        cfg.epochs = 4;
        cfg.train_limit = 20000;
    }
    if (epochs > 0) cfg.epochs = epochs;
    const auto pixels = gating_pixels(d.train.X, 10);
    if (step_cost) {
        report_step_costs(d, cfg.batch);
        return 0;
    }

    const bool search_mode = search;
    search_grid grid = balance ? balance_grid() : search_mode ? protocol_grid(quick) : fixed_grid(quick, pixels);
    if (!only.empty()) {
        std::vector<std::string> parts;
        std::stringstream list(only);
        for (std::string part; std::getline(list, part, ',');) parts.push_back(part);
        grid = filtered(grid, parts);
        if (grid.slots.empty()) {
            std::fprintf(stderr, "fashion_mnist: no model name contains '%s'\n", only.c_str());
            return 2;
        }
    }
    const index_t n_train = cfg.train_limit > 0 ? std::min(cfg.train_limit, d.train.size()) : d.train.size();
    std::printf("treegate %s Fashion-MNIST%s%s: %lld training / %lld validation / %lld test examples, %d epochs (the "
                "one kept is chosen on validation), batch %lld, %d seed(s), %d thread(s); %zu configurations, %zu "
                "choices made on validation\n",
                treegate::version_string(), search_mode ? " search" : "",
                quick ? " (QUICK run: subset of the data, fewer models and epochs)" : "", static_cast<long long>(n_train),
                static_cast<long long>(d.val.size()), static_cast<long long>(d.test.size()), cfg.epochs,
                static_cast<long long>(cfg.batch), seeds, threads, grid.specs.size(), grid.slots.size());
    for (const auto& kv : configs_per_family(grid))
        std::printf("  %-40s %d configuration(s) tried\n", kv.first.c_str(), kv.second);

    const auto t0 = clock_type::now();
    search_outcome outcome;
    try {
        outcome = run_search(grid, d, cfg, seeds, threads);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "fashion_mnist: training failed: %s\n", e.what());
        return 1;
    }
    const double wall = seconds_since(t0);
    const std::vector<summary> rows = summarise(grid, outcome);
    print_table(rows, seeds, threads);
    write_results_csv(out + "/fashion_mnist_results.csv", rows);
    write_runs_csv(out + "/fashion_mnist_runs.csv", outcome.results);
    if (search_mode) write_search_csv(out + "/fashion_mnist_search.csv", grid, outcome);
    std::printf("results: %s/fashion_mnist_results.csv (per seed: fashion_mnist_runs.csv%s); %.0f s of training\n",
                out.c_str(), search_mode ? "; every candidate: fashion_mnist_search.csv" : "", wall);
    draw_plot(out, rows, quick);
    if (search_mode) return 0;  // the search is the comparison only

    // Conditional training: the time of one epoch against the depth of a first-layer path_sum
    // tree at a fixed width, one job at a time (nothing else running in this process).
    std::printf("\nepoch time vs depth (tree first layer 784-T<D>-32-10, path_sum, one thread, %lld examples/epoch)\n",
                static_cast<long long>(n_train));
    std::printf("%6s %12s %8s %14s %8s %16s %8s %9s %8s\n", "depth", "params", "ratio", "train MACs/ex", "ratio",
                "updated/step", "ratio", "epoch s", "ratio");
    train_config one = cfg;
    one.epochs = 1;
    one.select_on_validation = false;  // a timing run: no model is kept
    std::ofstream et(out + "/fashion_mnist_epoch_time.csv");
    et << "depth,params,train_macs_per_example,updated_params_per_step,epoch_seconds\n";
    const std::vector<int> sweep_depths = quick ? std::vector<int>{0, 4, 8} : std::vector<int>{0, 2, 4, 6, 8};
    std::vector<model_spec> depth_sweep;  // epoch time against depth at a fixed width
    if (only.empty())                     // --models: the comparison rows only
        for (int D : sweep_depths)
            depth_sweep.push_back(tree_first(32, D, tree_mode::path_sum, {}, pixels, "depth sweep"));
    run_result base;
    for (std::size_t i = 0; i < depth_sweep.size(); ++i) {
        const run_result r = depth_sweep[i].run(d, one, 1, nullptr, 0);
        if (i == 0) base = r;
        std::printf("%6d %12lld %8.1f %14lld %8.1f %16.0f %8.1f %9.2f %8.1f\n", sweep_depths[i],
                    static_cast<long long>(r.train_params),
                    static_cast<double>(r.train_params) / static_cast<double>(base.train_params),
                    static_cast<long long>(r.train_macs),
                    static_cast<double>(r.train_macs) / static_cast<double>(base.train_macs), r.touched_per_step,
                    r.touched_per_step / base.touched_per_step, r.epoch_seconds, r.epoch_seconds / base.epoch_seconds);
        et << sweep_depths[i] << ',' << r.train_params << ',' << r.train_macs << ',' << r.touched_per_step << ','
           << r.epoch_seconds << '\n';
    }
    std::printf("epoch times: %s/fashion_mnist_epoch_time.csv\n", out.c_str());
    return 0;
}
