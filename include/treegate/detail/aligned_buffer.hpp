// treegate/detail/aligned_buffer.hpp — an owning, zero-initialised, cache-line-aligned array.
// Holds every layer's weights (one contiguous buffer per layer); all size arithmetic is checked here.
#ifndef TREEGATE_DETAIL_ALIGNED_BUFFER_HPP
#define TREEGATE_DETAIL_ALIGNED_BUFFER_HPP

#include "../config.hpp"
#include "../error.hpp"

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <memory>
#include <new>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>

namespace treegate::detail {

/// a * b, or a config_error naming `what` when the product does not fit index_t.
inline index_t checked_mul(index_t a, index_t b, const char* layer, const char* what) {
    if (a != 0 && b > std::numeric_limits<index_t>::max() / a)
        raise<config_error>(layer, ": ", what, " overflows (", a, " x ", b, ")");
    return a * b;
}

inline index_t checked_add(index_t a, index_t b, const char* layer, const char* what) {
    if (b > std::numeric_limits<index_t>::max() - a) raise<config_error>(layer, ": ", what, " overflows (", a, " + ", b, ")");
    return a + b;
}

/// n_1 + ... + n_k, or a config_error naming `what`.
inline index_t checked_sum(std::initializer_list<index_t> terms, const char* layer, const char* what) {
    index_t sum = 0;
    for (index_t t : terms) sum = checked_add(sum, t, layer, what);
    return sum;
}

/// Scalars missing from n to a whole number of `block_alignment` lines (no overflow possible).
template <class Scalar>
constexpr index_t line_padding(index_t n) noexcept {
    constexpr index_t per_line = static_cast<index_t>(block_alignment / sizeof(Scalar));
    return per_line > 1 && n % per_line != 0 ? per_line - n % per_line : 0;
}

/// n rounded up to whole `block_alignment` lines; a config_error (never a wrapped, negative
/// count) when that does not fit index_t.
template <class Scalar>
index_t padded(index_t n) {
    return checked_add(n, line_padding<Scalar>(n), "padded", "a count rounded up to a cache line");
}

/// Distance in scalars between consecutive blocks of n scalars in a layer's buffer. A block is
/// padded to the next `block_alignment` boundary, so that every block starts on a cache line,
/// only when the padding costs at most 1/8 of the block: padding tiny blocks (a width-1 node's
/// bias, a 1 x 1 block) to a whole cache line would multiply their memory (16x for one float)
/// and buys nothing, as the kernels load unaligned anyway. Block sizes that are whole cache
/// lines (every multiple of 16 floats: 256, 512, 768 rows) are never padded.
template <class Scalar>
index_t block_stride(index_t n, const char* layer, const char* what) {
    const index_t pad = line_padding<Scalar>(n);
    return pad * 8 <= n ? checked_add(n, pad, layer, what) : n;
}

/// A layer's size as its allocation errors quote it: parameter_count() and memory_bytes().
struct footprint {
    index_t parameters = 0;
    index_t bytes = 0;
};

/// Bytes of buffers of these scalar counts, or a config_error when one buffer could not even
/// be addressed.
template <class Scalar>
index_t checked_bytes(std::initializer_list<index_t> counts, const char* layer) {
    constexpr index_t max_n = static_cast<index_t>(std::numeric_limits<std::ptrdiff_t>::max() / sizeof(Scalar));
    index_t bytes = 0;
    for (index_t n : counts) {
        if (n < 0 || n > max_n) raise<config_error>(layer, ": cannot hold ", n, " scalars of ", sizeof(Scalar), " bytes in one buffer");
        bytes = checked_add(bytes, n * static_cast<index_t>(sizeof(Scalar)), layer, "byte count");
    }
    return bytes;
}

template <class Scalar>
class aligned_buffer {
    static_assert(std::is_trivially_copyable_v<Scalar>, "aligned_buffer holds plain scalars");

    struct deleter {
        void operator()(Scalar* p) const noexcept { ::operator delete(p, std::align_val_t{block_alignment}); }
    };

public:
    aligned_buffer() = default;

    /// `n` zeroed scalars; a config_error naming `layer` if the size is absurd or memory runs
    /// out, quoting the whole layer's `total` (parameters and bytes with padding) when given.
    aligned_buffer(index_t n, const char* layer, const footprint& total = {}) : size_(n) {
        if (n == 0) return;
        constexpr index_t max_n = static_cast<index_t>(std::numeric_limits<std::ptrdiff_t>::max() / sizeof(Scalar));
        if (n < 0 || n > max_n) raise<config_error>(layer, ": cannot hold ", n, " scalars in one buffer", layer_size(total));
        void* p = nullptr;
        try {
            p = ::operator new(static_cast<std::size_t>(n) * sizeof(Scalar), std::align_val_t{block_alignment});
        } catch (const std::bad_alloc&) {
            raise<config_error>(layer, ": cannot allocate ", n, " scalars (", static_cast<double>(n) * sizeof(Scalar) / 1e9,
                                " GB) in one buffer", layer_size(total));
        }
        std::memset(p, 0, static_cast<std::size_t>(n) * sizeof(Scalar));
        data_.reset(static_cast<Scalar*>(p));
    }

    aligned_buffer(const aligned_buffer& o) : aligned_buffer(o.size_, "copy") {
        if (size_) std::memcpy(data_.get(), o.data_.get(), static_cast<std::size_t>(size_) * sizeof(Scalar));
    }
    aligned_buffer& operator=(const aligned_buffer& o) {
        if (this != &o) *this = aligned_buffer(o);
        return *this;
    }
    aligned_buffer(aligned_buffer&& o) noexcept : data_(std::move(o.data_)), size_(std::exchange(o.size_, 0)) {}
    aligned_buffer& operator=(aligned_buffer&& o) noexcept {
        data_ = std::move(o.data_);
        size_ = std::exchange(o.size_, 0);
        return *this;
    }

    Scalar* data() noexcept { return data_.get(); }
    index_t bytes() const noexcept { return size_ * static_cast<index_t>(sizeof(Scalar)); }
    const Scalar* data() const noexcept { return data_.get(); }
    index_t size() const noexcept { return size_; }

private:
    static std::string layer_size(const footprint& total) {
        if (total.bytes == 0) return {};
        std::ostringstream os;
        os << "; the layer has " << total.parameters << " parameters taking " << total.bytes << " bytes ("
           << static_cast<double>(total.bytes) / 1e9 << " GB) with padding";
        return os.str();
    }

    std::unique_ptr<Scalar, deleter> data_;
    index_t size_ = 0;
};

}  // namespace treegate::detail

#endif
