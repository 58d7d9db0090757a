// examples/fashion_mnist/search.hpp — the Fashion-MNIST example's protocol: (model, seed) jobs on
// the library's thread pool, and choices among candidate configurations made on validation only.
#ifndef TREEGATE_EXAMPLE_FASHION_MNIST_SEARCH_HPP
#define TREEGATE_EXAMPLE_FASHION_MNIST_SEARCH_HPP

#include "models.hpp"
#include "report.hpp"

#include <treegate/parallel/thread_pool.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

namespace fashion_mnist {

struct job {
    std::size_t spec;
    std::uint64_t seed;
};

/// Trains every job on a pool of `threads` threads (the most expensive first, so the threads
/// finish together) while this thread shows the progress; results in the order of `jobs`.
/// Throws std::runtime_error naming the model when a job fails.
inline std::vector<run_result> run_jobs(const std::vector<model_spec>& specs, const std::vector<job>& jobs,
                                        const dataset& d, const train_config& cfg, int threads) {
    std::vector<std::size_t> order(jobs.size());
    for (std::size_t k = 0; k < order.size(); ++k) order[k] = k;
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t a, std::size_t b) { return specs[jobs[a].spec].cost > specs[jobs[b].spec].cost; });
    progress prog;
    const index_t n_train = cfg.train_limit > 0 ? std::min(cfg.train_limit, d.train.size()) : d.train.size();
    const long long batches_per_job = static_cast<long long>(n_train / cfg.batch) * cfg.epochs;
    auto unit_of = [&](const model_spec& s) { return static_cast<long long>(s.cost / 100 + 1); };
    for (const auto& j : jobs) prog.total += unit_of(specs[j.spec]) * batches_per_job;
    prog.jobs = static_cast<int>(jobs.size());

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
        pool.run(static_cast<index_t>(jobs.size()), [&](index_t p, int) {
            const std::size_t k = order[static_cast<std::size_t>(p)];
            const model_spec& s = specs[jobs[k].spec];
            try {
                results[k] = s.run(d, cfg, jobs[k].seed, &prog, unit_of(s));
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
    if (!failure.empty()) throw std::runtime_error(failure);
    return results;
}

/// One choice made on validation: among the candidate configurations (indices into the grid's
/// specs), the one whose seed-1 model has the best validation accuracy (the first on ties) is
/// kept and trained on the other seeds. Only kept configurations are evaluated on the test set.
struct slot {
    std::string family, label;
    index_t max_macs = 0, min_params = 0;  // constraints every candidate meets (0: none)
    std::vector<std::size_t> candidates;
};

/// The configurations of a run and the choices among them.
struct search_grid {
    std::vector<model_spec> specs;
    std::vector<slot> slots;

    /// Adds a slot; a candidate whose name is already in the grid is shared, not trained twice.
    /// A candidate that breaks the slot's constraints is a mistake in the grid, so it throws.
    void add(std::string family, std::string label, std::vector<model_spec> candidates, index_t max_macs = 0,
             index_t min_params = 0) {
        slot s{std::move(family), std::move(label), max_macs, min_params, {}};
        for (auto& c : candidates) {
            if ((max_macs > 0 && c.macs > max_macs) || c.params < min_params)
                throw std::logic_error(c.name + " (" + std::to_string(c.params) + " parameters, " +
                                       std::to_string(c.macs) + " MACs) breaks the constraints of slot '" + s.label + "'");
            const auto same = std::find_if(specs.begin(), specs.end(), [&](const model_spec& x) { return x.name == c.name; });
            s.candidates.push_back(static_cast<std::size_t>(same - specs.begin()));
            if (same == specs.end()) specs.push_back(std::move(c));
        }
        slots.push_back(std::move(s));
    }
};

/// Everything a run measured: every job, and per slot the candidate kept.
struct search_outcome {
    std::vector<job> jobs;
    std::vector<run_result> results;
    std::vector<std::size_t> kept;  // per slot: the spec index kept
};

/// The protocol: seed 1 of every candidate; per slot the candidate with the best validation
/// accuracy is kept; the other seeds of the kept candidates; then, with every choice made, the
/// one test evaluation of each kept (configuration, seed).
inline search_outcome run_search(const search_grid& g, const dataset& d, const train_config& cfg, int seeds,
                                 int threads) {
    search_outcome o;
    for (std::size_t s = 0; s < g.specs.size(); ++s) o.jobs.push_back({s, 1});
    o.results = run_jobs(g.specs, o.jobs, d, cfg, threads);
    auto seed1_val = [&](std::size_t spec) { return o.results[spec].val_accuracy; };  // job k = spec k
    std::vector<job> more;
    for (const slot& s : g.slots) {
        std::size_t best = s.candidates.front();
        for (std::size_t c : s.candidates)
            if (seed1_val(c) > seed1_val(best)) best = c;
        o.kept.push_back(best);
        if (std::count(o.kept.begin(), o.kept.end(), best) == 1)
            for (int k = 2; k <= seeds; ++k) more.push_back({best, static_cast<std::uint64_t>(k)});
    }
    if (!more.empty()) {
        std::printf("validation choices made; training the other seeds of the %zu kept configurations\n",
                    more.size() / static_cast<std::size_t>(seeds - 1));
        std::vector<run_result> r = run_jobs(g.specs, more, d, cfg, threads);
        o.jobs.insert(o.jobs.end(), more.begin(), more.end());
        o.results.insert(o.results.end(), r.begin(), r.end());
    }
    for (std::size_t k = 0; k < o.jobs.size(); ++k)
        if (std::find(o.kept.begin(), o.kept.end(), o.jobs[k].spec) != o.kept.end()) o.results[k].test_once();
    return o;
}

/// One row of the comparison per slot: its kept configuration, means over its seeds.
inline std::vector<summary> summarise(const search_grid& g, const search_outcome& o) {
    // Inference timing after all training, one model at a time on this thread, so that no
    // training job shares the core: the served model of seed 1, batches of 1000 test examples.
    std::map<std::size_t, double> infer;
    for (std::size_t k = 0; k < o.jobs.size(); ++k)
        if (o.jobs[k].seed == 1 && o.results[k].tested && infer.count(o.jobs[k].spec) == 0)
            infer[o.jobs[k].spec] = o.results[k].time_inference();
    std::vector<summary> rows;
    for (std::size_t i = 0; i < g.slots.size(); ++i) {
        summary r;
        r.family = g.slots[i].family;
        r.choice = g.slots[i].label;
        r.configs_tried = static_cast<int>(g.slots[i].candidates.size());
        std::vector<double> acc;
        for (std::size_t k = 0; k < o.jobs.size(); ++k) {
            if (o.jobs[k].spec != o.kept[i]) continue;
            const run_result& x = o.results[k];
            r.model = x.model;
            r.params = x.params;
            r.macs = x.macs;
            r.train_params = x.train_params;
            acc.push_back(x.accuracy);
            r.val_accuracy += x.val_accuracy;
            r.train_seconds += x.train_seconds;
        }
        const double n = static_cast<double>(acc.size());
        r.seeds = static_cast<int>(acc.size());
        for (double a : acc) r.accuracy += a / n;
        for (double a : acc) r.accuracy_sd += (a - r.accuracy) * (a - r.accuracy);
        r.accuracy_sd = acc.size() > 1 ? std::sqrt(r.accuracy_sd / (n - 1)) : 0.0;
        r.train_seconds /= n;
        r.val_accuracy /= n;
        r.infer_us = infer[o.kept[i]];
        rows.push_back(r);
    }
    return rows;
}

/// Configurations tried per family (a candidate shared by two slots of a family counts once).
inline std::map<std::string, int> configs_per_family(const search_grid& g) {
    std::map<std::string, std::vector<std::size_t>> seen;
    for (const slot& s : g.slots)
        for (std::size_t c : s.candidates) {
            auto& v = seen[s.family];
            if (std::find(v.begin(), v.end(), c) == v.end()) v.push_back(c);
        }
    std::map<std::string, int> n;
    for (const auto& kv : seen) n[kv.first] = static_cast<int>(kv.second.size());
    return n;
}

/// The slots with a candidate whose name contains one of `parts` (--models).
inline search_grid filtered(const search_grid& g, const std::vector<std::string>& parts) {
    search_grid kept;
    for (const slot& s : g.slots) {
        std::vector<model_spec> c;
        for (std::size_t i : s.candidates) c.push_back(g.specs[i]);
        if (std::any_of(c.begin(), c.end(), [&](const model_spec& m) {
                return std::any_of(parts.begin(), parts.end(),
                                   [&](const std::string& p) { return m.name.find(p) != std::string::npos; });
            }))
            kept.add(s.family, s.label, std::move(c), s.max_macs, s.min_params);
    }
    return kept;
}

/// fashion_mnist_search.csv: every candidate of every slot with its seed-1 validation accuracy,
/// and whether it was kept; no test accuracy (only kept candidates are tested: see the results).
inline void write_search_csv(const std::string& path, const search_grid& g, const search_outcome& o) {
    std::ofstream f(path);
    f << "family,choice,model,params,macs_per_example,seed,kept_epoch,val_accuracy,train_seconds,kept\n";
    for (std::size_t i = 0; i < g.slots.size(); ++i)
        for (std::size_t c : g.slots[i].candidates) {
            const run_result& x = o.results[c];  // job c is seed 1 of spec c
            f << csv_field(g.slots[i].family) << ',' << csv_field(g.slots[i].label) << ',' << csv_field(x.model) << ','
              << x.params << ',' << x.macs << ',' << x.seed << ',' << x.kept_epoch << ',' << x.val_accuracy << ','
              << x.train_seconds << ',' << (c == o.kept[i] ? 1 : 0) << '\n';
        }
}

}  // namespace fashion_mnist

#endif
