// The generic gradient storage behind every gradient container: collect lists exactly the
// entries a hand enumeration over the layer's own accessors gives, in that order, and the
// views, visit groups and zero() agree with it. Random and odd sizes, depth 0.
#include "test_support.hpp"

#include <treegate/layers/dense.hpp>
#include <treegate/layers/sequential.hpp>
#include <treegate/layers/tree_feedforward.hpp>
#include <treegate/layers/tree_linear.hpp>
#include <treegate/layers/sliced_tree_linear.hpp>
#include <treegate/train/gradients.hpp>

#include <random>
#include <vector>

using treegate::activation;
using treegate::tree_mode;
using treegate::gating;
using treegate::index_t;
namespace tt = treegate::train;

namespace {

struct entry {
    const double* value;
    index_t size;
    int level;
    bool decay;
};

// The order an optimizer's state is laid out in, written out by hand from the layer accessors.
std::vector<entry> expected(treegate::dense<double>& l) {
    std::vector<entry> e{{l.weight().data(), l.in_size() * l.out_size(), 0, true}};
    if (l.has_bias()) e.push_back({l.bias().data(), l.out_size(), 0, false});
    return e;
}

std::vector<entry> expected(treegate::tree_linear<double>& l) {
    std::vector<entry> e;
    for (index_t b = 0; b < l.block_count(); ++b) {
        const int lv = l.mode() == tree_mode::path_sum ? treegate::tree::level_of(b) : l.depth();
        e.push_back({l.weight(b).data(), l.in_size() * l.out_size(), lv, true});
        if (l.has_bias()) e.push_back({l.bias(b).data(), l.out_size(), lv, false});
    }
    return e;
}

std::vector<entry> expected(treegate::tree_feedforward<double>& l) {
    std::vector<entry> e;
    const index_t in = l.in_size(), o = l.out_size(), w = l.width();
    for (index_t t = 0; t < l.tree_count(); ++t)
        for (index_t i = 0; i < l.unit_count(); ++i) {
            const int lv = l.mode() == tree_mode::path_sum ? treegate::tree::level_of(i) : l.depth();
            e.push_back({l.hidden_weight(t, i).data(), w * in, lv, true});
            e.push_back({l.hidden_bias(t, i).data(), w, lv, false});
            e.push_back({l.output_weight(t, i).data(), o * w, lv, true});
        }
    for (index_t t = 0; t < l.tree_count(); ++t)
        for (index_t i = 0; i < l.router_count(); ++i) {
            e.push_back({l.router_weight(t, i).data(), in, treegate::tree::level_of(i), true});
            e.push_back({&l.router_bias(t, i), 1, treegate::tree::level_of(i), false});
        }
    if (l.has_output_bias()) e.push_back({l.output_bias().data(), o, 0, false});
    return e;
}

void check_same(const tt::param_list<double>& got, const std::vector<entry>& want) {
    REQUIRE(got.size() == want.size());
    for (std::size_t k = 0; k < want.size(); ++k) {
        CHECK(got[k].value == want[k].value);
        CHECK(got[k].size == want[k].size);
        CHECK(got[k].level == want[k].level);
        CHECK(got[k].decay == want[k].decay);
    }
}

// Gradient buffers are disjoint and each as long as its value block.
void check_disjoint(const tt::param_list<double>& got) {
    for (std::size_t a = 0; a < got.size(); ++a)
        for (std::size_t b = a + 1; b < got.size(); ++b)
            CHECK((got[a].grad + got[a].size <= got[b].grad || got[b].grad + got[b].size <= got[a].grad));
}

}  // namespace

TEST_CASE("gradient storage: collect lists the hand-enumerated entries in order, for every layer kind",
          "[grad][storage]") {
    std::mt19937 g(11);
    std::uniform_int_distribution<int> size(1, 7);
    for (int trial = 0; trial < 6; ++trial) {
        const index_t in = size(g) + 1, out = size(g), width = size(g);
        const int depth = trial % 3;
        const bool bias = trial % 2 == 0;
        treegate::dense<double> d(in, out, bias);
        std::vector<index_t> gate;
        for (int j = 0; j < depth; ++j) gate.push_back(j % in);
        treegate::tree_linear<double> tl(in, out, depth, trial % 2 ? tree_mode::leaf_only : tree_mode::path_sum,
                                         gating::from_input(gate), bias);
        treegate::tree_feedforward<double> ff(in, out, width, depth, 1 + trial % 2, activation::gelu,
                                              trial < 3 ? tree_mode::leaf_only : tree_mode::path_sum, bias);
        tt::param_list<double> got;
        auto gd = tt::make_gradient(d);
        gd.collect(d, got);
        check_same(got, expected(d));
        check_disjoint(got);
        got.clear();
        auto gt = tt::make_gradient(tl);
        gt.collect(tl, got);
        check_same(got, expected(tl));
        check_disjoint(got);
        got.clear();
        auto gf = tt::make_gradient(ff);
        gf.collect(ff, got);
        check_same(got, expected(ff));
        check_disjoint(got);
        for (const auto& b : got) CHECK(!b.visited);
    }
}

TEST_CASE("gradient storage: a mark visits the whole group; views write the buffers collect hands out; zero resets",
          "[grad][storage]") {
    treegate::tree_feedforward<double> ff(4, 3, 2, 2, 2, activation::gelu, tree_mode::leaf_only);
    auto grad = tt::make_gradient(ff);
    grad.mark(1, 2);
    grad.mark_router(0, 1);
    grad.hidden_bias(1, 2)(0) = 5.0;
    grad.router_bias(0, 1) = -2.0;
    tt::param_list<double> got;
    grad.collect(ff, got);
    const index_t U = ff.unit_count(), unit = 1 * U + 2;
    for (std::size_t k = 0; k < got.size(); ++k) {
        const bool in_unit = k / 3 == static_cast<std::size_t>(unit) && k < static_cast<std::size_t>(3 * 2 * U);
        const std::size_t router_base = static_cast<std::size_t>(3 * 2 * U);
        const bool in_router = k >= router_base && (k - router_base) / 2 == 1 && k < got.size() - 1;
        CHECK(got[k].visited == (in_unit || in_router));
    }
    CHECK(got[static_cast<std::size_t>(3 * unit + 1)].grad[0] == 5.0);
    CHECK(got[static_cast<std::size_t>(3 * 2 * U + 2 + 1)].grad[0] == -2.0);
    CHECK(!grad.output_bias_visited());
    grad.zero();
    CHECK(grad.visited_units().empty());
    CHECK(grad.visited_routers().empty());
    CHECK(grad.hidden_bias(1, 2)(0) == 0.0);
    CHECK(grad.router_bias(0, 1) == 0.0);
}

TEST_CASE("gradient storage: collect against a layer of another shape raises shape_error", "[grad][storage]") {
    treegate::tree_linear<double> a(5, 3, 2, tree_mode::path_sum, gating::from_input({0, 1}));
    treegate::tree_linear<double> b(5, 4, 2, tree_mode::path_sum, gating::from_input({0, 1}));
    treegate::tree_linear<double> c(5, 3, 2, tree_mode::path_sum, gating::from_input({0, 1}), false);
    auto grad = tt::make_gradient(a);
    tt::param_list<double> got;
    CHECK_THROWS_AS(grad.collect(b, got), treegate::shape_error);
    CHECK_THROWS_AS(grad.collect(c, got), treegate::shape_error);
    treegate::dense<double> d(5, 3);
    auto gd = tt::make_gradient(d);
    CHECK_THROWS_AS(gd.collect(a, got), treegate::shape_error);
}
