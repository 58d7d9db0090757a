// treegate/layers/storage.hpp — how a layer holds its weight blocks: the storage type parameter.
// Below tree_linear (layers/tree_linear.hpp), which takes one of these as its last template argument.
//
// A storage type names the element type of the weight blocks, whether the layer may write them
// (train, initialize, load into), and the buffer that holds them. The layer's layout (block
// order, strides, biases in Scalar) is the same for every storage; only the bytes differ.
//
// Memory the layer does not own (a memory-mapped file, io/mapped.hpp): storage::mapped<T> names
// `writable = false` and a `buffer` that points into someone else's bytes, keeping them alive
// through a shared owner, instead of allocating. tree_linear needs nothing else from it.
#ifndef TREEGATE_LAYERS_STORAGE_HPP
#define TREEGATE_LAYERS_STORAGE_HPP

#include "../bf16.hpp"
#include "../detail/aligned_buffer.hpp"

#include <memory>
#include <utility>


namespace treegate {

/// Blocks at data, data + stride, ..., data + (count - 1) * stride.
template <class T>
struct block_run {
    T* data = nullptr;
    index_t count = 0;
    index_t stride = 0;
};

namespace detail {

/// `size` elements that someone else holds, read-only, kept alive by `owner` (for a mapped
/// file, the mapping: the last view destroyed unmaps it). Copies share the owner; a move leaves
/// the source empty, as aligned_buffer's does.
template <class E>
class shared_view {
public:
    shared_view() = default;
    shared_view(std::shared_ptr<const void> owner, const E* data, index_t size) noexcept
        : owner_(std::move(owner)), data_(data), size_(size) {}
    shared_view(const shared_view&) = default;
    shared_view& operator=(const shared_view&) = default;
    shared_view(shared_view&& o) noexcept
        : owner_(std::move(o.owner_)), data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
    shared_view& operator=(shared_view&& o) noexcept {
        owner_ = std::move(o.owner_);
        data_ = std::exchange(o.data_, nullptr);
        size_ = std::exchange(o.size_, 0);
        return *this;
    }

    const E* data() const noexcept { return data_; }
    index_t size() const noexcept { return size_; }
    index_t bytes() const noexcept { return size_ * static_cast<index_t>(sizeof(E)); }
    /// The owner of the bytes (how many layers share a mapping: owner().use_count()).
    const std::shared_ptr<const void>& owner() const noexcept { return owner_; }

private:
    std::shared_ptr<const void> owner_;
    const E* data_ = nullptr;
    index_t size_ = 0;
};

}  // namespace detail

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

/// Weight blocks of type T (and the biases) read in place from bytes the layer does not own,
/// at the strides owned<T> would use: a file mapped by safetensors::map_layer (io/mapped.hpp).
/// Serves exactly as owned<T> (same kernels, same layout); cannot be trained, initialized or
/// loaded into (those do not compile for it).
template <class T>
struct mapped {
    using element = T;
    static constexpr bool writable = false;
    template <class E>
    using buffer = detail::shared_view<E>;
};

}  // namespace storage
}  // namespace treegate

#endif
