// The C++ half of the PyTorch/NumPy interop test (driven by interop.py):
//   interop_main run <float|double> <kind> <model> <inputs> <outputs> <resaved>
//     loads a model written by the Python safetensors package, runs it on inputs["x"] (and
//     inputs["gates"] for externally gated layers), writes outputs["y"], and saves the model again;
//   interop_main make <directory>
//     builds and initialises a few layers, saves each with its inputs and outputs for Python.
// Batches are stored [batch, features] row-major, which is treegate's features x batch layout.
#include <treegate/io/safetensors.hpp>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <random>
#include <string>

namespace st = treegate::safetensors;
using treegate::index_t;

namespace {

template <class S>
treegate::matrix<S> batch_of(const st::tensor<S>& t, const char* name) {
    if (t.shape.size() != 2) throw std::runtime_error(std::string(name) + " must be [batch, features]");
    const auto examples = static_cast<index_t>(t.shape[0]), features = static_cast<index_t>(t.shape[1]);
    return Eigen::Map<const treegate::matrix<S>>(t.values.data(), features, examples);
}

template <class S>
st::tensor<S> tensor_of(const treegate::matrix<S>& Y) {
    st::tensor<S> t{{static_cast<std::uint64_t>(Y.cols()), static_cast<std::uint64_t>(Y.rows())}, {}};
    t.values.assign(Y.data(), Y.data() + Y.size());
    return t;
}

template <class Layer>
void run_layer(const Layer& layer, const std::string& inputs, const std::string& outputs, const std::string& resaved,
               st::dtype type) {
    using S = typename Layer::scalar_type;
    const auto in = st::read_tensors<S>(inputs);
    const treegate::matrix<S> X = batch_of(in.at("x"), "x");
    treegate::matrix<S> Y;
    if constexpr (std::is_same_v<Layer, treegate::tree_linear<S>>) {
        if (layer.gates().is_external())
            Y = layer.forward_batch(X, batch_of(in.at("gates"), "gates"));
        else
            Y = layer.forward_batch(X);
    } else {
        Y = layer.forward_batch(X);
    }
    st::write_tensors<S>({{"y", tensor_of(Y)}}, outputs, type);
    st::save(layer, resaved, type);
}

template <class S>
int run(const std::string& kind, const std::string& model, const std::string& inputs, const std::string& outputs,
        const std::string& resaved) {
    const st::dtype type = sizeof(S) == sizeof(double) ? st::dtype::f64 : st::dtype::f32;
    if (kind == "dense")
        run_layer(st::load_dense<S>(model), inputs, outputs, resaved, type);
    else if (kind == "tree_linear")
        run_layer(st::load_tree_linear<S>(model), inputs, outputs, resaved, type);
    else if (kind == "sliced_tree_linear")
        run_layer(st::load_sliced_tree_linear<S>(model), inputs, outputs, resaved, type);
    else if (kind == "tree_feedforward")
        run_layer(st::load_tree_feedforward<S>(model), inputs, outputs, resaved, type);
    else if (kind == "sequential")
        run_layer(st::load<treegate::sequential<treegate::dense<S>, treegate::activation_layer<S>, treegate::tree_linear<S>>>(model),
                  inputs, outputs, resaved, type);
    else {
        std::fprintf(stderr, "interop_main: unknown kind %s\n", kind.c_str());
        return 2;
    }
    return 0;
}

template <class Layer>
void make_one(const std::string& dir, const std::string& name, Layer layer, index_t in, st::dtype type,
              bool external = false) {
    using S = typename Layer::scalar_type;
    layer.initialize(17);
    std::mt19937 g(5);
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    treegate::matrix<S> X(in, 12);
    for (index_t k = 0; k < X.size(); ++k) X.data()[k] = static_cast<S>(u(g));
    st::tensor_map<S> io{{"x", tensor_of(X)}};
    treegate::matrix<S> Y;
    if constexpr (std::is_same_v<Layer, treegate::tree_linear<S>>) {
        if (external) {
            treegate::matrix<S> G(layer.depth(), 12);
            for (index_t k = 0; k < G.size(); ++k) G.data()[k] = static_cast<S>(u(g));
            io["gates"] = tensor_of(G);
            Y = layer.forward_batch(X, G);
        } else {
            Y = layer.forward_batch(X);
        }
    } else {
        Y = layer.forward_batch(X);
    }
    io["y"] = tensor_of(Y);
    st::save(layer, dir + "/" + name + ".safetensors", type);
    st::write_tensors(io, dir + "/" + name + ".io.safetensors", type);
}

int make(const std::string& dir) {
    using treegate::activation;
    using treegate::tree_mode;
    using treegate::gating;
    make_one(dir, "cpp_dense", treegate::dense<float>(5, 3), 5, st::dtype::f32);
    make_one(dir, "cpp_tree_linear", treegate::tree_linear<float>(6, 4, 3, tree_mode::path_sum, gating::from_input({0, 5, 2})),
             6, st::dtype::f32);
    make_one(dir, "cpp_tree_linear_external",
             treegate::tree_linear<double>(4, 3, 2, tree_mode::leaf_only, gating::external(), false), 4, st::dtype::f64, true);
    make_one(dir, "cpp_tree_feedforward",
             treegate::tree_feedforward<double>(5, 3, 4, 2, 2, activation::gelu, tree_mode::leaf_only), 5, st::dtype::f64);
    make_one(dir, "cpp_tree_feedforward_fff",
             treegate::tree_feedforward<double>(5, 2, 1, 3, 1, activation::gelu, tree_mode::path_sum, false), 5, st::dtype::f64);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        const std::string cmd = argc > 1 ? argv[1] : "";
        if (cmd == "run" && argc == 8) {
            const std::string scalar = argv[2];
            if (scalar == "double") return run<double>(argv[3], argv[4], argv[5], argv[6], argv[7]);
            return run<float>(argv[3], argv[4], argv[5], argv[6], argv[7]);
        }
        if (cmd == "make" && argc == 3) return make(argv[2]);
        std::fprintf(stderr,
                     "usage: interop_main run <float|double> <kind> <model> <inputs> <outputs> <resaved>\n"
                     "       interop_main make <directory>\n");
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "interop_main: %s\n", e.what());
        return 1;
    }
}
