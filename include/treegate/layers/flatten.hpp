// treegate/layers/flatten.hpp — turns a path_sum tree_linear into the equivalent leaf_only table.
// The paper's tree for training, a flat table for serving: 1/(D+1) of the work, 2^D blocks.
#ifndef TREEGATE_LAYERS_FLATTEN_HPP
#define TREEGATE_LAYERS_FLATTEN_HPP

#include "../error.hpp"
#include "../tree.hpp"
#include "tree_linear.hpp"

#include <cstddef>
#include <vector>

namespace treegate {

/// The leaf_only layer equal to the path_sum layer `t`: same sizes, gating, bias flag and
/// policy; leaf l holds the sum of the blocks (and biases) of the nodes on the path to leaf l.
///
/// The sums are formed root to leaf in double, sharing the partial sums of common prefixes
/// (one addition per tree node, not per leaf and level), and rounded to Scalar once: each
/// flattened entry is the exactly rounded sum up to a relative 2^-53 (D+1) error, so the flat
/// layer's output differs from the exact tree output by at most one extra rounding of each
/// weight on top of a single dense product's own error. Throws config_error unless `t` is path_sum.
template <class Scalar, int In, int Out, int Depth, class Policy>
tree_linear<Scalar, In, Out, Depth, Policy> flatten(const tree_linear<Scalar, In, Out, Depth, Policy>& t) {
    detail::check_live("flatten: the tree_linear layer", t.in_size() != 0);
    detail::check_config(t.mode() == tree_mode::path_sum, "flatten: the tree_linear layer is ", to_string(t.mode()),
                         ", only a path_sum layer can be flattened");
    using dmat = Eigen::MatrixXd;
    using dvec = Eigen::VectorXd;
    const int depth = t.depth();
    const index_t in = t.in_size(), out = t.out_size();
    const bool bias = t.has_bias();
    tree_linear<Scalar, In, Out, Depth, Policy> flat(in, out, depth, tree_mode::leaf_only, t.gates(), bias);

    // sum_w[j] / sum_b[j]: the sum of levels 0..j along the current leaf's path, for a slice of
    // `chunk` input columns at a time so that the D+1 partial sums stay small (and in cache).
    const auto levels = static_cast<std::size_t>(depth + 1);
    const index_t chunk = 64;
    const index_t leaves = tree::leaf_count(depth);
    std::vector<dmat> sum_w(levels);
    std::vector<dvec> sum_b(levels);
    for (index_t c0 = 0; c0 < in; c0 += chunk) {
        const index_t cc = in - c0 < chunk ? in - c0 : chunk;
        const bool with_bias = bias && c0 == 0;  // biases once, with the first slice
        for (index_t l = 0; l < leaves; ++l) {
            const auto code = static_cast<leaf_t>(l);
            // The first level whose node differs from the previous leaf's path (level 0 for leaf 0).
            int first = 0;
            if (l > 0) {
                first = 1;
                while (first < depth && tree::path_node(code, depth, first) == tree::path_node(code - 1, depth, first))
                    ++first;
            }
            for (int j = first; j <= depth; ++j) {
                const index_t node = tree::path_node(code, depth, j);
                const auto sj = static_cast<std::size_t>(j);
                const auto w = t.weight(node).middleCols(c0, cc).template cast<double>();
                if (j == 0)
                    sum_w[0] = w;
                else
                    sum_w[sj] = sum_w[sj - 1] + w;
                if (with_bias) {
                    if (j == 0)
                        sum_b[0] = t.bias(node).template cast<double>();
                    else
                        sum_b[sj] = sum_b[sj - 1] + t.bias(node).template cast<double>();
                }
            }
            flat.weight(l).middleCols(c0, cc) = sum_w[levels - 1].template cast<Scalar>();
            if (with_bias) flat.bias(l) = sum_b[levels - 1].template cast<Scalar>();
        }
    }
    return flat;
}

}  // namespace treegate

#endif
