// examples/fashion_mnist/main.cpp — treegate on real data: dense MLPs against tree-gated models on
// Fashion-MNIST, placed on one axis of inference MACs per example (served form).
// Writes a results CSV, a per-seed CSV, an epoch-time-vs-depth CSV and, with gnuplot, a plot.
//
// Protocol: 10,000 of the 60,000 training images are held out for validation under one fixed
// shuffle; the epoch kept for each (model, seed) is the one with the best validation accuracy, and
// the test set is evaluated once per kept model.
#include "data.hpp"
#include "models.hpp"
#include "report.hpp"
#include "training.hpp"

#include <treegate/parallel/thread_pool.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <sys/stat.h>
#include <unistd.h>

using namespace fashion_mnist;

namespace {
/// Validation images held out of the 60,000 training images.
constexpr index_t validation_examples = 10000;
}  // namespace

int main(int argc, char** argv) {
    std::string data_dir = "/usr/share/datasets/fashion-mnist", out = ".";
    bool quick = false;
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

    // The rows of the comparison. A new model family is one more entry here.
    const tt::weight_decay none{}, depth_decay{0.01, 2.0};
    // Soft rows: soft routing for the first 3/4 of the steps (T from 1 to 0.1, hardening weight
    // from 0 to 0.1), then hard; one schedule for every soft row, set before any soft run.
    soft_schedule soft;
    soft.soft_fraction = 0.75;
    soft.t_start = 1.0;
    soft.t_end = 0.1;
    soft.hardening = 0.1;
    const std::string head_family = "tree head, path_sum (flat)", first_family = "tree first layer, path_sum (flat)";
    std::vector<model_spec> specs;
    std::vector<model_spec> depth_sweep;  // epoch time against depth at a fixed width
    std::vector<int> sweep_depths;
    if (quick) {
        for (index_t h : {16, 64, 256}) specs.push_back(dense_mlp(h));
        specs.push_back(tree_head(16, 6, tree_mode::path_sum, none, head_family));
        specs.push_back(tree_first(16, 4, tree_mode::path_sum, none, pixels, first_family));
        specs.push_back(fff(8, 3, 1, treegate::tree_mode::path_sum, none));
        specs.push_back(fff_soft(4, 3, 1, treegate::tree_mode::path_sum, soft));
        sweep_depths = {0, 4, 8};
    } else {
        // 784-11-10 (8734 MACs) sits next to the soft leaf_only w8 row (8704 MACs).
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
        for (index_t w : {4, 8}) specs.push_back(fff(w, 3, 1, treegate::tree_mode::path_sum, none));
        specs.push_back(fff(32, 3, 1, treegate::tree_mode::leaf_only, none));
        // (f) the same tree_feedforward shapes trained with soft routing, served hard.
        for (index_t w : {2, 4, 8}) specs.push_back(fff_soft(w, 3, 1, treegate::tree_mode::path_sum, soft));
        for (index_t w : {8, 32}) specs.push_back(fff_soft(w, 3, 1, treegate::tree_mode::leaf_only, soft));
        sweep_depths = {0, 2, 4, 6, 8};
    }
    for (int D : sweep_depths) depth_sweep.push_back(tree_first(32, D, tree_mode::path_sum, none, pixels, "depth sweep"));

    if (!only.empty()) {
        std::vector<model_spec> kept;
        std::vector<std::string> parts;
        std::stringstream list(only);
        for (std::string part; std::getline(list, part, ',');) parts.push_back(part);
        for (auto& s : specs)
            if (std::any_of(parts.begin(), parts.end(), [&](const std::string& p) { return s.name.find(p) != std::string::npos; }))
                kept.push_back(std::move(s));
        specs = std::move(kept);
        if (specs.empty()) {
            std::fprintf(stderr, "fashion_mnist: no model name contains '%s'\n", only.c_str());
            return 2;
        }
    }

    std::printf("treegate %s Fashion-MNIST%s: %lld training / %lld validation / %lld test examples, %d epochs (the "
                "one kept is chosen on validation), batch %lld, %d seed(s), %d thread(s)\n",
                treegate::version_string(), quick ? " (QUICK run: subset of the data, fewer models and epochs)" : "",
                static_cast<long long>(cfg.train_limit > 0 ? std::min(cfg.train_limit, d.train.size()) : d.train.size()),
                static_cast<long long>(d.val.size()), static_cast<long long>(d.test.size()), cfg.epochs,
                static_cast<long long>(cfg.batch), seeds, threads);

    // Jobs: every (model, seed); the most expensive first so the threads finish together.
    struct job {
        std::size_t spec;
        std::uint64_t seed;
    };
    std::vector<job> jobs;
    for (std::size_t s = 0; s < specs.size(); ++s)
        for (int k = 0; k < seeds; ++k) jobs.push_back({s, static_cast<std::uint64_t>(k + 1)});
    std::stable_sort(jobs.begin(), jobs.end(), [&](const job& a, const job& b) { return specs[a.spec].cost > specs[b.spec].cost; });
    progress prog;
    const index_t n_train = cfg.train_limit > 0 ? std::min(cfg.train_limit, d.train.size()) : d.train.size();
    const long long batches_per_job = static_cast<long long>(n_train / cfg.batch) * cfg.epochs;
    auto unit_of = [&](const model_spec& s) { return static_cast<long long>(s.cost / 100 + 1); };
    for (const auto& j : jobs) prog.total += unit_of(specs[j.spec]) * batches_per_job;
    prog.jobs = static_cast<int>(jobs.size());

    // The jobs are the pieces of one run on the library's thread pool (a job takes a piece from
    // the pool's counter, so a fast thread takes more); this thread shows the progress meanwhile.
    std::vector<run_result> results(jobs.size());
    std::atomic<bool> finished{false};
    const bool tty = ::isatty(STDERR_FILENO) != 0;
    const auto t0 = clock_type::now();
    std::thread display([&] {
        int last_decile = -1;
        while (!finished.load()) {
            show_progress(prog, t0, tty, &last_decile, false);
            std::this_thread::sleep_for(std::chrono::milliseconds(tty ? 250 : 1000));
        }
        show_progress(prog, t0, tty, &last_decile, true);
    });
    std::string failure;
    try {
        treegate::parallel::thread_pool pool(threads);
        pool.run(static_cast<index_t>(jobs.size()), [&](index_t k, int) {
            const auto& j = jobs[static_cast<std::size_t>(k)];
            const model_spec& s = specs[j.spec];
            try {
                results[static_cast<std::size_t>(k)] = s.run(d, cfg, j.seed, &prog, unit_of(s));
            } catch (const std::exception& e) {
                ++prog.jobs_done;
                throw std::runtime_error(s.name + ": " + e.what());
            }
            ++prog.jobs_done;
        });
    } catch (const std::exception& e) {
        failure = e.what();
    }
    finished = true;
    display.join();
    if (!failure.empty()) {
        std::fprintf(stderr, "fashion_mnist: training failed: %s\n", failure.c_str());
        return 1;
    }
    const double wall = seconds_since(t0);

    // Inference timing after training, one model at a time on this thread, so that no training
    // job shares the core: the served model of the first seed, batches of 1000 test examples.
    std::map<std::size_t, double> infer;
    for (std::size_t k = 0; k < jobs.size(); ++k)
        if (jobs[k].seed == 1) infer[jobs[k].spec] = results[k].time_inference();

    std::vector<summary> rows;
    for (std::size_t s = 0; s < specs.size(); ++s) {
        summary r;
        std::vector<double> acc;
        for (std::size_t k = 0; k < jobs.size(); ++k) {
            if (jobs[k].spec != s) continue;
            const run_result& x = results[k];
            r.model = x.model;
            r.family = x.family;
            r.params = x.params;
            r.macs = x.macs;
            r.train_params = x.train_params;
            acc.push_back(x.accuracy);
            r.val_accuracy += x.val_accuracy;
            r.train_seconds += x.train_seconds;
        }
        r.seeds = static_cast<int>(acc.size());
        for (double a : acc) r.accuracy += a / static_cast<double>(acc.size());
        for (double a : acc) r.accuracy_sd += (a - r.accuracy) * (a - r.accuracy);
        r.accuracy_sd = acc.size() > 1 ? std::sqrt(r.accuracy_sd / static_cast<double>(acc.size() - 1)) : 0.0;
        r.train_seconds /= static_cast<double>(acc.size());
        r.val_accuracy /= static_cast<double>(acc.size());
        r.infer_us = infer[s];
        rows.push_back(r);
    }

    std::printf("\n%-52s %10s %10s %8s %8s %15s %9s\n", "model (served form)", "params", "MACs/ex", "train s",
                "val %", "test acc %", "us/ex");
    for (const auto& r : rows)
        std::printf("%-52s %10lld %10lld %8.1f %8.2f %8.2f +-%4.2f %9.2f\n", r.model.c_str(),
                    static_cast<long long>(r.params), static_cast<long long>(r.macs), r.train_seconds,
                    100 * r.val_accuracy, 100 * r.accuracy, 100 * r.accuracy_sd, r.infer_us);
    std::printf("(mean +- sample sd over %d seed(s); '(flat)': trained as a path_sum tree, served as its flattened "
                "leaf_only table; 'soft': trained with soft routing, served hard; train s: one job's wall time while %d jobs ran at "
                "once)\n",
                seeds, threads);

    {
        std::ofstream f(out + "/fashion_mnist_results.csv");
        f << "model,params,macs_per_example,val_accuracy,test_accuracy,test_accuracy_sd,seeds,train_seconds,"
             "infer_us_per_example\n";
        for (const auto& r : rows)
            f << csv_field(r.model) << ',' << r.params << ',' << r.macs << ',' << r.val_accuracy << ',' << r.accuracy
              << ',' << r.accuracy_sd << ',' << r.seeds << ',' << r.train_seconds << ',' << r.infer_us << '\n';
    }
    {
        std::ofstream f(out + "/fashion_mnist_runs.csv");
        f << "model,family,seed,params,trained_params,macs_per_example,trained_macs_per_example,kept_epoch,"
             "val_accuracy,test_accuracy,train_seconds\n";
        for (const auto& x : results)
            f << csv_field(x.model) << ',' << csv_field(x.family) << ',' << x.seed << ',' << x.params << ','
              << x.train_params << ',' << x.macs << ',' << x.train_macs << ',' << x.kept_epoch << ',' << x.val_accuracy
              << ',' << x.accuracy << ',' << x.train_seconds << '\n';
    }
    std::printf("results: %s/fashion_mnist_results.csv (per seed: fashion_mnist_runs.csv); %.0f s of training\n",
                out.c_str(), wall);
    draw_plot(out, rows, quick);

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
    if (!only.empty()) depth_sweep.clear();  // --models: the comparison rows only
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
