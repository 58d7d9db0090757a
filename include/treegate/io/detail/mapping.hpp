// treegate/io/detail/mapping.hpp — a file mapped read-only into memory, unmapped when destroyed.
// Part of treegate/io/mapped.hpp: the bytes a storage::mapped layer's weights point into.
#ifndef TREEGATE_IO_DETAIL_MAPPING_HPP
#define TREEGATE_IO_DETAIL_MAPPING_HPP

#include "format.hpp"

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define TREEGATE_MAPPING_POSIX 1
#endif

namespace treegate::safetensors::detail {

/// The whole of a regular file, mapped PROT_READ / MAP_SHARED: pages come in from the page
/// cache on first touch and are shared with every other process mapping the file. Neither
/// copyable nor movable: layers share one through a std::shared_ptr, so the last layer (or
/// copy of one) that points into it unmaps it. The descriptor is closed once mapped (the
/// mapping keeps the file's pages reachable even after the path is renamed over or deleted).
class mapping {
public:
    explicit mapping(const std::string& path) : path_(path) {
#if defined(TREEGATE_MAPPING_POSIX)
        const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) fail(path, "cannot open for mapping: ", std::strerror(errno));
        struct ::stat st {};
        if (::fstat(fd, &st) != 0) close_and_fail(fd, "cannot stat");
        if (!S_ISREG(st.st_mode)) {
            ::close(fd);
            fail(path, "is not a regular file");
        }
        size_ = static_cast<std::size_t>(st.st_size);
        if (size_ < 8) {
            ::close(fd);
            fail(path, "is ", size_, " bytes, too short for the 8-byte header length");
        }
        void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) close_and_fail(fd, "cannot map");
        ::close(fd);
        data_ = static_cast<const unsigned char*>(p);
#else
        fail(path, "memory-mapped loading needs a POSIX system (mmap); use safetensors::load, which copies");
#endif
    }
    mapping(const mapping&) = delete;
    mapping& operator=(const mapping&) = delete;
    ~mapping() {
#if defined(TREEGATE_MAPPING_POSIX)
        if (data_) ::munmap(const_cast<unsigned char*>(data_), size_);
#endif
    }

    const unsigned char* data() const noexcept { return data_; }
    std::size_t size() const noexcept { return size_; }
    const std::string& path() const noexcept { return path_; }

    /// Drops [offset, offset + n) from this process's resident set (not from the page cache):
    /// after a pass over the whole file, such as verifying it, only what serving touches stays.
    void release(std::size_t offset, std::size_t n) const noexcept {
#if defined(TREEGATE_MAPPING_POSIX)
        const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
        const std::size_t begin = offset / page * page;
        if (begin < size_ && n > 0)
            ::madvise(const_cast<unsigned char*>(data_) + begin, std::min(size_, offset + n) - begin, MADV_DONTNEED);
#else
        (void)offset;
        (void)n;
#endif
    }

private:
#if defined(TREEGATE_MAPPING_POSIX)
    [[noreturn]] void close_and_fail(int fd, const char* what) const {
        const int err = errno;
        ::close(fd);
        fail(path_, what, ": ", std::strerror(err));
    }
#endif

    std::string path_;
    const unsigned char* data_ = nullptr;
    std::size_t size_ = 0;
};

}  // namespace treegate::safetensors::detail

#endif
