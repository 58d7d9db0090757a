// The SIMD kernel policies (avx2, avx512, and dispatch on its bound level) against the `reference` policy run in double (the exact
// result to the tests' accuracy), over random and odd sizes, with every input placed flush against
// an unreadable guard page so that a read past the end crashes; then the layers with each policy.
#include "test_support.hpp"

#include "kernel_buffers.hpp"

#include <treegate/kernels/avx2.hpp>
#include <treegate/kernels/avx512.hpp>
#include <treegate/kernels/dispatch.hpp>
#include <treegate/kernels/native.hpp>
#include <treegate/kernels/x86/stream_plan.hpp>
#include <treegate/layers/tree_feedforward.hpp>
#include <treegate/layers/tree_linear.hpp>

#include <cmath>
#include <cstddef>
#include <limits>
#include <memory>
#include <cstdint>
#include <random>
#include <type_traits>
#include <vector>

using treegate::index_t;
using treegate::kernels::avx2;
using treegate::kernels::avx512;
using treegate::kernels::dispatch;
using treegate::kernels::reference;
using namespace tg_test;

namespace {

/// Sizes: every value 1..17 (all SIMD tails around one and two registers), then random ones up
/// to 70 and a few up to 300.
std::vector<index_t> test_sizes(std::mt19937& g) {
    std::vector<index_t> s;
    for (index_t i = 1; i <= 17; ++i) s.push_back(i);
    for (int i = 0; i < 6; ++i) s.push_back(uniform_index(g, 18, 70));
    s.push_back(64);
    s.push_back(uniform_index(g, 71, 300));
    s.push_back(256);
    return s;
}

/// True (after saying so) when this CPU or build cannot run policy P's kernels.
template <class P>
bool skip_without() {
    if constexpr (std::is_same_v<P, dispatch>) {
        return false;  // runs everywhere, on the level it is bound to
    } else if constexpr (std::is_same_v<P, avx512>) {
        if (treegate::kernels::cpu_supports_avx512()) return false;
        WARN("this CPU (or build) lacks AVX-512 F/BW/VL/DQ: the avx512 kernel tests are skipped");
        return true;
    } else {
        if (treegate::kernels::cpu_supports_avx2()) return false;
        WARN("this CPU (or build) has no AVX2 + FMA: the avx2 kernel tests are skipped");
        return true;
    }
}

/// Y(rows x n, ld ldy) += W(rows x cols, ldw) X(cols x n, ldx) by `Policy`, checked against
/// the exact product: the entries of Y between `rows` and `ldy` must be left untouched.
template <class Policy>
void check_gemm(index_t rows, index_t cols, index_t n, index_t ldw, index_t ldx, index_t ldy, std::mt19937& g) {
    CAPTURE(rows, cols, n, ldw, ldx, ldy);
    guarded_floats W(ldw * (cols - 1) + rows), X(ldx * (n - 1) + cols), Y(ldy * (n - 1) + rows);
    fill(W, g);
    fill(X, g);
    fill(Y, g);
    const Eigen::MatrixXd Wd = to_double(W.data(), rows, cols, ldw), Xd = to_double(X.data(), cols, n, ldx);
    const Eigen::MatrixXd Y0 = to_double(Y.data(), ldy, n - 1, ldy);  // padding rows included
    Eigen::MatrixXd want = to_double(Y.data(), rows, n, ldy);
    Eigen::MatrixXd scale = want.cwiseAbs();
    const Eigen::MatrixXd Wa = Wd.cwiseAbs(), Xa = Xd.cwiseAbs();
    reference::gemm<double>(rows, cols, n, Wd.data(), rows, Xd.data(), cols, want.data(), rows);
    reference::gemm<double>(rows, cols, n, Wa.data(), rows, Xa.data(), cols, scale.data(), rows);

    Policy::template gemm<float>(rows, cols, n, W.data(), ldw, X.data(), ldx, Y.data(), ldy);
    CHECK(close_report<float>(to_double(Y.data(), rows, n, ldy), want, scale, static_cast<double>(cols + 1)) == "");
    // Padding rows rows..ldy of every column but the last (which ends at the guard page).
    if (n > 1 && ldy > rows) {
        const Eigen::MatrixXd after = to_double(Y.data(), ldy, n - 1, ldy);
        CHECK((after.bottomRows(ldy - rows) - Y0.bottomRows(ldy - rows)).cwiseAbs().maxCoeff() == 0.0);
    }
}

/// The bf16-weight gemm of `Policy` against the exact product of the widened weights (the same
/// tolerance as the float kernels: cols + 1 float roundings), inputs against guard pages.
template <class Policy>
void check_gemm_bf16(index_t rows, index_t cols, index_t n, index_t ldw, index_t ldx, index_t ldy, std::mt19937& g) {
    CAPTURE(rows, cols, n, ldw, ldx, ldy);
    guarded<treegate::bf16> W(ldw * (cols - 1) + rows);
    guarded_floats X(ldx * (n - 1) + cols), Y(ldy * (n - 1) + rows);
    for (index_t i = 0; i < W.size(); ++i) W[i] = treegate::to_bf16(static_cast<float>(uniform(g)));
    fill(X, g);
    fill(Y, g);
    Eigen::MatrixXd Wd(rows, cols);
    for (index_t c = 0; c < cols; ++c)
        for (index_t r = 0; r < rows; ++r) Wd(r, c) = static_cast<double>(treegate::to_float(W[r + c * ldw]));
    const Eigen::MatrixXd Xd = to_double(X.data(), cols, n, ldx);
    const Eigen::MatrixXd Y0 = to_double(Y.data(), ldy, n - 1, ldy);
    Eigen::MatrixXd want = to_double(Y.data(), rows, n, ldy);
    const Eigen::MatrixXd scale = want.cwiseAbs() + Wd.cwiseAbs() * Xd.cwiseAbs();
    want += Wd * Xd;
    Policy::gemm(rows, cols, n, W.data(), ldw, X.data(), ldx, Y.data(), ldy);
    CHECK(close_report<float>(to_double(Y.data(), rows, n, ldy), want, scale, static_cast<double>(cols + 1)) == "");
    if (n > 1 && ldy > rows) {
        const Eigen::MatrixXd after = to_double(Y.data(), ldy, n - 1, ldy);
        CHECK((after.bottomRows(ldy - rows) - Y0.bottomRows(ldy - rows)).cwiseAbs().maxCoeff() == 0.0);
    }
}

}  // namespace

TEMPLATE_TEST_CASE("simd gemv matches the reference policy over odd sizes and strides", "[kernels][simd]", avx2, avx512, dispatch) {
    if (skip_without<TestType>()) return;
    std::mt19937 g(101);
    const auto sizes = test_sizes(g);
    for (index_t rows : sizes)
        for (index_t cols : sizes) {
            const index_t ld = rows + (uniform_index(g, 0, 3) == 0 ? 0 : uniform_index(g, 1, 9));
            CAPTURE(rows, cols, ld);
            guarded_floats W(ld * (cols - 1) + rows), x(cols), y(rows);
            fill(W, g);
            fill(x, g);
            fill(y, g);
            const Eigen::MatrixXd Wd = to_double(W.data(), rows, cols, ld), Wa = Wd.cwiseAbs();
            const Eigen::VectorXd xd = to_double(x.data(), cols, 1, cols), xa = xd.cwiseAbs();
            Eigen::VectorXd want = to_double(y.data(), rows, 1, rows), scale = want.cwiseAbs();
            reference::gemv<double>(rows, cols, Wd.data(), rows, xd.data(), want.data());
            reference::gemv<double>(rows, cols, Wa.data(), rows, xa.data(), scale.data());
            TestType::template gemv<float>(rows, cols, W.data(), ld, x.data(), y.data());
            CHECK(close_report<float>(to_double(y.data(), rows, 1, rows), want, scale, static_cast<double>(cols + 1)) == "");
        }
}

TEMPLATE_TEST_CASE("simd gemm matches the reference policy for small and large groups", "[kernels][simd]", avx2, avx512, dispatch) {
    if (skip_without<TestType>()) return;
    std::mt19937 g(202);
    // Every small-group width (2..16), the packed kernels' column tails (6-wide avx2, 12-wide
    // avx512: n = 17..29) and several column blocks (37, 61); rows and cols cover the 16- and
    // 32-row panels' tails and the 256-column k-blocking.
    const index_t ns[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 23, 29, 37, 61};
    const index_t dims[] = {1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 64, 70};
    for (index_t n : ns)
        for (index_t rows : dims)
            for (index_t cols : dims) {
                const index_t ldw = rows + uniform_index(g, 0, 5);
                const index_t ldx = cols + uniform_index(g, 0, 5);
                const index_t ldy = rows + uniform_index(g, 0, 5);
                check_gemm<TestType>(rows, cols, n, ldw, ldx, ldy, g);
            }
    for (int i = 0; i < 12; ++i) {
        const index_t rows = uniform_index(g, 1, 300), cols = uniform_index(g, 1, 300), n = uniform_index(g, 1, 40);
        check_gemm<TestType>(rows, cols, n, rows + uniform_index(g, 0, 3), cols + uniform_index(g, 0, 3),
                         rows + uniform_index(g, 0, 3), g);
    }
    check_gemm<TestType>(300, 290, 20, 300, 290, 300, g);  // more than one k-block
}

namespace {

/// Batch invariance of `Policy`'s gemm with weights of type T: the whole call's columns, each
/// column alone (n = 1: the path-sum kernel when ldw = rows, else gemv) and the group split in
/// two at a random column give the same bits, whichever kernel each call size selects.
template <class Policy, class T>
void check_batch_invariance(index_t rows, index_t cols, index_t n, index_t ldw, std::mt19937& g) {
    CAPTURE(rows, cols, n, ldw);
    std::vector<T> W(static_cast<std::size_t>(ldw * cols));
    for (auto& w : W) {
        const auto v = static_cast<float>(uniform(g));
        if constexpr (std::is_same_v<T, float>)
            w = v;
        else
            w = treegate::to_bf16(v);
    }
    Eigen::MatrixXf X = Eigen::MatrixXf::Random(cols, n), Y0 = Eigen::MatrixXf::Random(rows, n);
    Eigen::MatrixXf whole = Y0, alone = Y0, split = Y0;
    Policy::gemm(rows, cols, n, W.data(), ldw, X.data(), cols, whole.data(), rows);
    for (index_t j = 0; j < n; ++j) Policy::gemm(rows, cols, 1, W.data(), ldw, X.col(j).data(), cols, alone.col(j).data(), rows);
    const index_t a = uniform_index(g, 0, n);
    Policy::gemm(rows, cols, a, W.data(), ldw, X.data(), cols, split.data(), rows);
    Policy::gemm(rows, cols, n - a, W.data(), ldw, X.data() + a * cols, cols, split.data() + a * rows, rows);
    CHECK((whole.array() == alone.array()).all());
    CHECK((whole.array() == split.array()).all());
}

}  // namespace

TEMPLATE_TEST_CASE("simd gemm is batch invariant: a column's bits do not depend on the columns beside it",
                   "[kernels][simd][invariance]", avx2, avx512, dispatch) {
    if (skip_without<TestType>()) return;
    if constexpr (std::is_same_v<TestType, dispatch>) {
        const auto level = treegate::kernels::active_isa();
        if (!treegate::kernels::batch_invariant(level)) {
            WARN("dispatch is bound to " << treegate::kernels::to_string(level) << ", which is not batch invariant: skipped");
            return;
        }
    }
    std::mt19937 g(1701);
    // n spans the three kernels (1; small groups; packed), cols the 256-column k-blocking.
    const index_t ns[] = {2, 3, 5, 10, 11, 16, 17, 25, 40};
    const index_t dims[] = {1, 7, 16, 33, 70, 257, 530};
    for (index_t n : ns)
        for (index_t rows : {index_t{5}, index_t{32}, index_t{47}})
            for (index_t cols : dims) {
                check_batch_invariance<TestType, float>(rows, cols, n, rows, g);
                check_batch_invariance<TestType, float>(rows, cols, n, rows + 3, g);
                check_batch_invariance<TestType, treegate::bf16>(rows, cols, n, rows, g);
                check_batch_invariance<TestType, treegate::bf16>(rows, cols, n, rows + 1, g);
            }
    // A float path of blocks summed by path_sum equals the blocks' n = 1 gemm calls in path order
    // (so a single-example forward adds the same products in the same order as a batch).
    for (index_t rows : {index_t{9}, index_t{64}, index_t{100}})
        for (index_t cols : {index_t{6}, index_t{33}, index_t{300}}) {
            CAPTURE(rows, cols);
            const int count = 5;
            std::vector<float> store(static_cast<std::size_t>(rows * cols * count));
            for (auto& v : store) v = static_cast<float>(uniform(g));
            std::vector<const float*> blocks;
            for (int k = 0; k < count; ++k) blocks.push_back(store.data() + k * rows * cols);
            const Eigen::VectorXf x = Eigen::VectorXf::Random(cols), y0 = Eigen::VectorXf::Random(rows);
            Eigen::VectorXf fused = y0, level_by_level = y0;
            TestType::template path_sum<float>(rows, cols, blocks.data(), count, x.data(), fused.data());
            for (const float* b : blocks) TestType::template gemm<float>(rows, cols, 1, b, rows, x.data(), cols, level_by_level.data(), rows);
            CHECK((fused.array() == level_by_level.array()).all());
        }
}

TEMPLATE_TEST_CASE("simd path_sum matches the reference policy", "[kernels][simd]", avx2, avx512, dispatch) {
    if (skip_without<TestType>()) return;
    std::mt19937 g(303);
    const auto sizes = test_sizes(g);
    for (index_t rows : sizes)
        for (index_t cols : sizes) {
            const int count = static_cast<int>(uniform_index(g, 1, 9));
            CAPTURE(rows, cols, count);
            // Blocks as a layer stores them: 64-byte aligned, ld = rows, one after another in
            // an arbitrary order; the last one ends at the guard page.
            const index_t stride = treegate::detail::padded<float>(rows * cols);
            std::vector<float, Eigen::aligned_allocator<float>> store(static_cast<std::size_t>(stride * count));
            guarded_floats last(rows * cols), x(cols), y(rows);
            std::vector<const float*> blocks;
            for (int k = 0; k + 1 < count; ++k) blocks.push_back(store.data() + (count - 2 - k) * stride);
            blocks.push_back(last.data());
            for (auto& v : store) v = static_cast<float>(uniform(g));
            fill(last, g);
            fill(x, g);
            fill(y, g);
            const Eigen::VectorXd xd = to_double(x.data(), cols, 1, cols), xa = xd.cwiseAbs();
            Eigen::VectorXd want = to_double(y.data(), rows, 1, rows), scale = want.cwiseAbs();
            for (const float* b : blocks) {
                const Eigen::MatrixXd Wd = to_double(b, rows, cols, rows), Wa = Wd.cwiseAbs();
                reference::gemv<double>(rows, cols, Wd.data(), rows, xd.data(), want.data());
                reference::gemv<double>(rows, cols, Wa.data(), rows, xa.data(), scale.data());
            }
            TestType::template path_sum<float>(rows, cols, blocks.data(), count, x.data(), y.data());
            CHECK(close_report<float>(to_double(y.data(), rows, 1, rows), want, scale,
                                      static_cast<double>(count * cols + 1)) == "");
        }
}

TEMPLATE_TEST_CASE("simd dot and axpy match the reference policy", "[kernels][simd]", avx2, avx512, dispatch) {
    if (skip_without<TestType>()) return;
    std::mt19937 g(404);
    std::vector<index_t> ns;
    for (index_t n = 0; n <= 70; ++n) ns.push_back(n);
    for (index_t n : {index_t{127}, index_t{128}, index_t{129}, index_t{255}, index_t{300}, index_t{768}}) ns.push_back(n);
    for (index_t n : ns) {
        CAPTURE(n);
        guarded_floats a(n), b(n), y(n);
        fill(a, g);
        fill(b, g);
        fill(y, g);
        const Eigen::VectorXd ad = to_double(a.data(), n, 1, n), bd = to_double(b.data(), n, 1, n);
        const Eigen::VectorXd aa = ad.cwiseAbs(), ba = bd.cwiseAbs();
        Eigen::MatrixXd want(1, 1), scale(1, 1), got(1, 1);
        want(0, 0) = reference::dot<double>(n, ad.data(), bd.data());
        scale(0, 0) = reference::dot<double>(n, aa.data(), ba.data());
        got(0, 0) = static_cast<double>(TestType::template dot<float>(n, a.data(), b.data()));
        CHECK(close_report<float>(got, want, scale, static_cast<double>(n)) == "");

        const float alpha = static_cast<float>(uniform(g));
        Eigen::VectorXd yw = to_double(y.data(), n, 1, n), ys = yw.cwiseAbs();
        reference::axpy<double>(n, static_cast<double>(alpha), ad.data(), yw.data());
        reference::axpy<double>(n, std::abs(static_cast<double>(alpha)), aa.data(), ys.data());
        TestType::template axpy<float>(n, alpha, a.data(), y.data());
        CHECK(close_report<float>(to_double(y.data(), n, 1, n), yw, ys, 2.0) == "");
    }
}

TEMPLATE_TEST_CASE("simd policies forward double to eigen and native is a known policy", "[kernels][simd]", avx2, avx512, dispatch) {
    STATIC_REQUIRE(std::is_same_v<treegate::kernels::native, treegate::kernels::avx2> ||
                   std::is_same_v<treegate::kernels::native, treegate::kernels::eigen>);
    // double never reaches the intrinsics, so it runs on any CPU.
    std::mt19937 g(505);
    const Eigen::MatrixXd W = random_matrix<double>(13, 11, g), X = random_matrix<double>(11, 5, g);
    Eigen::MatrixXd Y = Eigen::MatrixXd::Zero(13, 5);
    TestType::template gemm<double>(13, 11, 5, W.data(), 13, X.data(), 11, Y.data(), 13);
    CHECK(((W * X) - Y).cwiseAbs().maxCoeff() <= 1e-13);
    CHECK(TestType::template dot<double>(11, X.data(), X.data() + 11) == Catch::Approx(X.col(0).dot(X.col(1))));
}

TEMPLATE_TEST_CASE("tree_linear with a simd policy matches the oracle", "[kernels][simd][tree_linear]", avx2, avx512, dispatch) {
    if (skip_without<TestType>()) return;
    using layer_t = treegate::tree_linear<float, treegate::dynamic, treegate::dynamic, treegate::dynamic, TestType>;
    const treegate::tree_mode mode = GENERATE(treegate::tree_mode::path_sum, treegate::tree_mode::leaf_only);
    const bool external = GENERATE(false, true);
    CAPTURE(treegate::to_string(mode), external);
    std::mt19937 g(606u + (external ? 1u : 0u));
    treegate::workspace<float> ws;
    for (int depth = 0; depth <= 6; ++depth) {
        const index_t in = uniform_index(g, 1, 70), out = uniform_index(g, 1, 70);
        CAPTURE(depth, in, out);
        const auto idx = random_gating_indices(depth, in, g);
        layer_t layer(in, out, depth, mode,
                      external ? treegate::gating::external() : treegate::gating::from_input(idx));
        fill_random(layer, g);
        const double terms = (mode == treegate::tree_mode::path_sum ? depth + 1.0 : 1.0) * (static_cast<double>(in) + 1.0);
        for (index_t n : {index_t{1}, index_t{3}, index_t{9}, index_t{200}}) {
            CAPTURE(n);
            mat<float> X = random_matrix<float>(in, n, g);
            mat<float> G = random_gates<float>(depth, n, g);
            std::vector<std::uint64_t> codes(static_cast<std::size_t>(n));
            for (index_t e = 0; e < n; ++e)
                codes[static_cast<std::size_t>(e)] =
                    external ? oracle_code_from_gates(G.col(e)) : oracle_code_from_input(X.col(e), idx);
            const auto want = oracle_tree_linear(layer, X, codes);
            mat<float> Y(out, n);
            if (external)
                layer.forward_batch(X, G, Y, ws);
            else
                layer.forward_batch(X, Y, ws);
            CHECK(close_report<float>(Y, want.y, want.scale, terms) == "");
            vec<float> y(out);
            for (index_t e = 0; e < n; ++e) {
                if (external) {
                    const vec<float> gate = G.col(e);
                    layer.forward(X.col(e), gate, y);
                } else {
                    layer.forward(X.col(e), y);
                }
                Y.col(e) = y;
            }
            CHECK(close_report<float>(Y, want.y, want.scale, terms) == "");
        }
    }
}

TEMPLATE_TEST_CASE("tree_feedforward with a simd policy matches the reference policy", "[kernels][simd][tree_feedforward]", avx2, avx512, dispatch) {
    if (skip_without<TestType>()) return;
    using avx_t = treegate::tree_feedforward<float, treegate::dynamic, treegate::dynamic, treegate::dynamic,
                                             treegate::dynamic, TestType>;
    using ref_t = treegate::tree_feedforward<float, treegate::dynamic, treegate::dynamic, treegate::dynamic,
                                             treegate::dynamic, reference>;
    const index_t width = GENERATE(index_t{1}, index_t{3}, index_t{17});
    const treegate::tree_mode variant = GENERATE(treegate::tree_mode::path_sum, treegate::tree_mode::leaf_only);
    CAPTURE(width, treegate::to_string(variant));
    std::mt19937 g(707u + static_cast<unsigned>(width));
    treegate::workspace<float> ws_a, ws_r;
    for (int depth = 0; depth <= 5; ++depth) {
        const index_t in = uniform_index(g, 1, 70), out = uniform_index(g, 1, 70);
        CAPTURE(depth, in, out);
        avx_t fa(in, out, width, depth, 1, treegate::activation::gelu, variant);
        ref_t fr(in, out, width, depth, 1, treegate::activation::gelu, variant);
        fa.initialize(static_cast<std::uint64_t>(depth) + 1);
        fr.initialize(static_cast<std::uint64_t>(depth) + 1);
        const index_t n = 64;
        const mat<float> X = random_matrix<float>(in, n, g);
        mat<float> Ya(out, n), Yr(out, n);
        fa.forward_batch(X, Ya, ws_a);
        fr.forward_batch(X, Yr, ws_r);
        // Both sum the same products in different orders, so |a - b| <= |a - exact| + |b - exact|.
        // Per node, with |x| <= 1, |U| <= 1/sqrt(in), |V| <= 1/sqrt(width (D+1)) (initialize()):
        // the pre-activation's error is <= (in + 1) eps sqrt(in), GELU's slope is <= 1.13, and
        // |h| <= sqrt(in) + 1, so the node adds <= 1.13 (in + width + 2) eps sqrt(width) (sqrt(in) + 1)
        // / sqrt(D + 1) to an output; D + 1 nodes, two implementations. A routing flip (a
        // pre-activation within rounding of zero, probability ~1e-6 per node here) would show
        // as an O(1) difference.
        const double eps = static_cast<double>(std::numeric_limits<float>::epsilon());
        const double tol = 2.0 * std::sqrt(depth + 1.0) * 1.13 * static_cast<double>(in + width + 2) * eps *
                           std::sqrt(static_cast<double>(width)) * (std::sqrt(static_cast<double>(in)) + 1.0);
        CHECK((Ya - Yr).cwiseAbs().maxCoeff() <= tol);
        vec<float> y(out);
        for (index_t e = 0; e < n; e += 7) {
            fa.forward(X.col(e), y);
            CHECK((y - Yr.col(e)).cwiseAbs().maxCoeff() <= tol);
        }
    }
}

TEMPLATE_TEST_CASE("simd bf16-weight gemm, gemv and path_sum match the widened product", "[kernels][simd][bf16]", avx2,
                   avx512, dispatch) {
    if (skip_without<TestType>()) return;
    std::mt19937 g(909);
    const index_t ns[] = {1, 2, 3, 4, 5, 7, 9, 10, 11, 12, 13, 16, 17, 20, 29, 37};
    const index_t dims[] = {1, 3, 8, 15, 16, 17, 31, 32, 33, 47, 70};
    for (index_t n : ns)
        for (index_t rows : dims)
            for (index_t cols : dims) {
                const index_t ldw = rows + (uniform_index(g, 0, 2) == 0 ? 0 : uniform_index(g, 1, 5));
                check_gemm_bf16<TestType>(rows, cols, n, ldw, cols + uniform_index(g, 0, 3), rows + uniform_index(g, 0, 3), g);
            }
    // More rows than the small-group kernels widen at a time (1024), and more than one k-block.
    check_gemm_bf16<TestType>(1100, 9, 5, 1101, 9, 1100, g);
    check_gemm_bf16<TestType>(300, 290, 20, 301, 290, 300, g);
    // gemv with ld > rows, and path_sum over blocks of ld = rows, the last at a guard page.
    for (index_t rows : dims)
        for (index_t cols : dims) {
            CAPTURE(rows, cols);
            const index_t ld = rows + uniform_index(g, 1, 4);
            guarded<treegate::bf16> W(ld * (cols - 1) + rows);
            guarded_floats x(cols), y(rows), z(rows);
            for (index_t i = 0; i < W.size(); ++i) W[i] = treegate::to_bf16(static_cast<float>(uniform(g)));
            fill(x, g);
            fill(y, g);
            fill(z, g);
            Eigen::MatrixXd Wd(rows, cols);
            for (index_t c = 0; c < cols; ++c)
                for (index_t r = 0; r < rows; ++r) Wd(r, c) = static_cast<double>(treegate::to_float(W[r + c * ld]));
            const Eigen::MatrixXd xd = to_double(x.data(), cols, 1, cols);
            Eigen::MatrixXd want = to_double(y.data(), rows, 1, rows);
            const Eigen::MatrixXd scale = want.cwiseAbs() + Wd.cwiseAbs() * xd.cwiseAbs();
            want += Wd * xd;
            TestType::gemv(rows, cols, W.data(), ld, x.data(), y.data());
            CHECK(close_report<float>(to_double(y.data(), rows, 1, rows), want, scale, static_cast<double>(cols + 1)) == "");

            const int count = static_cast<int>(uniform_index(g, 1, 5));
            std::vector<std::unique_ptr<guarded<treegate::bf16>>> blocks;
            std::vector<const treegate::bf16*> ptrs;
            Eigen::MatrixXd pwant = to_double(z.data(), rows, 1, rows), pscale = pwant.cwiseAbs();
            for (int k = 0; k < count; ++k) {
                blocks.push_back(std::make_unique<guarded<treegate::bf16>>(rows * cols));
                auto& b = *blocks.back();
                for (index_t i = 0; i < b.size(); ++i) b[i] = treegate::to_bf16(static_cast<float>(uniform(g)));
                ptrs.push_back(b.data());
                Eigen::MatrixXd Bw(rows, cols);
                for (index_t i = 0; i < rows * cols; ++i) Bw(i % rows, i / rows) = static_cast<double>(treegate::to_float(b[i]));
                pwant += Bw * xd;
                pscale += Bw.cwiseAbs() * xd.cwiseAbs();
            }
            TestType::path_sum(rows, cols, ptrs.data(), count, x.data(), z.data());
            CHECK(close_report<float>(to_double(z.data(), rows, 1, rows), pwant, pscale, static_cast<double>(count * cols + 1)) ==
                  "");
        }
}

TEMPLATE_TEST_CASE("simd bf16-weight path_sum over long paths matches the widened product", "[kernels][simd][bf16]", avx2,
                   avx512, dispatch) {
    // Up to nine blocks, as a depth-8 path: the avx512 kernel reads two bf16 blocks side by side
    // and must handle the odd one left over, with column tails (cols % 4) in every block.
    if (skip_without<TestType>()) return;
    std::mt19937 g(910);
    for (const index_t rows : {index_t{1}, index_t{33}, index_t{130}})
        for (const index_t cols : {index_t{1}, index_t{6}, index_t{67}, index_t{290}})
            for (int count = 1; count <= 9; ++count) {
                CAPTURE(rows, cols, count);
                guarded_floats x(cols), y(rows);
                fill(x, g);
                fill(y, g);
                const Eigen::MatrixXd xd = to_double(x.data(), cols, 1, cols);
                Eigen::MatrixXd want = to_double(y.data(), rows, 1, rows), scale = want.cwiseAbs();
                std::vector<std::unique_ptr<guarded<treegate::bf16>>> blocks;
                std::vector<const treegate::bf16*> ptrs;
                for (int k = 0; k < count; ++k) {
                    blocks.push_back(std::make_unique<guarded<treegate::bf16>>(rows * cols));
                    auto& b = *blocks.back();
                    Eigen::MatrixXd Bw(rows, cols);
                    for (index_t i = 0; i < rows * cols; ++i) {
                        b[i] = treegate::to_bf16(static_cast<float>(uniform(g)));
                        Bw(i % rows, i / rows) = static_cast<double>(treegate::to_float(b[i]));
                    }
                    ptrs.push_back(b.data());
                    want += Bw * xd;
                    scale += Bw.cwiseAbs() * xd.cwiseAbs();
                }
                TestType::path_sum(rows, cols, ptrs.data(), count, x.data(), y.data());
                CHECK(close_report<float>(to_double(y.data(), rows, 1, rows), want, scale,
                                          static_cast<double>(count * cols + 1)) == "");
            }
}

TEST_CASE("path-sum far prefetch addresses stop at the end of their stream", "[kernels][simd]") {
    // path_far_address is path_prefetch_address wherever `dist` ahead is still inside the
    // stream's blocks, and 0 (no prefetch) past the stream's last block.
    using treegate::kernels::detail::path_far_address;
    using treegate::kernels::detail::path_prefetch_address;
    for (const index_t rows : {index_t{1}, index_t{7}, index_t{256}, index_t{512}})
        for (const index_t cols : {index_t{1}, index_t{4}, index_t{9}, index_t{512}})
            for (const index_t dist : {index_t{0}, index_t{4096}, index_t{16384}})
                for (int streams = 1; streams <= 2; ++streams)
                    for (int count = 1; count <= 5; ++count) {
                        const index_t bytes = rows * cols * static_cast<index_t>(sizeof(treegate::bf16));
                        std::vector<const treegate::bf16*> blocks;
                        for (int k = 0; k < count; ++k)
                            blocks.push_back(reinterpret_cast<const treegate::bf16*>(
                                (std::uintptr_t{1} << 28) + (static_cast<std::uintptr_t>(k) << 22)));
                        for (int k = 0; k < count; ++k)
                            for (index_t c = 0; c < cols; c += 4) {
                                CAPTURE(rows, cols, dist, streams, count, k, c);
                                const std::uintptr_t a = path_far_address(blocks.data(), k, count, c, rows, cols, dist, streams);
                                const bool past_end = c * rows * 2 + dist >= bytes && k + streams >= count;
                                if (past_end)
                                    CHECK(a == 0);
                                else
                                    CHECK(a == path_prefetch_address(blocks.data(), k, count, c, rows, cols, dist, streams));
                            }
                    }
}

TEST_CASE("path-sum prefetch addresses stay inside the blocks of their stream", "[kernels][simd]") {
    // The prefetch of the panel at column c of block k runs `dist` bytes ahead in the stream
    // k, k + streams, ...: inside block k, else inside the stream's next block, else at block
    // k's start. Checked on blocks far apart, small ones (shorter than dist) included.
    using treegate::kernels::detail::path_prefetch_address;
    const int max_count = 9;
    for (const index_t rows : {index_t{1}, index_t{5}, index_t{64}, index_t{512}})
        for (const index_t cols : {index_t{1}, index_t{3}, index_t{8}, index_t{512}})
            for (const index_t dist : {index_t{0}, index_t{4096}, index_t{16384}})
                for (int streams = 1; streams <= 3; ++streams)
                    for (int count = 1; count <= max_count; ++count) {
                        const index_t bytes = rows * cols * static_cast<index_t>(sizeof(float));
                        // Addresses only (never dereferenced): block k at 4 k MiB plus a 64-byte offset.
                        std::vector<std::uintptr_t> at;
                        std::vector<const float*> blocks;
                        for (int k = 0; k < count; ++k) {
                            at.push_back((std::uintptr_t{1} << 28) + (static_cast<std::uintptr_t>(k) << 22) + 64);
                            blocks.push_back(reinterpret_cast<const float*>(at.back()));
                        }
                        for (int k = 0; k < count; ++k)
                            for (index_t c = 0; c < cols; c += 4) {
                                CAPTURE(rows, cols, dist, streams, count, k, c);
                                const std::uintptr_t a =
                                    path_prefetch_address(blocks.data(), k, count, c, rows, cols, dist, streams);
                                const index_t start = c * rows * static_cast<index_t>(sizeof(float)) + dist;
                                std::uintptr_t want = at[static_cast<std::size_t>(k)];
                                if (start < bytes) {
                                    want += static_cast<std::uintptr_t>(start);
                                } else if (k + streams < count) {
                                    want = at[static_cast<std::size_t>(k + streams)];
                                    if (start - bytes < bytes) want += static_cast<std::uintptr_t>(start - bytes);
                                }
                                CHECK(a == want);
                                bool inside = false;
                                for (const std::uintptr_t b : at) inside = inside || (a >= b && a < b + static_cast<std::uintptr_t>(bytes));
                                CHECK(inside);
                            }
                    }
}
