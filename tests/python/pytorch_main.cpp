// The C++ side of tests/python/pytorch_interop.py: loads a PyTorch state dict with one call of
// io/pytorch.hpp (or load_into for a plain nn.Sequential) and runs it on inputs from Python.
//   pytorch_main <fff|fff_direct|fff_train|ufb|sequential> <model> <inputs> <outputs> [option]
//     inputs["x"] [batch, in] (F32); writes outputs["y"] [batch, out] (F32).
//     fff: load_fastfeedforward's defaults (the package's eval path: `>= 0`, no b2s);
//     fff_direct: exact_ties off; fff_train: exact_ties off and leaf_bias on (its hard training path).
//     option: the name prefix (fff*), "prefix[:trees]" (ufb) or "in,hidden,out" (sequential).
//   Exit 0 done, 1 error, 3 when load_into cannot read a file without treegate metadata yet.
#include <treegate/io/pytorch.hpp>
#include <treegate/io/safetensors.hpp>
#include <treegate/layers/activation_layer.hpp>
#include <treegate/layers/dense.hpp>
#include <treegate/layers/sequential.hpp>

#include <cstdint>
#include <exception>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace st = treegate::safetensors;
namespace tp = treegate::pytorch;
using treegate::index_t;

namespace {

// Rows of a [batch, features] tensor are examples; treegate's batches are features x examples.
template <class Layer>
void run(const Layer& layer, const std::string& inputs, const std::string& outputs) {
    const auto x = st::read_tensors<float>(inputs).at("x");
    if (x.shape.size() != 2) throw std::runtime_error("inputs['x'] must be [batch, in]");
    const auto batch = static_cast<index_t>(x.shape[0]), in = static_cast<index_t>(x.shape[1]);
    const Eigen::Map<const treegate::matrix<float>> X(x.values.data(), in, batch);
    const treegate::matrix<float> Y = layer.forward_batch(X);
    st::tensor_map<float> out;
    out["y"] = {{x.shape[0], static_cast<std::uint64_t>(Y.rows())}, std::vector<float>(Y.data(), Y.data() + Y.size())};
    st::write_tensors(out, outputs);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 5 || argc > 6) {
        std::cerr << "usage: pytorch_main <fff|fff_direct|fff_train|ufb|sequential> <model> <inputs> <outputs> [option]\n";
        return 1;
    }
    const std::string kind = argv[1], model = argv[2], inputs = argv[3], outputs = argv[4];
    const std::string option = argc == 6 ? argv[5] : "";
    try {
        tp::load_options opt;
        opt.prefix = option;
        if (kind == "fff" || kind == "fff_direct" || kind == "fff_train") {
            opt.exact_ties = kind == "fff";
            opt.leaf_bias = kind == "fff_train";
            run(tp::load_fastfeedforward<float>(model, opt), inputs, outputs);
        } else if (kind == "ufb") {
            const auto colon = option.find(':');  // "prefix:trees"
            if (colon != std::string::npos) {
                opt.prefix = option.substr(0, colon);
                opt.trees = std::stoi(option.substr(colon + 1));
            }
            run(tp::load_ultrafastbert<float>(model, opt), inputs, outputs);
        } else if (kind == "sequential") {
            index_t in = 0, hidden = 0, out = 0;
            char comma = 0;
            std::istringstream sizes(option);
            sizes >> in >> comma >> hidden >> comma >> out;
            treegate::sequential<treegate::dense<float>, treegate::activation_layer<float>, treegate::dense<float>> net(
                treegate::dense<float>(in, hidden), treegate::activation_layer<float>(treegate::activation::relu, hidden),
                treegate::dense<float>(hidden, out));
            st::load_options by_layer;  // a state_dict: the C++ model is the specification
            by_layer.require_metadata = false;
            st::load_into(net, model, by_layer);
            run(net, inputs, outputs);
        } else {
            std::cerr << "pytorch_main: unknown kind '" << kind << "'\n";
            return 1;
        }
    } catch (const std::exception& e) {
        std::cerr << "pytorch_main: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
