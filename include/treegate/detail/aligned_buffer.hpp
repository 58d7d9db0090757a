// treegate/detail/aligned_buffer.hpp — an owning, zero-initialised, cache-line-aligned array.
// Holds every layer's weights (one contiguous buffer per layer); sizes are checked for overflow.
#ifndef TREEGATE_DETAIL_ALIGNED_BUFFER_HPP
#define TREEGATE_DETAIL_ALIGNED_BUFFER_HPP

#include "../config.hpp"
#include "../error.hpp"

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
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

/// Rounds a count of scalars up so that the next block starts on `block_alignment`.
template <class Scalar>
constexpr index_t padded(index_t n) noexcept {
    constexpr index_t per_line = static_cast<index_t>(block_alignment / sizeof(Scalar));
    return per_line > 1 ? (n + per_line - 1) / per_line * per_line : n;
}

template <class Scalar>
class aligned_buffer {
    static_assert(std::is_trivially_copyable_v<Scalar>, "aligned_buffer holds plain scalars");

    struct deleter {
        void operator()(Scalar* p) const noexcept { ::operator delete(p, std::align_val_t{block_alignment}); }
    };

public:
    aligned_buffer() = default;

    /// `n` zeroed scalars; a config_error naming `layer` if the size is absurd or memory runs out.
    aligned_buffer(index_t n, const char* layer) : size_(n) {
        if (n == 0) return;
        constexpr index_t max_n = static_cast<index_t>(std::numeric_limits<std::ptrdiff_t>::max() / sizeof(Scalar));
        if (n < 0 || n > max_n) raise<config_error>(layer, ": cannot hold ", n, " parameters");
        void* p = nullptr;
        try {
            p = ::operator new(static_cast<std::size_t>(n) * sizeof(Scalar), std::align_val_t{block_alignment});
        } catch (const std::bad_alloc&) {
            raise<config_error>(layer, ": cannot allocate ", n, " parameters (", static_cast<double>(n) * sizeof(Scalar) / 1e9,
                                " GB)");
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
    const Scalar* data() const noexcept { return data_.get(); }
    index_t size() const noexcept { return size_; }

private:
    std::unique_ptr<Scalar, deleter> data_;
    index_t size_ = 0;
};

}  // namespace treegate::detail

#endif
