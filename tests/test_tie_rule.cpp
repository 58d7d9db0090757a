// The gating tie rule (routing.hpp): `> 0` (the default) or `>= 0`, in the bit functions, in both
// tree_feedforward modes and every forward path (single, grouped batch, fused width-1, sorted
// fused), in the backward's route bits, in treegate's metadata and in load_fastfeedforward.
#include "test_support.hpp"

#include <treegate/layers/tree_feedforward.hpp>
#include <treegate/routing.hpp>
#include <treegate/train/backward.hpp>
#include <treegate/train/gradients.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#if defined(TREEGATE_HAS_IO)
#include "io_test_support.hpp"

#include <treegate/io/safetensors.hpp>

#include <nlohmann/json.hpp>
#endif

using treegate::activation;
using treegate::index_t;
using treegate::leaf_t;
using treegate::tie_rule;
using treegate::tree_mode;
using namespace tg_test;
namespace tt = treegate::train;

namespace {

template <class Scalar, class Policy = treegate::kernels::default_policy>
using ff = treegate::tree_feedforward<Scalar, treegate::dynamic, treegate::dynamic, treegate::dynamic, treegate::dynamic,
                                      Policy>;

/// The README's bit under a rule, written out: right iff g > 0, or iff g >= 0.
template <class S>
int bit_of(S g, tie_rule tie) {
    return tie == tie_rule::greater ? (g > S(0) ? 1 : 0) : (g >= S(0) ? 1 : 0);
}

/// A tree whose every route score is exactly its bias at x = 0: routers (leaf_only) or the
/// first hidden row and bias (path_sum); each node's bias is 0 (a tie) or +-1, by `pattern`.
template <class Layer>
void set_node_biases(Layer& layer, const std::vector<int>& pattern) {
    using S = typename Layer::scalar_type;
    for (index_t t = 0; t < layer.tree_count(); ++t) {
        const index_t nodes = layer.mode() == tree_mode::leaf_only ? layer.router_count() : layer.unit_count();
        for (index_t i = 0; i < nodes; ++i) {
            const S v = static_cast<S>(pattern[static_cast<std::size_t>((t * nodes + i) % static_cast<index_t>(pattern.size()))]);
            if (layer.mode() == tree_mode::leaf_only)
                layer.router_bias(t, i) = v;
            else
                layer.hidden_bias(t, i)(0) = v;
        }
    }
}

/// y at x = 0, walked from the README: every score is the node's bias; the node's MLP (path_sum)
/// or the leaf's (leaf_only) adds V act(a) with x = 0.
template <class Layer>
Eigen::VectorXd output_at_zero(const Layer& layer, tie_rule tie) {
    const auto act = layer.activation_kind();
    Eigen::VectorXd y = layer.has_output_bias() ? Eigen::VectorXd(layer.output_bias().template cast<double>())
                                                : Eigen::VectorXd::Zero(layer.out_size());
    auto add_unit = [&](index_t t, index_t u) {
        Eigen::VectorXd h = layer.hidden_bias(t, u).template cast<double>();
        for (index_t i = 0; i < h.size(); ++i) h(i) = oracle_act(act, h(i));
        y += layer.output_weight(t, u).template cast<double>() * h;
    };
    for (index_t t = 0; t < layer.tree_count(); ++t) {
        index_t node = 0;
        if (layer.mode() == tree_mode::path_sum) {
            for (int level = 0; level <= layer.depth(); ++level) {
                add_unit(t, node);
                node = 2 * node + 1 + bit_of(static_cast<double>(layer.hidden_bias(t, node)(0)), tie);
            }
        } else {
            for (int level = 0; level < layer.depth(); ++level)
                node = 2 * node + 1 + bit_of(static_cast<double>(layer.router_bias(t, node)), tie);
            add_unit(t, node - ((index_t{1} << layer.depth()) - 1));
        }
    }
    return y;
}

}  // namespace

TEMPLATE_TEST_CASE("gate_bit under each tie rule: zeros, subnormals, infinities, NaN", "[routing][tie_rule]", float,
                   double) {
    using S = TestType;
    using lim = std::numeric_limits<S>;
    const S values[] = {S(0), -S(0), lim::denorm_min(), -lim::denorm_min(), lim::min(), S(-1), S(1),
                        lim::infinity(), -lim::infinity(), lim::quiet_NaN(), -lim::quiet_NaN()};
    for (const S v : values) {
        CAPTURE(v);
        CHECK(treegate::gate_bit(v) == treegate::tree::gate_bit(v));  // the default is the README's rule
        CHECK(treegate::gate_bit(v, tie_rule::greater) == bit_of(v, tie_rule::greater));
        CHECK(treegate::gate_bit(v, tie_rule::greater_equal) == bit_of(v, tie_rule::greater_equal));
        CHECK(treegate::unit_bit(&v, tie_rule::greater_equal) == bit_of(v, tie_rule::greater_equal));
    }
    CHECK(treegate::gate_bit(S(0), tie_rule::greater_equal) == 1);
    CHECK(treegate::gate_bit(-S(0), tie_rule::greater_equal) == 1);
    CHECK(treegate::gate_bit(lim::quiet_NaN(), tie_rule::greater_equal) == 0);
    const S x[] = {S(0), S(-1), S(2), -S(0), lim::quiet_NaN()};
    const index_t idx[] = {0, 2, 3, 1, 4};
    CHECK(treegate::route_by_indices(x, idx, 5) == 0b01000u);
    CHECK(treegate::route_by_indices(x, idx, 5, tie_rule::greater_equal) == 0b11100u);
    CHECK(treegate::route_by_gates(x, 1, 4, tie_rule::greater) == 0b0010u);
    CHECK(treegate::route_by_gates(x, 1, 4, tie_rule::greater_equal) == 0b1011u);
    CHECK(treegate::route_by_gates(x, 1, 0, tie_rule::greater_equal) == 0u);
    const S r[] = {S(1), S(-1)}, z[] = {S(3), S(3)};
    CHECK(treegate::hyperplane_bit<treegate::kernels::reference>(2, r, S(0), z) == 0);
    CHECK(treegate::hyperplane_bit<treegate::kernels::reference>(2, r, S(0), z, tie_rule::greater_equal) == 1);
    CHECK(std::string(treegate::to_string(tie_rule::greater)) == "greater");
    CHECK(std::string(treegate::to_string(tie_rule::greater_equal)) == "greater_equal");
}

TEMPLATE_LIST_TEST_CASE("tree_feedforward ties: every forward path sends a zero score where the rule says",
                        "[tree_feedforward][tie_rule]", scalar_policy_list) {
    using S = typename TestType::scalar;
    using P = typename TestType::policy;
    std::mt19937 g(51);
    const std::vector<int> pattern = {0, 0, 1, 0, -1, 0, 0};
    struct shape {
        tree_mode mode;
        index_t width;
        int depth;
        index_t in, out;
    };
    // The last: width-1 path_sum whose weights exceed the sorted path's subtree budget, so a
    // large batch takes the two-phase sorted route (fused_sorted).
    const shape shapes[] = {{tree_mode::leaf_only, 3, 3, 5, 2},  {tree_mode::leaf_only, 1, 4, 4, 3},
                            {tree_mode::leaf_only, 2, 0, 3, 2},  {tree_mode::path_sum, 3, 3, 5, 2},
                            {tree_mode::path_sum, 1, 4, 6, 3},   {tree_mode::path_sum, 1, 10, 64, 64}};
    for (const shape& sh : shapes)
        for (const tie_rule tie : {tie_rule::greater, tie_rule::greater_equal}) {
            CAPTURE(treegate::to_string(sh.mode), sh.width, sh.depth, treegate::to_string(tie));
            ff<S, P> layer(sh.in, sh.out, sh.width, sh.depth, 2, activation::gelu, sh.mode, true, tie);
            CHECK(layer.tie() == tie);
            fill_random_ff(layer, g);
            set_node_biases(layer, pattern);
            const Eigen::VectorXd want = output_at_zero(layer, tie);
            const Eigen::VectorXd other =
                output_at_zero(layer, tie == tie_rule::greater ? tie_rule::greater_equal : tie_rule::greater);
            if (sh.depth > 0) REQUIRE((want - other).cwiseAbs().maxCoeff() > 1e-3);  // the rule matters here
            const double bound = 1e-4 * (want.cwiseAbs().maxCoeff() + 1.0);
            vec<S> y(sh.out);
            layer.forward(vec<S>::Zero(sh.in), y);
            CHECK((y.template cast<double>() - want).cwiseAbs().maxCoeff() <= bound);
            for (const index_t n : {index_t{3}, index_t{100}, index_t{2000}}) {  // groups, tiles, sorted
                const mat<S> Y = layer.forward_batch(mat<S>::Zero(sh.in, n));
                CAPTURE(n);
                CHECK((Y.template cast<double>().colwise() - want).cwiseAbs().maxCoeff() <= bound);
            }
        }
}

TEST_CASE("tree_feedforward ties: the backward follows the forward's rule", "[tree_feedforward][tie_rule][grad]") {
    std::mt19937 g(52);
    for (const tree_mode mode : {tree_mode::leaf_only, tree_mode::path_sum})
        for (const tie_rule tie : {tie_rule::greater, tie_rule::greater_equal}) {
            ff<double> layer(4, 2, 3, 3, 1, activation::tanh, mode, true, tie);
            fill_random_ff(layer, g);
            set_node_biases(layer, {0});  // every node ties at x = 0
            const Eigen::MatrixXd X = Eigen::MatrixXd::Zero(4, 2);
            const Eigen::MatrixXd R = random_matrix<double>(2, 2, g);
            tt::backward_workspace<double> ws;
            auto grad = tt::make_gradient(layer);
            tt::backward(layer, X, R, grad, ws);
            // All ties go left (greater) or right (greater_equal): the leftmost or rightmost path.
            const int bit = tie == tie_rule::greater ? 0 : 1;
            std::vector<index_t> want;
            index_t node = 0;
            for (int level = 0; level <= 3; ++level) {
                if (mode == tree_mode::path_sum) want.push_back(node);
                if (level < 3) node = 2 * node + 1 + bit;
            }
            if (mode == tree_mode::leaf_only) want.push_back(node - 7);
            CAPTURE(treegate::to_string(mode), treegate::to_string(tie));
            CHECK(grad.visited_units() == want);
        }
}

#if defined(TREEGATE_HAS_IO)

namespace st = treegate::safetensors;

TEST_CASE("tree_feedforward tie rule in treegate's metadata: written when set, checked on load, absent = greater",
          "[tree_feedforward][tie_rule][io]") {
    std::mt19937 g(53);
    for (const tree_mode mode : {tree_mode::leaf_only, tree_mode::path_sum}) {
        CAPTURE(treegate::to_string(mode));
        ff<float> layer(5, 2, 1, 3, 1, activation::gelu, mode, true, tie_rule::greater_equal);
        fill_random_ff(layer, g);
        set_node_biases(layer, {0, 1, 0});
        const auto bytes = st::save_to_memory(layer);
        auto p = split(bytes);
        CHECK(p.header["__metadata__"]["tie_rule"] == "greater_equal");
        const auto again = st::load_from_memory<ff<float>>(bytes.data(), bytes.size());
        CHECK(again.tie() == tie_rule::greater_equal);
        CHECK(st::save_to_memory(again) == bytes);
        const mat<float> Z = mat<float>::Zero(5, 4);
        CHECK(again.forward_batch(Z) == layer.forward_batch(Z));

        ff<float> strict(5, 2, 1, 3, 1, activation::gelu, mode, true);
        strict.initialize(1);
        const auto strict_bytes = st::save_to_memory(strict);
        TG_CHECK_THROWS_WITH(treegate::file_error, st::load_into_from_memory(strict, bytes.data(), bytes.size()),
                             "tie_rule is greater_equal in the file, greater in the layer");
        CHECK(st::save_to_memory(strict) == strict_bytes);
        CHECK_FALSE(split(strict_bytes).header["__metadata__"].contains("tie_rule"));

        // Without the key (every file written before tie rules): `> 0`.
        p.header["__metadata__"].erase("tie_rule");
        const auto old = join(p.header, p.data);
        CHECK(st::load_from_memory<ff<float>>(old.data(), old.size()).tie() == tie_rule::greater);
        TG_CHECK_THROWS_WITH(treegate::file_error, st::load_into_from_memory(layer, old.data(), old.size()),
                             "tie_rule is greater in the file, greater_equal in the layer");
        p.header["__metadata__"]["tie_rule"] = ">=";
        const auto bad = join(p.header, p.data);
        TG_CHECK_THROWS_WITH(treegate::file_error, st::load_from_memory<ff<float>>(bad.data(), bad.size()),
                             "metadata 'tie_rule' is \">=\", expected one of greater, greater_equal");
    }
}

#endif
