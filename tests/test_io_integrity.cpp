// safetensors integrity: what save accepts, load gives back bit for bit (and what load refuses,
// save refuses first); the checksum of the tensor data catches a changed byte in any tensor.
#include "test_support.hpp"

// io/ needs nlohmann-json and zlib (see test_io_safetensors.cpp).
#if defined(TREEGATE_HAS_IO)

#include "io_test_support.hpp"

#include <treegate/io/safetensors.hpp>

#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

namespace st = treegate::safetensors;
using treegate::activation;
using treegate::tree_mode;
using treegate::file_error;
using treegate::gating;
using tg_test::bytes_t;

namespace {

// ---- oracles --------------------------------------------------------------------------------

template <class T, class U>
T bits_of(const U& v) {
    static_assert(sizeof(T) == sizeof(U), "same size");
    T t;
    std::memcpy(&t, &v, sizeof t);
    return t;
}

/// float -> BF16 -> float, round to nearest even on the 16 dropped bits (finite input only).
float bf16_round(float f) {
    std::uint32_t u = bits_of<std::uint32_t>(f);
    u += 0x7fffu + ((u >> 16) & 1u);
    return bits_of<float>(u & 0xffff0000u);
}

/// What a value v of the layer's scalar becomes in a file of dtype `type`, or false when save
/// must refuse it: NaN and infinities (load refuses them), magnitudes the dtype cannot hold.
template <class S>
bool stored_value(S v, st::dtype type, double& out) {
    const double d = static_cast<double>(v);
    if (!std::isfinite(d)) return false;
    if (type == st::dtype::f64) {
        out = d;
        return true;
    }
    if (std::fabs(d) > static_cast<double>(std::numeric_limits<float>::max())) return false;
    const float f = static_cast<float>(d);
    if (type == st::dtype::f32) {
        out = static_cast<double>(f);
        return true;
    }
    const float b = bf16_round(f);
    if (!std::isfinite(b)) return false;
    out = static_cast<double>(b);
    return true;
}

template <class S>
std::vector<S> edge_values() {
    using lim = std::numeric_limits<S>;
    using flim = std::numeric_limits<float>;
    std::vector<S> v = {S(0), -S(0), S(1), S(-1), lim::denorm_min(), -lim::denorm_min(), lim::min() / S(3),
                        lim::min(), -lim::min(), lim::max(), lim::lowest(), lim::epsilon(),
                        lim::quiet_NaN(), -lim::quiet_NaN(), lim::signaling_NaN(), lim::infinity(), -lim::infinity(),
                        static_cast<S>(flim::max()), static_cast<S>(flim::lowest()), static_cast<S>(flim::denorm_min()),
                        static_cast<S>(3.3895313892515355e38)};  // the largest finite BF16
    if constexpr (sizeof(S) == sizeof(double)) {
        v.push_back(static_cast<S>(flim::max()) * S(1.0000001));  // just above float's range
        v.push_back(static_cast<S>(flim::denorm_min()) / S(4));  // below float's subnormals
    }
    return v;
}

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

}  // namespace

// ---- NaN policy: refused at save, with the tensor and the index -----------------------------

TEST_CASE("safetensors: save refuses NaN and infinite values, naming the tensor and the index",
          "[io][safetensors][integrity]") {
    const st::dtype type = GENERATE(st::dtype::f32, st::dtype::f64, st::dtype::bf16);
    INFO("dtype " << st::to_string(type));

    treegate::tree_linear<double> t(3, 2, 1, tree_mode::path_sum, gating::from_input({0}));
    t.initialize(5);
    t.weight(1)(1, 2) = std::numeric_limits<double>::quiet_NaN();  // weight [3, 2, 3]: flat 6 + 3 + 2
    TG_CHECK_THROWS_WITH(file_error, st::save_to_memory(t, type), "tensor 'weight' element 11 of 18 (at [1, 1, 2]) is NaN");

    using model = treegate::sequential<treegate::dense<float>, treegate::activation_layer<float>, treegate::dense<float>>;
    model m(treegate::dense<float>(2, 3), treegate::activation_layer<float>(activation::relu, 3),
            treegate::dense<float>(3, 2));
    m.initialize(2);
    m.layer<2>().bias()(1) = -std::numeric_limits<float>::infinity();
    TG_CHECK_THROWS_WITH(file_error, st::save_to_memory(m, type), "tensor '2.bias' element 1 of 2 (at [1]) is infinite");

    // On disk: nothing is written, the old file stays.
    const auto dir = tg_test::scratch_dir("nan");
    const std::string path = (dir / "m.safetensors").string();
    m.layer<2>().bias()(1) = 0.5f;
    st::save(m, path, type);
    const bytes_t before = tg_test::read_all(path);
    m.layer<0>().weight()(2, 0) = std::numeric_limits<float>::quiet_NaN();
    TG_CHECK_THROWS_WITH(file_error, st::save(m, path, type), path, "tensor '0.weight' element 4 of 6 (at [2, 0]) is NaN");
    CHECK(tg_test::read_all(path) == before);

    st::tensor_map<double> tensors;
    tensors["x"] = {{2, 2}, {1.0, 2.0, std::numeric_limits<double>::infinity(), 4.0}};
    TG_CHECK_THROWS_WITH(file_error, st::write_tensors(tensors, path, type), "tensor 'x' element 2 of 4 (at [1, 0]) is infinite");
    CHECK(tg_test::read_all(path) == before);
    std::filesystem::remove_all(dir);
}

TEMPLATE_TEST_CASE("safetensors: every value save accepts loads back as the dtype stores it",
                   "[io][safetensors][integrity]", float, double) {
    using S = TestType;
    const st::dtype type = GENERATE(st::dtype::f32, st::dtype::f64, st::dtype::bf16);
    INFO("dtype " << st::to_string(type));
    std::size_t accepted = 0, refused = 0;
    for (const S v : edge_values<S>()) {
        INFO("value " << v);
        treegate::dense<S> d(2, 2);
        d.initialize(1);
        d.weight()(1, 0) = v;
        d.bias()(0) = -v;  // the sign flipped, in a second tensor
        double want = 0, want_bias = 0;
        const bool ok = stored_value(v, type, want);
        REQUIRE(stored_value(static_cast<S>(-v), type, want_bias) == ok);
        if (!ok) {
            ++refused;
            CHECK_THROWS_AS(st::save_to_memory(d, type), file_error);
            continue;
        }
        ++accepted;
        bytes_t file;
        REQUIRE_NOTHROW(file = st::save_to_memory(d, type));
        treegate::dense<S> back(2, 2);
        REQUIRE_NOTHROW(st::load_into_from_memory(back, file.data(), file.size()));
        // The value the layer's scalar holds of what the file holds: exact unless a double
        // stored as F64 goes into a float layer, which cannot happen here (same scalar).
        CHECK(same_bits(static_cast<double>(back.weight()(1, 0)), static_cast<double>(static_cast<S>(want))));
        CHECK(same_bits(static_cast<double>(back.bias()(0)), static_cast<double>(static_cast<S>(want_bias))));
        const auto built = st::load_from_memory<treegate::dense<S>>(file.data(), file.size());
        CHECK(same_bits(static_cast<double>(built.weight()(1, 0)), static_cast<double>(static_cast<S>(want))));
        // Plain tensors obey the same rule.
        st::tensor_map<S> tm;
        tm["v"] = {{1}, {v}};
        const auto dir = tg_test::scratch_dir("values");
        const std::string path = (dir / "v.safetensors").string();
        REQUIRE_NOTHROW(st::write_tensors(tm, path, type));
        CHECK(same_bits(static_cast<double>(st::read_tensors<S>(path).at("v").values[0]),
                        static_cast<double>(static_cast<S>(want))));
        std::filesystem::remove_all(dir);
    }
    CHECK(accepted >= 10);
    CHECK(refused >= 5);  // NaN, -NaN, signalling NaN, +-inf at least
}

// ---- checksum -------------------------------------------------------------------------------

namespace {

using ff_t = treegate::tree_feedforward<float>;

/// leaf_mlp with output bias: all six tensors (hidden_weight, hidden_bias, output_weight,
/// router_weight, router_bias, output_bias).
ff_t ff_layer() {
    ff_t l(3, 2, 2, 2, 2, activation::tanh, tree_mode::leaf_only, true);
    l.initialize(11);
    return l;
}

std::string hex8(std::uint32_t v) {
    char buf[9];
    std::snprintf(buf, sizeof buf, "%08x", v);
    return buf;
}

}  // namespace

TEST_CASE("safetensors: saved files carry the CRC-32 of their tensor data", "[io][safetensors][integrity]") {
    const st::dtype type = GENERATE(st::dtype::f32, st::dtype::f64, st::dtype::bf16);
    const bytes_t file = st::save_to_memory(ff_layer(), type);
    const tg_test::parts p = tg_test::split_as_is(file);
    REQUIRE(p.header["__metadata__"].contains(tg_test::checksum_key));
    CHECK(p.header["__metadata__"][tg_test::checksum_key] == hex8(tg_test::crc32_bitwise(p.data.data(), p.data.size())));
    // The data section still starts 8-byte aligned with the checksum in the header.
    CHECK((file.size() - p.data.size()) % 8 == 0);

    st::tensor_map<float> tm;
    tm["a"] = {{3}, {1.f, 2.f, 3.f}};
    tm["empty"] = {{0}, {}};
    const auto dir = tg_test::scratch_dir("crc");
    const std::string path = (dir / "t.safetensors").string();
    st::write_tensors(tm, path, type, {{"note", "x"}});
    const tg_test::parts q = tg_test::split_as_is(tg_test::read_all(path));
    CHECK(q.header["__metadata__"][tg_test::checksum_key] == hex8(tg_test::crc32_bitwise(q.data.data(), q.data.size())));
    TG_CHECK_THROWS_WITH(file_error, st::write_tensors(tm, path, type, {{tg_test::checksum_key, "00000000"}}),
                         "metadata key 'data_crc32' is reserved");
    std::filesystem::remove_all(dir);
}

TEST_CASE("safetensors: a changed byte in any tensor is a checksum mismatch", "[io][safetensors][integrity]") {
    const st::dtype type = GENERATE(st::dtype::f32, st::dtype::f64, st::dtype::bf16);
    INFO("dtype " << st::to_string(type));
    const ff_t layer = ff_layer();
    const bytes_t file = st::save_to_memory(layer, type);
    const tg_test::parts p = tg_test::split_as_is(file);
    const std::size_t data_begin = file.size() - p.data.size();
    REQUIRE(p.header["__metadata__"].contains(tg_test::checksum_key));
    const std::string stored = p.header["__metadata__"][tg_test::checksum_key];
    const std::size_t width = type == st::dtype::f64 ? 8 : type == st::dtype::f32 ? 4 : 2;

    std::size_t tensors = 0;
    for (const auto& item : p.header.items()) {
        if (item.key() == "__metadata__") continue;
        ++tensors;
        const auto begin = item.value()["data_offsets"][0].get<std::size_t>();
        const auto end = item.value()["data_offsets"][1].get<std::size_t>();
        REQUIRE(end > begin);
        // The lowest byte of the first, a middle and the last element: a flip of its lowest bit
        // changes only the significand, so the value stays finite and loads without the check.
        for (const std::size_t element : {std::size_t{0}, (end - begin) / width / 2, (end - begin) / width - 1}) {
            const std::size_t at = begin + element * width;
            INFO("tensor " << item.key() << ", element " << element << ", data byte " << at);
            bytes_t bad = file;
            bad[data_begin + at] ^= 0x01u;
            const std::string actual = hex8(tg_test::crc32_bitwise(bad.data() + data_begin, p.data.size()));
            REQUIRE(actual != stored);
            TG_CHECK_THROWS_WITH(file_error, st::load_from_memory<ff_t>(bad.data(), bad.size(), "model.st"),
                                 "safetensors model.st: checksum mismatch", stored, actual);
            ff_t target = ff_layer();
            target.initialize(3);
            const bytes_t before = st::save_to_memory(target, type);
            TG_CHECK_THROWS_WITH(file_error, st::load_into_from_memory(target, bad.data(), bad.size()), "checksum mismatch");
            CHECK(st::save_to_memory(target, type) == before);
            TG_CHECK_THROWS_WITH(file_error, st::read_tensors_from_memory<float>(bad.data(), bad.size()), "checksum mismatch");

            // Skipped, the changed data loads: it is this very data (re-saved, the data section
            // is the changed one, for dtypes that a float holds exactly).
            st::load_options skip;
            skip.verify_checksum = false;
            ff_t loaded = ff_layer();
            REQUIRE_NOTHROW(loaded = st::load_from_memory<ff_t>(bad.data(), bad.size(), "model.st", skip));
            REQUIRE_NOTHROW(st::load_into_from_memory(target, bad.data(), bad.size(), "model.st", skip));
            if (type != st::dtype::f64) {
                const bytes_t resaved = st::save_to_memory(loaded, type);
                CHECK(tg_test::split_as_is(resaved).data == bytes_t(bad.begin() + static_cast<std::ptrdiff_t>(data_begin), bad.end()));
            }
            CHECK(st::read_tensors_from_memory<float>(bad.data(), bad.size(), "model.st", skip).size() == 6);
        }
    }
    CHECK(tensors == 6);
}

TEST_CASE("safetensors: files without a checksum load; a malformed one is refused", "[io][safetensors][integrity]") {
    const ff_t layer = ff_layer();
    const bytes_t file = st::save_to_memory(layer);
    tg_test::parts p = tg_test::split_as_is(file);
    REQUIRE(p.header["__metadata__"].contains(tg_test::checksum_key));

    // As PyTorch's safetensors or an older treegate writes it: the configuration, no checksum.
    p.header["__metadata__"].erase(tg_test::checksum_key);
    const bytes_t plain = tg_test::join(p.header, p.data);
    const ff_t back = st::load_from_memory<ff_t>(plain.data(), plain.size());
    CHECK(st::save_to_memory(back) == file);  // saving again adds the checksum back
    // Plain tensors with no metadata at all.
    p.header.erase("__metadata__");
    const bytes_t bare = tg_test::join(p.header, p.data);
    CHECK(st::read_tensors_from_memory<float>(bare.data(), bare.size()).size() == 6);

    for (const char* text : {"", "1234567", "123456789", "12345g78", " 2345678"}) {
        tg_test::parts q = tg_test::split_as_is(file);
        q.header["__metadata__"][tg_test::checksum_key] = text;
        const bytes_t f = tg_test::join(q.header, q.data);
        TG_CHECK_THROWS_WITH(file_error, st::load_from_memory<ff_t>(f.data(), f.size()),
                             std::string("metadata 'data_crc32' is \"") + text + "\", not 8 hexadecimal digits");
    }
    // Upper-case digits are the same number.
    tg_test::parts u = tg_test::split_as_is(file);
    std::string upper = u.header["__metadata__"][tg_test::checksum_key];
    for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    u.header["__metadata__"][tg_test::checksum_key] = upper;
    const bytes_t uf = tg_test::join(u.header, u.data);
    CHECK_NOTHROW(st::load_from_memory<ff_t>(uf.data(), uf.size()));
}

TEST_CASE("safetensors: a file changed in place on disk is refused by name", "[io][safetensors][integrity]") {
    const auto dir = tg_test::scratch_dir("inplace");
    const std::string path = (dir / "model.safetensors").string();
    const ff_t layer = ff_layer();
    st::save(layer, path);
    const bytes_t file = tg_test::read_all(path);
    {
        // Another process rewrites one byte of the last tensor: same size, same header.
        std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
        f.seekp(static_cast<std::streamoff>(file.size() - 2));
        f.put(static_cast<char>(file[file.size() - 2] ^ 0x10));
    }
    REQUIRE(tg_test::read_all(path).size() == file.size());
    TG_CHECK_THROWS_WITH(file_error, st::load<ff_t>(path), path, "checksum mismatch");
    TG_CHECK_THROWS_WITH(file_error, st::load_tree_feedforward<float>(path), path, "checksum mismatch");
    ff_t into = ff_layer();
    TG_CHECK_THROWS_WITH(file_error, st::load_into(into, path), path, "checksum mismatch");
    TG_CHECK_THROWS_WITH(file_error, st::read_tensors<float>(path), path, "checksum mismatch");
    st::load_options skip;
    skip.verify_checksum = false;
    CHECK_NOTHROW(st::load<ff_t>(path, skip));
    CHECK_NOTHROW(st::load_tree_feedforward<float>(path, skip));
    CHECK_NOTHROW(st::load_into(into, path, skip));
    CHECK_NOTHROW(st::read_tensors<float>(path, skip));
    std::filesystem::remove_all(dir);
}

#endif  // TREEGATE_HAS_IO
