// examples/fashion_mnist/report.hpp — the Fashion-MNIST example's output: the per-model summary,
// CSV quoting, the gnuplot plot, the progress line and the usage text.
#ifndef TREEGATE_EXAMPLE_FASHION_MNIST_REPORT_HPP
#define TREEGATE_EXAMPLE_FASHION_MNIST_REPORT_HPP

#include "training.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

namespace fashion_mnist {

struct summary {
    std::string model, family;
    std::string choice;     // what the row's configuration was chosen for (its slot)
    int configs_tried = 1;  // candidates the choice was made among, on validation
    index_t params = 0, macs = 0, train_params = 0;
    double accuracy = 0, accuracy_sd = 0, val_accuracy = 0, train_seconds = 0, infer_us = 0;
    int seeds = 0;
};

inline std::string csv_field(const std::string& s) {
    if (s.find_first_of(",\"") == std::string::npos) return s;
    std::string q = "\"";
    for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
    return q + "\"";
}

/// fashion_mnist_results.csv: one row per choice (slot), its kept configuration's means over seeds.
inline void write_results_csv(const std::string& path, const std::vector<summary>& rows) {
    std::ofstream f(path);
    f << "model,params,macs_per_example,val_accuracy,test_accuracy,test_accuracy_sd,seeds,train_seconds,"
         "infer_us_per_example,family,choice,configs_tried\n";
    for (const auto& r : rows)
        f << csv_field(r.model) << ',' << r.params << ',' << r.macs << ',' << r.val_accuracy << ',' << r.accuracy << ','
          << r.accuracy_sd << ',' << r.seeds << ',' << r.train_seconds << ',' << r.infer_us << ',' << csv_field(r.family)
          << ',' << csv_field(r.choice) << ',' << r.configs_tried << '\n';
}

/// fashion_mnist_runs.csv: one row per (configuration, seed) trained; test_accuracy is empty for
/// the candidates not kept, whose models never saw the test set.
inline void write_runs_csv(const std::string& path, const std::vector<run_result>& results) {
    std::ofstream f(path);
    f << "model,family,seed,params,trained_params,macs_per_example,trained_macs_per_example,kept_epoch,"
         "val_accuracy,test_accuracy,train_seconds\n";
    for (const auto& x : results) {
        f << csv_field(x.model) << ',' << csv_field(x.family) << ',' << x.seed << ',' << x.params << ',' << x.train_params
          << ',' << x.macs << ',' << x.train_macs << ',' << x.kept_epoch << ',' << x.val_accuracy << ',';
        if (x.tested) f << x.accuracy;
        f << ',' << x.train_seconds << '\n';
    }
}

inline void print_table(const std::vector<summary>& rows, int seeds, int threads) {
    std::printf("\n%-52s %10s %10s %8s %8s %15s %9s %6s\n", "model (served form)", "params", "MACs/ex", "train s", "val %",
                "test acc %", "us/ex", "tried");
    for (const auto& r : rows)
        std::printf("%-52s %10lld %10lld %8.1f %8.2f %8.2f +-%4.2f %9.2f %6d\n", r.model.c_str(),
                    static_cast<long long>(r.params), static_cast<long long>(r.macs), r.train_seconds,
                    100 * r.val_accuracy, 100 * r.accuracy, 100 * r.accuracy_sd, r.infer_us, r.configs_tried);
    std::printf("(mean +- sample sd over %d seed(s); '(flat)': trained as a path_sum tree, served as its flattened "
                "leaf_only table; 'soft': trained with soft routing, served hard; train s: one job's wall time while %d "
                "jobs ran at once; tried: configurations the row was chosen among on validation)\n",
                seeds, threads);
}

inline void draw_plot(const std::string& out, const std::vector<summary>& rows, bool quick) {
    if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) {
        std::printf("gnuplot is not on PATH: skipped the plot (apt-get install gnuplot-nox)\n");
        return;
    }
    std::vector<std::string> families;
    for (const auto& r : rows)
        if (std::find(families.begin(), families.end(), r.family) == families.end()) families.push_back(r.family);
    const std::string dat = out + "/fashion_mnist_accuracy_vs_macs.dat";
    const std::string gp = out + "/fashion_mnist_accuracy_vs_macs.gp";
    {
        std::ofstream f(dat);
        for (const auto& fam : families) {
            std::vector<summary> pts;
            for (const auto& r : rows)
                if (r.family == fam && std::none_of(pts.begin(), pts.end(), [&](const summary& p) { return p.model == r.model; }))
                    pts.push_back(r);  // a configuration kept by two choices is one point
            std::stable_sort(pts.begin(), pts.end(), [](const summary& a, const summary& b) { return a.macs < b.macs; });
            f << "# " << fam << "\n";
            for (const auto& p : pts) f << p.macs << " " << 100.0 * p.accuracy << " " << 100.0 * p.accuracy_sd << "\n";
            f << "\n\n";
        }
    }
    {
        std::ofstream f(gp);
        f << "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) { set terminal pngcairo noenhanced size 1100,700 } "
             "else { set terminal png noenhanced size 1100,700 }\n"
          << "set output '" << out << "/fashion_mnist_accuracy_vs_macs.png'\n"
          << "set title 'Fashion-MNIST test accuracy (chosen on validation; bars: sd over seeds) vs served MACs per example"
          << (quick ? " (QUICK run)" : "") << "'\n"
          << "set logscale x 2\nset xlabel 'MACs per example (log scale)'\nset ylabel 'test accuracy (%)'\n"
          << "set grid\nset key bottom right\n"
          << "plot ";
        // gnuplot's default colours repeat after 8 curves: one colour per family from a longer list.
        const char* colours[] = {"#000000", "#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00",
                                 "#a65628", "#f781bf", "#17becf", "#999999", "#bcbd22", "#1f3a93"};
        for (std::size_t i = 0; i < families.size(); ++i)
            f << (i ? ", " : "") << "'" << dat << "' index " << i << " using 1:2:3 with yerrorlines lw 2 pt " << (5 + i)
              << " lc rgb '" << colours[i % (sizeof colours / sizeof colours[0])] << "' title '" << families[i] << "'";
        f << "\n";
    }
    const std::string cmd = "gnuplot '" + gp + "'";
    if (std::system(cmd.c_str()) == 0)
        std::printf("plot: %s/fashion_mnist_accuracy_vs_macs.png\n", out.c_str());
    else
        std::printf("gnuplot failed; the plot was not drawn (script: %s)\n", gp.c_str());
}

inline void show_progress(const progress& p, clock_type::time_point t0, bool tty, int* last_decile, bool final) {
    const double frac = p.total > 0 ? static_cast<double>(p.done.load()) / static_cast<double>(p.total) : 1.0;
    const double el = seconds_since(t0);
    if (!tty) {
        const int decile = static_cast<int>(frac * 10);
        if (decile <= *last_decile && !final) return;
        *last_decile = decile;
    }
    const int width = 30, filled = static_cast<int>(frac * width);
    std::string bar(static_cast<std::size_t>(filled), '#');
    bar.resize(static_cast<std::size_t>(width), '.');
    char eta[32] = "";
    if (frac > 0.02 && !final) std::snprintf(eta, sizeof eta, " eta %4.0f s", el * (1 - frac) / frac);
    std::fprintf(stderr, "%straining [%s] %3.0f%%  jobs %d/%d  %5.0f s%s%s", tty ? "\r" : "", bar.c_str(), 100 * frac,
                 p.jobs_done.load(), p.jobs, el, eta, tty && !final ? "   " : "\n");
    std::fflush(stderr);
}

inline void usage(const char* argv0) {
    std::printf(
        "usage: %s [--data DIR] [--out DIR] [--quick] [--search] [--step-cost] [--seeds N] [--threads N]\n"
        "          [--epochs N] [--models A,B] [--help]\n"
        "Trains dense MLPs and tree-gated models on Fashion-MNIST (50000 training images, 10000 held\n"
        "out for validation under a fixed shuffle) and compares test accuracy\n"
        "against inference MACs per example (path_sum trees are served flattened: '(flat)').\n"
        "  --data DIR    the four *-ubyte.gz files (default /usr/share/datasets/fashion-mnist,\n"
        "                from the Debian package dataset-fashion-mnist)\n"
        "  --out DIR     where the CSV files and the plot go (default .)\n"
        "  --quick       a short run: fewer models, 1 seed, 20000 training examples, 4 epochs\n"
        "  --search      the protocol's search: per family and MACs budget, seed 1 of every candidate\n"
        "                configuration; the best on validation is kept, trained on the other seeds\n"
        "                and tested (the others never see the test set); writes fashion_mnist_search.csv\n"
        "  --search-balance  the same protocol for two more choices: the load-balancing weight of\n"
        "                the soft rows kept at <= 12704 MACs (0, 0.01, 0.1) and at equal parameters (0, 0.1)\n"
        "  --step-cost   times soft against hard training steps of tree_feedforward shapes on 1 and 2\n"
        "                threads, then exits\n"
        "  --seeds N     seeds per model (default 3; 1 with --quick)\n"
        "  --threads N   (model, seed) jobs run on N threads (default 2); each job is\n"
        "                deterministic for its seed whatever N is\n"
        "  --epochs N    training epochs (default 8; 4 with --quick); the epoch kept is the one\n"
        "                with the best accuracy on the validation split\n"
        "  --models A,B  train only the models whose name contains A or B (no depth sweep)\n",
        argv0);
}

}  // namespace fashion_mnist

#endif
