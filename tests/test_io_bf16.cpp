// safetensors and tree_linear_bf16: bit-exact round trips of the bf16 blocks, float files loaded
// into a bf16 layer (rounded as the converting constructor rounds), and mismatches rejected.
#include "test_support.hpp"

#if defined(TREEGATE_HAS_IO)

#include "io_test_support.hpp"

#include <treegate/io/safetensors.hpp>
#include <treegate/layers/tree_linear_bf16.hpp>

#include <cstdint>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace st = treegate::safetensors;
using treegate::file_error;
using treegate::gating;
using treegate::index_t;
using treegate::tree_mode;
using tg_test::bytes_t;
using tg_test::split;

namespace {

using half_t = treegate::tree_linear_bf16<>;

/// Every stored bit of two bf16 layers: weight blocks (bf16) and biases (float).
void check_same_bits(const half_t& a, const half_t& b) {
    REQUIRE(a.block_count() == b.block_count());
    REQUIRE(a.has_bias() == b.has_bias());
    const auto wa = a.weight_blocks(), wb = b.weight_blocks();
    const index_t n = a.in_size() * a.out_size();
    for (index_t i = 0; i < a.block_count(); ++i) {
        CHECK(std::memcmp(wa.data + i * wa.stride, wb.data + i * wb.stride, static_cast<std::size_t>(n) * 2) == 0);
        if (a.has_bias())
            CHECK(std::memcmp(a.bias(i).data(), b.bias(i).data(), static_cast<std::size_t>(a.out_size()) * 4) == 0);
    }
}

treegate::tree_linear<float> float_layer(tree_mode mode, int depth, bool bias, std::uint64_t seed) {
    std::vector<index_t> idx;
    for (int j = 0; j < depth; ++j) idx.push_back((2 * j + 1) % 11);
    treegate::tree_linear<float> t(11, 6, depth, mode, gating::from_input(idx), bias);
    t.initialize(seed);
    return t;
}

}  // namespace

TEST_CASE("safetensors: tree_linear_bf16 round trip is bit-exact, weights stored as BF16", "[io][safetensors][bf16]") {
    const tree_mode mode = GENERATE(tree_mode::path_sum, tree_mode::leaf_only);
    const int depth = GENERATE(0, 1, 3);
    const bool bias = GENERATE(true, false);
    const auto t = float_layer(mode, depth, bias, static_cast<std::uint64_t>(depth + 3));
    const half_t h(t);
    const bytes_t file = st::save_to_memory(h);
    const auto p = split(file);
    CHECK(p.header["weight"]["dtype"] == "BF16");
    if (bias) CHECK(p.header["bias"]["dtype"] == "F32");  // float biases are kept exactly
    CHECK(p.header["__metadata__"]["kind"] == "tree_linear");

    const half_t back = st::load_from_memory<half_t>(file.data(), file.size());
    check_same_bits(h, back);
    CHECK(st::save_to_memory(back) == file);

    std::mt19937 g(11);
    const auto X = tg_test::random_matrix<float>(11, 17, g);
    const treegate::matrix<float> Y1 = h.forward_batch(X), Y2 = back.forward_batch(X);
    CHECK(std::memcmp(Y1.data(), Y2.data(), static_cast<std::size_t>(Y1.size()) * 4) == 0);

    half_t into(11, 6, depth, mode, h.gates(), bias);  // zeros until loaded
    st::load_into_from_memory(into, file.data(), file.size());
    check_same_bits(h, into);
}

TEST_CASE("safetensors: an F32 or F64 file loads into tree_linear_bf16 as the converting constructor rounds",
          "[io][safetensors][bf16]") {
    const st::dtype type = GENERATE(st::dtype::f32, st::dtype::f64);
    const tree_mode mode = GENERATE(tree_mode::path_sum, tree_mode::leaf_only);
    const auto t = float_layer(mode, 2, true, 9);
    const bytes_t file = st::save_to_memory(t, type);
    const half_t loaded = st::load_from_memory<half_t>(file.data(), file.size());
    check_same_bits(half_t(t), loaded);
    // and a bf16 layer saved as F32 widens exactly: it loads back into the same bits
    const bytes_t wide = st::save_to_memory(loaded, st::dtype::f32);
    CHECK(split(wide).header["weight"]["dtype"] == "BF16");
    check_same_bits(loaded, st::load_from_memory<half_t>(wide.data(), wide.size()));
    // a float layer reads the bf16 file as the widened weights
    const auto wide_float = st::load_from_memory<treegate::tree_linear<float>>(wide.data(), wide.size());
    for (index_t i = 0; i < loaded.block_count(); ++i) CHECK(wide_float.weight(i) == loaded.weight(i));
}

TEST_CASE("safetensors: a finite weight that would round to a bf16 infinity is refused on load", "[io][safetensors][bf16][validation]") {
    const st::dtype type = GENERATE(st::dtype::f32, st::dtype::f64);
    // FLT_MAX, and a negative value just above the midpoint between bf16_max and 2^128
    const float big = GENERATE(std::numeric_limits<float>::max(), -3.3962e38f);
    auto t = float_layer(tree_mode::path_sum, 2, true, 4);
    // bf16_max itself and the float just below the rounding midpoint (bits 0x7f7f7fff) load
    // as bf16_max
    t.weight(1)(2, 3) = treegate::to_float(treegate::bf16_max);
    const std::uint32_t below_midpoint = 0x7f7f7fffu;
    float below = 0;
    std::memcpy(&below, &below_midpoint, sizeof below);
    t.weight(1)(3, 3) = below;
    const bytes_t fine_file = st::save_to_memory(t, type);
    const half_t fine = st::load_from_memory<half_t>(fine_file.data(), fine_file.size());
    const auto fw = fine.weight_blocks();
    CHECK(fw.data[1 * fw.stride + 2 + 3 * 6].bits == 0x7f7f);
    CHECK(fw.data[1 * fw.stride + 3 + 3 * 6].bits == 0x7f7f);
    // element (block 2, row 4, col 5) in the file's row-major order: 2 * 66 + 4 * 11 + 5 = 181
    t.weight(2)(4, 5) = big;
    const bytes_t file = st::save_to_memory(t, type);  // a float file may hold it
    TG_CHECK_THROWS_WITH(file_error, st::load_from_memory<half_t>(file.data(), file.size()), "tensor 'weight' element 181",
                         "overflows BF16", "it would load as infinity");
    half_t into(float_layer(tree_mode::path_sum, 2, true, 5));
    const half_t before = into;
    TG_CHECK_THROWS_WITH(file_error, st::load_into_from_memory(into, file.data(), file.size()), "element 181", "overflows BF16");
    check_same_bits(before, into);  // the target is untouched
    // the float layer itself loads the same file
    CHECK(st::load_from_memory<treegate::tree_linear<float>>(file.data(), file.size()).weight(2)(4, 5) == big);
}

TEST_CASE("tree_linear_bf16 from a float layer refuses a weight that would become infinite, or saturates it",
          "[bf16][validation]") {
    auto t = float_layer(tree_mode::leaf_only, 2, true, 6);
    const float big = GENERATE(std::numeric_limits<float>::max(), -std::numeric_limits<float>::max());
    t.weight(3)(1, 7) = big;
    TG_CHECK_THROWS_WITH(treegate::config_error, half_t(t), "weight (1, 7) of block 3", "beyond the largest bf16",
                         "overflow::saturate");
    const half_t s(t, treegate::overflow::saturate);
    const auto w = s.weight_blocks();
    CHECK(w.data[3 * w.stride + 1 + 7 * 6].bits == (big > 0 ? 0x7f7f : 0xff7f));
    // every other weight is rounded as without saturation
    t.weight(3)(1, 7) = 0.0f;
    const half_t plain(t);
    const auto p = plain.weight_blocks();
    for (index_t i = 0; i < w.count * w.stride; ++i)
        if (i != 3 * w.stride + 1 + 7 * 6) CHECK(w.data[i].bits == p.data[i].bits);
}

TEST_CASE("safetensors: a file that does not match a tree_linear_bf16 is rejected", "[io][safetensors][bf16][validation]") {
    const auto t = float_layer(tree_mode::path_sum, 2, true, 5);
    const half_t h(t);
    const bytes_t file = st::save_to_memory(h);
    SECTION("another depth") {
        half_t other(float_layer(tree_mode::path_sum, 3, true, 5));
        const half_t before = other;
        TG_CHECK_THROWS_WITH(file_error, st::load_into_from_memory(other, file.data(), file.size()),
                             "does not match the layer", "depth is 2 in the file, 3 in the layer");
        check_same_bits(before, other);
    }
    SECTION("another mode") {
        half_t other(float_layer(tree_mode::leaf_only, 2, true, 5));
        TG_CHECK_THROWS_WITH(file_error, st::load_into_from_memory(other, file.data(), file.size()),
                             "mode is path_sum in the file, leaf_only in the layer");
    }
    SECTION("a weight tensor of another shape") {
        auto p = split(file);
        p.header["weight"]["shape"] = nlohmann::json::array({7, 11, 6});  // as many bytes, another shape
        const auto broken = tg_test::join(p.header, p.data);
        TG_CHECK_THROWS_WITH(file_error, st::load_from_memory<half_t>(broken.data(), broken.size()),
                             "tensor 'weight' has shape [7, 11, 6], expected [7, 6, 11]");
    }
    SECTION("another kind of layer") {
        const treegate::dense<float> d(11, 6);
        const bytes_t dense_file = st::save_to_memory(d);
        TG_CHECK_THROWS_WITH(file_error, st::load_from_memory<half_t>(dense_file.data(), dense_file.size()),
                             "holds a \"dense\" layer, not a tree_linear");
    }
}

#endif  // TREEGATE_HAS_IO
