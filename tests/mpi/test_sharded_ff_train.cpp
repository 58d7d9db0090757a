// Tests of the sharded tree_feedforward backward and training (mpi/sharded_ff_train.hpp):
// gradients against the single-process backward within a bound derived from the sums
// involved, optimizer steps against the whole layer's, bit-identical from run to run.
#include "../catch_compat.hpp"
#include "mpi_test_support.hpp"

#include <treegate/mpi/sharded_ff_train.hpp>
#include <treegate/train/backward.hpp>
#include <treegate/train/optimizer.hpp>

#include <cmath>
#include <limits>
#include <vector>

using namespace tg_mpi_test;
using treegate::activation;
using treegate::tie_rule;
using treegate::tree_mode;
namespace mpi = treegate::mpi;
namespace train = treegate::train;

namespace {

template <class Policy>
using full_of = treegate::tree_feedforward<double, treegate::dynamic, treegate::dynamic, treegate::dynamic, treegate::dynamic, Policy>;
template <class Policy>
using sharded_of = mpi::sharded_tree_feedforward<double, Policy>;
using sharded_t = sharded_of<treegate::kernels::default_policy>;
using vec = Eigen::VectorXd;

struct ff_train_case {
    index_t width;
    int depth;
    index_t trees;
    tree_mode mode;
    tie_rule tie;
    bool leaf_bias;
    bool adam;
    route_shape shape;
    bool one_path;  // every example a copy of the first: all reach the same subtree
};

// The magnitudes of the sums a gradient entry is made of: per unit, sum over the examples
// that reached it of |dy| |h|^T (for dV), |dp| |x|^T with |dp| = |act'(pre)| .* (|V|^T |dy|)
// (for dU and, with x = 1, da), |dy| (leaf bias); per example, sum over its units of |U|^T
// |dp| (dX). Computed naively per example on the routes the pre-activations give.
struct abs_terms {
    std::vector<mat<double>> dU, dV;
    std::vector<vec> da, db;
    mat<double> dX;
};

template <class Full>
abs_terms magnitudes(const Full& f, const mat<double>& X, const mat<double>& dY) {
    const index_t units = f.tree_count() * f.unit_count();
    abs_terms a;
    a.dU.assign(static_cast<std::size_t>(units), mat<double>::Zero(f.width(), f.in_size()));
    a.dV.assign(static_cast<std::size_t>(units), mat<double>::Zero(f.out_size(), f.width()));
    a.da.assign(static_cast<std::size_t>(units), vec::Zero(f.width()));
    a.db.assign(static_cast<std::size_t>(units), vec::Zero(f.out_size()));
    a.dX = mat<double>::Zero(f.in_size(), X.cols());
    const bool ps = f.mode() == tree_mode::path_sum;
    for (index_t e = 0; e < X.cols(); ++e)
        for (index_t t = 0; t < f.tree_count(); ++t) {
            index_t node = 0;
            auto unit = [&](index_t i) {
                const auto s = static_cast<std::size_t>(t * f.unit_count() + i);
                const vec pre = f.hidden_weight(t, i) * X.col(e) + f.hidden_bias(t, i);
                vec h(pre.size()), dp = f.output_weight(t, i).cwiseAbs().transpose() * dY.col(e).cwiseAbs();
                for (index_t k = 0; k < pre.size(); ++k) {
                    h(k) = std::abs(treegate::apply(f.activation_kind(), pre(k)));
                    dp(k) *= std::abs(train::activation_derivative(f.activation_kind(), pre(k)));
                }
                a.dV[s] += dY.col(e).cwiseAbs() * h.transpose();
                a.dU[s] += dp * X.col(e).cwiseAbs().transpose();
                a.da[s] += dp;
                a.db[s] += dY.col(e).cwiseAbs();
                a.dX.col(e) += f.hidden_weight(t, i).cwiseAbs().transpose() * dp;
                return treegate::gate_bit(pre(0), f.tie());
            };
            if (ps) {
                for (int level = 0; level <= f.depth(); ++level) node = treegate::tree::child(node, unit(node));
            } else {
                for (int level = 0; level < f.depth(); ++level)
                    node = treegate::tree::child(
                        node, treegate::gate_bit(f.router_weight(t, node).dot(X.col(e)) + f.router_bias(t, node), f.tie()));
                unit(node - treegate::tree::level_begin(f.depth()));
            }
        }
    return a;
}

bool within(const Eigen::Ref<const mat<double>>& a, const Eigen::Ref<const mat<double>>& b,
            const Eigen::Ref<const mat<double>>& tol) {
    return ((a - b).cwiseAbs().array() <= tol.array()).all();
}

// The sharded gradient placed into a whole-layer gradient on every rank: each rank writes its
// owned units (rank 0 the replicated ones and the output bias too) into a zeroed buffer, and an
// MPI sum adds each entry to zeros only, which is exact.
template <class Sharded>
void gather(const Sharded& s, mpi::sharded_ff_gradient<double>& g, train::tree_feedforward_gradient<double>& whole) {
    const index_t U = s.width() * s.in_size(), A = s.width(), V = s.out_size() * s.width(), B = s.has_leaf_bias() ? s.out_size() : 0;
    const index_t per = U + A + V + B + 1, units = s.tree_count() * whole.unit_count(), out = s.out_size();
    std::vector<double> buf(static_cast<std::size_t>(units * per + out + 1), 0.0);
    s.for_each_local(
        [&](index_t t, index_t i, index_t l) {
            if (l % s.units_per_tree() < s.replicated_units() && rank() != 0) return;
            double* p = buf.data() + (t * whole.unit_count() + i) * per;
            Eigen::Map<mat<double>>(p, s.width(), s.in_size()) = g.hidden_weight(l);
            Eigen::Map<vec>(p + U, A) = g.hidden_bias(l);
            Eigen::Map<mat<double>>(p + U + A, out, s.width()) = g.output_weight(l);
            if (B > 0) Eigen::Map<vec>(p + U + A + V, B) = g.leaf_bias(l);
            p[per - 1] = g.visited(l) ? 1.0 : 0.0;
        },
        [](index_t, index_t, index_t) {});
    if (rank() == 0) {
        if (s.has_output_bias()) Eigen::Map<vec>(buf.data() + units * per, out) = g.output_bias();
        buf.back() = g.output_bias_visited() ? 1.0 : 0.0;
    }
    MPI_Allreduce(MPI_IN_PLACE, buf.data(), static_cast<int>(buf.size()), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    whole.zero();
    for (index_t t = 0; t < s.tree_count(); ++t)
        for (index_t i = 0; i < whole.unit_count(); ++i) {
            const double* p = buf.data() + (t * whole.unit_count() + i) * per;
            if (p[per - 1] == 0.0) continue;
            whole.mark(t, i);
            whole.hidden_weight(t, i) = Eigen::Map<const mat<double>>(p, s.width(), s.in_size());
            whole.hidden_bias(t, i) = Eigen::Map<const vec>(p + U, A);
            whole.output_weight(t, i) = Eigen::Map<const mat<double>>(p + U + A, out, s.width());
            if (B > 0)
                Eigen::Map<vec>(whole.block(whole.find("leaf_bias"), t * whole.unit_count() + i), B) =
                    Eigen::Map<const vec>(p + U + A + V, B);
        }
    if (buf.back() != 0.0) whole.mark_output_bias();
    if (s.has_output_bias()) whole.output_bias() = Eigen::Map<const vec>(buf.data() + units * per, out);
}

// Runs `steps` optimizer steps (loss sum(dY .* Y), a fresh dY per step) on the sharded layer
// and on a whole layer that steps with the gathered sharded gradient, so that both hold the
// same weights at every step: each step's sharded gradient is checked against the whole
// layer's own backward within the derived bound, the sharded weights against the whole
// layer's bit for bit, and the first SGD step against the whole layer's own step. Returns the
// sharded layer's local weights and last gradient for the run-to-run comparison.
// Wider units use kernels::reference, whose GEMM column does not depend on the group (the
// SIMD kernels' order may, which would perturb the pre-activations beyond the bound below);
// width 1 computes each example's pre-activation alone, so it runs the default kernels.
template <class Policy>
std::vector<double> train_and_compare(const ff_train_case& c, std::uint64_t seed, int steps) {
    using full_t = full_of<Policy>;
    using sharded_t = sharded_of<Policy>;
    const index_t in = 5, out = 3;
    full_t full(in, out, c.width, c.depth, c.trees, activation::gelu, c.mode, true, c.tie, c.leaf_bias);
    full.initialize(seed);
    if (c.tie == tie_rule::greater_equal) zero_scores(full);
    sharded_t layer(MPI_COMM_WORLD, in, out, c.width, c.depth, c.trees, activation::gelu, c.mode, true, -1, c.tie,
                    c.leaf_bias);
    layer.copy_from(full);
    train::tree_feedforward_gradient<double> gfull(full), gwhole(full);
    mpi::sharded_ff_gradient<double> g(layer);
    train::sgd<double> sgd_full({0.1, 0.9, {1e-2, 1.5}}), sgd_s({0.1, 0.9, {1e-2, 1.5}});
    train::adam<double> adam_full({0.01, 0.9, 0.999, 1e-8, {1e-2, 1.5}}), adam_s({0.01, 0.9, 0.999, 1e-8, {1e-2, 1.5}});
    train::backward_workspace<double> bws;
    mpi::exchange_workspace<double> xws;
    const double u = std::numeric_limits<double>::epsilon() / 2;
    std::vector<double> result;

    for (int s = 0; s < steps; ++s) {
        global_batch<double> data(in, c.depth, seed + 10 + static_cast<std::uint64_t>(s), c.shape, treegate::gating::external());
        if (c.one_path)
            for (index_t e = 1; e < data.total; ++e) data.X.col(e) = data.X.col(0);
        std::mt19937_64 r(seed + 99 + static_cast<std::uint64_t>(s));
        std::uniform_real_distribution<double> ud(-1.0, 1.0);
        mat<double> dY(out, data.total);
        for (index_t i = 0; i < dY.size(); ++i) dY.data()[i] = ud(r);

        gfull.zero();
        mat<double> dXfull(in, data.total);
        train::backward(full, data.X, dY, gfull, dXfull, bws);
        g.zero();
        const mat<double> Xl = data.local_X(), dYl = dY.middleCols(data.first_local, data.count);
        mat<double> dX = mat<double>::Constant(in, data.count, 7.0);
        mpi::backward(layer, Xl, dYl, g, dX, xws);

        // The bound. Both sides compute each example's term of an entry from the same
        // pre-activations (the forward's policy calls, so the same route bits) with products of
        // at most `out` terms (|V|^T |dy|) and one more multiply, then add the terms in
        // different orders: the whole layer over its walk, the sharded one per rank (in the
        // exchange's order) and then the R partial sums of the replicated units. A sum of k
        // terms is within gamma_k = k u / (1 - k u) of its terms' absolute sum, so each side is
        // within gamma_{N + R + out + 2} of the magnitudes above, the difference within twice
        // that. dX adds trees x (D + 1) unit terms of `width` products each, per example.
        const abs_terms mag = magnitudes(full, data.X, dY);
        auto gam = [&](double k) { return 2 * k * u / (1 - k * u); };
        const double gg = gam(static_cast<double>(data.total + ranks() + out + 2));
        const double gx = gam(static_cast<double>(c.trees * (c.depth + 1) + c.width + out + 2));
        INFO("rank " << rank() << " of " << ranks() << ", step " << s << ", " << treegate::to_string(c.mode) << " width "
                     << c.width << " trees " << c.trees << " tie " << treegate::to_string(c.tie) << " leaf bias "
                     << c.leaf_bias << (c.adam ? " adam" : " sgd") << ", split " << layer.layout().split() << ", "
                     << data.count << " of " << data.total << " examples");
        CHECK(within(dX, dXfull.middleCols(data.first_local, data.count), mag.dX.middleCols(data.first_local, data.count) * gx));
        const index_t lb = c.leaf_bias ? gfull.find("leaf_bias") : -1;
        layer.for_each_local(
            [&](index_t t, index_t i, index_t l) {
                const auto k = static_cast<std::size_t>(t * full.unit_count() + i);
                CHECK(g.visited(l) == gfull.visited(t, i));
                CHECK(within(g.hidden_weight(l), gfull.hidden_weight(t, i), mag.dU[k] * gg));
                CHECK(within(g.hidden_bias(l), gfull.hidden_bias(t, i), mag.da[k] * gg));
                CHECK(within(g.output_weight(l), gfull.output_weight(t, i), mag.dV[k] * gg));
                if (lb >= 0)
                    CHECK(within(g.leaf_bias(l), Eigen::Map<const vec>(gfull.block(lb, static_cast<index_t>(k)), out), mag.db[k] * gg));
            },
            [](index_t, index_t, index_t) {});
        vec cmag = dY.cwiseAbs().rowwise().sum();
        CHECK(g.output_bias_visited() == gfull.output_bias_visited());
        CHECK(within(g.output_bias(), gfull.output_bias(), cmag * gg));

        gather(layer, g, gwhole);
        // The first SGD step against the whole layer's own: w' = keep w - lr g, so the two differ
        // by lr times the gradients' bound plus the update's rounding (a few u of |w| + lr |g|).
        full_t own = full;
        if (s == 0 && !c.adam) {
            train::sgd<double> first({0.1, 0.9, {1e-2, 1.5}});
            first.step(own, gfull);
        }
        if (c.adam) {
            adam_full.step(full, gwhole);
            adam_s.step(g.collect(layer));
        } else {
            sgd_full.step(full, gwhole);
            sgd_s.step(g.collect(layer));
        }
        layer.for_each_local(
            [&](index_t t, index_t i, index_t l) {
                const auto k = static_cast<std::size_t>(t * full.unit_count() + i);
                const auto wu = layer.local_unit(l);
                const Eigen::Map<const mat<double>> U(wu.U, c.width, in), V(wu.V, out, c.width);
                const Eigen::Map<const vec> a(wu.a, c.width);
                CHECK(bits_equal(U, full.hidden_weight(t, i)));
                CHECK(bits_equal(a, full.hidden_bias(t, i)));
                CHECK(bits_equal(V, full.output_weight(t, i)));
                if (c.leaf_bias) CHECK(bits_equal(Eigen::Map<const vec>(wu.b, out), full.leaf_bias(t, i)));
                if (s == 0 && !c.adam) {
                    const auto step_tol = [&](const auto& w, const auto& gr, const mat<double>& m) -> mat<double> {
                        return 0.1 * gg * m + 4 * u * (w.cwiseAbs() + 0.1 * gr.cwiseAbs());
                    };
                    CHECK(within(U, own.hidden_weight(t, i), step_tol(own.hidden_weight(t, i), gfull.hidden_weight(t, i), mag.dU[k])));
                    CHECK(within(V, own.output_weight(t, i), step_tol(own.output_weight(t, i), gfull.output_weight(t, i), mag.dV[k])));
                }
                if (s + 1 == steps) {
                    result.insert(result.end(), wu.U, wu.U + c.width * in);
                    result.insert(result.end(), wu.a, wu.a + c.width);
                    result.insert(result.end(), wu.V, wu.V + out * c.width);
                    result.insert(result.end(), g.hidden_weight(l).data(), g.hidden_weight(l).data() + c.width * in);
                }
            },
            [](index_t, index_t, index_t) {});
        CHECK(bits_equal(Eigen::Map<const vec>(layer.output_bias_data(), out), full.output_bias()));
        if (s + 1 == steps) result.insert(result.end(), dX.data(), dX.data() + dX.size());
    }
    return result;
}

}  // namespace

TEST_CASE("sharded tree_feedforward training equals the single-process layer within the derived bound", "[mpi][train][feedforward]") {
    const auto ps = tree_mode::path_sum, lo = tree_mode::leaf_only;
    const auto gt = tie_rule::greater, ge = tie_rule::greater_equal;
    const std::vector<ff_train_case> cases = {
        {1, 4, 1, ps, gt, false, false, route_shape::random, false},
        {3, 4, 2, ps, gt, false, true, route_shape::random, false},
        {1, 3, 2, ps, gt, false, true, route_shape::one_rank_holds_all, false},
        {4, 4, 1, lo, gt, false, false, route_shape::random, false},
        {1, 3, 2, lo, gt, true, true, route_shape::random, false},
        {3, 4, 1, lo, ge, true, false, route_shape::random, true},
        {2, 3, 1, ps, ge, false, false, route_shape::random, true},
        {2, 3, 2, lo, gt, false, true, route_shape::empty, false},
    };
    std::uint64_t seed = 900;
    for (const ff_train_case& c : cases) {
        const auto run = c.width == 1 ? train_and_compare<treegate::kernels::default_policy>
                                      : train_and_compare<treegate::kernels::reference>;
        const auto a = run(c, seed, 3);
        const auto b = run(c, seed, 3);
        CHECK(a.size() == b.size());
        CHECK(bits_equal(Eigen::Map<const vec>(a.data(), static_cast<index_t>(a.size())),
                         Eigen::Map<const vec>(b.data(), static_cast<index_t>(b.size()))));
        ++seed;
    }
}

TEST_CASE("sharded tree_feedforward backward: a bad dY on one rank is an error on every rank", "[mpi][train][errors]") {
    sharded_t layer(MPI_COMM_WORLD, 4, 2, 2, 3, 1, activation::gelu, tree_mode::path_sum);
    mpi::sharded_ff_gradient<double> g(layer);
    mpi::exchange_workspace<double> xws;
    const mat<double> X = mat<double>::Random(4, 3);
    const mat<double> dY = mat<double>::Random(rank() == 0 ? 3 : 2, 3);
    CHECK_THROWS_AS(mpi::backward(layer, X, dY, g, xws), treegate::shape_error);
}
