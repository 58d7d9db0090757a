// libFuzzer target for the safetensors loader: any bytes must either load or raise
// treegate::file_error; anything else (another exception, a crash, a sanitizer report) is a bug.
// Build: clang++ -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -isystem /usr/include/eigen3
#include <treegate/io/mapped.hpp>
#include <treegate/io/pytorch.hpp>
#include <treegate/io/safetensors.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <vector>

namespace {

namespace st = treegate::safetensors;

[[noreturn]] void bug(const char* what, const char* message) {
    std::fprintf(stderr, "fuzz_safetensors: %s: %s\n", what, message);
    std::abort();
}

// A layer that loaded must be usable and must survive a save/load round trip bit for bit.
template <class Layer>
void exercise(const Layer& layer) {
    if (layer.in_size() <= 4096 && !treegate::detail::needs_external_gates(layer)) {
        using S = typename Layer::scalar_type;
        const treegate::matrix<S> X = treegate::matrix<S>::Ones(layer.in_size(), 2);
        (void)layer.forward_batch(X);
    }
    const auto bytes = st::save_to_memory(layer, st::dtype::f32);
    const Layer again = st::load_from_memory<Layer>(bytes.data(), bytes.size());
    if (st::save_to_memory(again, st::dtype::f32) != bytes) bug("round trip", "saved bytes differ after a reload");
}

// The layer loaders skip the checksum: most mutations of a valid seed change its data, and a
// checksum mismatch would then stop them before the value checks and the layer construction.
// read_tensors below verifies it, which covers the checksum code.
st::load_options unverified() {
    st::load_options o;
    o.verify_checksum = false;
    return o;
}

template <class Layer>
void try_load(const std::uint8_t* data, std::size_t size) {
    try {
        const Layer layer = st::load_from_memory<Layer>(data, size, "fuzz", unverified());
        exercise(layer);
    } catch (const treegate::file_error&) {
        // the only acceptable way to refuse a file
    } catch (const std::exception& e) {
        bug("unexpected exception", e.what());
    }
}

template <class Layer>
void try_load_into(Layer layer, const std::uint8_t* data, std::size_t size) {
    const auto before = st::save_to_memory(layer, st::dtype::f32);
    try {
        st::load_into_from_memory(layer, data, size, "fuzz", unverified());
    } catch (const treegate::file_error&) {
        if (st::save_to_memory(layer, st::dtype::f32) != before) bug("load_into", "a failed load changed the layer");
    } catch (const std::exception& e) {
        bug("unexpected exception", e.what());
    }
}

template <class Load>
void try_pytorch(Load&& load) {
    try {
        exercise(load());
    } catch (const treegate::file_error&) {
    } catch (const std::exception& e) {
        bug("unexpected exception", e.what());
    }
}

// The mapped path (io/mapped.hpp) over a copy of the input, as map_layer reads a mapping: a
// blocks file maps or raises file_error, with and without the data pass; a mapped layer serves,
// and bit for bit as its owned copy (to_owned).
template <class Layer>
void try_map(const std::uint8_t* data, std::size_t size) {
    try {
        const auto bytes = std::make_shared<const std::vector<unsigned char>>(data, data + size);
        const auto f = st::detail::parse(bytes->data(), bytes->size(), "fuzz");
        if (st::detail::declared_layout(f) != st::weight_layout::blocks) return;
        for (const bool verify : {false, true}) {
            st::map_options o;
            o.verify_data = verify;
            const Layer layer = st::detail::map_blocks<Layer>(f, bytes->data(), bytes, nullptr, o);
            if (layer.in_size() > 4096 || treegate::detail::needs_external_gates(layer)) continue;
            const treegate::matrix<float> X = treegate::matrix<float>::Ones(layer.in_size(), 2);
            const treegate::matrix<float> a = layer.forward_batch(X), b = st::to_owned(layer).forward_batch(X);
            if (std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.size()) * sizeof(float)) != 0)
                bug("mapped", "a mapped layer and its owned copy differ");
        }
    } catch (const treegate::file_error&) {
    } catch (const std::exception& e) {
        bug("unexpected exception", e.what());
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using treegate::gating;
    using treegate::tree_mode;
    try_load<treegate::dense<float>>(data, size);
    try_load<treegate::tree_linear<float>>(data, size);
    try_load<treegate::tree_feedforward<float>>(data, size);
    try_load<treegate::sliced_tree_linear<float>>(data, size);
    try_load<treegate::sequential<treegate::dense<float>, treegate::activation_layer<float>, treegate::tree_linear<float>>>(
        data, size);
    try_load<treegate::tree_feedforward<double>>(data, size);
    try_map<treegate::mapped_tree_linear<float>>(data, size);
    try_map<treegate::mapped_tree_linear_bf16<>>(data, size);

    // PyTorch layouts (io/pytorch.hpp), which files without treegate's metadata reach.
    treegate::pytorch::load_options torch_options;
    torch_options.file = unverified();
    try_pytorch([&] { return treegate::pytorch::load_fastfeedforward_from_memory<float>(data, size, "fuzz", torch_options); });
    try_pytorch([&] { return treegate::pytorch::load_ultrafastbert_from_memory<float>(data, size, "fuzz", torch_options); });

    try {
        (void)st::read_tensors_from_memory<float>(data, size, "fuzz");
    } catch (const treegate::file_error&) {
    } catch (const std::exception& e) {
        bug("unexpected exception", e.what());
    }

    treegate::tree_linear<float> fixed(3, 2, 1, tree_mode::path_sum, gating::from_input({0}));
    fixed.initialize(1);
    try_load_into(std::move(fixed), data, size);
    return 0;
}
