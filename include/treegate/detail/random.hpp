// treegate/detail/random.hpp — the seeded generator behind every layer's initialisation.
// Own arithmetic (splitmix64) so that a seed gives the same weights with any standard library.
#ifndef TREEGATE_DETAIL_RANDOM_HPP
#define TREEGATE_DETAIL_RANDOM_HPP

#include <cstdint>

namespace treegate::detail {

/// splitmix64: small, fast, and identical everywhere. One stream per (seed, stream id), so a
/// node's initial weights do not depend on how many other nodes exist.
class rng {
public:
    rng(std::uint64_t seed, std::uint64_t stream) noexcept : state_(seed * 0x9E3779B97F4A7C15ull ^ (stream + 0x632BE59BD9B4E019ull)) {
        next();
    }

    std::uint64_t next() noexcept {
        std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }

    /// Uniform in [-bound, bound), 53 random bits.
    double uniform(double bound) noexcept {
        const double u = static_cast<double>(next() >> 11) * 0x1.0p-53;
        return (2.0 * u - 1.0) * bound;
    }

private:
    std::uint64_t state_;
};

/// Fills n scalars with uniform(-bound, bound) values from stream `stream` of `seed`.
template <class Scalar>
void fill_uniform(Scalar* p, std::int64_t n, double bound, std::uint64_t seed, std::uint64_t stream) noexcept {
    rng r(seed, stream);
    for (std::int64_t i = 0; i < n; ++i) p[i] = static_cast<Scalar>(r.uniform(bound));
}

}  // namespace treegate::detail

#endif
