// bench/mapped_serving.cpp — serving a tree_linear whose file is larger than RAM from a mapping.
// Not a test and not run by CI: writes (once) a large blocks file, maps it, serves random traffic.
//
// Usage: treegate_mapped_serving [--path FILE] [--depth D] [--size N] [--bf16] [--seconds S]
//                                [--batch B] [--rewrite] [--keep]
// Defaults: /var/tmp/treegate_mapped_serving.safetensors, depth 14, 512 x 512 float blocks,
// path_sum: 32767 blocks of 1 MiB = 32 GiB. The file is written block by block (never in RAM)
// unless it exists with the requested shape, and deleted at the end unless --keep.
//
// Each phase serves batch-1 and batched traffic of random inputs for --seconds, cold (this file's
// pages evicted from the page cache with posix_fadvise(DONTNEED) after unmapping: no global
// drop_caches, which would slow every other process) and warm (the same inputs again). It reports
// examples/s, this process's resident memory (VmRSS, RssFile from /proc/self/status) and the
// disk read rate (read_bytes of /proc/self/io, and sectors read of every disk in /proc/diskstats).
#include <treegate/io/mapped.hpp>

#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

namespace {

namespace st = treegate::safetensors;
using treegate::index_t;
using clock_type = std::chrono::steady_clock;

struct settings {
    std::string path = "/var/tmp/treegate_mapped_serving.safetensors";
    int depth = 14;
    index_t size = 512;
    bool bf16 = false;
    double seconds = 20;
    index_t batch = 256;
    bool rewrite = false, keep = false;
};

/// A field of a /proc file of "key: value" lines, in the unit it is printed in (kB for status).
long long proc_field(const char* file, const char* key) {
    std::ifstream in(file);
    std::string line;
    const std::size_t n = std::strlen(key);
    while (std::getline(in, line))
        if (line.compare(0, n, key) == 0 && line.size() > n && line[n] == ':') return std::atoll(line.c_str() + n + 1);
    return -1;
}

/// Sectors (512 B) read by the whole-disk devices of /proc/diskstats (vd*, sd*, nvme*n*).
long long disk_sectors_read() {
    std::ifstream in("/proc/diskstats");
    std::string line;
    long long total = 0;
    while (std::getline(in, line)) {
        std::istringstream s(line);
        long long major = 0, minor = 0, reads = 0, merged = 0, sectors = 0;
        std::string name;
        s >> major >> minor >> name >> reads >> merged >> sectors;
        const bool whole = (name.rfind("vd", 0) == 0 || name.rfind("sd", 0) == 0) && !std::isdigit(name.back());
        const bool nvme = name.rfind("nvme", 0) == 0 && name.find('p') == std::string::npos;
        if (whole || nvme) total += sectors;
    }
    return total;
}

struct io_snapshot {
    clock_type::time_point t = clock_type::now();
    long long read_bytes = proc_field("/proc/self/io", "read_bytes");
    long long sectors = disk_sectors_read();
};

/// Evicts the file's pages from the page cache (they must not be mapped at the time).
void evict(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) return;
    ::fdatasync(fd);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
}

/// xorshift64*: weights need only be cheap and not all alike.
struct fast_random {
    std::uint64_t s;
    float next(float bound) noexcept {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        const std::uint64_t r = s * 2685821657736338717ull;
        return bound * (static_cast<float>(r >> 40) / 8388608.0f - 1.0f);
    }
};

template <class W>
void write_file(const settings& o) {
    const index_t n = o.size;
    const float bound = 1.0f / std::sqrt(static_cast<float>(n) * static_cast<float>(o.depth + 1));
    std::vector<index_t> gates;
    for (int j = 0; j < o.depth; ++j) gates.push_back((static_cast<index_t>(j) * 37) % n);
    fast_random rng{0x9e3779b97f4a7c15ull};
    const auto t0 = clock_type::now();
    index_t written = 0;
    st::write_for_mapping<float, W>(
        o.path, n, n, o.depth, treegate::tree_mode::path_sum, treegate::gating::from_input(gates), true,
        [&](index_t b, W* dst) {
            for (index_t k = 0; k < n * n; ++k) {
                if constexpr (std::is_same_v<W, float>)
                    dst[k] = rng.next(bound);
                else
                    dst[k] = treegate::to_bf16(rng.next(bound));
            }
            if (++written % 4096 == 0) std::fprintf(stderr, "  written %lld blocks\n", static_cast<long long>(written));
            (void)b;
        },
        [&](index_t, float* dst) {
            for (index_t k = 0; k < n; ++k) dst[k] = rng.next(bound);
        });
    const double s = std::chrono::duration<double>(clock_type::now() - t0).count();
    const double gib = static_cast<double>(std::filesystem::file_size(o.path)) / (1 << 30);
    std::printf("wrote %s: %.2f GiB in %.1f s (%.0f MB/s, streamed block by block, fsync included)\n", o.path.c_str(), gib,
                s, gib * (1 << 30) / 1e6 / s);
}

template <class Layer>
void serve_phase(const char* label, const Layer& layer, const std::vector<treegate::matrix<float>>& inputs,
                 double seconds, std::size_t& used) {
    treegate::workspace<float> ws;
    treegate::matrix<float> Y(layer.out_size(), inputs.front().cols());
    const io_snapshot a;
    long long examples = 0;
    std::size_t k = 0;
    // A cold phase runs for `seconds` and records how many inputs it used; the warm phase replays
    // exactly those (used != 0), so that it touches the pages the cold one brought in.
    const bool replay = used != 0;
    while (true) {
        if (replay ? k >= used : std::chrono::duration<double>(clock_type::now() - a.t).count() >= seconds) break;
        layer.forward_batch(inputs[k % inputs.size()], Y, ws);
        examples += inputs[k % inputs.size()].cols();
        ++k;
    }
    if (!replay) used = k;
    const io_snapshot b;
    const double s = std::chrono::duration<double>(b.t - a.t).count();
    std::printf("%-16s %8lld examples in %6.2f s: %9.1f examples/s | VmRSS %7.1f MiB (RssFile %7.1f, RssAnon %5.1f) | "
                "disk read %7.1f MB/s (read_bytes), %7.1f MB/s (diskstats)\n",
                label, examples, s, static_cast<double>(examples) / s,
                static_cast<double>(proc_field("/proc/self/status", "VmRSS")) / 1024.0,
                static_cast<double>(proc_field("/proc/self/status", "RssFile")) / 1024.0,
                static_cast<double>(proc_field("/proc/self/status", "RssAnon")) / 1024.0,
                static_cast<double>(b.read_bytes - a.read_bytes) / 1e6 / s,
                static_cast<double>(b.sectors - a.sectors) * 512.0 / 1e6 / s);
    std::fflush(stdout);
}

template <class W>
int run(const settings& o) {
    using layer_t = treegate::tree_linear<float, treegate::dynamic, treegate::dynamic, treegate::dynamic,
                                          treegate::kernels::default_policy, treegate::storage::mapped<W>>;
    const index_t blocks = treegate::tree::node_count(o.depth);
    const std::uintmax_t expected_min = static_cast<std::uintmax_t>(blocks) * static_cast<std::uintmax_t>(o.size * o.size) * sizeof(W);
    std::error_code ec;
    const bool present = std::filesystem::exists(o.path, ec) && std::filesystem::file_size(o.path, ec) >= expected_min;
    if (o.rewrite || !present) {
        // Refuse before writing a byte when the target's file system cannot hold the file (the
        // default shape is 32 GiB): a half-written file that fills the disk harms every tenant.
        const std::filesystem::path dir = std::filesystem::absolute(o.path).parent_path();
        struct statvfs fs {};
        if (statvfs(dir.c_str(), &fs) != 0) {
            std::fprintf(stderr, "treegate_mapped_serving: cannot query free space of %s: %s\n", dir.c_str(), std::strerror(errno));
            return 1;
        }
        const double avail = static_cast<double>(fs.f_bavail) * static_cast<double>(fs.f_frsize);
        const double present_bytes = present ? static_cast<double>(std::filesystem::file_size(o.path, ec)) : 0.0;
        const double need = static_cast<double>(expected_min) + (64 << 20);  // header and slack
        if (need > avail + present_bytes) {
            std::fprintf(stderr,
                         "treegate_mapped_serving: %s needs %.2f GiB (depth %d, %lld x %lld %s blocks) but %s has %.2f GiB "
                         "available; choose a smaller --depth/--size or another --path\n",
                         o.path.c_str(), need / (1 << 30), o.depth, static_cast<long long>(o.size), static_cast<long long>(o.size),
                         o.bf16 ? "bf16" : "float", dir.c_str(), avail / (1 << 30));
            return 1;
        }
        write_file<W>(o);
    }

    std::printf("file %s: %.2f GiB; RAM %.2f GiB (MemTotal); %lld blocks of %lld x %lld %s, depth %d path_sum\n",
                o.path.c_str(), static_cast<double>(std::filesystem::file_size(o.path)) / (1 << 30),
                static_cast<double>(proc_field("/proc/meminfo", "MemTotal")) / (1 << 20), static_cast<long long>(blocks),
                static_cast<long long>(o.size), static_cast<long long>(o.size), o.bf16 ? "bf16" : "float", o.depth);

    std::mt19937 g(1);
    std::normal_distribution<float> normal;
    const auto make = [&](index_t cols, std::size_t count) {
        std::vector<treegate::matrix<float>> v;
        for (std::size_t k = 0; k < count; ++k) {
            treegate::matrix<float> X(o.size, cols);
            for (index_t e = 0; e < X.size(); ++e) X.data()[e] = normal(g);
            v.push_back(std::move(X));
        }
        return v;
    };
    const auto singles = make(1, 1 << 13);
    const auto batches = make(o.batch, 64);

    st::map_options unverified;
    unverified.verify_data = false;  // the checksum pass would read the whole file first
    for (const bool batched : {false, true}) {
        // One mapping per traffic type, as a server keeps it: cold starts with none of the file
        // in the page cache; warm replays the same inputs on pages now cached and mapped.
        evict(o.path);
        const auto t0 = clock_type::now();
        const auto layer = treegate::safetensors::map_layer<layer_t>(o.path, unverified);
        const double open_ms = std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
        std::printf("map_layer (header only, verify_data = false): %.2f ms\n", open_ms);
        std::size_t used = 0;
        for (const bool cold : {true, false}) {
            std::string label = std::string(batched ? "batch " + std::to_string(o.batch) : "batch 1") + (cold ? " cold" : " warm");
            serve_phase(label.c_str(), layer, batched ? batches : singles, o.seconds, used);
        }
    }
    if (!o.keep) {
        std::filesystem::remove(o.path, ec);
        std::printf("deleted %s\n", o.path.c_str());
    }
    return 0;
}

}  // namespace

const char* const usage =
    "usage: treegate_mapped_serving [options]\n"
    "  --path FILE   the blocks file (default /var/tmp/treegate_mapped_serving.safetensors)\n"
    "  --depth D     tree depth, path_sum: 2^(D+1)-1 blocks (default 14)\n"
    "  --size N      blocks are N x N (default 512; depth 14 x 512 float = 32 GiB)\n"
    "  --bf16        store the weights as bf16 (half the file)\n"
    "  --seconds S   seconds per traffic phase (default 20)\n"
    "  --batch B     examples per batched call (default 256)\n"
    "  --rewrite     write the file even if it exists with the requested shape\n"
    "  --keep        keep the file at the end (default: delete it)\n"
    "  --help        this text\n"
    "The file is written only if its file system has room for it (checked first).\n";

int main(int argc, char** argv) {
    settings o;
    for (int k = 1; k < argc; ++k) {
        const std::string a = argv[k];
        const auto value = [&]() -> std::string {
            if (k + 1 >= argc) {
                std::fprintf(stderr, "%s needs a value\n", a.c_str());
                std::exit(2);
            }
            return argv[++k];
        };
        if (a == "--path")
            o.path = value();
        else if (a == "--depth")
            o.depth = std::atoi(value().c_str());
        else if (a == "--size")
            o.size = std::atoll(value().c_str());
        else if (a == "--seconds")
            o.seconds = std::atof(value().c_str());
        else if (a == "--batch")
            o.batch = std::atoll(value().c_str());
        else if (a == "--bf16")
            o.bf16 = true;
        else if (a == "--rewrite")
            o.rewrite = true;
        else if (a == "--keep")
            o.keep = true;
        else if (a == "--help" || a == "-h") {
            std::printf("%s", usage);
            return 0;
        } else {
            std::fprintf(stderr, "treegate_mapped_serving: unknown argument %s\n%s", a.c_str(), usage);
            return 2;
        }
    }
    try {
        treegate::kernels::active_isa();  // a bad TREEGATE_ISA: config_error (rc 2) before any file work
        return o.bf16 ? run<treegate::bf16>(o) : run<float>(o);
    } catch (const treegate::config_error& e) {
        std::fprintf(stderr, "treegate_mapped_serving: %s\n", e.what());
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "treegate_mapped_serving: %s\n", e.what());
        return 1;
    }
}
