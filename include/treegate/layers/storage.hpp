// treegate/layers/storage.hpp — how a layer holds its weight blocks: the storage type parameter.
// Below tree_linear (layers/tree_linear.hpp), which takes one of these as its last template argument.
//
// A storage type names the element type of the weight blocks, whether the layer may write them
// (train, initialize, load into), and the buffer that holds them. The layer's layout (block
// order, strides, biases in Scalar) is the same for every storage; only the bytes differ.
//
// The seam for memory the layer does not own (a memory-mapped file): a `storage::view<T>` would
// name `element = T`, `writable = false` and a `buffer` that points into someone else's bytes
// instead of allocating; tree_linear needs nothing else from it.
#ifndef TREEGATE_LAYERS_STORAGE_HPP
#define TREEGATE_LAYERS_STORAGE_HPP

#include "../bf16.hpp"
#include "../detail/aligned_buffer.hpp"


namespace treegate {

/// Blocks at data, data + stride, ..., data + (count - 1) * stride.
template <class T>
struct block_run {
    T* data = nullptr;
    index_t count = 0;
    index_t stride = 0;
};

namespace storage {

/// Weight blocks of type T in a 64-byte aligned buffer the layer allocates and owns.
/// owned<Scalar> is the trainable layer; owned<bf16> the serving copy with half the bytes.
template <class T>
struct owned {
    using element = T;
    static constexpr bool writable = true;
    template <class E>
    using buffer = detail::aligned_buffer<E>;
};

}  // namespace storage
}  // namespace treegate

#endif
