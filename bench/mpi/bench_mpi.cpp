// treegate_bench_mpi — the sharded tree_linear (mpi/) at the rank count it is launched with:
// forward and backward throughput, bytes exchanged per example, memory per rank, load balance.
//
//   mpirun -np R treegate_bench_mpi [--in N] [--out N] [--depth D] [--batch N] [--reps N] [--mode path_sum|leaf_only]
//                                   [--width W]   (W > 0: a one-tree tree_feedforward of node width W, forward only)
//
// --batch is the examples per rank. Times are the slowest rank's, median over --reps runs, each
// started after a barrier; rank 0 prints one line of key=value pairs.
#include <treegate/mpi/sharded_train.hpp>
#include <treegate/mpi/sharded_tree_feedforward.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using treegate::index_t;
namespace mpi = treegate::mpi;
using mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic>;

struct options {
    index_t in = 768, out = 768, batch = 256, width = 0;
    int depth = 6, reps = 9;
    treegate::tree_mode mode = treegate::tree_mode::path_sum;
};

const char* const usage =
    "usage: mpirun -np R treegate_bench_mpi [options]\n"
    "  --in N        input size (default 768)\n"
    "  --out N       output size (default 768)\n"
    "  --depth D     tree depth (default 6)\n"
    "  --batch N     examples per rank (default 256)\n"
    "  --reps N      timed runs, the median is printed (default 9)\n"
    "  --mode M      path_sum or leaf_only (default path_sum)\n"
    "  --width W     W > 0: a one-tree tree_feedforward of node width W, forward only (default 0)\n"
    "  --help        this text\n";

[[noreturn]] void bad_usage(const std::string& what) {
    std::fprintf(stderr, "treegate_bench_mpi: %s\n%s", what.c_str(), usage);
    MPI_Finalize();
    std::exit(2);
}

options parse(int argc, char** argv) {
    options o;
    for (int i = 1; i < argc; ++i) {
        const std::string k = argv[i];
        if (k == "--help" || k == "-h") {
            std::printf("%s", usage);
            MPI_Finalize();
            std::exit(0);
        }
        if (i + 1 >= argc) bad_usage(k + " needs a value");
        const std::string v = argv[++i];
        try {
            if (k == "--in") o.in = std::stoll(v);
            else if (k == "--out") o.out = std::stoll(v);
            else if (k == "--depth") o.depth = std::stoi(v);
            else if (k == "--batch") o.batch = std::stoll(v);
            else if (k == "--reps") o.reps = std::stoi(v);
            else if (k == "--width") o.width = std::stoll(v);
            else if (k == "--mode" && (v == "path_sum" || v == "leaf_only"))
                o.mode = v == "leaf_only" ? treegate::tree_mode::leaf_only : treegate::tree_mode::path_sum;
            else bad_usage("unknown option or value: " + k + " " + v);
        } catch (const std::logic_error&) {
            bad_usage(k + ": not a number: " + v);
        }
    }
    if (o.reps < 1) bad_usage("--reps must be at least 1");
    return o;
}

// Median over reps of the slowest rank's seconds for fn().
template <class F>
double timed(int reps, F&& fn) {
    std::vector<double> t;
    for (int r = 0; r < reps; ++r) {
        MPI_Barrier(MPI_COMM_WORLD);
        const auto t0 = std::chrono::steady_clock::now();
        fn();
        double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), worst = 0;
        MPI_Allreduce(&s, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        t.push_back(worst);
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

long long sum_over_ranks(long long v) {
    long long s = 0;
    MPI_Allreduce(&v, &s, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
    return s;
}

long long max_over_ranks(long long v) {
    long long s = 0;
    MPI_Allreduce(&v, &s, 1, MPI_LONG_LONG, MPI_MAX, MPI_COMM_WORLD);
    return s;
}

// The sharded tree_feedforward's forward (and, at one rank, the plain layer's) on one batch.
void bench_feedforward(const options& o, int rank, int ranks) {
    mpi::sharded_tree_feedforward<float> layer(MPI_COMM_WORLD, o.in, o.out, o.width, o.depth, 1, treegate::activation::gelu,
                                               o.mode);
    layer.initialize(1);
    std::mt19937_64 g(static_cast<std::uint64_t>(1000 + rank));
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    mat X(o.in, o.batch), Y(o.out, o.batch);
    for (index_t i = 0; i < X.size(); ++i) X.data()[i] = u(g);
    mpi::exchange_workspace<float> ws;
    layer.forward_batch(X, Y, ws);
    const double fwd = timed(o.reps, [&] { layer.forward_batch(X, Y, ws); });
    double plain = 0;
    if (ranks == 1) {
        treegate::tree_feedforward<float> full(o.in, o.out, o.width, o.depth, 1, treegate::activation::gelu, o.mode);
        full.initialize(1);
        treegate::workspace<float> fws;
        full.forward_batch(X, Y, fws, treegate::parallel::serial{});
        plain = static_cast<double>(o.batch) / timed(o.reps, [&] { full.forward_batch(X, Y, fws, treegate::parallel::serial{}); });
    }
    const long long examples = sum_over_ranks(o.batch), bytes = sum_over_ranks(ws.stats().bytes_sent);
    const long long mem_max = max_over_ranks(layer.memory_bytes());
    if (rank == 0)
        std::printf("layer=tree_feedforward ranks=%d split=%d in=%lld out=%lld width=%lld depth=%d mode=%s batch_per_rank=%lld "
                    "forward_examples_per_s=%.0f plain_tree_feedforward_examples_per_s=%.0f "
                    "forward_bytes_exchanged_per_example=%.1f memory_per_rank_MiB=%.2f one_process_MiB=%.2f\n",
                    ranks, layer.layout().split(), static_cast<long long>(o.in), static_cast<long long>(o.out),
                    static_cast<long long>(o.width), o.depth, treegate::to_string(o.mode), static_cast<long long>(o.batch),
                    static_cast<double>(examples) / fwd, plain, static_cast<double>(bytes) / static_cast<double>(examples),
                    static_cast<double>(mem_max) / 1048576.0, static_cast<double>(layer.full_memory_bytes()) / 1048576.0);
}

}  // namespace

int main(int argc, char** argv) {
    MPI_Init(&argc, &argv);
    int status = 0;
    try {
        const options o = parse(argc, argv);
        const int rank = mpi::comm_rank(MPI_COMM_WORLD), ranks = mpi::comm_size(MPI_COMM_WORLD);
        if (o.width > 0) {
            bench_feedforward(o, rank, ranks);
            MPI_Finalize();
            return 0;
        }
        std::vector<index_t> idx(static_cast<std::size_t>(o.depth));
        for (int j = 0; j < o.depth; ++j) idx[static_cast<std::size_t>(j)] = (j * 37) % o.in;
        mpi::sharded_tree_linear<float> layer(MPI_COMM_WORLD, o.in, o.out, o.depth, o.mode, treegate::gating::from_input(idx));
        layer.initialize(1);
        std::mt19937_64 g(static_cast<std::uint64_t>(1000 + rank));
        std::uniform_real_distribution<float> u(-1.f, 1.f);
        mat X(o.in, o.batch), Y(o.out, o.batch), dY(o.out, o.batch), dX(o.in, o.batch);
        for (index_t i = 0; i < X.size(); ++i) X.data()[i] = u(g);
        for (index_t i = 0; i < dY.size(); ++i) dY.data()[i] = u(g);
        mpi::exchange_workspace<float> ws;
        mpi::sharded_gradient<float> grad(layer);

        layer.forward_batch(X, Y, ws);  // warm-up: sizes the buffers
        const double fwd = timed(o.reps, [&] { layer.forward_batch(X, Y, ws); });
        const auto st = ws.stats();
        const auto per_rank = mpi::examples_per_rank(MPI_COMM_WORLD, ws);
        const double bwd = timed(o.reps, [&] {
            grad.zero();
            mpi::backward(layer, X, dY, grad, dX, ws);
        });
        // One process only: the plain tree_linear on the same weights and batch, the figure the
        // sharded path's own overhead (sorting and copying for the exchange) is measured against.
        double plain = 0;
        if (ranks == 1) {
            treegate::tree_linear<float> full(o.in, o.out, o.depth, o.mode, treegate::gating::from_input(idx));
            full.initialize(1);
            treegate::workspace<float> fws;
            full.forward_batch(X, Y, fws);
            plain = static_cast<double>(o.batch) / timed(o.reps, [&] { full.forward_batch(X, Y, fws); });
        }
        const long long examples = sum_over_ranks(o.batch);
        const long long bytes = sum_over_ranks(st.bytes_sent);
        const long long mem_max = max_over_ranks(layer.memory_bytes());
        const index_t most = *std::max_element(per_rank.begin(), per_rank.end());
        if (rank == 0)
            std::printf("ranks=%d split=%d in=%lld out=%lld depth=%d mode=%s batch_per_rank=%lld "
                        "forward_examples_per_s=%.0f plain_tree_linear_examples_per_s=%.0f backward_examples_per_s=%.0f forward_bytes_exchanged_per_example=%.1f "
                        "memory_per_rank_MiB=%.2f one_process_MiB=%.2f max_examples_on_a_rank=%lld mean=%.1f\n",
                        ranks, layer.layout().split(), static_cast<long long>(o.in), static_cast<long long>(o.out), o.depth,
                        treegate::to_string(o.mode), static_cast<long long>(o.batch), static_cast<double>(examples) / fwd, plain,
                        static_cast<double>(examples) / bwd, static_cast<double>(bytes) / static_cast<double>(examples),
                        static_cast<double>(mem_max) / 1048576.0, static_cast<double>(layer.full_memory_bytes()) / 1048576.0,
                        static_cast<long long>(most), static_cast<double>(examples) / ranks);
    } catch (const treegate::config_error& e) {
        std::fprintf(stderr, "treegate_bench_mpi: %s\n", e.what());
        status = 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "treegate_bench_mpi: %s\n", e.what());
        status = 1;
    }
    MPI_Finalize();
    return status;
}
