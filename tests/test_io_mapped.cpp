// Memory-mapped serving (io/mapped.hpp): a storage::mapped tree_linear serves bit-identically to
// the owned layer loaded from a copy; hostile files are refused; the mapping's lifetime follows
// the layers sharing it (counted in /proc/self/maps); an atomic re-save leaves old mappings intact.
#include "test_support.hpp"

#if defined(TREEGATE_HAS_IO) && defined(__linux__)

#include "io_test_support.hpp"

#include <treegate/io/mapped.hpp>
#include <treegate/layers/tree_linear_bf16.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace st = treegate::safetensors;
using treegate::file_error;
using treegate::gating;
using treegate::index_t;
using treegate::tree_mode;
using treegate::usage_error;
using tg_test::bytes_t;

namespace {

/// Lines of /proc/self/maps that map `path` (the kernel prints the file's path on each).
int mappings_of(const std::string& path) {
    std::ifstream maps("/proc/self/maps");
    std::string line;
    int n = 0;
    while (std::getline(maps, line))
        if (line.size() >= path.size() && line.compare(line.size() - path.size(), path.size(), path) == 0) ++n;
    return n;
}

/// Whether address p lies in a mapping of `path`.
bool inside_mapping_of(const void* p, const std::string& path) {
    std::ifstream maps("/proc/self/maps");
    std::string line;
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    while (std::getline(maps, line)) {
        if (line.size() < path.size() || line.compare(line.size() - path.size(), path.size(), path) != 0) continue;
        std::uintptr_t lo = 0, hi = 0;
        char dash = 0;
        std::istringstream in(line);
        in >> std::hex >> lo >> dash >> hi;
        if (a >= lo && a < hi) return true;
    }
    return false;
}

void write_bytes(const std::string& path, const bytes_t& b) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

/// An owned float or double tree_linear with random blocks; gating by input or external.
template <class Scalar>
treegate::tree_linear<Scalar> random_layer(index_t in, index_t out, int depth, tree_mode mode, bool bias, bool external,
                                           std::mt19937& g) {
    const gating gates = external ? gating::external() : gating::from_input(tg_test::random_gating_indices(depth, in, g));
    treegate::tree_linear<Scalar> t(in, out, depth, mode, gates, bias);
    tg_test::fill_random(t, g);
    return t;
}

/// Outputs of single-example and batched calls; the external-gate overloads when the layer has them.
template <class Layer, class Scalar>
std::pair<tg_test::mat<Scalar>, tg_test::mat<Scalar>> serve(const Layer& l, const tg_test::mat<Scalar>& X,
                                                            const tg_test::mat<Scalar>& G) {
    tg_test::mat<Scalar> single(l.out_size(), X.cols()), batched(l.out_size(), X.cols());
    tg_test::vec<Scalar> y(l.out_size());
    const bool external = l.gates().is_external();
    for (index_t e = 0; e < X.cols(); ++e) {
        if (external)
            l.forward(X.col(e), G.col(e), y);
        else
            l.forward(X.col(e), y);
        single.col(e) = y;
    }
    treegate::workspace<Scalar> ws;
    if (external)
        l.forward_batch(X, G, batched, ws);
    else
        l.forward_batch(X, batched, ws);
    return {single, batched};
}

template <class Scalar>
bool same_bits(const tg_test::mat<Scalar>& a, const tg_test::mat<Scalar>& b) {
    // An empty matrix may have no storage (data() is null), which memcmp must not be given.
    return a.rows() == b.rows() && a.cols() == b.cols() &&
           (a.size() == 0 || std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.size()) * sizeof(Scalar)) == 0);
}

/// The owned layer a mapped one must equal, and its mapped type, per weight type.
template <class W>
struct kind_of {
    using scalar = W;
    using owned = treegate::tree_linear<W>;
    using mapped = treegate::mapped_tree_linear<W>;
    static owned make(const treegate::tree_linear<W>& t) { return t; }
};
template <>
struct kind_of<treegate::bf16> {
    using scalar = float;
    using owned = treegate::tree_linear_bf16<>;
    using mapped = treegate::mapped_tree_linear_bf16<>;
    static owned make(const treegate::tree_linear<float>& t) { return owned(t); }
};

}  // namespace

TEMPLATE_TEST_CASE("mapped tree_linear: outputs bit-identical to the owned layer and to a loaded copy",
                   "[io][mapped]", float, double, treegate::bf16) {
    using K = kind_of<TestType>;
    using S = typename K::scalar;
    const auto dir = tg_test::scratch_dir("mapped_same");
    const std::string path = (dir / "tree.safetensors").string();
    std::mt19937 g(17);
    const tree_mode mode = GENERATE(tree_mode::path_sum, tree_mode::leaf_only);
    const int depth = GENERATE(0, 1, 4);
    const auto size = GENERATE(std::pair<index_t, index_t>{13, 7}, std::pair<index_t, index_t>{33, 31},
                               std::pair<index_t, index_t>{1, 1});
    const bool bias = GENERATE(true, false);
    const bool external = GENERATE(false, true);
    const auto base = random_layer<S>(size.first, size.second, depth, mode, bias, external, g);
    const typename K::owned owned = K::make(base);
    st::save_for_mapping(owned, path);
    CHECK(st::layout_of(path) == st::weight_layout::blocks);

    const auto m = st::map_layer<typename K::mapped>(path);
    CHECK(mappings_of(path) >= 1);
    REQUIRE(m.block_count() == owned.block_count());
    CHECK(m.memory_bytes() == owned.memory_bytes());
    CHECK(inside_mapping_of(m.weight_blocks().data, path));  // zero copy: the blocks are the file's pages
    CHECK(reinterpret_cast<std::uintptr_t>(m.weight_blocks().data) % 64 == 0);

    // The loaded copy: the row-major file of the same layer, loaded as load() does.
    const auto copy_path = (dir / "copy.safetensors").string();
    st::save(owned, copy_path, std::is_same_v<S, double> ? st::dtype::f64 : st::dtype::f32);
    const auto loaded = st::load<typename K::owned>(copy_path);

    for (const index_t n : {index_t{0}, index_t{1}, index_t{37}}) {
        const tg_test::mat<S> X = tg_test::random_matrix<S>(size.first, n, g);
        const tg_test::mat<S> G = tg_test::random_gates<S>(depth, n, g);
        const auto want = serve(loaded, X, G);
        const auto ref = serve(owned, X, G);
        const auto got = serve(m, X, G);
        CHECK(same_bits(ref.first, want.first));
        CHECK(same_bits(got.first, want.first));
        CHECK(same_bits(got.second, want.second));
    }
    // Every stored bit, and the trainable copy.
    const auto ow = owned.weight_blocks(), mw = m.weight_blocks();
    CHECK(std::memcmp(ow.data, mw.data, static_cast<std::size_t>(ow.count * ow.stride) * sizeof(TestType)) == 0);
    const typename K::owned back = st::to_owned(m);
    CHECK(std::memcmp(back.weight_blocks().data, ow.data, static_cast<std::size_t>(ow.count * ow.stride) * sizeof(TestType)) == 0);
    if (bias)
        for (index_t b = 0; b < m.block_count(); ++b) CHECK(m.bias(b) == owned.bias(b));
    // A mapped layer saves as any layer does (row-major), and the result loads.
    const auto resaved = (dir / "resaved.safetensors").string();
    st::save(m, resaved, std::is_same_v<S, double> ? st::dtype::f64 : st::dtype::f32);
    CHECK(tg_test::read_all(resaved) == tg_test::read_all(copy_path));
    std::filesystem::remove_all(dir);
}

TEST_CASE("mapped tree_linear: a row-major file is refused, or copied when allowed", "[io][mapped]") {
    const auto dir = tg_test::scratch_dir("mapped_rowmajor");
    const std::string path = (dir / "rows.safetensors").string();
    std::mt19937 g(5);
    const auto t = random_layer<float>(9, 5, 3, tree_mode::path_sum, true, false, g);
    st::save(t, path);
    CHECK(st::layout_of(path) == st::weight_layout::row_major);
    TG_CHECK_THROWS_WITH(file_error, st::map_layer<treegate::mapped_tree_linear<float>>(path), path, "row-major",
                         "save_for_mapping", "allow_copy");
    CHECK(mappings_of(path) == 0);  // refused, and unmapped
    st::map_options o;
    o.allow_copy = true;
    const auto m = st::map_layer<treegate::mapped_tree_linear<float>>(path, o);
    CHECK(mappings_of(path) == 0);  // a copy: the file is no longer mapped
    CHECK(!inside_mapping_of(m.weight_blocks().data, path));
    const tg_test::mat<float> X = tg_test::random_matrix<float>(9, 23, g);
    const tg_test::mat<float> G(0, 23);
    CHECK(same_bits(serve(m, X, G).second, serve(t, X, G).second));
    // The same for bf16 weights: the float file is rounded as load() rounds it.
    const auto h = st::map_layer<treegate::mapped_tree_linear_bf16<>>(path, o);
    const treegate::tree_linear_bf16<> want(t);
    CHECK(same_bits(serve(h, X, G).second, serve(want, X, G).second));
    // load() refuses the blocks layout with a message that says what to do.
    st::save_for_mapping(t, path);
    TG_CHECK_THROWS_WITH(file_error, st::load<treegate::tree_linear<float>>(path), "\"blocks\" layout", "map_layer");
    std::filesystem::remove_all(dir);
}

TEST_CASE("mapped tree_linear: hostile files are refused before any weight is used", "[io][mapped]") {
    const auto dir = tg_test::scratch_dir("mapped_hostile");
    const std::string good = (dir / "good.safetensors").string();
    const std::string bad = (dir / "bad.safetensors").string();
    std::mt19937 g(23);
    const auto t = random_layer<float>(11, 6, 2, tree_mode::leaf_only, true, false, g);
    st::save_for_mapping(t, good);
    const bytes_t file = tg_test::read_all(good);
    const tg_test::parts p = tg_test::split_as_is(file);
    using M = treegate::mapped_tree_linear<float>;
    const auto refused = [&](const bytes_t& b, std::initializer_list<std::string> fragments, st::map_options o = {}) {
        write_bytes(bad, b);
        CHECK(tg_test::throws_with<file_error>([&] { (void)st::map_layer<M>(bad, o); }, fragments) == std::string());
        CHECK(mappings_of(bad) == 0);
    };
    // 4 leaves of 6 x 11 = 66 floats, and 6 biases each (unpadded: padding would cost more than 1/8).
    const std::uint64_t wbytes = 4 * 66 * 4, bbytes = 4 * 6 * 4;
    REQUIRE(p.header["weight"]["shape"] == nlohmann::json::array({4, 66}));
    REQUIRE(p.header["bias"]["shape"] == nlohmann::json::array({4, 6}));
    REQUIRE(p.data.size() == wbytes + bbytes);
    CHECK((file.size() - p.data.size()) % 64 == 0);  // the weights start on a cache line

    SECTION("truncated") {
        bytes_t b(file.begin(), file.end() - 10);
        refused(b, {bad, "tensor 'bias'", "data_offsets [1056, 1152]", "outside the data section of 1142 bytes"});
        refused(bytes_t(file.begin(), file.begin() + 5), {bad, "5 bytes, too short"});
    }
    SECTION("offsets past the end") {
        auto h = p.header;
        h["bias"]["data_offsets"] = {wbytes, wbytes + bbytes + 64};
        refused(tg_test::join(h, p.data), {"tensor 'bias'", "1216", "outside the data section"});
    }
    SECTION("wrong dtype") {
        write_bytes(bad, file);  // float weights, mapped as bf16 ones
        TG_CHECK_THROWS_WITH(file_error, st::map_layer<treegate::mapped_tree_linear_bf16<>>(bad), "tensor 'weight'",
                             "dtype F32", "BF16");
    }
    SECTION("misaligned") {
        // One more space in the header moves the data one byte: floats cannot be read in place.
        const std::string text(reinterpret_cast<const char*>(file.data() + 8), file.size() - 8 - p.data.size());
        refused(tg_test::join(text + " ", p.data), {"tensor 'weight' starts at file byte", "not a multiple of 4"});
    }
    SECTION("wrong shapes") {
        auto h = p.header;
        h["__metadata__"]["in"] = "12";  // 72 floats a block, padded to 80
        h["__metadata__"].erase(tg_test::checksum_key);
        refused(tg_test::join(h, p.data), {"tensor 'weight' has shape [4, 66], expected [4, 80]"});
        h = p.header;
        h["__metadata__"]["layout"] = "columns";
        refused(tg_test::join(h, p.data), {"metadata 'layout' is \"columns\""});
        h = p.header;
        h["__metadata__"]["kind"] = "dense";
        refused(tg_test::join(h, p.data), {"holds a \"dense\" layer"});
    }
    SECTION("changed data: the checksum, and NaN") {
        bytes_t b = file;
        b[b.size() - p.data.size() + 8] ^= 0x01;
        refused(b, {"checksum mismatch"});
        st::map_options skip;
        skip.verify_data = false;
        write_bytes(bad, b);
        CHECK_NOTHROW(st::map_layer<M>(bad, skip));  // documented: no data pass, no detection
        auto h = p.header;
        h["__metadata__"].erase(tg_test::checksum_key);
        bytes_t d = p.data;
        tg_test::put_f32(d, 4 * 70, std::numeric_limits<float>::quiet_NaN());
        refused(tg_test::join(h, d), {"tensor 'weight' element 70 of 264 is NaN or infinite"});
        tg_test::put_f32(d, 4 * 70, 0.5f);
        tg_test::put_f32(d, wbytes + 4 * 3, std::numeric_limits<float>::infinity());
        refused(tg_test::join(h, d), {"tensor 'bias' element 3 of 24"});
    }
    std::filesystem::remove_all(dir);
}

TEST_CASE("mapped tree_linear: the mapping lives as long as the last layer sharing it", "[io][mapped]") {
    const auto dir = tg_test::scratch_dir("mapped_life");
    const std::string path = (dir / "tree.safetensors").string();
    std::mt19937 g(3);
    const auto t = random_layer<float>(16, 8, 3, tree_mode::path_sum, true, false, g);
    st::save_for_mapping(t, path);
    const tg_test::mat<float> X = tg_test::random_matrix<float>(16, 9, g);
    const tg_test::mat<float> G(0, 9);
    const auto want = serve(t, X, G).second;
    const int before = mappings_of(path);
    REQUIRE(before == 0);
    {
        auto a = st::map_layer<treegate::mapped_tree_linear<float>>(path);
        CHECK(mappings_of(path) == 1);
        const auto b = a;  // a copy shares the mapping
        CHECK(mappings_of(path) == 1);
        auto c = std::move(a);  // a move takes it
        CHECK(a.in_size() == 0);
        TG_CHECK_THROWS_WITH(usage_error, a.forward_batch(X), "moved");
        CHECK(same_bits(serve(c, X, G).second, want));
        {
            const auto gone = std::move(c);
            CHECK(same_bits(serve(gone, X, G).second, want));
        }
        CHECK(mappings_of(path) == 1);  // b still holds it
        CHECK(same_bits(serve(b, X, G).second, want));
    }
    CHECK(mappings_of(path) == 0);  // the last owner unmapped it
    std::filesystem::remove_all(dir);
}

TEST_CASE("mapped tree_linear: an atomic re-save leaves readers of the old mapping serving the old file", "[io][mapped]") {
    const auto dir = tg_test::scratch_dir("mapped_resave");
    const std::string path = (dir / "tree.safetensors").string();
    std::mt19937 g(41);
    const auto t1 = random_layer<float>(10, 4, 2, tree_mode::path_sum, true, false, g);
    auto t2 = t1;
    tg_test::fill_random(t2, g);
    const tg_test::mat<float> X = tg_test::random_matrix<float>(10, 15, g);
    const tg_test::mat<float> G(0, 15);
    const auto want1 = serve(t1, X, G).second, want2 = serve(t2, X, G).second;
    REQUIRE(!same_bits(want1, want2));
    st::save_for_mapping(t1, path);
    const auto old = st::map_layer<treegate::mapped_tree_linear<float>>(path);
    st::save_for_mapping(t2, path);  // renamed over the mapped file
    CHECK(same_bits(serve(old, X, G).second, want1));
    const auto fresh = st::map_layer<treegate::mapped_tree_linear<float>>(path);
    CHECK(same_bits(serve(fresh, X, G).second, want2));
    CHECK(same_bits(serve(old, X, G).second, want1));
    st::save(t1, path);  // the copying format's save is the same atomic rename
    CHECK(same_bits(serve(fresh, X, G).second, want2));
    std::filesystem::remove_all(dir);
}

TEST_CASE("mapped tree_linear: nothing writes a mapped layer's blocks", "[io][mapped]") {
    using M = treegate::mapped_tree_linear<float>;
    // Reading accessors only: non-const objects get the const ones.
    static_assert(std::is_same_v<decltype(std::declval<M&>().weight_blocks()), treegate::block_run<const float>>);
    static_assert(std::is_same_v<decltype(std::declval<M&>().bias_blocks()), treegate::block_run<const float>>);
    static_assert(std::is_same_v<decltype(std::declval<M&>().bias(0)), M::const_bias_map>);
    static_assert(!M::storage_type::writable && treegate::storage::owned<float>::writable);
    static_assert(!st::detail::writable_layer<M>::value && st::detail::writable_layer<treegate::tree_linear<float>>::value);
    // A mapped layer is built only over storage that holds the right number of blocks.
    std::vector<float> w(10);
    const auto owner = std::make_shared<int>(0);
    using view = treegate::detail::shared_view<float>;
    TG_CHECK_THROWS_WITH(treegate::config_error,
                         M(2, 3, 1, tree_mode::path_sum, gating::from_input({0}), false, view(owner, w.data(), 10), view()),
                         "3 blocks of stride 6 need 18 weights and 0 biases, but the storage holds 10 and 0");
    CHECK(owner.use_count() == 1);
}

#endif
