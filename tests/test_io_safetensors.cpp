// safetensors I/O: bit-exact round trips of every layer and dtype, identical outputs after a
// reload, one case per kind of broken file (built byte by byte here), and atomic saving.
#include "test_support.hpp"

// io/ needs nlohmann-json and zlib, optional dependencies: cmake/treegate_io.cmake defines
// TREEGATE_HAS_IO where it finds both; without them there is nothing to test here.
#if defined(TREEGATE_HAS_IO)

#include "io_test_support.hpp"

#include <treegate/io/safetensors.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

namespace st = treegate::safetensors;
using treegate::activation;
using treegate::slice_combine;
using treegate::tree_mode;
using treegate::file_error;
using treegate::gating;
using treegate::index_t;
using tg_test::bytes_t;
using tg_test::join;
using tg_test::parts;
using tg_test::put_f32;
using tg_test::read_all;
using tg_test::scratch_dir;
using tg_test::split;
using tg_test::mat;

namespace {

template <class Layer>
using tensors_of = std::vector<st::detail::tensor_values<typename Layer::scalar_type>>;

/// The tensors of a layer in file order and layout (row-major), for value comparisons.
template <class Layer>
tensors_of<Layer> tensors(const Layer& layer) {
    return st::detail::store_tensors(layer);
}

/// Every value of `b` has the bits of that of `a` when the dtype holds the scalar exactly (F64,
/// or F32 for float). Otherwise the relative error of one rounding to nearest is allowed: 2^-24
/// for F32 (24-bit significand) and, with margin for the double -> float -> BF16 path, 2^-8 for
/// BF16 (8-bit significand: 2^-9 for one rounding).
template <class Layer>
void check_same_values(const Layer& a, const Layer& b, st::dtype type) {
    using S = typename Layer::scalar_type;
    const bool exact = type == st::dtype::f64 || (type == st::dtype::f32 && sizeof(S) == sizeof(float));
    const int rel_exp = type == st::dtype::bf16 ? -8 : -24;
    const auto ta = tensors(a), tb = tensors(b);
    REQUIRE(ta.size() == tb.size());
    for (std::size_t t = 0; t < ta.size(); ++t) {
        INFO("tensor " << ta[t].name);
        REQUIRE(ta[t].name == tb[t].name);
        REQUIRE(ta[t].shape == tb[t].shape);
        REQUIRE(ta[t].values.size() == tb[t].values.size());
        std::size_t bad = 0;
        for (std::size_t k = 0; k < ta[t].values.size(); ++k) {
            const double x = static_cast<double>(ta[t].values[k]), y = static_cast<double>(tb[t].values[k]);
            const bool ok = exact ? std::memcmp(&ta[t].values[k], &tb[t].values[k], sizeof(S)) == 0
                                  : std::fabs(x - y) <= std::ldexp(std::fabs(x), rel_exp);
            if (!ok) ++bad;
        }
        CHECK(bad == 0);
    }
}

template <class Layer, class... Gates>
void check_same_outputs(const Layer& a, const Layer& b, index_t in, std::uint32_t seed, const Gates&... gates) {
    std::mt19937 g(seed);
    const auto X = tg_test::random_matrix<typename Layer::scalar_type>(in, 9, g);
    const auto ya = a.forward_batch(X, gates...);
    const auto yb = b.forward_batch(X, gates...);
    REQUIRE(ya.rows() == yb.rows());
    CHECK((ya.array() == yb.array()).all());
}

/// Saves to memory, loads into a fresh object (load_into) and through the factory (load).
template <class Layer>
Layer round_trip(const Layer& layer, Layer blank, st::dtype type) {
    const bytes_t file = st::save_to_memory(layer, type);
    st::load_into_from_memory(blank, file.data(), file.size());
    check_same_values(layer, blank, type);
    const Layer built = st::load_from_memory<Layer>(file.data(), file.size());
    check_same_values(layer, built, type);
    if (type != st::dtype::bf16) CHECK(st::save_to_memory(blank, type) == file);  // bit-exact both ways
    return blank;
}

using tl = treegate::tree_linear<float>;

/// tree_linear 3 -> 2, depth 1, path sum gated by x[0], with bias: weight [3, 2, 3] at bytes
/// [0, 72), bias [3, 2] at [72, 96).
tl base_layer(std::uint64_t seed = 7) {
    tl layer(3, 2, 1, tree_mode::path_sum, gating::from_input({0}));
    layer.initialize(seed);
    return layer;
}

bytes_t base_file() { return st::save_to_memory(base_layer(), st::dtype::f32); }

#define CHECK_LOAD_FAILS(file, ...)                                                          \
    TG_CHECK_THROWS_WITH(file_error, ([&] {                                                  \
                             tl layer_ = base_layer(99);                                     \
                             st::load_into_from_memory(layer_, (file).data(), (file).size()); \
                         }()),                                                               \
                         __VA_ARGS__)

}  // namespace

// ---- round trips ----------------------------------------------------------------------------

TEMPLATE_TEST_CASE("safetensors: dense round trip", "[io][safetensors]", float, double) {
    using S = TestType;
    const st::dtype type = GENERATE(st::dtype::f32, st::dtype::f64, st::dtype::bf16);
    const bool bias = GENERATE(true, false);
    treegate::dense<S> d(5, 3, bias);
    d.initialize(3);
    const auto back = round_trip(d, treegate::dense<S>(5, 3, bias), type);
    if (type == st::dtype::f64 || (type == st::dtype::f32 && sizeof(S) == 4)) check_same_outputs(d, back, 5, 1);

    // A compile-time-sized layer reads the same file.
    if (bias) {
        treegate::dense<S, 5, 3> fixed;
        const bytes_t file = st::save_to_memory(d, type);
        st::load_into_from_memory(fixed, file.data(), file.size());
        check_same_values(d, st::load_from_memory<treegate::dense<S>>(file.data(), file.size()), type);
        CHECK(fixed.weight()(2, 4) == back.weight()(2, 4));
    }
}

TEST_CASE("safetensors: dense weight is [out, in], row-major like nn.Linear", "[io][safetensors]") {
    treegate::dense<float> d(2, 3);
    for (index_t r = 0; r < 3; ++r)
        for (index_t c = 0; c < 2; ++c) d.weight()(r, c) = static_cast<float>(10 * r + c);
    const parts p = split(st::save_to_memory(d));
    CHECK(p.header["weight"]["shape"] == nlohmann::json::array({3, 2}));
    CHECK(p.header["weight"]["dtype"] == "F32");
    CHECK(p.header["__metadata__"]["kind"] == "dense");
    const auto begin = p.header["weight"]["data_offsets"][0].get<std::size_t>();
    float v[6];
    std::memcpy(v, p.data.data() + begin, sizeof v);
    CHECK(v[1] == 1.0f);   // (0, 1)
    CHECK(v[2] == 10.0f);  // (1, 0)
    CHECK(v[5] == 21.0f);  // (2, 1)
}

TEMPLATE_TEST_CASE("safetensors: tree_linear round trip", "[io][safetensors]", float, double) {
    using S = TestType;
    using layer_t = treegate::tree_linear<S>;
    const st::dtype type = GENERATE(st::dtype::f32, st::dtype::f64, st::dtype::bf16);
    const tree_mode mode = GENERATE(tree_mode::path_sum, tree_mode::leaf_only);
    const bool external = GENERATE(false, true);
    const int depth = GENERATE(0, 1, 3);
    const bool bias = GENERATE(true, false);
    const index_t in = 7, out = 4;
    std::vector<index_t> idx;
    for (int j = 0; j < depth; ++j) idx.push_back((3 * j + 1) % in);
    const gating gates = external ? gating::external() : gating::from_input(idx);
    layer_t layer(in, out, depth, mode, gates, bias);
    layer.initialize(static_cast<std::uint64_t>(depth + 11));
    const auto back = round_trip(layer, layer_t(in, out, depth, mode, gates, bias), type);
    const bool exact = type == st::dtype::f64 || (type == st::dtype::f32 && sizeof(S) == 4);
    if (exact) {
        if (external) {
            std::mt19937 g(5);
            const auto G = tg_test::random_matrix<S>(depth, 9, g);
            check_same_outputs(layer, back, in, 2, G);
        } else {
            check_same_outputs(layer, back, in, 2);
        }
    }
    const bytes_t file = st::save_to_memory(layer, type);
    const parts p = split(file);
    const index_t blocks = mode == tree_mode::path_sum ? (index_t{2} << depth) - 1 : index_t{1} << depth;
    CHECK(p.header["weight"]["shape"] == nlohmann::json::array({blocks, out, in}));
    CHECK(p.header["__metadata__"]["gating"] == (external ? std::string("external") : st::detail::join_indices(idx)));
}

TEMPLATE_TEST_CASE("safetensors: tree_feedforward round trip", "[io][safetensors]", float, double) {
    using S = TestType;
    using layer_t = treegate::tree_feedforward<S>;
    const st::dtype type = GENERATE(st::dtype::f32, st::dtype::f64, st::dtype::bf16);
    const tree_mode variant = GENERATE(tree_mode::path_sum, tree_mode::leaf_only);
    const index_t width = GENERATE(1, 3);
    const int depth = GENERATE(0, 2);
    const index_t trees = GENERATE(1, 2);
    const bool bias = GENERATE(true, false);
    layer_t layer(6, 4, width, depth, trees, activation::gelu, variant, bias);
    layer.initialize(21);
    const auto back = round_trip(layer, layer_t(6, 4, width, depth, trees, activation::gelu, variant, bias), type);
    if (type == st::dtype::f64 || (type == st::dtype::f32 && sizeof(S) == 4)) check_same_outputs(layer, back, 6, 3);
    const parts p = split(st::save_to_memory(layer, type));
    const index_t units = variant == tree_mode::path_sum ? (index_t{2} << depth) - 1 : index_t{1} << depth;
    CHECK(p.header["hidden_weight"]["shape"] == nlohmann::json::array({trees, units, width, 6}));
    CHECK(p.header["output_weight"]["shape"] == nlohmann::json::array({trees, units, 4, width}));
    CHECK(p.header.contains("router_weight") == (variant == tree_mode::leaf_only));
    CHECK(p.header.contains("output_bias") == bias);
}

TEST_CASE("safetensors: sliced_tree_linear round trip", "[io][safetensors]") {
    using layer_t = treegate::sliced_tree_linear<float>;
    const st::dtype type = GENERATE(st::dtype::f32, st::dtype::f64, st::dtype::bf16);
    const slice_combine combine = GENERATE(slice_combine::sum, slice_combine::concat);
    const tree_mode mode = GENERATE(tree_mode::path_sum, tree_mode::leaf_only);
    const std::vector<std::vector<index_t>> gates = {{0, 2}, {3, 1}, {2, 2}};
    layer_t layer(4, 3, 2, mode, combine, gates);
    layer.initialize(4);
    const auto back = round_trip(layer, layer_t(4, 3, 2, mode, combine, gates), type);
    if (type != st::dtype::bf16) check_same_outputs(layer, back, 12, 4);
    const index_t blocks = mode == tree_mode::path_sum ? 7 : 4;
    CHECK(split(st::save_to_memory(layer)).header["weight"]["shape"] == nlohmann::json::array({3, blocks, 3, 4}));
    CHECK(split(st::save_to_memory(layer)).header["__metadata__"]["gating"] == "0,2;3,1;2,2");
}

TEST_CASE("safetensors: files written before tree_mode and sliced_tree_linear still load", "[io][safetensors]") {
    // Older files say variant = node_sum / leaf_mlp (tree_feedforward) and kind =
    // tree_linear_blocked; built here by rewriting a new file's metadata the old way.
    using ff_t = treegate::tree_feedforward<float>;
    using sl_t = treegate::sliced_tree_linear<float>;
    const tree_mode mode = GENERATE(tree_mode::path_sum, tree_mode::leaf_only);
    const char* old_name = mode == tree_mode::path_sum ? "node_sum" : "leaf_mlp";
    CAPTURE(treegate::to_string(mode));
    SECTION("tree_feedforward") {
        ff_t layer(5, 3, 2, 2, 2, activation::relu, mode, true);
        layer.initialize(17);
        parts q = split(st::save_to_memory(layer));
        CHECK(q.header["__metadata__"]["mode"] == treegate::to_string(mode));
        CHECK_FALSE(q.header["__metadata__"].contains("variant"));
        q.header["__metadata__"].erase("mode");
        q.header["__metadata__"]["variant"] = old_name;
        const bytes_t old_file = join(q.header, q.data);
        const ff_t built = st::load_from_memory<ff_t>(old_file.data(), old_file.size());
        CHECK(built.mode() == mode);
        check_same_values(layer, built, st::dtype::f32);
        check_same_outputs(layer, built, 5, 8);
        ff_t blank(5, 3, 2, 2, 2, activation::relu, mode, true);
        st::load_into_from_memory(blank, old_file.data(), old_file.size());
        check_same_values(layer, blank, st::dtype::f32);
        // Saved again, it speaks the new vocabulary.
        const parts again = split(st::save_to_memory(built));
        CHECK(again.header["__metadata__"]["mode"] == treegate::to_string(mode));
        CHECK_FALSE(again.header["__metadata__"].contains("variant"));
        // The old key keeps its old choices, and a layer of the other mode is told apart.
        ff_t other(5, 3, 2, 2, 2, activation::relu,
                   mode == tree_mode::path_sum ? tree_mode::leaf_only : tree_mode::path_sum, true);
        TG_CHECK_THROWS_WITH(file_error, st::load_into_from_memory(other, old_file.data(), old_file.size()),
                             "mode is", "in the file");
        q.header["__metadata__"]["variant"] = treegate::to_string(mode);
        const bytes_t bad = join(q.header, q.data);
        TG_CHECK_THROWS_WITH(file_error, (st::load_from_memory<ff_t>(bad.data(), bad.size())),
                             "metadata 'variant' is \"", "expected one of node_sum, leaf_mlp");
        q.header["__metadata__"].erase("variant");
        const bytes_t none = join(q.header, q.data);
        TG_CHECK_THROWS_WITH(file_error, (st::load_from_memory<ff_t>(none.data(), none.size())),
                             "metadata 'mode' is missing");
    }
    SECTION("sliced_tree_linear, alone and inside a sequential") {
        const std::vector<std::vector<index_t>> gates = {{1, 0}, {3, 3}};
        sl_t layer(4, 3, 2, mode, slice_combine::sum, gates);
        layer.initialize(23);
        parts q = split(st::save_to_memory(layer));
        CHECK(q.header["__metadata__"]["kind"] == "sliced_tree_linear");
        q.header["__metadata__"]["kind"] = "tree_linear_blocked";
        const bytes_t old_file = join(q.header, q.data);
        const sl_t built = st::load_from_memory<sl_t>(old_file.data(), old_file.size());
        check_same_values(layer, built, st::dtype::f32);
        check_same_outputs(layer, built, 8, 9);
        CHECK(split(st::save_to_memory(built)).header["__metadata__"]["kind"] == "sliced_tree_linear");
        TG_CHECK_THROWS_WITH(file_error, (st::load_from_memory<treegate::tree_linear<float>>(old_file.data(), old_file.size())),
                             "holds a \"tree_linear_blocked\" layer, not a tree_linear");

        using model_t = treegate::sequential<sl_t, ff_t>;
        model_t model(sl_t(4, 3, 2, mode, slice_combine::sum, gates), ff_t(3, 2, 1, 1, 1, activation::gelu, mode, false));
        model.initialize(29);
        parts m = split(st::save_to_memory(model));
        CHECK(m.header["__metadata__"]["0.kind"] == "sliced_tree_linear");
        CHECK(m.header["__metadata__"]["1.mode"] == treegate::to_string(mode));
        m.header["__metadata__"]["0.kind"] = "tree_linear_blocked";
        m.header["__metadata__"].erase("1.mode");
        m.header["__metadata__"]["1.variant"] = old_name;
        const bytes_t old_model = join(m.header, m.data);
        const model_t back = st::load_from_memory<model_t>(old_model.data(), old_model.size());
        check_same_values(model, back, st::dtype::f32);
        check_same_outputs(model, back, 8, 10);
        m.header["__metadata__"]["0.kind"] = "tree_linear";
        const bytes_t wrong = join(m.header, m.data);
        TG_CHECK_THROWS_WITH(file_error, (st::load_from_memory<model_t>(wrong.data(), wrong.size())),
                             "metadata '0.kind' is \"tree_linear\" but the model expects \"sliced_tree_linear\"");
    }
}

TEST_CASE("safetensors: sequential round trip, names prefixed by the layer index", "[io][safetensors]") {
    using S = float;
    using model_t = treegate::sequential<treegate::dense<S>, treegate::activation_layer<S>, treegate::tree_linear<S>,
                                         treegate::tree_feedforward<S>>;
    auto make = [] {
        return model_t(treegate::dense<S>(5, 6), treegate::activation_layer<S>(activation::relu, 6),
                       treegate::tree_linear<S>(6, 6, 2, tree_mode::path_sum, gating::from_input({1, 4})),
                       treegate::tree_feedforward<S>(6, 3, 2, 2, 1, activation::gelu, tree_mode::path_sum));
    };
    model_t model = make();
    model.initialize(8);
    const st::dtype type = GENERATE(st::dtype::f32, st::dtype::f64);
    const bytes_t file = st::save_to_memory(model, type);
    const parts p = split(file);
    CHECK(p.header.contains("0.weight"));
    CHECK(p.header.contains("2.bias"));
    CHECK(p.header.contains("3.hidden_weight"));
    CHECK(!p.header.contains("1.weight"));
    CHECK(p.header["__metadata__"]["1.kind"] == "activation");
    CHECK(p.header["__metadata__"]["layers"] == "4");

    model_t loaded = make();
    st::load_into_from_memory(loaded, file.data(), file.size());
    CHECK(st::save_to_memory(loaded, type) == file);
    check_same_outputs(model, loaded, 5, 6);
    const model_t built = st::load_from_memory<model_t>(file.data(), file.size());
    check_same_outputs(model, built, 5, 6);
}

TEST_CASE("safetensors: files on disk and the named factories", "[io][safetensors]") {
    const auto dir = scratch_dir("disk");
    const std::string path = (dir / "model.safetensors").string();

    treegate::tree_linear<float> tlayer(4, 3, 2, tree_mode::leaf_only, gating::external(), false);
    tlayer.initialize(1);
    st::save(tlayer, path);
    const auto t2 = st::load_tree_linear<float>(path);
    CHECK(t2.mode() == tree_mode::leaf_only);
    CHECK(t2.gates().is_external());
    CHECK(!t2.has_bias());
    check_same_values(tlayer, t2, st::dtype::f32);

    treegate::tree_feedforward<double> ff(3, 2, 2, 1, 2, activation::tanh, tree_mode::leaf_only, true);
    ff.initialize(2);
    st::save(ff, path, st::dtype::f64);
    const auto ff2 = st::load_tree_feedforward<double>(path);
    CHECK(ff2.activation_kind() == activation::tanh);
    CHECK(ff2.tree_count() == 2);
    check_same_values(ff, ff2, st::dtype::f64);

    treegate::dense<float> d(2, 2);
    d.initialize(3);
    st::save(d, path, st::dtype::bf16);
    check_same_values(d, st::load_dense<float>(path), st::dtype::bf16);
    treegate::dense<float> d2(2, 2);
    st::load_into(d2, path);
    check_same_values(d, d2, st::dtype::bf16);

    treegate::sliced_tree_linear<float> bl(2, 2, 1, tree_mode::path_sum, slice_combine::sum, {{0}, {1}});
    bl.initialize(4);
    st::save(bl, path);
    check_same_values(bl, st::load_sliced_tree_linear<float>(path), st::dtype::f32);

    // No temporary file is left behind.
    std::size_t files = 0;
    for (const auto& e : std::filesystem::directory_iterator(dir)) {
        (void)e;
        ++files;
    }
    CHECK(files == 1);
    std::filesystem::remove_all(dir);
}

TEST_CASE("safetensors: BF16 rounds to nearest even", "[io][safetensors]") {
    treegate::dense<float> d(4, 1, false);
    d.weight()(0, 0) = 1.0f + std::ldexp(1.0f, -8);                            // tie, even is 1
    d.weight()(0, 1) = 1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20);  // above the tie
    d.weight()(0, 2) = 1.0f + 3 * std::ldexp(1.0f, -8);                        // tie, even is 1 + 2^-6
    d.weight()(0, 3) = -2.5f;                                                   // exact
    const bytes_t file = st::save_to_memory(d, st::dtype::bf16);
    treegate::dense<float> back(4, 1, false);
    st::load_into_from_memory(back, file.data(), file.size());
    CHECK(back.weight()(0, 0) == 1.0f);
    CHECK(back.weight()(0, 1) == 1.0f + std::ldexp(1.0f, -7));
    CHECK(back.weight()(0, 2) == 1.0f + std::ldexp(1.0f, -6));
    CHECK(back.weight()(0, 3) == -2.5f);
}

TEST_CASE("safetensors: tensors in any order and F64 data load into a float layer", "[io][safetensors]") {
    // The reference writer orders the data by dtype and name; offsets, not order, decide.
    const tl layer = base_layer();
    parts p = split(base_file());
    bytes_t data(p.data.begin() + 72, p.data.end());
    data.insert(data.end(), p.data.begin(), p.data.begin() + 72);
    p.header["bias"]["data_offsets"] = nlohmann::json::array({0, 24});
    p.header["weight"]["data_offsets"] = nlohmann::json::array({24, 96});
    tl back = base_layer(99);
    const bytes_t file = join(p.header, data);
    st::load_into_from_memory(back, file.data(), file.size());
    check_same_values(layer, back, st::dtype::f32);

    const bytes_t f64 = st::save_to_memory(layer, st::dtype::f64);
    tl back64 = base_layer(99);
    st::load_into_from_memory(back64, f64.data(), f64.size());
    check_same_values(layer, back64, st::dtype::f32);
}

// ---- broken files ---------------------------------------------------------------------------

TEST_CASE("safetensors: broken framing is rejected", "[io][safetensors][validation]") {
    const bytes_t good = base_file();
    SECTION("empty file") { CHECK_LOAD_FAILS(bytes_t{}, "is 0 bytes, too short"); }
    SECTION("shorter than the length field") { CHECK_LOAD_FAILS(bytes_t(7, 0), "is 7 bytes"); }
    SECTION("header length above the limit") {
        bytes_t f = good;
        f[4] = 0x10;  // 2^36 + ...
        CHECK_LOAD_FAILS(f, "exceeds the limit of 100000000");
    }
    SECTION("header length beyond the end of the file") {
        const std::string h = R"({"__metadata__":{"kind":"dense"}})";
        bytes_t f = join(h, {});
        f[0] = static_cast<unsigned char>(h.size() + 1);
        CHECK_LOAD_FAILS(f, "header length " + std::to_string(h.size() + 1), "exceeds the " + std::to_string(h.size()));
    }
    SECTION("truncated file") {
        bytes_t f = good;
        f.resize(f.size() - 4);
        CHECK_LOAD_FAILS(f, "tensor 'bias': data_offsets [72, 96] lie outside the data section of 92 bytes");
    }
    SECTION("zero-length header") { CHECK_LOAD_FAILS(join(std::string(), {}), "does not start with '{'"); }
    SECTION("header is not an object") { CHECK_LOAD_FAILS(join(std::string("[1, 2]"), {}), "does not start with '{'"); }
    SECTION("JSON syntax error") {
        CHECK_LOAD_FAILS(join(std::string(R"({"weight": {"dtype": "F32",)"), {}), "is not valid JSON");
    }
    SECTION("invalid UTF-8 in a name") {
        CHECK_LOAD_FAILS(join(std::string("{\"w\xff\": 1}"), {}), "is not valid JSON");
    }
    SECTION("nesting deeper than a header needs") {
        CHECK_LOAD_FAILS(join(std::string(R"({"a": {"b": [[1]]}})"), {}), "nests deeper than 3");
        CHECK_LOAD_FAILS(join(std::string(1000000, '[') , {}), "does not start with '{'");
        CHECK_LOAD_FAILS(join("{" + std::string(100000, '['), {}), "nests deeper than 3");
    }
    SECTION("trailing bytes after the tensors") {
        bytes_t f = good;
        f.push_back(0);
        CHECK_LOAD_FAILS(f, "cover 96 bytes but the data section holds 97");
    }
}

TEST_CASE("safetensors: broken header entries are rejected", "[io][safetensors][validation]") {
    const parts p = split(base_file());
    auto with = [&](auto edit) {
        parts q = p;
        edit(q);
        return join(q.header, q.data);
    };
    SECTION("duplicate tensor name") {
        const std::string h = p.header.dump();
        const std::string dup = h.substr(0, h.size() - 1) + R"(,"weight":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}})";
        CHECK_LOAD_FAILS(join(dup, p.data), "names 'weight' more than once");
    }
    SECTION("duplicate metadata key") {
        std::string h = p.header.dump();
        const std::string key = R"("__metadata__":{)";
        h.insert(h.find(key) + key.size(), R"("kind":"dense",)");
        CHECK_LOAD_FAILS(join(h, p.data), "names 'kind' more than once");
    }
    SECTION("entry is not an object") {
        CHECK_LOAD_FAILS(with([](parts& q) { q.header["weight"] = 5; }), "tensor 'weight' must be a JSON object");
    }
    SECTION("missing dtype") {
        CHECK_LOAD_FAILS(with([](parts& q) { q.header["bias"].erase("dtype"); }), "tensor 'bias' has no dtype");
    }
    SECTION("dtype not a string") {
        CHECK_LOAD_FAILS(with([](parts& q) { q.header["bias"]["dtype"] = 32; }), "tensor 'bias': dtype must be a string");
    }
    SECTION("unsupported dtype") {
        CHECK_LOAD_FAILS(with([](parts& q) { q.header["bias"]["dtype"] = "I32"; }), "tensor 'bias' has dtype \"I32\"");
    }
    SECTION("unexpected field") {
        CHECK_LOAD_FAILS(with([](parts& q) { q.header["bias"]["stride"] = 1; }), "tensor 'bias' has unexpected field 'stride'");
    }
    SECTION("missing shape") {
        CHECK_LOAD_FAILS(with([](parts& q) { q.header["bias"].erase("shape"); }), "tensor 'bias' has no shape");
    }
    SECTION("shape not an array") {
        CHECK_LOAD_FAILS(with([](parts& q) { q.header["bias"]["shape"] = "3x2"; }), "tensor 'bias': shape must be an array");
    }
    SECTION("negative dimension") {
        CHECK_LOAD_FAILS(with([](parts& q) { q.header["bias"]["shape"] = {-3, -2}; }), "tensor 'bias': shape must hold non-negative integers", "-3");
    }
    SECTION("fractional dimension") {
        CHECK_LOAD_FAILS(with([](parts& q) { q.header["bias"]["shape"] = {3, 2.0}; }), "tensor 'bias': shape must hold non-negative integers");
    }
    SECTION("shape product overflows") {
        CHECK_LOAD_FAILS(with([](parts& q) {
                             q.header["bias"]["shape"] = {std::uint64_t{1} << 32, std::uint64_t{1} << 32, 2};
                         }),
                         "tensor 'bias': the byte size of shape [4294967296, 4294967296, 2] overflows");
        CHECK_LOAD_FAILS(with([](parts& q) { q.header["bias"]["shape"] = {std::uint64_t{1} << 62, 2}; }),
                         "tensor 'bias': the byte size", "overflows");
    }
    SECTION("zero dimension hides no overflow") {
        CHECK_LOAD_FAILS(with([](parts& q) {
                             q.header["bias"]["shape"] = {std::uint64_t{1} << 40, std::uint64_t{1} << 40, 0};
                         }),
                         "overflows");
    }
    SECTION("missing data_offsets") {
        CHECK_LOAD_FAILS(with([](parts& q) { q.header["bias"].erase("data_offsets"); }), "tensor 'bias' has no data_offsets");
    }
    SECTION("data_offsets of the wrong length") {
        CHECK_LOAD_FAILS(with([](parts& q) { q.header["bias"]["data_offsets"] = nlohmann::json::array({72}); }),
                         "tensor 'bias': data_offsets must be an array [begin, end]");
    }
    SECTION("data_offsets negative") {
        CHECK_LOAD_FAILS(with([](parts& q) { q.header["bias"]["data_offsets"] = {-24, 0}; }),
                         "tensor 'bias': data_offsets must hold non-negative integers");
    }
    SECTION("data_offsets reversed") {
        CHECK_LOAD_FAILS(with([](parts& q) { q.header["bias"]["data_offsets"] = {96, 72}; }),
                         "tensor 'bias': data_offsets [96, 72] end before they begin");
    }
    SECTION("data_offsets beyond the data") {
        CHECK_LOAD_FAILS(with([](parts& q) { q.header["bias"]["data_offsets"] = {72, 120}; }),
                         "tensor 'bias': data_offsets [72, 120] lie outside the data section of 96 bytes");
        CHECK_LOAD_FAILS(with([](parts& q) {
                             q.header["bias"]["data_offsets"] = {72, std::numeric_limits<std::uint64_t>::max()};
                         }),
                         "tensor 'bias': data_offsets [72, 18446744073709551615] lie outside");
    }
    SECTION("byte count disagrees with the shape") {
        CHECK_LOAD_FAILS(with([](parts& q) { q.header["bias"]["shape"] = {3, 3}; }),
                         "tensor 'bias': shape [3, 3] of F32 needs 36 bytes but data_offsets [72, 96] span 24");
    }
    SECTION("overlapping tensors") {
        CHECK_LOAD_FAILS(with([](parts& q) {
                             q.header["bias"]["data_offsets"] = {48, 72};
                             q.data.resize(72);
                         }),
                         "tensor 'bias' at [48, 72) overlaps tensor 'weight' which ends at 72");
    }
    SECTION("gap between tensors") {
        CHECK_LOAD_FAILS(with([](parts& q) {
                             q.header["bias"]["data_offsets"] = {76, 100};
                             q.data.resize(100);
                         }),
                         "data bytes [72, 76) belong to no tensor (next is 'bias')");
    }
    SECTION("data not starting at offset 0") {
        CHECK_LOAD_FAILS(with([](parts& q) {
                             q.header["weight"]["data_offsets"] = {4, 76};
                             q.header["bias"]["data_offsets"] = {76, 100};
                             q.data.resize(100);
                         }),
                         "data bytes [0, 4) belong to no tensor (next is 'weight')");
    }
}

TEST_CASE("safetensors: tensors that do not fit the configuration are rejected", "[io][safetensors][validation]") {
    const parts p = split(base_file());
    auto with = [&](auto edit) {
        parts q = p;
        edit(q);
        return join(q.header, q.data);
    };
    SECTION("missing tensor") {
        CHECK_LOAD_FAILS(with([](parts& q) {
                             q.header.erase("bias");
                             q.data.resize(72);
                         }),
                         "tensor 'bias' is missing (expected shape [3, 2])");
    }
    SECTION("unexpected tensor") {
        CHECK_LOAD_FAILS(with([](parts& q) {
                             q.header["extra"] = {{"dtype", "F32"},
                                                 {"shape", nlohmann::json::array({1})},
                                                 {"data_offsets", nlohmann::json::array({96, 100})}};
                             q.data.resize(100);
                         }),
                         "unexpected tensor 'extra' (shape [1])");
    }
    SECTION("wrong shape") {
        CHECK_LOAD_FAILS(with([](parts& q) { q.header["bias"]["shape"] = {2, 3}; }),
                         "tensor 'bias' has shape [2, 3], expected [3, 2]");
    }
    SECTION("NaN weight") {
        CHECK_LOAD_FAILS(with([](parts& q) { put_f32(q.data, 4 * 5, std::numeric_limits<float>::quiet_NaN()); }),
                         "tensor 'weight' element 5 of 18 is NaN");
    }
    SECTION("infinite bias") {
        CHECK_LOAD_FAILS(with([](parts& q) { put_f32(q.data, 72 + 4, -std::numeric_limits<float>::infinity()); }),
                         "tensor 'bias' element 1 of 6 is infinite");
    }
    SECTION("F64 value too large for float") {
        treegate::tree_linear<double> big(3, 2, 1, tree_mode::path_sum, gating::from_input({0}));
        big.weight(2)(1, 0) = 1e300;
        const bytes_t f = st::save_to_memory(big, st::dtype::f64);
        CHECK_LOAD_FAILS(f, "tensor 'weight' element 15", "overflows float");
    }
    SECTION("dtype of a different width than the data") {
        CHECK_LOAD_FAILS(with([](parts& q) { q.header["bias"]["dtype"] = "F64"; }),
                         "tensor 'bias': shape [3, 2] of F64 needs 48 bytes but data_offsets [72, 96] span 24");
    }
}

TEST_CASE("safetensors: broken or mismatched metadata is rejected", "[io][safetensors][validation]") {
    const parts p = split(base_file());
    auto meta = [&](const std::string& key, const nlohmann::json& value) {
        parts q = p;
        if (value.is_null())
            q.header["__metadata__"].erase(key);
        else
            q.header["__metadata__"][key] = value;
        return join(q.header, q.data);
    };
    SECTION("no __metadata__") {
        parts q = p;
        q.header.erase("__metadata__");
        CHECK_LOAD_FAILS(join(q.header, q.data), "has no __metadata__", "'kind' is missing");
    }
    SECTION("__metadata__ not an object") {
        parts q = p;
        q.header["__metadata__"] = nlohmann::json::array({1});
        CHECK_LOAD_FAILS(join(q.header, q.data), "__metadata__ must be a JSON object, found array");
    }
    SECTION("metadata value not a string") { CHECK_LOAD_FAILS(meta("depth", 1), "metadata 'depth' must be a string, found number 1"); }
    SECTION("kind missing") { CHECK_LOAD_FAILS(meta("kind", nullptr), "metadata 'kind' is missing"); }
    SECTION("other kind") { CHECK_LOAD_FAILS(meta("kind", "dense"), "holds a \"dense\" layer, not a tree_linear"); }
    SECTION("depth not an integer") { CHECK_LOAD_FAILS(meta("depth", "1.0"), "metadata 'depth' is \"1.0\", not a non-negative integer"); }
    SECTION("depth negative") { CHECK_LOAD_FAILS(meta("depth", "-1"), "metadata 'depth' is \"-1\""); }
    SECTION("depth too large") { CHECK_LOAD_FAILS(meta("depth", "31"), "metadata 'depth' is 31, outside [0, 30]"); }
    SECTION("size absurd") { CHECK_LOAD_FAILS(meta("in", "99999999999999999999"), "metadata 'in' is \"99999999999999999999\""); }
    SECTION("size zero") { CHECK_LOAD_FAILS(meta("out", "0"), "metadata 'out' is 0, outside [1, "); }
    SECTION("bad flag") { CHECK_LOAD_FAILS(meta("has_bias", "yes"), "metadata 'has_bias' is \"yes\", expected \"true\" or \"false\""); }
    SECTION("unknown mode") { CHECK_LOAD_FAILS(meta("mode", "sum"), "metadata 'mode' is \"sum\", expected one of path_sum, leaf_only"); }
    SECTION("gating index outside the input") { CHECK_LOAD_FAILS(meta("gating", "3"), "metadata 'gating' is 3, outside [0, 2]"); }
    SECTION("gating count differs from depth") { CHECK_LOAD_FAILS(meta("gating", "0,1"), "metadata 'gating' lists 2 indices for depth 1"); }
    SECTION("gating malformed") { CHECK_LOAD_FAILS(meta("gating", "0,"), "metadata 'gating' is \"\""); }
    SECTION("configuration differs from the target layer") {
        CHECK_LOAD_FAILS(meta("gating", "external"), "does not match the layer", "gating is \"external\" in the file, \"0\" in the layer");
        treegate::tree_linear<float> deeper(3, 2, 2, tree_mode::path_sum, gating::from_input({0, 1}));
        const bytes_t f = st::save_to_memory(deeper);
        CHECK_LOAD_FAILS(f, "depth is 2 in the file, 1 in the layer");
        treegate::tree_linear<float> flat(3, 2, 1, tree_mode::leaf_only, gating::from_input({0}));
        const bytes_t g = st::save_to_memory(flat);
        CHECK_LOAD_FAILS(g, "mode is leaf_only in the file, path_sum in the layer");
        treegate::tree_linear<float> nobias(3, 2, 1, tree_mode::path_sum, gating::from_input({0}), false);
        const bytes_t h = st::save_to_memory(nobias);
        CHECK_LOAD_FAILS(h, "has_bias is false in the file, true in the layer");
    }
    SECTION("fixed sizes that the file does not have") {
        const bytes_t f = st::save_to_memory(treegate::dense<float>(4, 2));
        TG_CHECK_THROWS_WITH(file_error, ([&] {
                                 treegate::dense<float, 3, 2> fixed;
                                 st::load_into_from_memory(fixed, f.data(), f.size());
                             }()),
                             "in is 4 in the file, 3 in the layer");
        TG_CHECK_THROWS_WITH(file_error, (st::load_from_memory<treegate::dense<float, 3, 2>>(f.data(), f.size())),
                             "cannot be built", "input size is fixed at 3");
    }
    SECTION("sequential layer count and kinds") {
        using model_t = treegate::sequential<treegate::dense<float>, treegate::activation_layer<float>>;
        model_t model(treegate::dense<float>(2, 3), treegate::activation_layer<float>(activation::relu, 3));
        parts q = split(st::save_to_memory(model));
        q.header["__metadata__"]["layers"] = "3";
        const bytes_t f1 = join(q.header, q.data);
        TG_CHECK_THROWS_WITH(file_error, st::load_into_from_memory(model, f1.data(), f1.size()),
                             "metadata 'layers' is 3 but the model has 2 layers");
        q.header["__metadata__"]["layers"] = "2";
        q.header["__metadata__"]["1.kind"] = "dense";
        const bytes_t f2 = join(q.header, q.data);
        TG_CHECK_THROWS_WITH(file_error, st::load_into_from_memory(model, f2.data(), f2.size()),
                             "metadata '1.kind' is \"dense\" but the model expects \"activation\"");
        q.header["__metadata__"]["1.kind"] = "activation";
        q.header["__metadata__"]["1.activation"] = "gelu";
        const bytes_t f3 = join(q.header, q.data);
        TG_CHECK_THROWS_WITH(file_error, st::load_into_from_memory(model, f3.data(), f3.size()),
                             "1.activation is gelu in the file, relu in the layer");
    }
}

TEST_CASE("safetensors: plain tensors for test vectors", "[io][safetensors]") {
    const auto dir = scratch_dir("tensors");
    const std::string path = (dir / "io.safetensors").string();
    st::tensor_map<double> io;
    io["x"] = {{2, 3}, {1.0, -2.0, 1e-300, 0.1, -0.0, 7.0}};
    io["empty"] = {{0, 4}, {}};
    st::write_tensors(io, path, st::dtype::f64, {{"note", "test vectors"}});
    const auto back = st::read_tensors<double>(path);
    REQUIRE(back.size() == 2);
    CHECK(back.at("x").shape == io["x"].shape);
    CHECK(std::memcmp(back.at("x").values.data(), io["x"].values.data(), 6 * sizeof(double)) == 0);
    CHECK(back.at("empty").values.empty());
    CHECK(split(read_all(path)).header["__metadata__"]["note"] == "test vectors");

    io["bad"] = {{2, 2}, {1.0}};
    TG_CHECK_THROWS_WITH(file_error, st::write_tensors(io, path), "tensor 'bad' has 1 values for shape [2, 2]");
    CHECK(st::read_tensors<double>(path).size() == 2);
    std::filesystem::remove_all(dir);
}

TEST_CASE("safetensors: a failed load leaves the target unchanged", "[io][safetensors][validation]") {
    tl target = base_layer(1);
    const bytes_t before = st::save_to_memory(target);
    parts q = split(st::save_to_memory(base_layer(2)));
    put_f32(q.data, 72 + 20, std::numeric_limits<float>::quiet_NaN());  // the last bias value
    const bytes_t f = join(q.header, q.data);
    TG_CHECK_THROWS_WITH(file_error, st::load_into_from_memory(target, f.data(), f.size()), "tensor 'bias' element 5");
    CHECK(st::save_to_memory(target) == before);

    const bytes_t good = st::save_to_memory(base_layer(2));
    st::load_into_from_memory(target, good.data(), good.size());
    CHECK(st::save_to_memory(target) == good);
}

TEST_CASE("safetensors: missing and unreadable files", "[io][safetensors][validation]") {
    const auto dir = scratch_dir("missing");
    tl layer = base_layer();
    TG_CHECK_THROWS_WITH(file_error, st::load_into(layer, (dir / "nope.safetensors").string()), "nope.safetensors",
                         "cannot open");
    TG_CHECK_THROWS_WITH(file_error, st::load_into(layer, dir.string()), "is not a regular file");
    std::filesystem::remove_all(dir);
}

TEST_CASE("safetensors: a failed save leaves the old file intact", "[io][safetensors][atomic]") {
    const auto dir = scratch_dir("atomic");
    const std::string path = (dir / "model.safetensors").string();
    st::save(base_layer(1), path);
    const bytes_t before = read_all(path);
    REQUIRE(before == st::save_to_memory(base_layer(1)));

    SECTION("the temporary file cannot be created") {
        const std::string tmp = path + ".tmp." + std::to_string(static_cast<long long>(::getpid()));
        std::filesystem::create_directory(tmp);  // occupies the temporary's name
        TG_CHECK_THROWS_WITH(file_error, st::save(base_layer(2), path), "cannot create the temporary file");
        CHECK(read_all(path) == before);
        std::filesystem::remove(tmp);
    }
    SECTION("the rename fails") {
        const std::string target = (dir / "occupied").string();
        std::filesystem::create_directories(dir / "occupied" / "child");
        TG_CHECK_THROWS_WITH(file_error, st::save(base_layer(2), target), "cannot rename over the target");
        CHECK(read_all(path) == before);
        CHECK(!std::filesystem::exists(target + ".tmp." + std::to_string(static_cast<long long>(::getpid()))));
    }
    SECTION("the directory does not exist") {
        TG_CHECK_THROWS_WITH(file_error, st::save(base_layer(2), (dir / "no" / "such.safetensors").string()),
                             "cannot create the temporary file");
        CHECK(read_all(path) == before);
    }
    SECTION("a value that does not fit the dtype") {
        treegate::dense<double> d(1, 1);
        d.weight()(0, 0) = 1e300;
        TG_CHECK_THROWS_WITH(file_error, st::save(d, path), "tensor 'weight' element 0", "does not fit F32");
        CHECK(read_all(path) == before);
    }
    SECTION("a successful save replaces the file") {
        st::save(base_layer(2), path);
        CHECK(read_all(path) == st::save_to_memory(base_layer(2)));
    }
    std::filesystem::remove_all(dir);
}

#endif  // TREEGATE_HAS_IO
