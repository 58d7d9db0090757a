// safetensors dtypes beyond F32/F64/BF16 (F16 both ways, I64/I32 read only where an integer is
// asked for) and the PyTorch layouts of io/pytorch.hpp against naive oracles on the file's tensors.
#include "test_support.hpp"

// io/ needs nlohmann-json and zlib (see test_io_safetensors.cpp).
#if defined(TREEGATE_HAS_IO)

#include "io_test_support.hpp"

#include <treegate/io/pytorch.hpp>
#include <treegate/io/safetensors.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace st = treegate::safetensors;
namespace tp = treegate::pytorch;
using treegate::activation;
using treegate::file_error;
using treegate::index_t;
using tg_test::bytes_t;

namespace {

/// A file written byte by byte, the way another writer (PyTorch) would: any dtype, no metadata.
struct raw_file {
    nlohmann::json header = nlohmann::json::object();
    bytes_t data;

    void add(const std::string& name, const char* dtype, std::vector<std::uint64_t> shape, const bytes_t& bytes) {
        header[name] = {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {data.size(), data.size() + bytes.size()}}};
        data.insert(data.end(), bytes.begin(), bytes.end());
    }
    void add_f32(const std::string& name, std::vector<std::uint64_t> shape, const std::vector<float>& v) {
        bytes_t b(v.size() * 4);
        for (std::size_t k = 0; k < v.size(); ++k) tg_test::put_f32(b, 4 * k, v[k]);
        add(name, "F32", std::move(shape), b);
    }
    void add_int(const std::string& name, const char* dtype, int bytes, std::int64_t v) {
        bytes_t b;
        const auto u = static_cast<std::uint64_t>(v);
        for (int k = 0; k < bytes; ++k) b.push_back(static_cast<unsigned char>((u >> (8 * k)) & 0xffu));
        add(name, dtype, {}, b);
    }
    std::string save(const std::string& file) const {
        const std::string path = (tg_test::scratch_dir("dtypes") / file).string();
        const bytes_t all = tg_test::join(header, data);
        std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(all.data()), static_cast<std::streamsize>(all.size()));
        return path;
    }
};

bytes_t halves(const std::vector<std::uint16_t>& bits) {
    bytes_t b;
    for (const auto h : bits) {
        b.push_back(static_cast<unsigned char>(h & 0xffu));
        b.push_back(static_cast<unsigned char>(h >> 8));
    }
    return b;
}

std::vector<float> random_floats(std::size_t n, std::mt19937& g) {
    std::vector<float> v(n);
    for (auto& x : v) x = static_cast<float>(tg_test::uniform(g));
    return v;
}

template <class F>
std::string error_of(F&& f) {
    try {
        f();
    } catch (const file_error& e) {
        return e.what();
    }
    return "(no file_error)";
}

}  // namespace

TEST_CASE("F16 tensors decode exactly: normals, subnormals, zeros; NaN and infinities are refused") {
    // Values from the IEEE 754 binary16 definition, independent of the decoder.
    const std::vector<std::pair<std::uint16_t, double>> known = {
        {0x3c00, 1.0},  {0xc000, -2.0}, {0x0001, std::ldexp(1.0, -24)}, {0x03ff, 1023 * std::ldexp(1.0, -24)},
        {0x0400, std::ldexp(1.0, -14)}, {0x7bff, 65504.0}, {0x8000, -0.0}, {0x3555, 1365.0 / 4096.0}};
    std::vector<std::uint16_t> bits;
    for (const auto& k : known) bits.push_back(k.first);
    raw_file f;
    f.add("t", "F16", {bits.size()}, halves(bits));
    const auto bytes = tg_test::join(f.header, f.data);
    const auto d = st::read_tensors_from_memory<double>(bytes.data(), bytes.size()).at("t").values;
    REQUIRE(d.size() == known.size());
    for (std::size_t k = 0; k < known.size(); ++k) {
        CHECK(d[k] == known[k].second);
        CHECK(std::signbit(d[k]) == std::signbit(known[k].second));
    }
    for (const std::uint16_t bad : {std::uint16_t{0x7c00}, std::uint16_t{0xfc00}, std::uint16_t{0x7e00}}) {
        raw_file g;
        g.add("w", "F16", {2}, halves({0x3c00, bad}));
        const auto b = tg_test::join(g.header, g.data);
        const std::string what = error_of([&] { st::read_tensors_from_memory<float>(b.data(), b.size()); });
        CHECK(what.find("tensor 'w' element 1 of 2 is") != std::string::npos);
        CHECK(what.find(bad == 0x7e00 ? "NaN" : "infinite") != std::string::npos);
    }
}

TEST_CASE("F16 writing: every finite half round-trips bit for bit; doubles round once to the nearest half") {
    // All finite halves, in order of value for the positive ones: the oracle of the rounding.
    std::vector<std::uint16_t> all;
    for (std::uint32_t h = 0; h < 0x10000u; ++h)
        if ((h & 0x7c00u) != 0x7c00u) all.push_back(static_cast<std::uint16_t>(h));
    raw_file f;
    f.add("t", "F16", {all.size()}, halves(all));
    const auto bytes = tg_test::join(f.header, f.data);
    const auto values = st::read_tensors_from_memory<double>(bytes.data(), bytes.size()).at("t").values;
    const auto saved = st::detail::encode<double>({{"t", {values.size()}, values}}, {}, st::dtype::f16, "<test>");
    const auto back = st::read_tensors_from_memory<double>(saved.data(), saved.size()).at("t").values;
    REQUIRE(back.size() == values.size());
    std::size_t same = 0;
    for (std::size_t k = 0; k < values.size(); ++k)
        same += back[k] == values[k] && std::signbit(back[k]) == std::signbit(values[k]);
    CHECK(same == values.size());

    std::vector<double> positive;  // 0 and the positive finite halves, ascending
    for (std::uint16_t h = 0; h < 0x7c00; ++h) positive.push_back(values[h]);
    std::mt19937 g(7);
    std::vector<double> inputs = {65519.99, -65519.0, 1.0 + std::ldexp(1.0, -11),  // a tie: to even, 1
                                  1.0 + 3 * std::ldexp(1.0, -11), std::ldexp(1.0, -25), 3 * std::ldexp(1.0, -26),
                                  std::ldexp(1.0, -26), 1e-30};
    for (int k = 0; k < 2000; ++k) inputs.push_back(std::ldexp(tg_test::uniform(g), static_cast<int>(g() % 40) - 26));
    std::vector<double> expected;
    for (const double x : inputs) {
        const double a = std::fabs(x);
        const auto hi = std::lower_bound(positive.begin(), positive.end(), a);
        double r;
        if (hi == positive.end()) {  // beyond 65504 but below the midpoint 65520
            r = positive.back();
        } else if (hi == positive.begin() || *hi == a) {
            r = *hi;
        } else {
            const auto lo = hi - 1;
            const double dl = a - *lo, dh = *hi - a;
            const bool lo_even = ((lo - positive.begin()) % 2) == 0;
            r = dl < dh || (dl == dh && lo_even) ? *lo : *hi;
        }
        expected.push_back(std::copysign(r, x));
    }
    const auto out = st::detail::encode<double>({{"x", {inputs.size()}, inputs}}, {}, st::dtype::f16, "<test>");
    const auto got = st::read_tensors_from_memory<double>(out.data(), out.size()).at("x").values;
    REQUIRE(got.size() == expected.size());
    std::size_t nearest = 0;
    for (std::size_t k = 0; k < got.size(); ++k) {
        const bool ok = got[k] == expected[k] && std::signbit(got[k]) == std::signbit(expected[k]);
        if (!ok) UNSCOPED_INFO("input " << inputs[k] << " gave " << got[k] << ", nearest is " << expected[k]);
        nearest += ok;
    }
    CHECK(nearest == got.size());
    CHECK(got[0] == 65504.0);
    CHECK(got[2] == 1.0);

    // 65520 is halfway between 65504 and 2^16: it rounds to even, to infinity, and is refused.
    const std::string what = error_of([&] {
        st::detail::encode<double>({{"w", {2}, {1.0, 65520.0}}}, {}, st::dtype::f16, "<test>");
    });
    CHECK(what.find("tensor 'w' element 1 (65520) overflows F16") != std::string::npos);
    // Layers save as F16 and load back the rounded weights.
    treegate::dense<float> layer(3, 2);
    layer.initialize(5);
    const auto file = st::save_to_memory(layer, st::dtype::f16);
    const auto loaded = st::load_from_memory<treegate::dense<float>>(file.data(), file.size());
    for (index_t i = 0; i < 2; ++i)
        for (index_t j = 0; j < 3; ++j) {
            const float w = layer.weight()(i, j), l = loaded.weight()(i, j);
            CHECK(std::fabs(l - w) <= std::fabs(w) * std::ldexp(1.0f, -11));
        }
}

TEST_CASE("integer tensors: never weights, never written; refused with the tensor's name and dtype") {
    // A treegate file whose weight claims I32 (as wide as F32, so every size still agrees).
    treegate::dense<float> layer(3, 2);
    auto parts = tg_test::split(st::save_to_memory(layer));
    parts.header["weight"]["dtype"] = "I32";
    const auto file = tg_test::join(parts.header, parts.data);
    const std::string what = error_of([&] { st::load_into_from_memory(layer, file.data(), file.size()); });
    CHECK(what.find("tensor 'weight' has dtype \"I32\" (integers, shape [2, 3])") != std::string::npos);
    raw_file f;
    f.add("weight", "I64", {2, 3}, bytes_t(48, 0));
    const std::string path = f.save("int_weight.safetensors");
    CHECK(error_of([&] { st::read_tensors<float>(path); }).find("has dtype \"I64\" (integers") != std::string::npos);
    CHECK(error_of([&] { st::save_to_memory(layer, st::dtype::i64); }).find("dtype I64 is read where an integer") !=
          std::string::npos);
    raw_file u;
    u.add("x", "U8", {1}, bytes_t(1, 0));
    const auto b = tg_test::join(u.header, u.data);
    CHECK(error_of([&] { st::read_tensors_from_memory<float>(b.data(), b.size()); }).find("has dtype \"U8\"") !=
          std::string::npos);
}

namespace {

struct fff_tensors {
    int depth;
    index_t in, width, out;
    std::vector<float> nw, nb, w1, b1, w2, b2;
};

fff_tensors random_fff(int depth, index_t in, index_t width, index_t out, std::mt19937& g) {
    const auto leaves = static_cast<std::size_t>(1) << depth, nodes = leaves - 1;
    const auto i = static_cast<std::size_t>(in), w = static_cast<std::size_t>(width), o = static_cast<std::size_t>(out);
    return {depth, in, width, out,
            random_floats(nodes * i, g), random_floats(nodes, g), random_floats(leaves * i * w, g),
            random_floats(leaves * w, g), random_floats(leaves * w * o, g), random_floats(leaves * o, g)};
}

raw_file fff_file(const fff_tensors& t, const std::string& p = "") {
    const auto leaves = std::uint64_t{1} << t.depth, nodes = leaves - 1;
    const auto in = static_cast<std::uint64_t>(t.in), w = static_cast<std::uint64_t>(t.width),
               out = static_cast<std::uint64_t>(t.out);
    raw_file f;
    f.add_int(p + "depth", "I64", 8, t.depth);
    f.add_f32(p + "node_weights", {nodes, in}, t.nw);
    f.add_f32(p + "node_biases", {nodes, 1}, t.nb);
    f.add_f32(p + "w1s", {leaves, in, w}, t.w1);
    f.add_f32(p + "b1s", {leaves, w}, t.b1);
    f.add_f32(p + "w2s", {leaves, w, out}, t.w2);
    f.add_f32(p + "b2s", {leaves, out}, t.b2);
    return f;
}

/// The package's eval_forward transcribed: right iff w.x + b >= 0 (or > 0 when `strict`), then
/// act(x w1s[l] + b1s[l]) w2s[l] at the leaf; b2s unused.
Eigen::VectorXd fff_oracle(const fff_tensors& t, const Eigen::VectorXd& x, activation act, bool strict = false) {
    std::size_t node = 0;
    const auto in = static_cast<std::size_t>(t.in), w = static_cast<std::size_t>(t.width), out = static_cast<std::size_t>(t.out);
    for (int level = 0; level < t.depth; ++level) {
        double s = t.nb[node];
        for (std::size_t i = 0; i < in; ++i) s += double(t.nw[node * in + i]) * x(static_cast<index_t>(i));
        node = 2 * node + 1 + ((strict ? s > 0 : s >= 0) ? 1 : 0);
    }
    const std::size_t leaf = node - ((std::size_t{1} << t.depth) - 1);
    Eigen::VectorXd y = Eigen::VectorXd::Zero(t.out);
    for (std::size_t j = 0; j < w; ++j) {
        double h = t.b1[leaf * w + j];
        for (std::size_t i = 0; i < in; ++i) h += double(t.w1[(leaf * in + i) * w + j]) * x(static_cast<index_t>(i));
        h = tg_test::oracle_act(act, h);
        for (std::size_t o = 0; o < out; ++o) y(static_cast<index_t>(o)) += h * double(t.w2[(leaf * w + j) * out + o]);
    }
    return y;
}

}  // namespace

TEST_CASE("load_fastfeedforward computes the package's eval output, depth 0 to 4, odd sizes, with a prefix") {
    std::mt19937 g(11);
    for (int depth = 0; depth <= 4; ++depth) {
        const index_t in = tg_test::uniform_index(g, 1, 9), width = tg_test::uniform_index(g, 1, 5),
                      out = tg_test::uniform_index(g, 1, 4);
        const auto t = random_fff(depth, in, width, out, g);
        raw_file f = fff_file(t, "blocks.2.fff.");
        f.add_f32("blocks.2.fffx", {1}, {1.0f});  // outside the prefix ("blocks.2.fff."): ignored
        f.add_f32("head.weight", {2}, {1.0f, 2.0f});
        f.add_f32("blocks.2.fff.node_usage", {(std::uint64_t{1} << depth) - 1}, std::vector<float>((std::size_t{1} << depth) - 1, 3.0f));
        const std::string path = f.save("fff.safetensors");
        tp::load_options opt;
        opt.prefix = "blocks.2.fff.";
        opt.act = depth % 2 ? activation::relu : activation::gelu;
        for (const bool exact : {true, false}) {
            opt.exact_ties = exact;
            const auto layer = tp::load_fastfeedforward<double>(path, opt);
            CHECK(layer.mode() == treegate::tree_mode::leaf_only);
            CHECK(!layer.has_output_bias());
            const Eigen::MatrixXd X = tg_test::random_matrix<double>(in, 40, g);
            const Eigen::MatrixXd Y = layer.forward_batch(X);
            double worst = 0;
            for (index_t e = 0; e < X.cols(); ++e)
                worst = std::max(worst, (Y.col(e) - fff_oracle(t, X.col(e), opt.act)).cwiseAbs().maxCoeff());
            CHECK(worst < 1e-12);
        }
        const auto single = tp::load_fastfeedforward<float>(path, opt);
        Eigen::VectorXf y(out);
        const Eigen::VectorXd x = tg_test::random_matrix<double>(in, 1, g).col(0);
        single.forward(x.cast<float>(), y);
        CHECK((y.cast<double>() - fff_oracle(t, x, opt.act)).cwiseAbs().maxCoeff() < 1e-4);
    }
}

TEST_CASE("load_fastfeedforward: a score of exactly zero goes right as in the package, unless exact_ties is off") {
    std::mt19937 g(3);
    auto t = random_fff(2, 3, 2, 2, g);
    std::fill(t.nb.begin(), t.nb.end(), 0.0f);  // x = 0 gives every node the score 0
    const std::string path = fff_file(t).save("fff_ties.safetensors");
    const Eigen::VectorXd zero = Eigen::VectorXd::Zero(3);
    const Eigen::VectorXd right = fff_oracle(t, zero, activation::relu), left = fff_oracle(t, zero, activation::relu, true);
    REQUIRE((right - left).cwiseAbs().maxCoeff() > 1e-6);  // the two leaves differ
    tp::load_options opt;
    const auto exact = tp::load_fastfeedforward<double>(path, opt);
    Eigen::VectorXd y(2);
    exact.forward(zero, y);
    CHECK((y - right).cwiseAbs().maxCoeff() < 1e-12);
    opt.exact_ties = false;
    const auto plain = tp::load_fastfeedforward<double>(path, opt);
    plain.forward(zero, y);
    CHECK((y - left).cwiseAbs().maxCoeff() < 1e-12);
}

TEST_CASE("load_fastfeedforward: the package's rule as the layer's tie rule, tensors in place; leaf_bias adds b2s",
          "[tie_rule][leaf_bias]") {
    std::mt19937 g(17);
    for (int depth = 0; depth <= 3; ++depth) {
        const index_t in = tg_test::uniform_index(g, 1, 6), width = tg_test::uniform_index(g, 1, 4),
                      out = tg_test::uniform_index(g, 1, 3);
        auto t = random_fff(depth, in, width, out, g);
        if (depth > 0) t.nb[0] = 0.0f;  // x = 0 ties at the root
        const std::string path = fff_file(t).save("fff_b2s.safetensors");
        tp::load_options opt;
        opt.leaf_bias = true;
        const auto layer = tp::load_fastfeedforward<double>(path, opt);
        CHECK(layer.tie() == treegate::tie_rule::greater_equal);
        CHECK(layer.has_leaf_bias());
        CHECK_FALSE(tp::load_fastfeedforward<double>(path).has_leaf_bias());
        opt.exact_ties = false;
        CHECK(tp::load_fastfeedforward<double>(path, opt).tie() == treegate::tie_rule::greater);
        const auto leaves = std::size_t{1} << depth;
        for (std::size_t n = 0; n + 1 < leaves; ++n) {  // router n is the file's node n
            CHECK(layer.router_bias(0, static_cast<index_t>(n)) == double(t.nb[n]));
            CHECK(layer.router_weight(0, static_cast<index_t>(n))(0) == double(t.nw[n * static_cast<std::size_t>(in)]));
        }
        Eigen::MatrixXd X = tg_test::random_matrix<double>(in, 30, g);
        X.col(0).setZero();
        const Eigen::MatrixXd Y = layer.forward_batch(X);
        for (index_t e = 0; e < X.cols(); ++e) {
            // The training path's leaf term: the eval output plus b2s of the leaf.
            std::size_t node = 0;
            for (int level = 0; level < depth; ++level) {
                double s = t.nb[node];
                for (index_t i = 0; i < in; ++i) s += double(t.nw[node * static_cast<std::size_t>(in) + static_cast<std::size_t>(i)]) * X(i, e);
                node = 2 * node + 1 + (s >= 0 ? 1 : 0);
            }
            const std::size_t leaf = node - (leaves - 1);
            Eigen::VectorXd want = fff_oracle(t, X.col(e), activation::relu);
            for (index_t o = 0; o < out; ++o) want(o) += double(t.b2[leaf * static_cast<std::size_t>(out) + static_cast<std::size_t>(o)]);
            CHECK((Y.col(e) - want).cwiseAbs().maxCoeff() < 1e-12);
        }
    }
}

TEST_CASE("load_fastfeedforward checks every tensor's name, shape and dtype") {
    std::mt19937 g(5);
    const auto t = random_fff(2, 4, 3, 2, g);
    auto message = [](const raw_file& f) {
        const std::string path = f.save("fff_bad.safetensors");
        return error_of([&] { tp::load_fastfeedforward<float>(path); });
    };
    raw_file missing = fff_file(t);
    missing.header.erase("b1s");
    missing.data.resize(missing.data.size());  // the data of b1s no longer belongs to a tensor
    CHECK(message(missing).find("belong to no tensor") != std::string::npos);
    {
        raw_file f;
        raw_file full = fff_file(t);
        for (const auto& item : full.header.items())
            if (item.key() != "b1s") {
                const auto b = item.value()["data_offsets"][0].get<std::size_t>(), e = item.value()["data_offsets"][1].get<std::size_t>();
                f.add(item.key(), item.value()["dtype"].get<std::string>().c_str(), item.value()["shape"].get<std::vector<std::uint64_t>>(),
                      bytes_t(full.data.begin() + static_cast<std::ptrdiff_t>(b), full.data.begin() + static_cast<std::ptrdiff_t>(e)));
            }
        CHECK(message(f).find("fastfeedforward FFF: tensor 'b1s' is missing") != std::string::npos);
    }
    raw_file shape = fff_file(t);
    shape.header["node_biases"]["shape"] = {1, 3};
    CHECK(message(shape).find("tensor 'node_biases' has shape [1, 3], expected [3, 1]") != std::string::npos);
    raw_file extra = fff_file(t);
    extra.add_f32("gate", {1}, {0.0f});
    CHECK(message(extra).find("unexpected tensor 'gate' (shape [1])") != std::string::npos);
    raw_file float_depth = fff_file(t);
    float_depth.header["depth"]["dtype"] = "F64";
    CHECK(message(float_depth).find("tensor 'depth' (the tree depth) has dtype F64; expected I64 or I32") != std::string::npos);
    raw_file int_weight = fff_file(t);
    int_weight.header["b2s"]["dtype"] = "I32";
    CHECK(message(int_weight).find("tensor 'b2s' has dtype \"I32\" (integers") != std::string::npos);
    raw_file deep = fff_file(t);
    deep.header.erase("depth");
    deep.data.erase(deep.data.begin(), deep.data.begin() + 8);
    for (auto& item : deep.header.items()) {
        auto& off = item.value()["data_offsets"];
        off = {off[0].get<std::size_t>() - 8, off[1].get<std::size_t>() - 8};
    }
    deep.add_int("depth", "I32", 4, 3);  // an I32 depth is read; 3 does not fit the shapes of depth 2
    CHECK(message(deep).find("tensor 'w1s' has shape [4, 4, 3], expected [8, 4, 3]") != std::string::npos);
    raw_file nan = fff_file(t);
    tg_test::put_f32(nan.data, nan.header["w2s"]["data_offsets"][0].get<std::size_t>() + 4, std::nanf(""));
    CHECK(message(nan).find("tensor 'w2s' element 1 of 24 is NaN") != std::string::npos);
}

namespace {

/// UltraFastBERT's layer from its formula: per tree, walk from the root; every node n on the
/// path adds gelu(z_n) W_out[:, t N + n] with z_n = W_in[t N + n] . x + b[t N + n], and goes
/// right iff z_n > 0.
Eigen::VectorXd ufb_oracle(const std::vector<float>& W, const std::vector<float>& B, const std::vector<float>& O,
                           index_t K, int D, index_t out, const Eigen::VectorXd& x) {
    const index_t N = (index_t{2} << D) - 1, in = x.size(), rows = K * N;
    Eigen::VectorXd y = Eigen::VectorXd::Zero(out);
    for (index_t k = 0; k < K; ++k) {
        index_t n = 0;
        for (int level = 0; level <= D; ++level) {
            const index_t r = k * N + n;
            double z = B[static_cast<std::size_t>(r)];
            for (index_t i = 0; i < in; ++i) z += double(W[static_cast<std::size_t>(r * in + i)]) * x(i);
            const double h = tg_test::oracle_act(activation::gelu, z);
            for (index_t o = 0; o < out; ++o) y(o) += h * double(O[static_cast<std::size_t>(o * rows + r)]);
            n = 2 * n + 1 + (z > 0 ? 1 : 0);
        }
    }
    return y;
}

}  // namespace

TEST_CASE("load_ultrafastbert: tree-major node_sum, width 1, GELU; K and D derived, given, or refused") {
    std::mt19937 g(13);
    for (const auto& kd : std::vector<std::pair<index_t, int>>{{1, 0}, {3, 2}, {2, 3}, {4, 1}}) {
        const index_t K = kd.first, N = (index_t{2} << kd.second) - 1, in = tg_test::uniform_index(g, 1, 7),
                      out = tg_test::uniform_index(g, 1, 5);
        const auto rows = static_cast<std::uint64_t>(K * N);
        const auto W = random_floats(static_cast<std::size_t>(K * N * in), g), B = random_floats(rows, g),
                   O = random_floats(static_cast<std::size_t>(out * K * N), g);
        raw_file f;
        f.add_f32("ffn.linear_in.weight", {rows, static_cast<std::uint64_t>(in)}, W);
        f.add_f32("ffn.linear_in.bias", {rows}, B);
        f.add_f32("ffn.linear_out.weight", {static_cast<std::uint64_t>(out), rows}, O);
        const std::string path = f.save("ufb.safetensors");
        tp::load_options opt;
        opt.prefix = "ffn.";
        opt.depth = kd.second;
        const auto by_depth = tp::load_ultrafastbert<double>(path, opt);
        opt.depth = -1;
        opt.trees = K;
        const auto layer = tp::load_ultrafastbert<double>(path, opt);
        CHECK(layer.tree_count() == K);
        CHECK(layer.depth() == kd.second);
        CHECK(by_depth.tree_count() == K);
        CHECK(layer.width() == 1);
        CHECK(layer.activation_kind() == activation::gelu);
        CHECK(!layer.has_output_bias());
        const Eigen::MatrixXd X = tg_test::random_matrix<double>(in, 30, g);
        const Eigen::MatrixXd Y = layer.forward_batch(X);
        double worst = 0;
        for (index_t e = 0; e < X.cols(); ++e)
            worst = std::max(worst, (Y.col(e) - ufb_oracle(W, B, O, K, kd.second, out, X.col(e))).cwiseAbs().maxCoeff());
        CHECK(worst < 1e-12);
        opt.trees = 0;
        const std::string what = error_of([&] { tp::load_ultrafastbert<float>(path, opt); });
        if (K == 1)  // the default tree count
            CHECK(what == "(no file_error)");
        else
            CHECK(what.find("linear_in.weight has " + std::to_string(K * N) +
                            " rows, which are not K trees of 2^(D+1)-1 nodes for K = 1 (K = 1 unless") !=
                  std::string::npos);
    }
    raw_file bad;
    bad.add_f32("linear_in.weight", {5, 2}, std::vector<float>(10, 0.5f));
    bad.add_f32("linear_in.bias", {5}, std::vector<float>(5, 0.5f));
    bad.add_f32("linear_out.weight", {1, 4}, std::vector<float>(4, 0.5f));
    tp::load_options opt;
    opt.trees = 5;
    const std::string path = bad.save("ufb_bad.safetensors");
    CHECK(error_of([&] { tp::load_ultrafastbert<float>(path, opt); })
              .find("UltraFastBERT layer: tensor 'linear_out.weight' has shape [1, 4], expected [1, 5]") != std::string::npos);
    opt.trees = 2;
    CHECK(error_of([&] { tp::load_ultrafastbert<float>(path, opt); })
              .find("linear_in.weight has 5 rows, which are not K trees of 2^(D+1)-1 nodes for K = 2") != std::string::npos);
}

#endif  // TREEGATE_HAS_IO
