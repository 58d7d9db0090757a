// Helpers of the MPI tests (tests/mpi/): rank queries, one global batch every rank generates
// from a seed and deals out the same way, and an exact (bitwise) comparison of matrices.
#ifndef TREEGATE_TESTS_MPI_TEST_SUPPORT_HPP
#define TREEGATE_TESTS_MPI_TEST_SUPPORT_HPP

#include <treegate/kernels/dispatch.hpp>
#include <treegate/mpi/layout.hpp>
#include <treegate/routing.hpp>

#include <Eigen/Core>
#include <mpi.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

namespace tg_mpi_test {

using treegate::index_t;

template <class Scalar>
using mat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

/// True when the default policy's float kernels are batch invariant (the dispatch bound to
/// avx2, avx512 or reference); on eigen (no x86 SIMD) the sharded outputs agree only within rounding.
inline bool default_float_kernels_invariant() {
    return treegate::kernels::batch_invariant(treegate::kernels::active_isa());
}

inline int rank() {
    int r = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
}

inline int ranks() {
    int r = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &r);
    return r;
}

/// True when a test case's tree (depth; split level, or -1 for automatic) runs at this rank
/// count: the automatic split fits in the tree, and a given split has a subtree for every rank.
inline bool layout_fits(int depth, int split) {
    return treegate::mpi::layout::automatic_split(ranks()) <= depth && (split < 0 || (index_t{1} << split) >= ranks());
}

/// D gating indices drawn from [0, in).
inline treegate::gating input_gating(int depth, index_t in, std::uint64_t seed) {
    std::mt19937_64 g(seed);
    std::vector<index_t> idx(static_cast<std::size_t>(depth));
    for (auto& i : idx) i = static_cast<index_t>(g() % static_cast<std::uint64_t>(in));
    return treegate::gating::from_input(idx);
}

/// How the examples of a global batch route and how they are dealt to the ranks.
enum class route_shape {
    random,              // random routes, 0 .. 9 examples per rank (some ranks none)
    all_to_first,        // every gate value negative: every example reaches subtree 0 (rank 0)
    all_to_last,         // every gate value positive: the last subtree (the last rank)
    one_rank_holds_all,  // random routes, all examples on rank 0, the others with empty batches
    empty,               // no rank has an example
};

/// A batch of `total` examples (columns) that every rank generates alike; rank r holds the
/// columns [first_local, first_local + count) of it.
template <class Scalar>
struct global_batch {
    index_t total = 0, first_local = 0, count = 0;
    mat<Scalar> X, G;

    global_batch(index_t in, int depth, std::uint64_t seed, route_shape shape, const treegate::gating& gates) {
        std::mt19937_64 g(seed);
        std::vector<index_t> counts(static_cast<std::size_t>(ranks()), 0);
        for (auto& c : counts) c = static_cast<index_t>(g() % 10);
        if (shape == route_shape::empty) counts.assign(counts.size(), 0);
        if (shape == route_shape::one_rank_holds_all) {
            counts.assign(counts.size(), 0);
            counts[0] = 23;
        }
        for (int r = 0; r < ranks(); ++r) {
            if (r == rank()) first_local = total, count = counts[static_cast<std::size_t>(r)];
            total += counts[static_cast<std::size_t>(r)];
        }
        std::uniform_real_distribution<double> u(-1.0, 1.0);
        X.resize(in, total);
        G.resize(depth, total);
        for (index_t i = 0; i < X.size(); ++i) X.data()[i] = static_cast<Scalar>(u(g));
        for (index_t i = 0; i < G.size(); ++i) G.data()[i] = static_cast<Scalar>(u(g));
        if (shape == route_shape::all_to_first || shape == route_shape::all_to_last) {
            const Scalar v = shape == route_shape::all_to_first ? Scalar(-1) : Scalar(1);
            G.setConstant(v);
            for (index_t i : gates.indices()) X.row(i).setConstant(v);
        }
    }

    mat<Scalar> local_X() const { return X.middleCols(first_local, count); }
    mat<Scalar> local_G() const { return G.middleCols(first_local, count); }
};

/// Exact zeros in the route scores of a tree_feedforward's even units and routers (the first
/// hidden row and bias, the router weights and bias), where the two tie rules send examples apart.
template <class FF>
void zero_scores(FF& f) {
    for (index_t t = 0; t < f.tree_count(); ++t) {
        for (index_t i = 0; i < f.unit_count(); i += 2) {
            f.hidden_weight(t, i).row(0).setZero();
            f.hidden_bias(t, i)(0) = 0;
        }
        for (index_t i = 0; i < f.router_count(); i += 2) {
            f.router_weight(t, i).setZero();
            f.router_bias(t, i) = 0;
        }
    }
}

/// Same shape and the same bits in every entry (so -0 differs from +0).
template <class A, class B>
bool bits_equal(const A& a, const B& b) {
    if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
    for (index_t c = 0; c < a.cols(); ++c)
        for (index_t r = 0; r < a.rows(); ++r) {
            const auto x = a(r, c), y = b(r, c);
            if (std::memcmp(&x, &y, sizeof x) != 0) return false;
        }
    return true;
}

}  // namespace tg_mpi_test

#endif
