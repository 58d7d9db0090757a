// libFuzzer target for the metadata-free load_into path (load_options: require_metadata = false,
// prefix, names, strict) and the dtypes PyTorch files bring (F16, BF16, F64, I64/I32 scalars).
// Input: one option byte, then the file. Any file must load or raise treegate::file_error; a
// failed load leaves the layer unchanged, a successful one holds exactly the file's values.
// Built with -DTREEGATE_FUZZ_MAKE_CORPUS instead, it writes the seed corpus (same layer list).
#include <treegate/io/pytorch.hpp>
#include <treegate/io/safetensors.hpp>
#include <treegate/layers/tree_linear_bf16.hpp>

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace {

namespace st = treegate::safetensors;
using treegate::activation;
using treegate::gating;
using treegate::slice_combine;
using treegate::tie_rule;
using treegate::tree_mode;
using bytes_t = std::vector<unsigned char>;

// The option byte: bit 0 strict, bit 1 the prefix, bit 2 the name map, bits 3-5 the layer,
// bit 6 load_fastfeedforward with b2s (leaf_bias), bit 7 its exact_ties off.
constexpr const char* prefix = "model.layers.3.";

bool strict_of(unsigned o) { return (o & 1u) != 0; }
bool prefixed(unsigned o) { return (o & 2u) != 0; }
bool renamed(unsigned o) { return (o & 4u) != 0; }

template <class Layer>
Layer initialized(Layer l) {
    l.initialize(1);
    return l;
}

/// The layers the files are loaded into (initialized): every kind, leaf biases and the `>=` tie
/// rule, bf16 storage.
auto layers() {
    using seq = treegate::sequential<treegate::dense<float>, treegate::activation_layer<float>, treegate::tree_linear<float>>;
    return std::make_tuple(initialized(
        treegate::dense<float>(3, 2)), initialized(treegate::tree_linear<float>(3, 2, 1, tree_mode::path_sum, gating::from_input({0}))),
        initialized(treegate::tree_feedforward<float>(3, 2, 2, 2, 1, activation::relu, tree_mode::leaf_only, true,
                                                      tie_rule::greater_equal, true)),
        initialized(treegate::tree_feedforward<float>(2, 2, 1, 1, 2, activation::gelu, tree_mode::path_sum, false)),
        initialized(treegate::sliced_tree_linear<float>(2, 1, 1, tree_mode::path_sum, slice_combine::concat, {{0}, {1}})),
        initialized(seq(treegate::dense<float>(2, 2), treegate::activation_layer<float>(activation::tanh, 2),
                        treegate::tree_linear<float>(2, 1, 1, tree_mode::leaf_only, gating::from_input({1})))),
        treegate::tree_linear_bf16<>(
            initialized(treegate::tree_linear<float>(2, 2, 2, tree_mode::leaf_only, gating::from_input({0, 1})))),
        initialized(treegate::tree_feedforward<double>(2, 1, 2, 1, 1, activation::tanh, tree_mode::leaf_only, false)));
}
constexpr unsigned layer_count = 8;

/// The name in the file of the layer's tensor k (called `name`) under the options.
std::string file_name(unsigned o, std::size_t k, const std::string& name) {
    return (prefixed(o) ? prefix : "") + (renamed(o) ? "p" + std::to_string(k) : name);
}

template <class Layer>
st::load_options options_for(const Layer& layer, unsigned o) {
    st::load_options opt;
    opt.verify_checksum = false;  // mutated data would stop at the checksum otherwise
    opt.require_metadata = false;
    opt.strict = strict_of(o);
    if (prefixed(o)) opt.prefix = prefix;
    if (renamed(o)) {
        const auto ts = treegate::parameters(layer);
        for (std::size_t k = 0; k < ts.size(); ++k) opt.names["p" + std::to_string(k)] = ts[k].name;
    }
    return opt;
}

template <class F>
void for_layer(unsigned index, F&& f) {
    auto all = layers();
    unsigned k = 0;
    std::apply([&](auto&... l) { ((k++ == index ? f(l) : void()), ...); }, all);
}

}  // namespace

#if !defined(TREEGATE_FUZZ_MAKE_CORPUS)

namespace {

[[noreturn]] void bug(const char* what, const std::string& message) {
    std::fprintf(stderr, "fuzz_load_into: %s: %s\n", what, message.c_str());
    std::abort();
}

// A loaded layer holds the file's values: each tensor of its description equals the file's
// tensor of the mapped name, converted as the loader converts (to the layer's scalar, then to
// bf16 where the layer stores bf16), bit for bit.
template <class Layer>
void check_values(const Layer& layer, const std::uint8_t* data, std::size_t size, unsigned o) {
    using S = typename Layer::scalar_type;
    const auto f = st::detail::parse(data, size, "fuzz");
    const auto stored = st::detail::store_tensors(layer);  // widened, row-major, description order
    for (std::size_t k = 0; k < stored.size(); ++k) {
        const auto values = st::detail::read_values<S>(f, file_name(o, k, stored[k].name));
        if (values.size() != stored[k].values.size()) bug("load_into", "tensor " + stored[k].name + " size differs");
        for (std::size_t i = 0; i < values.size(); ++i) {
            const S want = stored[k].bf16 ? static_cast<S>(treegate::to_float(treegate::to_bf16(static_cast<float>(values[i]))))
                                          : values[i];
            if (!(want == stored[k].values[i]))
                bug("load_into", "tensor " + stored[k].name + " element " + std::to_string(i) + " differs from the file");
        }
    }
}

template <class Layer>
void try_load_into(Layer layer, const std::uint8_t* data, std::size_t size, unsigned o) {
    const auto before = st::save_to_memory(layer, st::dtype::f32);
    try {
        st::load_into_from_memory(layer, data, size, "fuzz", options_for(layer, o));
    } catch (const treegate::file_error&) {
        if (st::save_to_memory(layer, st::dtype::f32) != before) bug("load_into", "a failed load changed the layer");
        return;
    } catch (const std::exception& e) {
        bug("unexpected exception", e.what());
    }
    try {
        check_values(layer, data, size, o);
        if (!treegate::detail::needs_external_gates(layer)) {
            using S = typename Layer::scalar_type;
            (void)layer.forward_batch(treegate::matrix<S>::Ones(layer.in_size(), 3));
        }
        // What loaded saves with treegate's metadata and loads back bit for bit.
        const auto bytes = st::save_to_memory(layer, st::dtype::f64);
        const Layer again = st::load_from_memory<Layer>(bytes.data(), bytes.size());
        if (st::save_to_memory(again, st::dtype::f64) != bytes) bug("round trip", "saved bytes differ after a reload");
    } catch (const std::exception& e) {
        bug("after a successful load", e.what());
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1) return 0;
    const unsigned o = data[0];
    for_layer(((o >> 3) & 7u) % layer_count, [&](const auto& l) { try_load_into(l, data + 1, size - 1, o); });

    // The FFF loader reads integer scalars and F16 from files of the same shape.
    treegate::pytorch::load_options torch;
    torch.file.verify_checksum = false;
    torch.leaf_bias = (o & 64u) != 0;
    torch.exact_ties = (o & 128u) == 0;
    if (prefixed(o)) torch.prefix = prefix;
    try {
        const auto fff = treegate::pytorch::load_fastfeedforward_from_memory<float>(data + 1, size - 1, "fuzz", torch);
        if (fff.has_leaf_bias() != torch.leaf_bias) bug("load_fastfeedforward", "leaf_bias option not honoured");
        (void)fff.forward_batch(treegate::matrix<float>::Ones(fff.in_size(), 2));
    } catch (const treegate::file_error&) {
    } catch (const std::exception& e) {
        bug("unexpected exception", e.what());
    }
    return 0;
}

#else  // the seed writer

namespace {

std::string dir;
int written = 0;

/// Appends a little-endian integer scalar tensor (I64 or I32) to a file.
bytes_t with_integer(const bytes_t& file, const std::string& name, const char* dtype, int width, std::int64_t v) {
    std::uint64_t n = 0;
    for (int k = 0; k < 8; ++k) n |= static_cast<std::uint64_t>(file[static_cast<std::size_t>(k)]) << (8 * k);
    auto header = nlohmann::json::parse(file.begin() + 8, file.begin() + 8 + static_cast<std::ptrdiff_t>(n));
    const std::size_t data_size = file.size() - 8 - static_cast<std::size_t>(n);
    header[name] = {{"dtype", dtype}, {"shape", nlohmann::json::array()}, {"data_offsets", {data_size, data_size + static_cast<std::size_t>(width)}}};
    header.erase("__metadata__");  // its checksum no longer covers the data
    std::string text = header.dump();
    while (text.size() % 8 != 0) text += ' ';
    bytes_t out;
    for (int k = 0; k < 8; ++k) out.push_back(static_cast<unsigned char>((text.size() >> (8 * k)) & 0xffu));
    out.insert(out.end(), text.begin(), text.end());
    out.insert(out.end(), file.begin() + 8 + static_cast<std::ptrdiff_t>(n), file.end());
    for (int k = 0; k < width; ++k) out.push_back(static_cast<unsigned char>((static_cast<std::uint64_t>(v) >> (8 * k)) & 0xffu));
    return out;
}

void write(unsigned o, const bytes_t& file) {
    bytes_t input{static_cast<unsigned char>(o)};
    input.insert(input.end(), file.begin(), file.end());
    std::ofstream out(dir + "/load_into_" + std::to_string(written++) + ".bin", std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(input.data()), static_cast<std::streamsize>(input.size()));
}

/// A state dict of `layer` as PyTorch would write it: no treegate metadata, the option's names.
template <class Layer>
bytes_t state_dict(const Layer& layer, unsigned o, st::dtype type) {
    using S = typename Layer::scalar_type;
    auto tensors = st::detail::store_tensors(layer);
    for (std::size_t k = 0; k < tensors.size(); ++k) {
        tensors[k].name = file_name(o, k, tensors[k].name);
        for (auto& v : tensors[k].values) v *= S(-0.5);  // other values than the layer's, exact in bf16 too
    }
    if (!strict_of(o)) tensors.push_back({std::string(prefixed(o) ? prefix : "") + "unused.weight", {2}, {S(1), S(-2)}, false});
    return st::detail::encode(tensors, {}, type, "seed");
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: make_load_into_corpus <directory>\n");
        return 2;
    }
    dir = argv[1];
    const st::dtype types[] = {st::dtype::f32, st::dtype::f16, st::dtype::bf16, st::dtype::f64};
    for (unsigned layer = 0; layer < layer_count; ++layer)
        for (unsigned flags = 0; flags < 8; ++flags) {
            const unsigned o = (layer << 3) | flags;
            for_layer(layer, [&](const auto& l) {
                const bytes_t file = state_dict(l, o, types[(layer + flags) % 4]);
                write(o, file);
                // Integer scalars beside the weights (the FFF package's depth, a step counter).
                if (!strict_of(o)) write(o, with_integer(file, std::string(prefixed(o) ? prefix : "") + "step", "I64", 8, 7));
                if (!strict_of(o)) write(o, with_integer(file, "depth", "I32", 4, 2));
            });
        }
    // FFF state dicts (depth 1 and 2, I64 depth) for the pytorch loader's bits 6 and 7.
    for (const int depth : {1, 2}) {
        const std::uint64_t leaves = std::uint64_t{1} << depth;
        std::vector<st::detail::tensor_values<float>> t = {
            {"node_weights", {leaves - 1, 2}, std::vector<float>(static_cast<std::size_t>(2 * (leaves - 1)), 0.5f), false},
            {"node_biases", {leaves - 1, 1}, std::vector<float>(static_cast<std::size_t>(leaves - 1), 0.0f), false},
            {"w1s", {leaves, 2, 2}, std::vector<float>(static_cast<std::size_t>(4 * leaves), -0.25f), false},
            {"b1s", {leaves, 2}, std::vector<float>(static_cast<std::size_t>(2 * leaves), 1.0f), false},
            {"w2s", {leaves, 2, 1}, std::vector<float>(static_cast<std::size_t>(2 * leaves), 2.0f), false},
            {"b2s", {leaves, 1}, std::vector<float>(static_cast<std::size_t>(leaves), 3.0f), false}};
        const bytes_t file = with_integer(st::detail::encode(t, {}, depth == 1 ? st::dtype::f16 : st::dtype::f32, "seed"),
                                          "depth", "I64", 8, depth);
        for (const unsigned o : {0u, 64u, 128u, 192u}) write(o, file);
    }
    std::printf("make_load_into_corpus: %d inputs in %s\n", written, dir.c_str());
    return 0;
}

#endif
