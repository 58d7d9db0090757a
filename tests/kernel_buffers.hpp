// Test buffers for the kernel tests: inputs placed flush against an unreadable guard page, so
// that a kernel reading or writing one element past the given size crashes, and double views.
#ifndef TREEGATE_TESTS_KERNEL_BUFFERS_HPP
#define TREEGATE_TESTS_KERNEL_BUFFERS_HPP

#include "test_support.hpp"

#include <cstddef>
#include <random>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace tg_test {

/// n values of T whose last one ends exactly where an inaccessible page begins (Linux), so any
/// read or write past the end faults; elsewhere a plain vector. Unaligned whenever n * sizeof(T)
/// is not a multiple of 4096, which also exercises the kernels' unaligned loads.
template <class T>
class guarded {
public:
    explicit guarded(index_t n) : n_(n) {
#if defined(__linux__)
        const auto page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
        const std::size_t bytes = static_cast<std::size_t>(n) * sizeof(T);
        const std::size_t pages = (bytes + page - 1) / page;
        size_ = (pages + 1) * page;
        void* p = mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        REQUIRE(p != MAP_FAILED);
        base_ = static_cast<char*>(p);
        REQUIRE(mprotect(base_ + pages * page, page, PROT_NONE) == 0);
        data_ = reinterpret_cast<T*>(base_ + pages * page - bytes);
#else
        storage_.resize(static_cast<std::size_t>(n) + 1);
        data_ = storage_.data();
#endif
    }
    ~guarded() {
#if defined(__linux__)
        munmap(base_, size_);
#endif
    }
    guarded(const guarded&) = delete;
    guarded& operator=(const guarded&) = delete;

    T* data() noexcept { return data_; }
    const T* data() const noexcept { return data_; }
    index_t size() const noexcept { return n_; }
    T& operator[](index_t i) noexcept { return data_[i]; }

private:
    index_t n_;
    T* data_ = nullptr;
#if defined(__linux__)
    char* base_ = nullptr;
    std::size_t size_ = 0;
#else
    std::vector<T> storage_;
#endif
};

using guarded_floats = guarded<float>;

template <class T>
void fill(guarded<T>& b, std::mt19937& g) {
    for (index_t i = 0; i < b.size(); ++i) b[i] = static_cast<T>(uniform(g));
}

/// A column-major rows x cols view of a buffer with leading dimension ld, in double.
template <class T>
Eigen::MatrixXd to_double(const T* p, index_t rows, index_t cols, index_t ld) {
    Eigen::MatrixXd m(rows, cols);
    for (index_t c = 0; c < cols; ++c)
        for (index_t r = 0; r < rows; ++r) m(r, c) = static_cast<double>(p[r + c * ld]);
    return m;
}

}  // namespace tg_test

#endif
