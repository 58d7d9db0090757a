// examples/fashion_mnist.cpp — treegate on real data: dense MLPs against tree-gated models on
// Fashion-MNIST, placed on one axis of inference MACs per example (served form).
// Writes a results CSV, a per-seed CSV, an epoch-time-vs-depth CSV and, with gnuplot, a plot.
#include <treegate/layers/flatten.hpp>
#include <treegate/train/backward.hpp>
#include <treegate/train/data.hpp>
#include <treegate/train/gradients.hpp>
#include <treegate/train/loss.hpp>
#include <treegate/train/optimizer.hpp>
#include <treegate/train/soft_routing.hpp>
#include <treegate/treegate.hpp>

#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <sys/stat.h>
#include <unistd.h>

namespace {

namespace tt = treegate::train;
using treegate::activation;
using treegate::gating;
using treegate::index_t;
using treegate::tree_mode;
using mat = Eigen::MatrixXf;
using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

// ---- data: IDX files, gzip-compressed ----------------------------------------------------------

struct data_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

/// The whole decompressed content of a gzip (or plain) file.
std::vector<unsigned char> read_gz(const std::string& path) {
    gzFile f = gzopen(path.c_str(), "rb");
    if (f == nullptr) throw data_error("cannot open " + path);
    std::vector<unsigned char> bytes;
    unsigned char buf[1 << 16];
    for (;;) {
        const int got = gzread(f, buf, sizeof buf);
        if (got < 0) {
            int code = 0;
            const std::string msg = gzerror(f, &code);
            gzclose(f);
            // zlib's message names the file already.
            throw data_error("gzip: " + msg);
        }
        if (got == 0) break;
        bytes.insert(bytes.end(), buf, buf + got);
        if (bytes.size() > (std::size_t{1} << 30)) {
            gzclose(f);
            throw data_error(path + ": more than 1 GiB of data; not an IDX file of Fashion-MNIST");
        }
    }
    gzclose(f);
    return bytes;
}

std::uint32_t be32(const unsigned char* p) {
    return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | std::uint32_t{p[3]};
}

/// An IDX file of unsigned bytes with `want_dims` dimensions: returns the dimensions and the data.
std::vector<std::uint32_t> parse_idx(const std::string& path, const std::vector<unsigned char>& bytes, int want_dims,
                                     const unsigned char** data) {
    if (bytes.size() < 4) throw data_error(path + ": truncated IDX file (" + std::to_string(bytes.size()) + " bytes)");
    const std::uint32_t magic = be32(bytes.data());
    const std::uint32_t want_magic = 0x00000800u | static_cast<std::uint32_t>(want_dims);
    if (magic != want_magic) {
        char msg[160];
        std::snprintf(msg, sizeof msg, ": bad IDX magic 0x%08x, expected 0x%08x (unsigned bytes, %d dimensions)", magic,
                      want_magic, want_dims);
        throw data_error(path + msg);
    }
    const std::size_t header = 4 + 4 * static_cast<std::size_t>(want_dims);
    if (bytes.size() < header) throw data_error(path + ": truncated IDX header");
    std::vector<std::uint32_t> dims;
    std::uint64_t count = 1;
    for (int d = 0; d < want_dims; ++d) {
        dims.push_back(be32(bytes.data() + 4 + 4 * d));
        count *= dims.back();
        if (count > (std::uint64_t{1} << 30)) throw data_error(path + ": IDX dimensions are absurdly large");
    }
    if (bytes.size() - header != count)
        throw data_error(path + ": IDX dimensions promise " + std::to_string(count) + " bytes of data but the file holds " +
                         std::to_string(bytes.size() - header) + (bytes.size() - header < count ? " (truncated)" : ""));
    *data = bytes.data() + header;
    return dims;
}

struct split {
    mat X;                              // 784 x n, centred and scaled
    std::vector<std::uint8_t> labels;  // n labels in [0, 10)
    index_t size() const { return X.cols(); }
};

struct dataset {
    split train, test;
};

split load_split(const std::string& dir, const std::string& prefix) {
    const std::string ipath = dir + "/" + prefix + "-images-idx3-ubyte.gz";
    const std::string lpath = dir + "/" + prefix + "-labels-idx1-ubyte.gz";
    const auto ibytes = read_gz(ipath), lbytes = read_gz(lpath);
    const unsigned char *ip = nullptr, *lp = nullptr;
    const auto idims = parse_idx(ipath, ibytes, 3, &ip);
    const auto ldims = parse_idx(lpath, lbytes, 1, &lp);
    if (idims[1] != 28 || idims[2] != 28)
        throw data_error(ipath + ": images are " + std::to_string(idims[1]) + " x " + std::to_string(idims[2]) +
                         ", expected 28 x 28");
    if (idims[0] != ldims[0] || idims[0] == 0)
        throw data_error(ipath + " holds " + std::to_string(idims[0]) + " images but " + lpath + " holds " +
                         std::to_string(ldims[0]) + " labels");
    split s;
    const auto n = static_cast<index_t>(idims[0]);
    s.X.resize(784, n);
    for (index_t e = 0; e < n; ++e)
        for (index_t p = 0; p < 784; ++p) s.X(p, e) = static_cast<float>(ip[e * 784 + p]) / 255.0f;
    s.labels.assign(lp, lp + n);
    for (index_t e = 0; e < n; ++e)
        if (s.labels[static_cast<std::size_t>(e)] > 9)
            throw data_error(lpath + ": label " + std::to_string(s.labels[static_cast<std::size_t>(e)]) + " of example " +
                             std::to_string(e) + " is outside [0, 10)");
    return s;
}

bool file_exists(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0;
}

/// Centres every pixel on its training mean and scales by the training standard deviation, so a
/// pixel used as a gating unit is on when it is brighter than usual for that position.
void normalise(dataset& d) {
    const Eigen::VectorXf mean = d.train.X.rowwise().mean();
    d.train.X.colwise() -= mean;
    d.test.X.colwise() -= mean;
    const float sd = std::sqrt(d.train.X.squaredNorm() / static_cast<float>(d.train.X.size()));
    d.train.X /= sd;
    d.test.X /= sd;
}

/// D pixels to gate a first-layer tree: the highest-variance pixels, at least 5 pixels apart
/// (Chebyshev distance) so that their bits are not copies of each other.
std::vector<index_t> gating_pixels(const mat& X, int depth) {
    const Eigen::VectorXf var = X.rowwise().squaredNorm();
    std::vector<index_t> order(784);
    for (index_t p = 0; p < 784; ++p) order[static_cast<std::size_t>(p)] = p;
    std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t b) { return var(a) > var(b); });
    std::vector<index_t> chosen;
    for (index_t p : order) {
        if (static_cast<int>(chosen.size()) == depth) break;
        bool far = true;
        for (index_t q : chosen) far = far && std::max(std::abs(p / 28 - q / 28), std::abs(p % 28 - q % 28)) >= 5;
        if (far) chosen.push_back(p);
    }
    return chosen;
}

// ---- training ----------------------------------------------------------------------------------

struct train_config {
    int epochs = 8;
    index_t batch = 128;
    double lr = 2e-3;
    index_t train_limit = 0;  // 0: the whole training set
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
    double accuracy = 0, train_seconds = 0, epoch_seconds = 0, infer_us = 0;
    double touched_per_step = 0;  // parameters updated per training step (visited blocks)
    std::function<double()> time_inference;  // µs per example of the served model on the test set
};

/// Evaluates `model` on the test set in batches; returns the accuracy.
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

/// Adam with a linear warm-down of the learning rate over the last half of training; the
/// permutation of every epoch comes from (seed, epoch), so a job is bit-identical for its seed.
template <class Model>
double train(Model& model, const dataset& d, const train_config& cfg, tt::weight_decay decay, const soft_schedule& soft,
             std::uint64_t seed, progress* prog, long long unit_per_batch, double* first_epoch_seconds, double* touched_per_step) {
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
        if (epoch == 0 && first_epoch_seconds != nullptr) *first_epoch_seconds = seconds_since(te);
    }
    if (touched_per_step != nullptr) *touched_per_step = touched / static_cast<double>(std::max(step, 1LL));
    return seconds_since(t0);
}

// ---- model families ----------------------------------------------------------------------------

/// One row of the comparison: how to build, train and serve a model. `cost` is the training work
/// per example (MACs of the trained form), used to weight the progress display.
struct model_spec {
    std::string name, family;
    index_t cost = 0;
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
        r.train_seconds = train(model, d, cfg, decay, soft, seed, prog, unit, &r.epoch_seconds, &r.touched_per_step);
        auto served = std::make_shared<decltype(serve(model))>(serve(model));
        r.params = served->parameter_count();
        r.macs = served->macs_per_example();
        r.accuracy = evaluate(*served, d.test);
        const split* test = &d.test;
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

std::vector<index_t> first_units(int depth) {
    std::vector<index_t> v;
    for (int j = 0; j < depth; ++j) v.push_back(j);
    return v;
}

model_spec dense_mlp(index_t h) {
    return make_spec("dense 784-" + std::to_string(h) + "-10", "dense MLP", [h] {
        return treegate::sequential(treegate::dense<float>(784, h), treegate::activation_layer<float>(activation::relu, h),
                                    treegate::dense<float>(h, 10));
    }, identity_serve{});
}

/// (a)/(b)/(c): dense 784 -> h, ReLU, then a tree_linear h -> 10 gated by hidden units 0..D-1.
model_spec tree_head(index_t h, int depth, tree_mode mode, tt::weight_decay decay, const std::string& family) {
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
model_spec tree_first(index_t h, int depth, tree_mode mode, tt::weight_decay decay, const std::vector<index_t>& pixels,
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
model_spec fff(index_t width, int depth, index_t trees, treegate::ff_variant variant, tt::weight_decay decay) {
    std::string name = std::string("fff ") + treegate::to_string(variant) + " K" + std::to_string(trees) + " D" +
                       std::to_string(depth) + " w" + std::to_string(width);
    if (decay.lambda > 0) name += " +decay";
    return make_spec(name, std::string("tree_feedforward ") + treegate::to_string(variant), [=] {
        return treegate::sequential(
            treegate::tree_feedforward<float>(784, 10, width, depth, trees, activation::relu, variant));
    }, identity_serve{}, decay);
}

/// (d) trained with soft routing for the first part of training, then hard; served hard. Soft
/// steps evaluate every node: 2^(D+1) - 1 node MLPs (node_sum) or 2^D leaf MLPs (leaf_mlp) per
/// example instead of D + 1 or 1, which `cost_factor` tells the progress display.
model_spec fff_soft(index_t width, int depth, index_t trees, treegate::ff_variant variant, const soft_schedule& soft) {
    const std::string v = treegate::to_string(variant);
    const std::string name = "fff " + v + " K" + std::to_string(trees) + " D" + std::to_string(depth) + " w" +
                             std::to_string(width) + " soft";
    const double nodes = variant == treegate::ff_variant::node_sum ? std::ldexp(1.0, depth + 1) - 1.0 : std::ldexp(1.0, depth);
    const double hard = variant == treegate::ff_variant::node_sum ? depth + 1.0 : 1.0;
    const double factor = 1.0 + soft.soft_fraction * (nodes / hard - 1.0);
    return make_spec(name, "tree_feedforward " + v + ", soft-routed", [=] {
        return treegate::sequential(
            treegate::tree_feedforward<float>(784, 10, width, depth, trees, activation::relu, variant));
    }, identity_serve{}, tt::weight_decay{}, soft, factor);
}

// ---- output ------------------------------------------------------------------------------------

struct summary {
    std::string model, family;
    index_t params = 0, macs = 0, train_params = 0;
    double accuracy = 0, accuracy_sd = 0, train_seconds = 0, infer_us = 0;
    int seeds = 0;
};

std::string csv_field(const std::string& s) {
    if (s.find_first_of(",\"") == std::string::npos) return s;
    std::string q = "\"";
    for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
    return q + "\"";
}

void draw_plot(const std::string& out, const std::vector<summary>& rows, bool quick) {
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
                if (r.family == fam) pts.push_back(r);
            std::stable_sort(pts.begin(), pts.end(), [](const summary& a, const summary& b) { return a.macs < b.macs; });
            f << "# " << fam << "\n";
            for (const auto& p : pts) f << p.macs << " " << 100.0 * p.accuracy << "\n";
            f << "\n\n";
        }
    }
    {
        std::ofstream f(gp);
        f << "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) { set terminal pngcairo noenhanced size 1100,700 } "
             "else { set terminal png noenhanced size 1100,700 }\n"
          << "set output '" << out << "/fashion_mnist_accuracy_vs_macs.png'\n"
          << "set title 'Fashion-MNIST: test accuracy vs inference MACs per example (served form" << (quick ? ", QUICK run" : "")
          << ")'\n"
          << "set logscale x 2\nset xlabel 'MACs per example (log scale)'\nset ylabel 'test accuracy (%)'\n"
          << "set grid\nset key bottom right\n"
          << "plot ";
        // gnuplot's default colours repeat after 8 curves: one colour per family from a longer list.
        const char* colours[] = {"#000000", "#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00",
                                 "#a65628", "#f781bf", "#17becf", "#999999", "#bcbd22", "#1f3a93"};
        for (std::size_t i = 0; i < families.size(); ++i)
            f << (i ? ", " : "") << "'" << dat << "' index " << i << " using 1:2 with linespoints lw 2 pt " << (5 + i)
              << " lc rgb '" << colours[i % (sizeof colours / sizeof colours[0])] << "' title '" << families[i] << "'";
        f << "\n";
    }
    const std::string cmd = "gnuplot '" + gp + "'";
    if (std::system(cmd.c_str()) == 0)
        std::printf("plot: %s/fashion_mnist_accuracy_vs_macs.png\n", out.c_str());
    else
        std::printf("gnuplot failed; the plot was not drawn (script: %s)\n", gp.c_str());
}

// ---- progress display --------------------------------------------------------------------------

void show_progress(const progress& p, clock_type::time_point t0, bool tty, int* last_decile, bool final) {
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

void usage(const char* argv0) {
    std::printf(
        "usage: %s [--data DIR] [--out DIR] [--quick] [--seeds N] [--threads N] [--help]\n"
        "Trains dense MLPs and tree-gated models on Fashion-MNIST and compares test accuracy\n"
        "against inference MACs per example (path_sum trees are served flattened: '(flat)').\n"
        "  --data DIR    the four *-ubyte.gz files (default /usr/share/datasets/fashion-mnist,\n"
        "                from the Debian package dataset-fashion-mnist)\n"
        "  --out DIR     where the CSV files and the plot go (default .)\n"
        "  --quick       a short run: fewer models, 1 seed, 20000 training examples, 4 epochs\n"
        "  --seeds N     seeds per model (default 3; 1 with --quick)\n"
        "  --threads N   (model, seed) jobs run on N threads (default 2); each job is\n"
        "                deterministic for its seed whatever N is\n"
        "  --epochs N    training epochs (default 8; 4 with --quick)\n"
        "  --models A,B  train only the models whose name contains A or B (no depth sweep)\n",
        argv0);
}

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
        d.train = load_split(data_dir, "train");
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
        specs.push_back(fff(8, 3, 1, treegate::ff_variant::node_sum, none));
        specs.push_back(fff_soft(4, 3, 1, treegate::ff_variant::node_sum, soft));
        sweep_depths = {0, 4, 8};
    } else {
        // 784-11-10 (8734 MACs) sits next to the soft leaf_mlp w8 row (8704 MACs).
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
        for (index_t w : {4, 8}) specs.push_back(fff(w, 3, 1, treegate::ff_variant::node_sum, none));
        specs.push_back(fff(32, 3, 1, treegate::ff_variant::leaf_mlp, none));
        // (f) the same tree_feedforward shapes trained with soft routing, served hard.
        for (index_t w : {2, 4, 8}) specs.push_back(fff_soft(w, 3, 1, treegate::ff_variant::node_sum, soft));
        for (index_t w : {8, 32}) specs.push_back(fff_soft(w, 3, 1, treegate::ff_variant::leaf_mlp, soft));
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

    std::printf("treegate %s Fashion-MNIST%s: %lld training / %lld test examples, %d epochs, batch %lld, %d seed(s), "
                "%d thread(s)\n",
                treegate::version_string(), quick ? " (QUICK run: subset of the data, fewer models and epochs)" : "",
                static_cast<long long>(cfg.train_limit > 0 ? cfg.train_limit : d.train.size()),
                static_cast<long long>(d.test.size()), cfg.epochs, static_cast<long long>(cfg.batch), seeds, threads);

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

    std::vector<run_result> results(jobs.size());
    std::atomic<std::size_t> next{0};
    std::mutex err_mutex;
    std::string first_error;
    auto worker = [&] {
        for (;;) {
            const std::size_t k = next++;
            if (k >= jobs.size()) return;
            const model_spec& s = specs[jobs[k].spec];
            try {
                results[k] = s.run(d, cfg, jobs[k].seed, &prog, unit_of(s));
            } catch (const std::exception& e) {
                std::lock_guard<std::mutex> lock(err_mutex);
                if (first_error.empty()) first_error = s.name + ": " + e.what();
            }
            ++prog.jobs_done;
        }
    };
    const bool tty = ::isatty(STDERR_FILENO) != 0;
    const auto t0 = clock_type::now();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) pool.emplace_back(worker);
    int last_decile = -1;
    while (prog.jobs_done.load() < prog.jobs) {
        show_progress(prog, t0, tty, &last_decile, false);
        std::this_thread::sleep_for(std::chrono::milliseconds(tty ? 250 : 1000));
    }
    for (auto& t : pool) t.join();
    show_progress(prog, t0, tty, &last_decile, true);
    if (!first_error.empty()) {
        std::fprintf(stderr, "fashion_mnist: training failed: %s\n", first_error.c_str());
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
            r.train_seconds += x.train_seconds;
        }
        r.seeds = static_cast<int>(acc.size());
        for (double a : acc) r.accuracy += a / static_cast<double>(acc.size());
        for (double a : acc) r.accuracy_sd += (a - r.accuracy) * (a - r.accuracy);
        r.accuracy_sd = acc.size() > 1 ? std::sqrt(r.accuracy_sd / static_cast<double>(acc.size() - 1)) : 0.0;
        r.train_seconds /= static_cast<double>(acc.size());
        r.infer_us = infer[s];
        rows.push_back(r);
    }

    std::printf("\n%-52s %10s %10s %8s %15s %9s\n", "model (served form)", "params", "MACs/ex", "train s",
                "test acc %", "us/ex");
    for (const auto& r : rows)
        std::printf("%-52s %10lld %10lld %8.1f %8.2f +-%4.2f %9.2f\n", r.model.c_str(), static_cast<long long>(r.params),
                    static_cast<long long>(r.macs), r.train_seconds, 100 * r.accuracy, 100 * r.accuracy_sd, r.infer_us);
    std::printf("(mean +- sample sd over %d seed(s); '(flat)': trained as a path_sum tree, served as its flattened "
                "leaf_only table; 'soft': trained with soft routing, served hard; train s: one job's wall time while %d jobs ran at "
                "once)\n",
                seeds, threads);

    {
        std::ofstream f(out + "/fashion_mnist_results.csv");
        f << "model,params,macs_per_example,test_accuracy,train_seconds,infer_us_per_example\n";
        for (const auto& r : rows)
            f << csv_field(r.model) << ',' << r.params << ',' << r.macs << ',' << r.accuracy << ',' << r.train_seconds
              << ',' << r.infer_us << '\n';
    }
    {
        std::ofstream f(out + "/fashion_mnist_runs.csv");
        f << "model,family,seed,params,trained_params,macs_per_example,trained_macs_per_example,test_accuracy,"
             "train_seconds\n";
        for (const auto& x : results)
            f << csv_field(x.model) << ',' << csv_field(x.family) << ',' << x.seed << ',' << x.params << ','
              << x.train_params << ',' << x.macs << ',' << x.train_macs << ',' << x.accuracy << ',' << x.train_seconds
              << '\n';
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
