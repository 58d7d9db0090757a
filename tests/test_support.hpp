// Shared helpers of treegate's unit tests: seeded random data, the naive oracles written from
// the README's formula section (never from the library's own index helpers), tolerances and error checks.
#ifndef TREEGATE_TESTS_TEST_SUPPORT_HPP
#define TREEGATE_TESTS_TEST_SUPPORT_HPP

// Eigen is configured for the tests (EIGEN_RUNTIME_NO_MALLOC, eigen_assert) before anything
// includes it; see test_eigen_config.hpp.
#include "test_eigen_config.hpp"

#include "catch_compat.hpp"

#include <treegate/kernels/policy.hpp>
#include <treegate/activation.hpp>
#include <treegate/layers/tree_feedforward.hpp>
#include <treegate/layers/tree_linear.hpp>

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

namespace tg_test {

using treegate::index_t;
using treegate::leaf_t;

template <class Scalar>
using mat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
template <class Scalar>
using vec = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

/// (scalar, policy) pairs for TEMPLATE_LIST_TEST_CASE.
template <class Scalar, class Policy>
struct sp {
    using scalar = Scalar;
    using policy = Policy;
};
/// `dispatch` runs on every CPU (on the level it is bound to); avx2 and avx512 are not listed
/// because they need a CPU check first (test_kernels_simd.cpp runs the layers with them).
/// Under the sanitizer presets (TREEGATE_TEST_FEWER_PAIRS) the layer tests run one pair per
/// kernel family: the layers' own code is the same template for every pair, and the kernels
/// keep their full lists in test_kernels*.cpp; this halves the sanitizer build's heaviest files.
#if defined(TREEGATE_TEST_FEWER_PAIRS)
using scalar_policy_list = std::tuple<sp<float, treegate::kernels::reference>, sp<float, treegate::kernels::dispatch>,
                                      sp<double, treegate::kernels::eigen>>;
#else
using scalar_policy_list = std::tuple<sp<float, treegate::kernels::reference>, sp<float, treegate::kernels::eigen>,
                                      sp<float, treegate::kernels::dispatch>, sp<double, treegate::kernels::reference>,
                                      sp<double, treegate::kernels::eigen>, sp<double, treegate::kernels::dispatch>>;
#endif

// ---- random data from explicit seeds (runs are identical) --------------------------------------

inline double uniform(std::mt19937& g, double lo = -1.0, double hi = 1.0) {
    return std::uniform_real_distribution<double>(lo, hi)(g);
}

inline index_t uniform_index(std::mt19937& g, index_t lo, index_t hi) {  // inclusive
    return std::uniform_int_distribution<index_t>(lo, hi)(g);
}

template <class Scalar>
mat<Scalar> random_matrix(index_t rows, index_t cols, std::mt19937& g) {
    mat<Scalar> m(rows, cols);
    for (index_t c = 0; c < cols; ++c)
        for (index_t r = 0; r < rows; ++r) m(r, c) = static_cast<Scalar>(uniform(g));
    return m;
}

/// Gate values: mostly random signs, with exact +0, -0 sprinkled in (both must route as bit 0).
template <class Scalar>
mat<Scalar> random_gates(index_t rows, index_t cols, std::mt19937& g) {
    mat<Scalar> m = random_matrix<Scalar>(rows, cols, g);
    for (index_t c = 0; c < cols; ++c)
        for (index_t r = 0; r < rows; ++r) {
            const index_t u = uniform_index(g, 0, 15);
            if (u == 0) m(r, c) = Scalar(0);
            if (u == 1) m(r, c) = -Scalar(0);
        }
    return m;
}

/// D gating indices into an input of size `in` (repeats allowed: the README does not forbid them).
inline std::vector<index_t> random_gating_indices(int depth, index_t in, std::mt19937& g) {
    std::vector<index_t> idx(static_cast<std::size_t>(depth));
    for (auto& i : idx) i = uniform_index(g, 0, in - 1);
    return idx;
}

/// Sets some gating entries of a batch to exact +0 / -0, which must route as bit 0.
template <class Scalar>
void sprinkle_zero_gates(mat<Scalar>& X, const std::vector<index_t>& idx, std::mt19937& g) {
    for (index_t c = 0; c < X.cols(); ++c)
        for (index_t i : idx) {
            const index_t u = uniform_index(g, 0, 15);
            if (u == 0) X(i, c) = Scalar(0);
            if (u == 1) X(i, c) = -Scalar(0);
        }
}

/// Fills every block and bias of a tree_linear with uniform(-1, 1) values from `g`.
template <class Layer>
void fill_random(Layer& layer, std::mt19937& g) {
    using S = typename Layer::scalar_type;
    for (index_t b = 0; b < layer.block_count(); ++b) {
        auto w = layer.weight(b);
        for (index_t c = 0; c < w.cols(); ++c)
            for (index_t r = 0; r < w.rows(); ++r) w(r, c) = static_cast<S>(uniform(g));
        if (layer.has_bias()) {
            auto bias = layer.bias(b);
            for (index_t r = 0; r < bias.size(); ++r) bias(r) = static_cast<S>(uniform(g));
        }
    }
}

/// Copies weights and biases between two tree_linear layers of the same shape (any policy/sizes).
template <class To, class From>
void copy_weights(To& to, const From& from) {
    for (index_t b = 0; b < from.block_count(); ++b) {
        to.weight(b) = from.weight(b);
        if (from.has_bias()) to.bias(b) = from.bias(b);
    }
}

// ---- topology, written from the README's formula section ------------------------------------------------

/// Gate value to bit: 1 iff g > 0 (NaN, -0, +0 give 0).
template <class Scalar>
int oracle_bit(Scalar g) {
    return g > Scalar(0) ? 1 : 0;
}

/// Heap index of the node at `level` on the path with bits `code` (MSB = level-1 bit):
/// level j holds nodes [2^j - 1, 2^(j+1) - 1), ordered like the leaves below them.
inline index_t oracle_path_node(std::uint64_t code, int depth, int level) {
    return (index_t{1} << level) - 1 + static_cast<index_t>(code >> (depth - level));
}

/// Leaf code of one example gated by input entries `idx` of column `x`.
template <class Derived>
std::uint64_t oracle_code_from_input(const Eigen::MatrixBase<Derived>& x, const std::vector<index_t>& idx) {
    std::uint64_t code = 0;
    for (index_t i : idx) code = 2 * code + static_cast<std::uint64_t>(oracle_bit(x(i)));
    return code;
}

/// Leaf code from a column of D gate values (entry 0 decides level 1).
template <class Derived>
std::uint64_t oracle_code_from_gates(const Eigen::MatrixBase<Derived>& g) {
    std::uint64_t code = 0;
    for (index_t j = 0; j < g.size(); ++j) code = 2 * code + static_cast<std::uint64_t>(oracle_bit(g(j)));
    return code;
}

// ---- the tree_linear oracle: materialise the effective weight, then multiply -------------------

/// Exact result (in double) and the absolute-value bound sum |W||x| + |c| of every output entry.
struct oracle_result {
    Eigen::MatrixXd y;
    Eigen::MatrixXd scale;
};

/// y_e = W_eff(e) x_e + c_eff(e), where W_eff is the sum of the path's node blocks (path_sum) or
/// the leaf's block (leaf_only); blocks are read through the layer's weight(i)/bias(i) maps.
template <class Layer, class Scalar>
oracle_result oracle_tree_linear(const Layer& layer, const mat<Scalar>& X, const std::vector<std::uint64_t>& codes) {
    const index_t in = layer.in_size(), out = layer.out_size(), n = X.cols();
    const int depth = layer.depth();
    oracle_result r{Eigen::MatrixXd::Zero(out, n), Eigen::MatrixXd::Zero(out, n)};
    for (index_t e = 0; e < n; ++e) {
        std::vector<index_t> blocks;
        if (layer.mode() == treegate::tree_mode::path_sum) {
            for (int j = 0; j <= depth; ++j) blocks.push_back(oracle_path_node(codes[static_cast<std::size_t>(e)], depth, j));
        } else {
            blocks.push_back(static_cast<index_t>(codes[static_cast<std::size_t>(e)]));
        }
        Eigen::MatrixXd W = Eigen::MatrixXd::Zero(out, in), Wabs = Eigen::MatrixXd::Zero(out, in);
        Eigen::VectorXd c = Eigen::VectorXd::Zero(out), cabs = Eigen::VectorXd::Zero(out);
        for (index_t b : blocks) {
            W += layer.weight(b).template cast<double>();
            Wabs += layer.weight(b).template cast<double>().cwiseAbs();
            if (layer.has_bias()) {
                c += layer.bias(b).template cast<double>();
                cabs += layer.bias(b).template cast<double>().cwiseAbs();
            }
        }
        const Eigen::VectorXd x = X.col(e).template cast<double>();
        r.y.col(e) = W * x + c;
        r.scale.col(e) = Wabs * x.cwiseAbs() + cabs;
    }
    return r;
}

// ---- the tree_feedforward oracle, transcribed from the README's formula section -----------------------

/// act(v) in double: GELU is the exact erf form, gelu_tanh the usual tanh approximation.
inline double oracle_act(treegate::activation a, double v) {
    switch (a) {
        case treegate::activation::identity: return v;
        case treegate::activation::relu: return v > 0 ? v : 0;
        case treegate::activation::gelu: return 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
        case treegate::activation::gelu_tanh: {
            const double pi = 3.14159265358979323846;
            return 0.5 * v * (1.0 + std::tanh(std::sqrt(2.0 / pi) * (v + 0.044715 * v * v * v)));
        }
        case treegate::activation::tanh: return std::tanh(v);
    }
    return v;
}

/// Exact outputs, an absolute error bound per entry, and the examples whose route is within
/// rounding of a tie (a float layer may legitimately take the other branch there; they are
/// excluded by giving them an infinite bound, and tests check that they are rare).
struct ff_oracle_result {
    Eigen::MatrixXd y;
    Eigen::MatrixXd bound;
    index_t ambiguous = 0;
};

/// Per example: for each tree, walk from the root. node_sum: at every node on the path
/// h = act(U x + a), y += V h, and the sign of the first pre-activation picks the child.
/// leaf_mlp: internal nodes route by sign(r.x + s); only the leaf's MLP contributes.
/// Error bound, with eps the layer's epsilon (first order, see dot_tolerance):
///   pre-activation  e_pre = (in+1) eps (|U||x| + |a|)
///   activation      e_h   = 1.2 e_pre + 4 eps (|pre| + |h|)   (|act'| <= 1.13; a few ulps of rounding)
///   output          e_y  += |V| e_h + (w + 2 + K (D+1)) eps |V||h|  (the products and every addition)
template <class Layer, class Scalar>
ff_oracle_result oracle_tree_feedforward(const Layer& layer, const mat<Scalar>& X) {
    const index_t in = layer.in_size(), out = layer.out_size(), w = layer.width(), n = X.cols();
    const index_t trees = layer.tree_count();
    const int depth = layer.depth();
    const auto act = layer.activation_kind();
    const bool node_sum = layer.mode() == treegate::tree_mode::path_sum;
    const double eps = static_cast<double>(std::numeric_limits<Scalar>::epsilon());
    const double tiny = static_cast<double>(std::numeric_limits<Scalar>::denorm_min());
    const double sum_terms = static_cast<double>(w) + 2.0 + static_cast<double>(trees) * (depth + 1.0);
    ff_oracle_result r{Eigen::MatrixXd::Zero(out, n), Eigen::MatrixXd::Zero(out, n), 0};
    for (index_t e = 0; e < n; ++e) {
        const Eigen::VectorXd x = X.col(e).template cast<double>();
        const Eigen::VectorXd xabs = x.cwiseAbs();
        Eigen::VectorXd y = Eigen::VectorXd::Zero(out), err = Eigen::VectorXd::Constant(out, tiny);
        if (layer.has_output_bias()) {
            y = layer.output_bias().template cast<double>();
            err += sum_terms * eps * y.cwiseAbs();
        }
        bool ambiguous = false;
        auto unit = [&](index_t t, index_t u) {
            const Eigen::MatrixXd U = layer.hidden_weight(t, u).template cast<double>();
            const Eigen::VectorXd a = layer.hidden_bias(t, u).template cast<double>();
            const Eigen::MatrixXd V = layer.output_weight(t, u).template cast<double>();
            const Eigen::VectorXd pre = U * x + a;
            const Eigen::VectorXd e_pre = (static_cast<double>(in) + 1.0) * eps * (U.cwiseAbs() * xabs + a.cwiseAbs());
            Eigen::VectorXd h(w), e_h(w);
            for (index_t i = 0; i < w; ++i) {
                h(i) = oracle_act(act, pre(i));
                e_h(i) = 1.2 * e_pre(i) + 4.0 * eps * (std::abs(pre(i)) + std::abs(h(i)));
            }
            y += V * h;
            err += V.cwiseAbs() * e_h + sum_terms * eps * (V.cwiseAbs() * h.cwiseAbs());
            if (std::abs(pre(0)) <= 2.0 * e_pre(0)) ambiguous = true;
            return pre(0) > 0 ? 1 : 0;
        };
        for (index_t t = 0; t < trees; ++t) {
            index_t node = 0;
            if (node_sum) {
                for (int level = 0; level <= depth; ++level) {
                    const int bit = unit(t, node);
                    node = 2 * node + 1 + bit;
                }
            } else {
                for (int level = 0; level < depth; ++level) {
                    const Eigen::VectorXd rw = layer.router_weight(t, node).template cast<double>();
                    const double s = static_cast<double>(layer.router_bias(t, node));
                    const double z = rw.dot(x) + s;
                    const double e_z = (static_cast<double>(in) + 1.0) * eps * (rw.cwiseAbs().dot(xabs) + std::abs(s));
                    if (std::abs(z) <= 2.0 * e_z) ambiguous = true;
                    node = 2 * node + 1 + (z > 0 ? 1 : 0);
                }
                unit(t, node - ((index_t{1} << depth) - 1));
            }
        }
        r.y.col(e) = y;
        r.bound.col(e) = ambiguous ? Eigen::VectorXd::Constant(out, std::numeric_limits<double>::infinity()) : err;
        if (ambiguous) ++r.ambiguous;
    }
    return r;
}

/// Fills every block of a tree_feedforward with uniform(-1, 1) values from `g`.
template <class Layer>
void fill_random_ff(Layer& layer, std::mt19937& g) {
    using S = typename Layer::scalar_type;
    auto fill = [&](auto&& m) {
        for (index_t c = 0; c < m.cols(); ++c)
            for (index_t r = 0; r < m.rows(); ++r) m(r, c) = static_cast<S>(uniform(g));
    };
    for (index_t t = 0; t < layer.tree_count(); ++t) {
        for (index_t u = 0; u < layer.unit_count(); ++u) {
            fill(layer.hidden_weight(t, u));
            fill(layer.hidden_bias(t, u));
            fill(layer.output_weight(t, u));
        }
        for (index_t i = 0; i < layer.router_count(); ++i) {
            fill(layer.router_weight(t, i));
            layer.router_bias(t, i) = static_cast<S>(uniform(g));
        }
    }
    if (layer.has_output_bias()) fill(layer.output_bias());
}

// ---- tolerances ---------------------------------------------------------------------------------

/// Rounding bound for a computed sum of `terms` products (any summation order, FMA or not):
/// |computed - exact| <= (terms - 1) u sum|a_i b_i| + terms u sum|a_i b_i| + O(u^2) with
/// u = eps/2 (the additions, then the products), i.e. <= terms * eps * sum|a_i b_i| to first
/// order. This is the standard worst-case bound for dot products (Higham, ch. 3); it never
/// fails by chance, yet a wrong block, a missing bias or a misrouted example shows up as an
/// error of the size of `scale` itself, thousands of times larger.
template <class Scalar>
double dot_tolerance(double terms, double scale) {
    return terms * static_cast<double>(std::numeric_limits<Scalar>::epsilon()) * scale +
           static_cast<double>(std::numeric_limits<Scalar>::denorm_min());
}

/// "" when every entry satisfies |got - want| <= bound; otherwise a description of the worst
/// entry (CHECK(report == "") prints it). NaN in `got` always fails.
template <class Got>
std::string bound_report(const Eigen::MatrixBase<Got>& got, const Eigen::MatrixXd& want, const Eigen::MatrixXd& bound) {
    if (got.rows() != want.rows() || got.cols() != want.cols()) {
        std::ostringstream os;
        os << "shape " << got.rows() << "x" << got.cols() << " vs " << want.rows() << "x" << want.cols();
        return os.str();
    }
    index_t bad = 0, wr = -1, wc = -1;
    double worst = 0;
    for (index_t c = 0; c < want.cols(); ++c)
        for (index_t r = 0; r < want.rows(); ++r) {
            const double ratio = std::abs(static_cast<double>(got(r, c)) - want(r, c)) / bound(r, c);
            if (!(ratio <= 1.0)) {
                ++bad;
                if (!(ratio <= worst)) {
                    worst = ratio;
                    wr = r;
                    wc = c;
                }
            }
        }
    if (bad == 0) return {};
    std::ostringstream os;
    os.precision(10);
    os << bad << " entries out of tolerance; worst (" << wr << ", " << wc << "): got " << got(wr, wc) << ", want "
       << want(wr, wc) << ", bound " << bound(wr, wc) << ", error/bound " << worst;
    return os.str();
}

/// "" when every entry of `got` is within dot_tolerance<Scalar>(terms, scale) of `want`.
template <class Scalar, class Got>
std::string close_report(const Eigen::MatrixBase<Got>& got, const Eigen::MatrixXd& want, const Eigen::MatrixXd& scale,
                         double terms) {
    const Eigen::MatrixXd bound =
        scale.unaryExpr([terms](double s) { return dot_tolerance<Scalar>(terms, s); });
    return bound_report(got, want, bound);
}

// ---- exceptions ---------------------------------------------------------------------------------

/// "" if `f` throws exactly an `Error` (or a type derived from it) whose what() contains every
/// fragment; otherwise what went wrong.
template <class Error, class F>
std::string throws_with(F&& f, std::initializer_list<std::string> fragments) {
    try {
        f();
    } catch (const Error& e) {
        const std::string msg = e.what();
        for (const auto& frag : fragments)
            if (msg.find(frag) == std::string::npos) return "message \"" + msg + "\" lacks \"" + frag + "\"";
        return {};
    } catch (const std::exception& e) {
        return std::string("wrong exception type, message: ") + e.what();
    } catch (...) {
        return "non-standard exception";
    }
    return "no exception thrown";
}

}  // namespace tg_test

/// CHECK that `expr` throws `Type` with a message containing each of the string fragments.
#define TG_CHECK_THROWS_WITH(Type, expr, ...) \
    CHECK(::tg_test::throws_with<Type>([&] { (void)(expr); }, {__VA_ARGS__}) == std::string())

#endif  // TREEGATE_TESTS_TEST_SUPPORT_HPP
