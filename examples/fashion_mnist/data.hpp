// examples/fashion_mnist/data.hpp — the Fashion-MNIST example's data: gzip-compressed IDX files,
// the fixed validation hold-out, normalisation and the gating pixels. Included by main.cpp only.
#ifndef TREEGATE_EXAMPLE_FASHION_MNIST_DATA_HPP
#define TREEGATE_EXAMPLE_FASHION_MNIST_DATA_HPP

#include <treegate/train/data.hpp>
#include <treegate/treegate.hpp>

#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include <sys/stat.h>

namespace fashion_mnist {

namespace tt = treegate::train;
using treegate::activation;
using treegate::gating;
using treegate::index_t;
using treegate::tree_mode;
using mat = Eigen::MatrixXf;
using clock_type = std::chrono::steady_clock;

inline double seconds_since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

struct data_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

/// The whole decompressed content of a gzip (or plain) file.
inline std::vector<unsigned char> read_gz(const std::string& path) {
    gzFile f = gzopen(path.c_str(), "rb");
    if (f == nullptr) throw data_error("cannot open " + path);
    std::vector<unsigned char> bytes;
    unsigned char buf[1 << 16];
    for (;;) {
        const int got = gzread(f, buf, sizeof buf);
        if (got < 0) {
            int code = 0;
            const std::string msg = gzerror(f, &code);
            gzclose(f);
            // zlib's message names the file already.
            throw data_error("gzip: " + msg);
        }
        if (got == 0) break;
        bytes.insert(bytes.end(), buf, buf + got);
        if (bytes.size() > (std::size_t{1} << 30)) {
            gzclose(f);
            throw data_error(path + ": more than 1 GiB of data; not an IDX file of Fashion-MNIST");
        }
    }
    gzclose(f);
    return bytes;
}

inline std::uint32_t be32(const unsigned char* p) {
    return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | std::uint32_t{p[3]};
}

/// An IDX file of unsigned bytes with `want_dims` dimensions: returns the dimensions and the data.
inline std::vector<std::uint32_t> parse_idx(const std::string& path, const std::vector<unsigned char>& bytes, int want_dims,
                                     const unsigned char** data) {
    if (bytes.size() < 4) throw data_error(path + ": truncated IDX file (" + std::to_string(bytes.size()) + " bytes)");
    const std::uint32_t magic = be32(bytes.data());
    const std::uint32_t want_magic = 0x00000800u | static_cast<std::uint32_t>(want_dims);
    if (magic != want_magic) {
        char msg[160];
        std::snprintf(msg, sizeof msg, ": bad IDX magic 0x%08x, expected 0x%08x (unsigned bytes, %d dimensions)", magic,
                      want_magic, want_dims);
        throw data_error(path + msg);
    }
    const std::size_t header = 4 + 4 * static_cast<std::size_t>(want_dims);
    if (bytes.size() < header) throw data_error(path + ": truncated IDX header");
    std::vector<std::uint32_t> dims;
    std::uint64_t count = 1;
    for (int d = 0; d < want_dims; ++d) {
        dims.push_back(be32(bytes.data() + 4 + 4 * d));
        count *= dims.back();
        if (count > (std::uint64_t{1} << 30)) throw data_error(path + ": IDX dimensions are absurdly large");
    }
    if (bytes.size() - header != count)
        throw data_error(path + ": IDX dimensions promise " + std::to_string(count) + " bytes of data but the file holds " +
                         std::to_string(bytes.size() - header) + (bytes.size() - header < count ? " (truncated)" : ""));
    *data = bytes.data() + header;
    return dims;
}

struct split {
    mat X;                              // 784 x n, centred and scaled
    std::vector<std::uint8_t> labels;  // n labels in [0, 10)
    index_t size() const { return X.cols(); }
};

/// The training images split once into the part that trains and a held-out validation part that
/// every choice (epoch to keep, configuration) is made on; the test set is evaluated once per
/// chosen model.
struct dataset {
    split train, val, test;
};

inline split load_split(const std::string& dir, const std::string& prefix) {
    const std::string ipath = dir + "/" + prefix + "-images-idx3-ubyte.gz";
    const std::string lpath = dir + "/" + prefix + "-labels-idx1-ubyte.gz";
    const auto ibytes = read_gz(ipath), lbytes = read_gz(lpath);
    const unsigned char *ip = nullptr, *lp = nullptr;
    const auto idims = parse_idx(ipath, ibytes, 3, &ip);
    const auto ldims = parse_idx(lpath, lbytes, 1, &lp);
    if (idims[1] != 28 || idims[2] != 28)
        throw data_error(ipath + ": images are " + std::to_string(idims[1]) + " x " + std::to_string(idims[2]) +
                         ", expected 28 x 28");
    if (idims[0] != ldims[0] || idims[0] == 0)
        throw data_error(ipath + " holds " + std::to_string(idims[0]) + " images but " + lpath + " holds " +
                         std::to_string(ldims[0]) + " labels");
    split s;
    const auto n = static_cast<index_t>(idims[0]);
    s.X.resize(784, n);
    for (index_t e = 0; e < n; ++e)
        for (index_t p = 0; p < 784; ++p) s.X(p, e) = static_cast<float>(ip[e * 784 + p]) / 255.0f;
    s.labels.assign(lp, lp + n);
    for (index_t e = 0; e < n; ++e)
        if (s.labels[static_cast<std::size_t>(e)] > 9)
            throw data_error(lpath + ": label " + std::to_string(s.labels[static_cast<std::size_t>(e)]) + " of example " +
                             std::to_string(e) + " is outside [0, 10)");
    return s;
}

inline bool file_exists(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0;
}

/// Centres every pixel on its training mean and scales by the training standard deviation, so a
/// pixel used as a gating unit is on when it is brighter than usual for that position.
/// The statistics come from the training part only, never from validation or test images.
inline void normalise(dataset& d) {
    const Eigen::VectorXf mean = d.train.X.rowwise().mean();
    d.train.X.colwise() -= mean;
    d.val.X.colwise() -= mean;
    d.test.X.colwise() -= mean;
    const float sd = std::sqrt(d.train.X.squaredNorm() / static_cast<float>(d.train.X.size()));
    d.train.X /= sd;
    d.val.X /= sd;
    d.test.X /= sd;
}

/// The fixed seed of the validation hold-out: the same split for every model, seed and run.
inline constexpr std::uint64_t validation_split_seed = 20261201;

/// Splits `all` (the 60,000 training images) under one fixed shuffle: the last `n_val` examples of
/// the shuffled order become the validation split, the rest the training split (in shuffled order,
/// which training reshuffles every epoch anyway).
inline void hold_out_validation(const split& all, index_t n_val, split& train, split& val) {
    if (n_val <= 0 || n_val >= all.size())
        throw data_error("validation split of " + std::to_string(n_val) + " examples out of " +
                         std::to_string(all.size()) + " training examples");
    const auto order = tt::shuffled_indices(all.size(), validation_split_seed, 0);
    const index_t n_train = all.size() - n_val;
    auto take = [&](index_t begin, index_t count, split& s) {
        const index_t* idx = order.data() + begin;
        s.X.resize(all.X.rows(), count);
        tt::gather_columns(all.X, idx, count, s.X);
        s.labels.resize(static_cast<std::size_t>(count));
        for (index_t k = 0; k < count; ++k) s.labels[static_cast<std::size_t>(k)] = all.labels[static_cast<std::size_t>(idx[k])];
    };
    take(0, n_train, train);
    take(n_train, n_val, val);
}

/// D pixels to gate a first-layer tree: the highest-variance pixels, at least 5 pixels apart
/// (Chebyshev distance) so that their bits are not copies of each other.
inline std::vector<index_t> gating_pixels(const mat& X, int depth) {
    const Eigen::VectorXf var = X.rowwise().squaredNorm();
    std::vector<index_t> order(784);
    for (index_t p = 0; p < 784; ++p) order[static_cast<std::size_t>(p)] = p;
    std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t b) { return var(a) > var(b); });
    std::vector<index_t> chosen;
    for (index_t p : order) {
        if (static_cast<int>(chosen.size()) == depth) break;
        bool far = true;
        for (index_t q : chosen) far = far && std::max(std::abs(p / 28 - q / 28), std::abs(p % 28 - q % 28)) >= 5;
        if (far) chosen.push_back(p);
    }
    return chosen;
}

}  // namespace fashion_mnist

#endif
