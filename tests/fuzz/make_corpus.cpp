// Writes the seed corpus of fuzz_safetensors: small valid files of every layer kind and dtype,
// and a few broken ones. Usage: make_corpus <directory>. The committed tests/fuzz/corpus/ was
// made with it; CMake also runs it into the build tree.
#include <treegate/io/mapped.hpp>
#include <treegate/io/safetensors.hpp>
#include <treegate/layers/tree_linear_bf16.hpp>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

namespace st = treegate::safetensors;
using treegate::activation;
using treegate::slice_combine;
using treegate::tree_mode;
using treegate::gating;

namespace {

std::string dir;

void write(const std::string& name, const std::vector<unsigned char>& bytes) {
    std::ofstream out(dir + "/" + name, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

template <class Layer>
void valid(const std::string& name, Layer layer, st::dtype type = st::dtype::f32) {
    layer.initialize(1);
    write("valid_" + name + ".safetensors", st::save_to_memory(layer, type));
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: make_corpus <directory>\n");
        return 2;
    }
    dir = argv[1];
    valid("dense", treegate::dense<float>(3, 2));
    valid("dense_nobias_bf16", treegate::dense<float>(2, 2, false), st::dtype::bf16);
    valid("dense_f16", treegate::dense<float>(3, 2), st::dtype::f16);
    {  // the blocks layout of save_for_mapping, float and bf16 weights
        treegate::tree_linear<float> t(3, 2, 2, tree_mode::leaf_only, gating::from_input({0, 2}));
        t.initialize(1);
        st::save_for_mapping(t, dir + "/valid_mapped_tree_linear.safetensors");
        st::save_for_mapping(treegate::tree_linear_bf16<>(t), dir + "/valid_mapped_tree_linear_bf16.safetensors");
    }
    valid("tree_linear", treegate::tree_linear<float>(3, 2, 1, tree_mode::path_sum, gating::from_input({0})));
    valid("tree_linear_leaf_f64", treegate::tree_linear<float>(2, 1, 2, tree_mode::leaf_only, gating::from_input({1, 0})),
          st::dtype::f64);
    valid("tree_linear_external", treegate::tree_linear<float>(2, 2, 1, tree_mode::path_sum, gating::external(), false));
    valid("tree_feedforward", treegate::tree_feedforward<float>(2, 2, 1, 1, 1, activation::gelu, tree_mode::path_sum));
    valid("tree_feedforward_leaf_mlp",
          treegate::tree_feedforward<float>(2, 1, 2, 1, 2, activation::relu, tree_mode::leaf_only, false), st::dtype::bf16);
    valid("sliced_tree_linear",
          treegate::sliced_tree_linear<float>(2, 1, 1, tree_mode::path_sum, slice_combine::concat, {{0}, {1}}));
    valid("sequential", treegate::sequential<treegate::dense<float>, treegate::activation_layer<float>, treegate::tree_linear<float>>(
                            treegate::dense<float>(2, 2), treegate::activation_layer<float>(activation::tanh, 2),
                            treegate::tree_linear<float>(2, 1, 1, tree_mode::path_sum, gating::from_input({1}))));

    // A PyTorch state dict without treegate metadata: the fastfeedforward FFF of depth 1
    // (io/pytorch.hpp's layout), its depth an I64 scalar, weights F16 and F32.
    {
        const std::string h = R"({"depth":{"dtype":"I64","shape":[],"data_offsets":[0,8]},)"
                              R"("node_weights":{"dtype":"F16","shape":[1,2],"data_offsets":[8,12]},)"
                              R"("node_biases":{"dtype":"F16","shape":[1,1],"data_offsets":[12,14]},)"
                              R"("b1s":{"dtype":"F16","shape":[2,1],"data_offsets":[14,18]},)"
                              R"("w1s":{"dtype":"F32","shape":[2,2,1],"data_offsets":[18,34]},)"
                              R"("w2s":{"dtype":"F32","shape":[2,1,1],"data_offsets":[34,42]},)"
                              R"("b2s":{"dtype":"F32","shape":[2,1],"data_offsets":[42,50]}})";
        std::vector<unsigned char> f;
        for (int k = 0; k < 8; ++k) f.push_back(static_cast<unsigned char>((h.size() >> (8 * k)) & 0xffu));
        f.insert(f.end(), h.begin(), h.end());
        const unsigned char data[50] = {1, 0, 0, 0, 0, 0, 0, 0,              // depth 1
                                        0x00, 0x3c, 0x00, 0xbc, 0x00, 0x38,  // 1, -1; 0.5
                                        0x01, 0x00, 0xff, 0x7b,              // 2^-24, 65504
                                        0, 0, 0x80, 0x3f, 0, 0, 0x80, 0xbf, 0, 0, 0, 0x40, 0, 0, 0, 0,
                                        0, 0, 0x80, 0x3f, 0, 0, 0, 0x3f, 0, 0, 0, 0, 0, 0, 0, 0};
        f.insert(f.end(), data, data + sizeof data);
        write("valid_fastfeedforward_i64_f16.safetensors", f);
    }

    auto good = st::save_to_memory(treegate::dense<float>(2, 1));
    auto truncated = good;
    truncated.resize(truncated.size() - 3);
    write("broken_truncated.safetensors", truncated);
    std::vector<unsigned char> tiny(good.begin(), good.begin() + 5);
    write("broken_short.safetensors", tiny);
    const std::string dup = R"({"weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                            R"("weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"__metadata__":{"kind":"dense"}})";
    std::vector<unsigned char> d;
    for (int k = 0; k < 8; ++k) d.push_back(static_cast<unsigned char>((dup.size() >> (8 * k)) & 0xffu));
    d.insert(d.end(), dup.begin(), dup.end());
    d.insert(d.end(), 4, 0);
    write("broken_duplicate.safetensors", d);
    // Same size, valid header, one data byte changed: refused by the checksum of the data.
    auto flipped = good;
    flipped.back() ^= 0x01u;
    write("broken_checksum.safetensors", flipped);
    return 0;
}
