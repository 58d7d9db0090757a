// safetensors load_into with the layer as the specification: files without treegate's
// __metadata__ (a PyTorch state_dict), name prefixes and maps, strict and skipped extra tensors.
#include "test_support.hpp"

#if defined(TREEGATE_HAS_IO)

#include "io_test_support.hpp"

#include <treegate/io/safetensors.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace st = treegate::safetensors;
using treegate::activation;
using treegate::file_error;
using treegate::gating;
using treegate::index_t;
using treegate::tree_mode;

namespace {

using S = float;
using model_t = treegate::sequential<treegate::dense<S>, treegate::activation_layer<S>, treegate::dense<S>>;

model_t blank_model() {
    return model_t(treegate::dense<S>(5, 4), treegate::activation_layer<S>(activation::relu, 4), treegate::dense<S>(4, 3));
}

/// A row-major tensor of `shape` with values from `g`, as nn.Linear would hold them.
st::tensor<S> random_tensor(std::vector<std::uint64_t> shape, std::mt19937& g) {
    std::uniform_real_distribution<S> u(-1, 1);
    std::uint64_t n = 1;
    for (auto d : shape) n *= d;
    st::tensor<S> t{shape, {}};
    for (std::uint64_t k = 0; k < n; ++k) t.values.push_back(u(g));
    return t;
}

/// An nn.Sequential(Linear(5, 4), ReLU(), Linear(4, 3)) state_dict, names prefixed by `p`.
st::tensor_map<S> state_dict(const std::string& p, std::mt19937& g) {
    st::tensor_map<S> m;
    m[p + "0.weight"] = random_tensor({4, 5}, g);
    m[p + "0.bias"] = random_tensor({4}, g);
    m[p + "2.weight"] = random_tensor({3, 4}, g);
    m[p + "2.bias"] = random_tensor({3}, g);
    return m;
}

/// The model's values against the state_dict: W(r, c) is weight[r * in + c].
void check_loaded(const model_t& m, const st::tensor_map<S>& sd, const std::string& p) {
    const auto& d0 = m.layer<0>();
    const auto& d2 = m.layer<2>();
    for (index_t r = 0; r < 4; ++r) {
        for (index_t c = 0; c < 5; ++c) CHECK(d0.weight()(r, c) == sd.at(p + "0.weight").values[static_cast<std::size_t>(r * 5 + c)]);
        CHECK(d0.bias()(r) == sd.at(p + "0.bias").values[static_cast<std::size_t>(r)]);
    }
    for (index_t r = 0; r < 3; ++r) {
        for (index_t c = 0; c < 4; ++c) CHECK(d2.weight()(r, c) == sd.at(p + "2.weight").values[static_cast<std::size_t>(r * 4 + c)]);
        CHECK(d2.bias()(r) == sd.at(p + "2.bias").values[static_cast<std::size_t>(r)]);
    }
}

struct scratch {
    std::filesystem::path dir = tg_test::scratch_dir("by_layer");
    ~scratch() { std::filesystem::remove_all(dir); }
    std::string file(const char* name) const { return (dir / name).string(); }
};

}  // namespace

TEST_CASE("safetensors: a state_dict without metadata loads into a sequential of dense layers", "[io][safetensors][by_layer]") {
    scratch s;
    std::mt19937 g(3);
    const auto sd = state_dict("", g);
    const std::string path = s.file("linear.safetensors");
    st::write_tensors(sd, path);

    model_t m = blank_model();
    TG_CHECK_THROWS_WITH(file_error, st::load_into(m, path), "metadata 'kind' is missing");  // the default needs treegate's
    st::load_options o;
    o.require_metadata = false;
    st::load_into(m, path, o);
    check_loaded(m, sd, "");

    // the forward pass is the materialized one: relu(W0 x + b0), then W2 h + b2
    const Eigen::VectorXf x = Eigen::VectorXf::LinSpaced(5, -1, 2);
    Eigen::VectorXf y(3);
    model_t::workspace_type ws;
    m.forward(x, y, ws);
    const Eigen::VectorXf h = (m.layer<0>().weight() * x + m.layer<0>().bias()).cwiseMax(0.0f);
    const Eigen::VectorXf ref = m.layer<2>().weight() * h + m.layer<2>().bias();
    CHECK((y - ref).cwiseAbs().maxCoeff() <= 1e-5f * (1.0f + ref.cwiseAbs().maxCoeff()));
}

TEST_CASE("safetensors: load_into by the layer takes a prefix, a name map and skips extras when asked",
          "[io][safetensors][by_layer]") {
    scratch s;
    std::mt19937 g(5);
    auto sd = state_dict("encoder.", g);
    sd["decoder.weight"] = random_tensor({2, 2}, g);
    const std::string path = s.file("bigger.safetensors");
    st::write_tensors(sd, path);

    model_t m = blank_model();
    const model_t before = m;
    st::load_options o;
    o.prefix = "encoder.";
    SECTION("strict: an unused tensor is named, the layer unchanged") {
        TG_CHECK_THROWS_WITH(file_error, st::load_into(m, path, o), "tensors the layer does not use", "'decoder.weight' [2, 2]");
        CHECK(m.layer<0>().weight() == before.layer<0>().weight());
    }
    SECTION("skipped") {
        o.strict = false;
        st::load_into(m, path, o);
        check_loaded(m, sd, "encoder.");
    }
    SECTION("a name map renames the file's tensors") {
        st::tensor_map<S> renamed;
        renamed["fc1.weight"] = sd.at("encoder.0.weight");
        renamed["fc1.bias"] = sd.at("encoder.0.bias");
        renamed["fc2.weight"] = sd.at("encoder.2.weight");
        renamed["fc2.bias"] = sd.at("encoder.2.bias");
        const std::string p2 = s.file("renamed.safetensors");
        st::write_tensors(renamed, p2);
        st::load_options r;
        r.names = {{"fc1.weight", "0.weight"}, {"fc1.bias", "0.bias"}, {"fc2.weight", "2.weight"}, {"fc2.bias", "2.bias"}};
        st::load_into(m, p2, r);
        check_loaded(m, sd, "encoder.");
    }
}

TEST_CASE("safetensors: load_into by the layer names the tensor and both shapes on a mismatch",
          "[io][safetensors][by_layer][validation]") {
    scratch s;
    std::mt19937 g(7);
    auto sd = state_dict("", g);
    st::load_options o;
    o.require_metadata = false;
    model_t m = blank_model();
    SECTION("a shape") {
        sd["2.weight"] = random_tensor({3, 5}, g);
        st::write_tensors(sd, s.file("a.safetensors"));
        TG_CHECK_THROWS_WITH(file_error, st::load_into(m, s.file("a.safetensors"), o), "tensor '2.weight' has shape [3, 5]",
                             "layer's '2.weight' has shape [3, 4]");
    }
    SECTION("a missing tensor") {
        sd.erase("0.bias");
        st::write_tensors(sd, s.file("b.safetensors"));
        TG_CHECK_THROWS_WITH(file_error, st::load_into(m, s.file("b.safetensors"), o), "tensor '0.bias' is missing", "[4]");
    }
    SECTION("a tree_linear of another depth") {
        treegate::tree_linear<float> t(5, 3, 2, tree_mode::path_sum, gating::from_input({0, 1}));
        t.initialize(1);
        const auto file = st::save_to_memory(t);
        treegate::tree_linear<float> deeper(5, 3, 3, tree_mode::path_sum, gating::from_input({0, 1, 2}));
        TG_CHECK_THROWS_WITH(file_error, st::load_into_from_memory(deeper, file.data(), file.size(), "<memory>", o),
                             "tensor 'weight' has shape [7, 3, 5]", "has shape [15, 3, 5]");
        treegate::tree_linear<float> same(5, 3, 2, tree_mode::path_sum, gating::from_input({0, 1}));
        st::load_into_from_memory(same, file.data(), file.size(), "<memory>", o);
        for (index_t b = 0; b < t.block_count(); ++b) CHECK(same.weight(b) == t.weight(b));
    }
}

#endif  // TREEGATE_HAS_IO
