// treegate/layers/tree_linear_bf16.hpp — a serving copy of a float tree_linear with bf16 weights.
// tree_linear with storage::owned<bf16> (layers/storage.hpp): same routing, grouping and block layout.
//
// Weights are rounded once, at construction, to bfloat16 (round to nearest even; see bf16.hpp)
// and widened back to float inside the kernels, which multiply and accumulate in float; biases,
// activations and outputs stay float. Memory-bound cases (one example per path, tiny groups)
// read half the bytes of the float layer. The x86 kernels widen with AVX2 (VPMOVZXWD + VPSLLD)
// and need no AVX-512: the AVX-512 BF16 dot-product instructions (VDPBF16PS) would also round
// the activations to bf16, and are not available on every machine this library targets.
//
// Accuracy: bf16 keeps 8 significant bits, so rounding moves a weight by at most half an ulp,
// a relative 2^-8 (the unit roundoff; reached just above a power of two). Per output entry,
// |y_bf16 - y_f32| <= 2^-8 * sum over the path's blocks of sum_k |W_ik x_k| plus the float
// accumulation error of the two layers (tests/test_bf16.cpp checks exactly that bound).
#ifndef TREEGATE_LAYERS_TREE_LINEAR_BF16_HPP
#define TREEGATE_LAYERS_TREE_LINEAR_BF16_HPP

#include "../bf16.hpp"
#include "../kernels/policy.hpp"
#include "storage.hpp"
#include "tree_linear.hpp"

namespace treegate {

/// A tree_linear (path_sum or leaf_only, any gating, with or without bias) whose blocks are
/// stored as bf16, for serving: built from a trained float layer (rounding each weight), or
/// loaded from a safetensors file (io/safetensors.hpp); not trainable. Sizes are dynamic;
/// inputs, gates and outputs are float. The policy must provide the bf16 overloads of gemm and
/// path_sum (reference, eigen and avx2 do).
///
/// Storage: like tree_linear, one buffer of blocks, each `Out x In` column-major and 64-byte
/// aligned (stride padded to 32 bf16), block i = node i (path_sum) or leaf i (leaf_only); a
/// second buffer of float biases in the same order. To serve a path_sum tree as a flat table,
/// flatten it first (in float, see layers/flatten.hpp) and convert the result.
template <class Policy = kernels::default_policy>
using tree_linear_bf16 = tree_linear<float, dynamic, dynamic, dynamic, Policy, storage::owned<bf16>>;

}  // namespace treegate

#endif
