// bf16 weight storage: the conversions against an independent nearest-even oracle, the bf16
// kernels of every policy against an exact product of the widened weights, and tree_linear_bf16
// against the naive oracle on its own (rounded) weights and against the float layer it came from.
#include "test_support.hpp"

#include <treegate/bf16.hpp>
#include <treegate/kernels/avx2.hpp>
#include <treegate/kernels/avx512.hpp>
#include <treegate/kernels/dispatch.hpp>
#include <treegate/layers/flatten.hpp>
#include <treegate/layers/tree_linear.hpp>
#include <treegate/layers/tree_linear_bf16.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <tuple>
#include <vector>

using treegate::bf16;
using treegate::index_t;
using namespace tg_test;

namespace {

float from_bits(std::uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

std::uint32_t to_bits(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

/// Round to nearest even written from the definition: the two bf16 values around a finite f are
/// its truncation and the next one away from zero; take the nearer (in double, exact here), on a
/// tie the one with an even last bit.
std::uint16_t oracle_round(float f) {
    const auto lo = static_cast<std::uint16_t>(to_bits(f) >> 16);
    const auto hi = static_cast<std::uint16_t>(lo + 1);
    const double dlo = std::abs(static_cast<double>(from_bits(std::uint32_t{lo} << 16)) - static_cast<double>(f));
    const double dhi = std::abs(static_cast<double>(from_bits(std::uint32_t{hi} << 16)) - static_cast<double>(f));
    if (dlo < dhi) return lo;
    if (dhi < dlo) return hi;
    return (lo & 1u) == 0 ? lo : hi;
}

// bf16's unit roundoff: 8 significant bits, so half an ulp is at most a relative 2^-8.
const double bf16_u = std::ldexp(1.0, -8);

std::vector<bf16> random_bf16(index_t n, std::mt19937& g) {
    std::vector<bf16> v(static_cast<std::size_t>(n));
    for (auto& b : v) b = treegate::to_bf16(static_cast<float>(uniform(g)));
    return v;
}

Eigen::MatrixXd widen(const std::vector<bf16>& w, index_t rows, index_t cols, index_t ld) {
    Eigen::MatrixXd m(rows, cols);
    for (index_t c = 0; c < cols; ++c)
        for (index_t r = 0; r < rows; ++r) m(r, c) = static_cast<double>(treegate::to_float(w[static_cast<std::size_t>(r + c * ld)]));
    return m;
}

bool has_avx2() { return treegate::kernels::cpu_supports_avx2(); }

/// Runs f(Policy{}) for every policy with bf16 kernels this CPU can execute.
template <class F>
void for_each_policy(F&& f) {
    f(treegate::kernels::reference{});
    f(treegate::kernels::eigen{});
    if (has_avx2())
        f(treegate::kernels::avx2{});
    else
        WARN("this CPU (or build) has no AVX2 + FMA: the avx2 bf16 kernels are not tested");
    if (treegate::kernels::cpu_supports_avx512())
        f(treegate::kernels::avx512{});
    else
        WARN("this CPU (or build) lacks AVX-512 F/BW/VL/DQ: the avx512 bf16 kernels are not tested");
    f(treegate::kernels::dispatch{});
}

}  // namespace

TEST_CASE("bf16 conversion rounds to nearest even and keeps NaN and infinities", "[bf16]") {
    using treegate::to_bf16;
    using treegate::to_float;
    // Ties: 1 + 2^-8 lies halfway between 1 (even) and 1 + 2^-7 (odd); 1 + 3 * 2^-8 halfway
    // between 1 + 2^-7 (odd) and 1 + 2^-6 (even). Just above a tie rounds up.
    CHECK(to_bf16(1.0f + std::ldexp(1.0f, -8)).bits == 0x3f80);
    CHECK(to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)).bits == 0x3f82);
    CHECK(to_bf16(-(1.0f + 3 * std::ldexp(1.0f, -8))).bits == 0xbf82);
    CHECK(to_bf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)).bits == 0x3f81);
    CHECK(to_bf16(1.0f + std::ldexp(1.0f, -8) - std::ldexp(1.0f, -20)).bits == 0x3f80);
    CHECK(to_bf16(-0.0f).bits == 0x8000);

    const float inf = std::numeric_limits<float>::infinity();
    CHECK(to_bf16(inf).bits == 0x7f80);
    CHECK(to_bf16(-inf).bits == 0xff80);
    CHECK(to_bf16(std::numeric_limits<float>::max()).bits == 0x7f80);  // above the largest bf16: rounds to inf
    CHECK(std::isnan(to_float(to_bf16(std::numeric_limits<float>::quiet_NaN()))));
    // NaNs whose payload lies only in the low half: rounding their bits would give infinity.
    CHECK(std::isnan(to_float(to_bf16(from_bits(0x7f800001u)))));
    CHECK(std::isnan(to_float(to_bf16(from_bits(0xffffffffu)))));
    CHECK(std::isnan(to_float(to_bf16(from_bits(0x7fffffffu)))));

    // Every bf16 value survives float and back unchanged (NaNs stay NaN).
    index_t mismatches = 0;
    for (std::uint32_t b = 0; b <= 0xffffu; ++b) {
        const bf16 v{static_cast<std::uint16_t>(b)};
        const float f = to_float(v);
        CHECK(to_bits(f) == b << 16);  // widening is exact: the bits move up
        if (std::isnan(f) ? !std::isnan(to_float(to_bf16(f))) : to_bf16(f).bits != b) ++mismatches;
    }
    CHECK(mismatches == 0);

    // Random finite floats over the whole normal range: the oracle's choice, within 2^-8 relative.
    std::mt19937 g(1601);
    std::uniform_int_distribution<std::uint32_t> bits(0, 0xffffffffu);
    index_t wrong = 0, too_far = 0;
    for (int i = 0; i < 200000; ++i) {
        const float f = from_bits(bits(g));
        if (!std::isfinite(f) || std::abs(f) < std::numeric_limits<float>::min() ||
            std::abs(f) >= 0x1.ffp127f)  // skip subnormals and values whose upper neighbour is inf
            continue;
        const bf16 r = to_bf16(f);
        if (r.bits != oracle_round(f)) ++wrong;
        const double rel = std::abs(static_cast<double>(to_float(r)) - static_cast<double>(f)) / std::abs(static_cast<double>(f));
        if (!(rel <= bf16_u)) ++too_far;
    }
    CHECK(wrong == 0);
    CHECK(too_far == 0);
}

TEST_CASE("bf16 kernels of every policy match the exact product of the widened weights", "[bf16][kernels]") {
    std::mt19937 g(1602);
    for_each_policy([&](auto policy) {
        using P = decltype(policy);
        CAPTURE(P::name());
        for (int trial = 0; trial < 40; ++trial) {
            // The last trial has more rows than the avx2 small-group kernel widens at a time (1024).
            const index_t rows = trial < 17 ? trial + 1 : trial == 39 ? 1100 : uniform_index(g, 1, trial < 36 ? 70 : 300);
            const index_t cols = uniform_index(g, 1, trial < 36 ? 70 : 300);
            const index_t ldw = rows + (trial % 2 == 0 ? 0 : uniform_index(g, 1, 3)), ldx = cols + uniform_index(g, 0, 2), ldy = rows + 1;
            const index_t groups[] = {1, 2, 3, 4, 5, 17, 40};
            const index_t n = groups[trial % 7];
            CAPTURE(rows, cols, n, ldw);
            const auto W = random_bf16(ldw * (cols - 1) + rows, g);
            std::vector<float> X(static_cast<std::size_t>(ldx * (n - 1) + cols)), Y(static_cast<std::size_t>(ldy * n));
            for (auto& v : X) v = static_cast<float>(uniform(g));
            for (auto& v : Y) v = static_cast<float>(uniform(g));
            Eigen::MatrixXd Xd(cols, n), want(rows, n), scale(rows, n);
            for (index_t e = 0; e < n; ++e)
                for (index_t r = 0; r < cols; ++r) Xd(r, e) = static_cast<double>(X[static_cast<std::size_t>(r + e * ldx)]);
            for (index_t e = 0; e < n; ++e)
                for (index_t r = 0; r < rows; ++r) want(r, e) = scale(r, e) = static_cast<double>(Y[static_cast<std::size_t>(r + e * ldy)]);
            const Eigen::MatrixXd Wd = widen(W, rows, cols, ldw);
            want += Wd * Xd;
            scale = scale.cwiseAbs() + Wd.cwiseAbs() * Xd.cwiseAbs();
            const float pad = Y[static_cast<std::size_t>(rows)];
            P::gemm(rows, cols, n, W.data(), ldw, X.data(), ldx, Y.data(), ldy);
            const Eigen::MatrixXf got = Eigen::Map<const Eigen::MatrixXf, 0, Eigen::OuterStride<>>(Y.data(), rows, n,
                                                                                                  Eigen::OuterStride<>(ldy));
            // Float accumulation of cols products and the initial y: (cols + 1) eps (test_support.hpp).
            CHECK(close_report<float>(got, want, scale, static_cast<double>(cols + 1)) == "");
            CHECK(Y[static_cast<std::size_t>(rows)] == pad);  // the row past `rows` is left alone
        }
        // path_sum: 1..4 blocks of leading dimension rows, one example.
        for (int trial = 0; trial < 24; ++trial) {
            const index_t rows = uniform_index(g, 1, trial < 20 ? 40 : 520), cols = uniform_index(g, 1, trial < 20 ? 40 : 300);
            const int count = 1 + trial % 4;
            CAPTURE(rows, cols, count);
            std::vector<std::vector<bf16>> blocks;
            std::vector<const bf16*> ptrs;
            for (int k = 0; k < count; ++k) blocks.push_back(random_bf16(rows * cols, g));
            for (const auto& b : blocks) ptrs.push_back(b.data());
            std::vector<float> x(static_cast<std::size_t>(cols)), y(static_cast<std::size_t>(rows), 0.0f);
            for (auto& v : x) v = static_cast<float>(uniform(g));
            const Eigen::VectorXd xd = Eigen::Map<const Eigen::VectorXf>(x.data(), cols).cast<double>();
            Eigen::MatrixXd want = Eigen::MatrixXd::Zero(rows, 1), scale = Eigen::MatrixXd::Zero(rows, 1);
            for (const auto& b : blocks) {
                const Eigen::MatrixXd Wd = widen(b, rows, cols, rows);
                want += Wd * xd;
                scale += Wd.cwiseAbs() * xd.cwiseAbs();
            }
            P::path_sum(rows, cols, ptrs.data(), count, x.data(), y.data());
            CHECK(close_report<float>(Eigen::Map<const Eigen::MatrixXf>(y.data(), rows, 1), want, scale,
                                      static_cast<double>(count * cols)) == "");
        }
    });
}

TEST_CASE("tree_linear_bf16 matches the oracle on its weights and the float layer within bf16 rounding", "[bf16][tree_linear]") {
    using float_layer = treegate::tree_linear<float>;
    std::mt19937 g(1603);
    for_each_policy([&](auto policy) {
        using P = decltype(policy);
        using layer_t = treegate::tree_linear_bf16<P>;
        for (const auto mode : {treegate::tree_mode::path_sum, treegate::tree_mode::leaf_only})
            for (const bool external : {false, true})
                for (int depth = 0; depth <= 5; ++depth) {
                    const index_t in = uniform_index(g, 1, 70), out = uniform_index(g, 1, 70);
                    const bool bias = depth % 2 == 0;
                    CAPTURE(P::name(), treegate::to_string(mode), external, depth, in, out, bias);
                    const auto idx = random_gating_indices(depth, in, g);
                    float_layer f(in, out, depth, mode, external ? treegate::gating::external() : treegate::gating::from_input(idx),
                                  bias);
                    fill_random(f, g);
                    const layer_t h(f);
                    CHECK(h.parameter_count() == f.parameter_count());
                    CHECK(h.macs_per_example() == f.macs_per_example());
                    CHECK(h.weight_bytes() == f.block_count() * ((in * out + 31) / 32 * 32) * 2);
                    for (index_t b = 0; b < f.block_count(); ++b) {
                        const Eigen::MatrixXf w = h.weight(b);
                        const Eigen::MatrixXf fw = f.weight(b);
                        index_t off = 0;
                        for (index_t c = 0; c < in; ++c)
                            for (index_t r = 0; r < out; ++r)
                                off += w(r, c) != treegate::to_float(treegate::to_bf16(fw(r, c))) ? 1 : 0;
                        CHECK(off == 0);
                    }
                    const double blocks = mode == treegate::tree_mode::path_sum ? depth + 1.0 : 1.0;
                    const double terms = blocks * (static_cast<double>(in) + 1.0);
                    treegate::workspace<float> ws;
                    for (const index_t n : {index_t{0}, index_t{1}, index_t{3}, index_t{9}, index_t{70}}) {
                        CAPTURE(n);
                        const mat<float> X = random_matrix<float>(in, n, g);
                        const mat<float> G = random_gates<float>(depth, n, g);
                        std::vector<std::uint64_t> codes(static_cast<std::size_t>(n));
                        for (index_t e = 0; e < n; ++e)
                            codes[static_cast<std::size_t>(e)] =
                                external ? oracle_code_from_gates(G.col(e)) : oracle_code_from_input(X.col(e), idx);
                        // The exact product of the rounded weights (read back through weight(i)).
                        const auto want = oracle_tree_linear(h, X, codes);
                        mat<float> Y(out, n), Yf(out, n);
                        if (external) {
                            h.forward_batch(X, G, Y, ws);
                            f.forward_batch(X, G, Yf, ws);
                        } else {
                            h.forward_batch(X, Y, ws);
                            f.forward_batch(X, Yf, ws);
                        }
                        CHECK(close_report<float>(Y, want.y, want.scale, terms) == "");
                        mat<float> Ys(out, n);
                        Eigen::VectorXf y(out);
                        for (index_t e = 0; e < n; ++e) {
                            if (external) {
                                const Eigen::VectorXf gate = G.col(e);
                                h.forward(X.col(e), gate, y);
                            } else {
                                h.forward(X.col(e), y);
                            }
                            Ys.col(e) = y;
                        }
                        CHECK(close_report<float>(Ys, want.y, want.scale, terms) == "");

                        // Against the float layer. With S = sum over the path's blocks of
                        // sum_k |W_ik x_k| (+ |c|), rounding each weight to bf16 moves the exact
                        // output by at most 2^-8 S (relative 2^-8 per weight, the bf16 unit
                        // roundoff). Each layer's float accumulation adds at most terms * eps * S
                        // (the bf16 one on weights up to (1 + 2^-8) larger): hence the bound below.
                        const auto exact_f = oracle_tree_linear(f, X, codes);
                        const double eps = static_cast<double>(std::numeric_limits<float>::epsilon());
                        const Eigen::MatrixXd bound = exact_f.scale.unaryExpr([&](double s) {
                            return (bf16_u + terms * eps * (2.0 + bf16_u)) * s + 2 * static_cast<double>(std::numeric_limits<float>::denorm_min());
                        });
                        CHECK(bound_report(Y, Yf.cast<double>(), bound) == "");
                    }
                }
    });
}

TEST_CASE("tree_linear_bf16 serves a flattened tree and checks its arguments", "[bf16][tree_linear][flatten]") {
    std::mt19937 g(1604);
    const index_t in = 37, out = 21;
    const int depth = 4;
    const auto idx = random_gating_indices(depth, in, g);
    treegate::tree_linear<float> tree(in, out, depth, treegate::tree_mode::path_sum, treegate::gating::from_input(idx));
    fill_random(tree, g);
    const auto flat = treegate::flatten(tree);
    const treegate::tree_linear_bf16<> served(flat);
    CHECK(served.mode() == treegate::tree_mode::leaf_only);
    CHECK(served.block_count() == 16);
    const mat<float> X = random_matrix<float>(in, 50, g);
    std::vector<std::uint64_t> codes;
    for (index_t e = 0; e < X.cols(); ++e) codes.push_back(oracle_code_from_input(X.col(e), idx));
    const auto want = oracle_tree_linear(served, X, codes);
    CHECK(close_report<float>(served.forward_batch(X), want.y, want.scale, in + 1.0) == "");
    // Against the tree: the flat leaf is the path's sum rounded once to float, then to bf16;
    // each step moves a weight by at most its own relative rounding (eps, then 2^-8) of the
    // sum S of the path's |W||x| (+ |c|), and the flat product accumulates in + 1 terms in
    // float on weights at most (1 + eps)(1 + 2^-8) times larger.
    const auto tree_exact = oracle_tree_linear(tree, X, codes);
    const double eps = static_cast<double>(std::numeric_limits<float>::epsilon());
    const double grow = (1 + eps) * (1 + bf16_u);
    const Eigen::MatrixXd bound = tree_exact.scale * (eps + bf16_u * (1 + eps) + (in + 1.0) * eps * grow);
    CHECK(bound_report(served.forward_batch(X), tree_exact.y, bound) == "");

    // From a layer with compile-time sizes: the same layout, so the same oracle applies.
    treegate::tree_linear<float, 5, 3, 2> fixed(treegate::tree_mode::leaf_only, treegate::gating::from_input({0, 4}));
    fill_random(fixed, g);
    const treegate::tree_linear_bf16<> fixed16(fixed);
    const mat<float> Xf = random_matrix<float>(5, 8, g);
    std::vector<std::uint64_t> fcodes;
    for (index_t e = 0; e < Xf.cols(); ++e) fcodes.push_back(oracle_code_from_input(Xf.col(e), {0, 4}));
    const auto fwant = oracle_tree_linear(fixed16, Xf, fcodes);
    CHECK(close_report<float>(fixed16.forward_batch(Xf), fwant.y, fwant.scale, 6.0) == "");

    // Argument checks name the layer and the numbers.
    Eigen::VectorXf x(in + 1), y(out);
    TG_CHECK_THROWS_WITH(treegate::shape_error, served.forward(x, y), "tree_linear_bf16", "input has 38 entries, expected 37");
    mat<float> Xb(in, 3), Yb(out + 1, 3);
    treegate::workspace<float> ws;
    TG_CHECK_THROWS_WITH(treegate::shape_error, served.forward_batch(Xb, Yb, ws), "tree_linear_bf16", "expected 21 x 3");
    const Eigen::VectorXf gates(depth);
    Eigen::VectorXf x_ok(in);
    TG_CHECK_THROWS_WITH(treegate::config_error, served.forward(x_ok, gates, y), "tree_linear_bf16", "gated by its input");
    treegate::tree_linear<float> ext(in, out, 2, treegate::tree_mode::leaf_only, treegate::gating::external());
    const treegate::tree_linear_bf16<> ext16(ext);
    TG_CHECK_THROWS_WITH(treegate::config_error, ext16.forward(x_ok, y), "tree_linear_bf16", "gated externally");
    const Eigen::VectorXf short_gates(1);
    TG_CHECK_THROWS_WITH(treegate::shape_error, ext16.forward(x_ok, short_gates, y), "tree_linear_bf16",
                         "gate vector has 1 entries, expected 2");
}
