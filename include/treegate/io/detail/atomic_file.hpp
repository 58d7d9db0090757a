// treegate/io/detail/atomic_file.hpp — files on disk: saving through a temporary file renamed over
// the target, and reading a whole file. Part of treegate/io/safetensors.hpp.
#ifndef TREEGATE_IO_DETAIL_ATOMIC_FILE_HPP
#define TREEGATE_IO_DETAIL_ATOMIC_FILE_HPP

#include "format.hpp"

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <fstream>
#include <string>
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

/// Writes `<path>.tmp.<pid>` next to the target, flushes it to disk and renames it over the
/// target, so that a reader sees either the old file or the complete new one.
inline void write_atomic(const std::string& path, const std::vector<unsigned char>& bytes) {
#if defined(TREEGATE_SAFETENSORS_POSIX)
    const std::string tmp = path + ".tmp." + std::to_string(static_cast<long long>(::getpid()));
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) fail(path, "cannot create the temporary file ", tmp, ": ", std::strerror(errno));
    auto abandon = [&](const char* what) {
        const int err = errno;
        if (fd >= 0) ::close(fd);
        ::unlink(tmp.c_str());
        fail(path, what, " ", tmp, ": ", std::strerror(err));
    };
    std::size_t done = 0;
    while (done < bytes.size()) {
        const ::ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
        if (w < 0) {
            if (errno == EINTR) continue;
            abandon("cannot write");
        }
        done += static_cast<std::size_t>(w);
    }
    if (::fsync(fd) != 0) abandon("cannot flush");
    const int closed = ::close(fd);
    fd = -1;
    if (closed != 0) abandon("cannot close");
    if (::rename(tmp.c_str(), path.c_str()) != 0) abandon("cannot rename over the target");
    // Make the rename itself durable; failing here cannot corrupt either file, so it is ignored.
    const std::size_t slash = path.find_last_of('/');
    const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_CLOEXEC);
    if (dfd >= 0) {
        ::fsync(dfd);
        ::close(dfd);
    }
#else
    const std::string tmp = path + ".tmp";
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        if (!out) fail(path, "cannot create the temporary file ", tmp);
        out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
        out.flush();
        if (!out) {
            out.close();
            std::remove(tmp.c_str());
            fail(path, "cannot write ", tmp);
        }
    }
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec) {
        std::remove(tmp.c_str());
        fail(path, "cannot rename ", tmp, " over the target: ", ec.message());
    }
#endif
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
