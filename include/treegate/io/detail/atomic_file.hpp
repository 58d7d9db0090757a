// treegate/io/detail/atomic_file.hpp — files on disk: saving through a temporary file renamed over
// the target, and reading a whole file. Part of treegate/io/safetensors.hpp.
#ifndef TREEGATE_IO_DETAIL_ATOMIC_FILE_HPP
#define TREEGATE_IO_DETAIL_ATOMIC_FILE_HPP

#include "format.hpp"

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#define TREEGATE_SAFETENSORS_POSIX 1
#else
#include <cstdio>
#include <filesystem>
#endif

namespace treegate::safetensors::detail {

/// A file written at `<path>.tmp.<pid>` next to the target, then flushed to disk and renamed
/// over the target by commit(), so that a reader sees either the old file or the complete new
/// one; destroyed without commit() (an exception), it removes the temporary file. A reader that
/// has the old file mapped (io/mapped.hpp) keeps its pages: the rename replaces the name, not the
/// inode, and the old inode lives until its last mapping goes. Writes are buffered, so that a
/// stream of small blocks costs few system calls; write_at() patches bytes already written.
class atomic_writer {
public:
    explicit atomic_writer(std::string path) : path_(std::move(path)) {
#if defined(TREEGATE_SAFETENSORS_POSIX)
        tmp_ = path_ + ".tmp." + std::to_string(static_cast<long long>(::getpid()));
        fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (fd_ < 0) fail(path_, "cannot create the temporary file ", tmp_, ": ", std::strerror(errno));
#else
        tmp_ = path_ + ".tmp";
        out_.open(tmp_, std::ios::binary | std::ios::trunc);
        if (!out_) fail(path_, "cannot create the temporary file ", tmp_);
#endif
        buffer_.reserve(buffer_bytes);
    }
    atomic_writer(const atomic_writer&) = delete;
    atomic_writer& operator=(const atomic_writer&) = delete;
    ~atomic_writer() {
        if (committed_) return;
#if defined(TREEGATE_SAFETENSORS_POSIX)
        if (fd_ >= 0) ::close(fd_);
        ::unlink(tmp_.c_str());
#else
        out_.close();
        std::remove(tmp_.c_str());
#endif
    }

    void write(const void* data, std::size_t n) {
        const auto* p = static_cast<const unsigned char*>(data);
        if (buffer_.size() + n > buffer_bytes) flush();
        if (n >= buffer_bytes) {
            put(p, n);
        } else {
            buffer_.insert(buffer_.end(), p, p + n);
        }
        written_ += n;
    }

    /// Overwrites n bytes at `offset`, which must lie within what write() has written.
    void write_at(std::uint64_t offset, const void* data, std::size_t n) {
        flush();
#if defined(TREEGATE_SAFETENSORS_POSIX)
        const auto* p = static_cast<const unsigned char*>(data);
        while (n > 0) {
            const ::ssize_t w = ::pwrite(fd_, p, n, static_cast<::off_t>(offset));
            if (w < 0) {
                if (errno == EINTR) continue;
                abandon("cannot write");
            }
            p += w;
            n -= static_cast<std::size_t>(w);
            offset += static_cast<std::uint64_t>(w);
        }
#else
        out_.seekp(static_cast<std::streamoff>(offset));
        out_.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
        out_.seekp(0, std::ios::end);
        if (!out_) abandon("cannot write");
#endif
    }

    std::uint64_t written() const noexcept { return written_; }

    void commit() {
        flush();
#if defined(TREEGATE_SAFETENSORS_POSIX)
        if (::fsync(fd_) != 0) abandon("cannot flush");
        const int closed = ::close(fd_);
        fd_ = -1;
        if (closed != 0) abandon("cannot close");
        if (::rename(tmp_.c_str(), path_.c_str()) != 0) abandon("cannot rename over the target");
        committed_ = true;
        // Make the rename itself durable; failing here cannot corrupt either file, so it is ignored.
        const std::size_t slash = path_.find_last_of('/');
        const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path_.substr(0, slash);
        const int dfd = ::open(dir.c_str(), O_RDONLY | O_CLOEXEC);
        if (dfd >= 0) {
            ::fsync(dfd);
            ::close(dfd);
        }
#else
        out_.flush();
        if (!out_) abandon("cannot write");
        out_.close();
        std::error_code ec;
        std::filesystem::rename(tmp_, path_, ec);
        if (ec) fail(path_, "cannot rename ", tmp_, " over the target: ", ec.message());
        committed_ = true;
#endif
    }

private:
    static constexpr std::size_t buffer_bytes = std::size_t{1} << 20;

    void flush() {
        if (!buffer_.empty()) put(buffer_.data(), buffer_.size());
        buffer_.clear();
    }

    void put(const unsigned char* p, std::size_t n) {
#if defined(TREEGATE_SAFETENSORS_POSIX)
        while (n > 0) {
            const ::ssize_t w = ::write(fd_, p, n);
            if (w < 0) {
                if (errno == EINTR) continue;
                abandon("cannot write");
            }
            p += w;
            n -= static_cast<std::size_t>(w);
        }
#else
        out_.write(reinterpret_cast<const char*>(p), static_cast<std::streamsize>(n));
        if (!out_) abandon("cannot write");
#endif
    }

    [[noreturn]] void abandon(const char* what) {
#if defined(TREEGATE_SAFETENSORS_POSIX)
        fail(path_, what, " ", tmp_, ": ", std::strerror(errno));  // the destructor removes tmp_
#else
        fail(path_, what, " ", tmp_);
#endif
    }

    std::string path_, tmp_;
#if defined(TREEGATE_SAFETENSORS_POSIX)
    int fd_ = -1;
#else
    std::ofstream out_;
#endif
    std::vector<unsigned char> buffer_;
    std::uint64_t written_ = 0;
    bool committed_ = false;
};

inline void write_atomic(const std::string& path, const std::vector<unsigned char>& bytes) {
    atomic_writer w(path);
    w.write(bytes.data(), bytes.size());
    w.commit();
}

inline std::vector<unsigned char> read_file(const std::string& path) {
#if defined(TREEGATE_SAFETENSORS_POSIX)
    struct ::stat st {};
    if (::stat(path.c_str(), &st) != 0) fail(path, "cannot open: ", std::strerror(errno));
    if (!S_ISREG(st.st_mode)) fail(path, "is not a regular file");
#endif
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(path, "cannot open for reading");
    in.seekg(0, std::ios::end);
    const std::streamoff size = in.tellg();
    if (size < 0) fail(path, "cannot determine the file size");
    in.seekg(0, std::ios::beg);
    std::vector<unsigned char> bytes(static_cast<std::size_t>(size));
    if (size > 0) in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(size));
    if (!in) fail(path, "cannot read ", size, " bytes");
    return bytes;
}

}  // namespace treegate::safetensors::detail

#endif
