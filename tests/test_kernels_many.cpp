// dot_many, axpy_many and axpy_paths of every kernel policy against plain loops in double, over
// odd lengths (1, 7, 13, 768, 1001, ...) and every count the interface allows, with guard-paged
// inputs; axpy_paths also bit for bit against the same policy's axpy_many.
#include "test_support.hpp"

#include "kernel_buffers.hpp"

#include <treegate/kernels/avx2.hpp>
#include <treegate/kernels/avx512.hpp>
#include <treegate/kernels/dispatch.hpp>
#include <treegate/kernels/eigen.hpp>
#include <treegate/kernels/paths.hpp>
#include <treegate/kernels/reference.hpp>

#include <cmath>
#include <limits>
#include <memory>
#include <random>
#include <vector>

using treegate::index_t;
using namespace tg_test;

namespace {

std::vector<index_t> many_lengths() { return {0, 1, 2, 7, 8, 9, 13, 15, 16, 17, 31, 33, 64, 65, 129, 768, 1001}; }

template <class Scalar>
using guarded_list = std::vector<std::unique_ptr<guarded<Scalar>>>;

template <class Scalar>
guarded_list<Scalar> random_vectors(int count, index_t n, std::mt19937& g) {
    guarded_list<Scalar> v;
    for (int k = 0; k < count; ++k) {
        v.push_back(std::make_unique<guarded<Scalar>>(n));
        fill(*v.back(), g);
    }
    return v;
}

template <class Scalar>
std::vector<const Scalar*> pointers(const guarded_list<Scalar>& v) {
    std::vector<const Scalar*> p;
    for (const auto& b : v) p.push_back(b->data());
    return p;
}

/// out[k] = sum_i a[k][i] b[k][i] for count <= 16 dots of length n; out[count..16] untouched.
template <class Policy, class Scalar>
void check_dot_many(index_t n, int count, std::mt19937& g) {
    CAPTURE(Policy::name(), n, count);
    const auto a = random_vectors<Scalar>(count, n, g), b = random_vectors<Scalar>(count, n, g);
    const auto pa = pointers(a), pb = pointers(b);
    std::vector<Scalar> out(17, Scalar(12345));
    Policy::template dot_many<Scalar>(n, count, pa.data(), pb.data(), out.data());
    Eigen::MatrixXd got(1, count), want(1, count), scale(1, count);
    for (int k = 0; k < count; ++k) {
        double s = 0, t = 0;
        for (index_t i = 0; i < n; ++i) {
            const double p = static_cast<double>(pa[static_cast<std::size_t>(k)][i]) *
                             static_cast<double>(pb[static_cast<std::size_t>(k)][i]);
            s += p;
            t += std::abs(p);
        }
        want(0, k) = s;
        scale(0, k) = t;
        got(0, k) = static_cast<double>(out[static_cast<std::size_t>(k)]);
    }
    CHECK(close_report<Scalar>(got, want, scale, static_cast<double>(n)) == "");
    for (std::size_t k = static_cast<std::size_t>(count); k < out.size(); ++k) CHECK(out[k] == Scalar(12345));
}

/// y[i] += sum_k alpha[k] x[k][i] for count <= 64 vectors of length n.
template <class Policy, class Scalar>
void check_axpy_many(index_t n, int count, std::mt19937& g) {
    CAPTURE(Policy::name(), n, count);
    const auto x = random_vectors<Scalar>(count, n, g);
    const auto px = pointers(x);
    std::vector<Scalar> alpha(static_cast<std::size_t>(count));
    for (auto& a : alpha) a = static_cast<Scalar>(uniform(g));
    guarded<Scalar> y(n);
    fill(y, g);
    Eigen::MatrixXd want = to_double(y.data(), n, 1, n), scale = want.cwiseAbs();
    for (index_t i = 0; i < n; ++i)
        for (int k = 0; k < count; ++k) {
            const double p = static_cast<double>(alpha[static_cast<std::size_t>(k)]) *
                             static_cast<double>(px[static_cast<std::size_t>(k)][i]);
            want(i, 0) += p;
            scale(i, 0) += std::abs(p);
        }
    Policy::template axpy_many<Scalar>(n, count, alpha.data(), px.data(), y.data());
    CHECK(close_report<Scalar>(to_double(y.data(), n, 1, n), want, scale, static_cast<double>(count + 1)) == "");
}

template <class Policy, class Scalar>
void check_many(std::mt19937& g) {
    for (index_t n : many_lengths()) {
        for (int count = 0; count <= 16; ++count) check_dot_many<Policy, Scalar>(n, count, g);
        for (int count : {0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64})
            check_axpy_many<Policy, Scalar>(n, count, g);
    }
}

/// ys[k] += sum_j alpha[k ld + j] x[k ld + j] for m examples of `count` columns each, the first
/// `shared` of them the same vectors for every example: the double oracle, and the exact bits of
/// one axpy_many per example (grouping must never change an example's result).
template <class Policy, class Scalar>
void check_axpy_paths(index_t n, int m, int count, int shared, std::mt19937& g) {
    CAPTURE(Policy::name(), n, m, count, shared);
    const index_t ld = count + 3;  // a leading dimension wider than count, as the fused path's
    const auto own = random_vectors<Scalar>(m * count, n, g), common = random_vectors<Scalar>(shared, n, g);
    std::vector<const Scalar*> x(static_cast<std::size_t>(m * ld), nullptr);
    std::vector<Scalar> alpha(x.size(), std::numeric_limits<Scalar>::quiet_NaN());  // unused slots poison
    for (int k = 0; k < m; ++k)
        for (int j = 0; j < count; ++j) {
            const auto at = static_cast<std::size_t>(k * ld + j);
            x[at] = j < shared ? common[static_cast<std::size_t>(j)]->data() : own[static_cast<std::size_t>(k * count + j)]->data();
            alpha[at] = static_cast<Scalar>(uniform(g));
        }
    guarded_list<Scalar> ys, copies;
    std::vector<Scalar*> py;
    for (int k = 0; k < m; ++k) {
        ys.push_back(std::make_unique<guarded<Scalar>>(n));
        fill(*ys.back(), g);
        copies.push_back(std::make_unique<guarded<Scalar>>(n));
        std::copy(ys.back()->data(), ys.back()->data() + n, copies.back()->data());
        py.push_back(ys.back()->data());
    }
    treegate::kernels::axpy_paths<Policy>(n, m, count, shared, alpha.data(), x.data(), ld, py.data());
    for (int k = 0; k < m; ++k) {
        CAPTURE(k);
        Scalar* want_bits = copies[static_cast<std::size_t>(k)]->data();
        Eigen::MatrixXd want = to_double(want_bits, n, 1, n), scale = want.cwiseAbs();
        const auto at = static_cast<std::size_t>(k * ld);
        for (index_t i = 0; i < n; ++i)
            for (int j = 0; j < count; ++j) {
                const double p = static_cast<double>(alpha[at + static_cast<std::size_t>(j)]) *
                                 static_cast<double>(x[at + static_cast<std::size_t>(j)][i]);
                want(i, 0) += p;
                scale(i, 0) += std::abs(p);
            }
        const Eigen::MatrixXd got = to_double(py[static_cast<std::size_t>(k)], n, 1, n);
        CHECK(close_report<Scalar>(got, want, scale, static_cast<double>(count + 1)) == "");
        Policy::template axpy_many<Scalar>(n, count, alpha.data() + at, x.data() + at, want_bits);
        index_t same = 0;
        for (index_t i = 0; i < n; ++i) same += want_bits[i] == py[static_cast<std::size_t>(k)][i] ? 1 : 0;
        CHECK(same == n);
    }
}

template <class Policy, class Scalar>
void check_paths(std::mt19937& g) {
    for (index_t n : {index_t{0}, index_t{1}, index_t{15}, index_t{17}, index_t{47}, index_t{49}, index_t{768}, index_t{1001}})
        for (int m : {0, 1, 2, 3, 5, 7, 8, 9, 16, 19})
            for (int count : {0, 1, 7, 12})
                for (int shared : {0, 1, count / 2, count}) check_axpy_paths<Policy, Scalar>(n, m, count, shared, g);
}

/// Runs check(policy{}) for every policy, saying which SIMD levels this CPU cannot test.
template <class Check>
void each_policy(const char* what, Check&& check) {
    check(treegate::kernels::reference{});
    check(treegate::kernels::eigen{});
    if (treegate::kernels::cpu_supports_avx2())
        check(treegate::kernels::avx2{});
    else
        WARN("this CPU (or build) has no AVX2 + FMA: the avx2 " << what << " are not tested");
    if (treegate::kernels::cpu_supports_avx512())
        check(treegate::kernels::avx512{});
    else
        WARN("this CPU (or build) lacks AVX-512 F/BW/VL/DQ: the avx512 " << what << " are not tested");
    check(treegate::kernels::dispatch{});
}

}  // namespace

TEMPLATE_TEST_CASE("axpy_paths matches plain loops and each policy's axpy_many bit for bit", "[kernels][many]", float,
                   double) {
    std::mt19937 g(std::is_same_v<TestType, float> ? 813u : 814u);
    each_policy("axpy_paths", [&](auto policy) { check_paths<decltype(policy), TestType>(g); });
}

TEMPLATE_TEST_CASE("dot_many and axpy_many match plain loops", "[kernels][many]", float, double) {
    std::mt19937 g(std::is_same_v<TestType, float> ? 811u : 812u);
    each_policy("dot_many / axpy_many", [&](auto policy) { check_many<decltype(policy), TestType>(g); });
}
