// The parameter description (layers/parameters.hpp) against each layer's own accessors, and the
// bf16 storage of tree_linear: saving and loading tree_linear_bf16 through safetensors.
#include "test_support.hpp"

#include <treegate/layers/parameters.hpp>
#include <treegate/layers/tree_linear_bf16.hpp>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

using treegate::activation;
using treegate::slice_combine;
using treegate::tree_mode;
using treegate::gating;
using treegate::index_t;

namespace {

/// Every block pointer of a tensor, in file order.
template <class T>
std::vector<const void*> block_pointers(const treegate::parameter_tensor<T>& t) {
    std::vector<const void*> out;
    t.for_each_block([&](const auto* p) { out.push_back(p); });
    return out;
}

template <class T>
index_t element_count(const std::vector<treegate::parameter_tensor<T>>& ts) {
    index_t n = 0;
    for (const auto& t : ts) {
        std::uint64_t shape = 1;
        for (auto d : t.file_shape) shape *= d;
        CHECK(shape == static_cast<std::uint64_t>(t.block_count() * t.block_size()));
        n += t.block_count() * t.block_size();
    }
    return n;
}

}  // namespace

TEST_CASE("parameters: tree_linear blocks, shapes and levels match the accessors", "[parameters]") {
    const tree_mode mode = GENERATE(tree_mode::path_sum, tree_mode::leaf_only);
    const int depth = GENERATE(0, 1, 3);
    const bool bias = GENERATE(true, false);
    std::vector<index_t> idx;
    for (int j = 0; j < depth; ++j) idx.push_back(j);
    treegate::tree_linear<float> layer(5, 3, depth, mode, gating::from_input(idx), bias);
    const auto ps = treegate::parameters(layer, "m.");
    REQUIRE(ps.size() == (bias ? 2u : 1u));
    CHECK(element_count(ps) == layer.parameter_count());
    const auto& w = ps[0];
    CHECK(w.name == "m.weight");
    CHECK(w.decayed);
    CHECK(w.file_shape == std::vector<std::uint64_t>{static_cast<std::uint64_t>(layer.block_count()), 3, 5});
    CHECK((w.rows == 3 && w.cols == 5));
    const auto wp = block_pointers(w);
    REQUIRE(static_cast<index_t>(wp.size()) == layer.block_count());
    for (index_t b = 0; b < layer.block_count(); ++b) {
        CHECK(wp[static_cast<std::size_t>(b)] == layer.weight(b).data());
        CHECK(w.level(b) == (mode == tree_mode::path_sum ? treegate::tree::level_of(b) : depth));
    }
    if (bias) {
        CHECK(ps[1].name == "m.bias");
        CHECK_FALSE(ps[1].decayed);
        const auto bp = block_pointers(ps[1]);
        for (index_t b = 0; b < layer.block_count(); ++b) CHECK(bp[static_cast<std::size_t>(b)] == layer.bias(b).data());
    }
}

TEST_CASE("parameters: tree_feedforward, sliced_tree_linear and a sequential", "[parameters]") {
    const tree_mode variant = GENERATE(tree_mode::path_sum, tree_mode::leaf_only);
    treegate::tree_feedforward<double> ff(6, 2, 4, 2, 3, activation::relu, variant, true);
    const auto& cff = ff;
    const auto ps = treegate::parameters(cff);
    CHECK(element_count(ps) == ff.parameter_count());
    std::vector<std::string> names;
    for (const auto& t : ps) names.push_back(t.name);
    if (variant == tree_mode::path_sum)
        CHECK(names == std::vector<std::string>{"hidden_weight", "hidden_bias", "output_weight", "output_bias"});
    else
        CHECK(names == std::vector<std::string>{"hidden_weight", "hidden_bias", "output_weight", "router_weight",
                                                "router_bias", "output_bias"});
    const auto hw = block_pointers(ps[0]), ow = block_pointers(ps[2]);
    for (index_t t = 0; t < ff.tree_count(); ++t)
        for (index_t u = 0; u < ff.unit_count(); ++u) {
            const auto k = static_cast<std::size_t>(t * ff.unit_count() + u);
            CHECK(hw[k] == ff.hidden_weight(t, u).data());
            CHECK(ow[k] == ff.output_weight(t, u).data());
            CHECK(ps[0].level(t * ff.unit_count() + u) ==
                  (variant == tree_mode::path_sum ? treegate::tree::level_of(u) : 2));
        }
    if (variant == tree_mode::leaf_only) {
        const auto rb = block_pointers(ps[4]);
        for (index_t t = 0; t < ff.tree_count(); ++t)
            for (index_t i = 0; i < ff.router_count(); ++i) {
                CHECK(rb[static_cast<std::size_t>(t * ff.router_count() + i)] == &ff.router_bias(t, i));
                CHECK(ps[3].level(t * ff.router_count() + i) == treegate::tree::level_of(i));
            }
    }

    treegate::sliced_tree_linear<float> blk(3, 2, 2, tree_mode::path_sum, slice_combine::sum, {{0, 1}, {2, 0}}, true);
    const auto pb = treegate::parameters(blk);
    REQUIRE(pb.size() == 2u);
    CHECK(pb[0].file_shape == std::vector<std::uint64_t>{2, 7, 2, 3});
    const auto bw = block_pointers(pb[0]);
    for (index_t t = 0; t < 2; ++t)
        for (index_t b = 0; b < 7; ++b) {
            CHECK(bw[static_cast<std::size_t>(t * 7 + b)] == blk.tree(t).weight(b).data());
            CHECK(pb[0].level(t * 7 + b) == treegate::tree::level_of(b));
        }

    treegate::sequential model(treegate::dense<float>(4, 6), treegate::activation_layer<float>(activation::relu, 6),
                               treegate::dense<float>(6, 2, false));
    const auto pm = treegate::parameters(model);
    REQUIRE(pm.size() == 3u);
    CHECK(pm[0].name == "0.weight");
    CHECK(pm[1].name == "0.bias");
    CHECK(pm[2].name == "2.weight");
    CHECK(block_pointers(pm[2]).front() == model.layer<2>().weight().data());
    CHECK(pm[2].file_shape == std::vector<std::uint64_t>{2, 6});
}

TEST_CASE("parameters: a bf16 tree_linear describes bf16 weight blocks and float biases", "[parameters][bf16]") {
    treegate::tree_linear<float> t(9, 4, 2, tree_mode::path_sum, gating::from_input({1, 5}));
    t.initialize(3);
    const treegate::tree_linear_bf16<> h(t);
    const auto ps = treegate::parameters(h);
    REQUIRE(ps.size() == 2u);
    CHECK(ps[0].element == treegate::element_kind::bf16);
    CHECK(ps[1].element == treegate::element_kind::scalar);
    index_t b = 0;
    ps[0].for_each_block([&](const auto* p) {
        using E = std::remove_const_t<std::remove_pointer_t<decltype(p)>>;
        if constexpr (std::is_same_v<E, treegate::bf16>) {
            const Eigen::MatrixXf w = h.weight(b);
            for (index_t c = 0; c < 9; ++c)
                for (index_t r = 0; r < 4; ++r) CHECK(treegate::to_float(p[r + c * 4]) == w(r, c));
        } else {
            FAIL("weights described as the wrong element type");
        }
        ++b;
    });
    CHECK(b == h.block_count());
}
