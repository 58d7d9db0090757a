// bench/roofline/hash.hpp — --hash: FNV-1a 64 of every standard case's output on its fixed-seed inputs.
// Part of bench/roofline: above cases.hpp; no timing, so two builds can be compared for bit-identical outputs.
#ifndef TREEGATE_ROOFLINE_HASH_HPP
#define TREEGATE_ROOFLINE_HASH_HPP

#include "cases.hpp"

#include <treegate/kernels/dispatch.hpp>
#include <treegate/layers/flatten.hpp>
#include <treegate/layers/tree_linear_bf16.hpp>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

namespace roofline {

// ---- --hash: the output bytes of every case, for bit-identity checks across versions ---------

/// FNV-1a, 64 bits, over n bytes.
inline std::uint64_t fnv1a(const unsigned char* b, std::size_t n) {
    std::uint64_t h = 14695981039346656037ull;
    for (std::size_t i = 0; i < n; ++i) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}

/// The same over a float matrix's bytes (column-major, as stored).
inline std::uint64_t fnv1a(const matf& Y) {
    return fnv1a(reinterpret_cast<const unsigned char*>(Y.data()), static_cast<std::size_t>(Y.size()) * sizeof(float));
}

template <class P>
const char* policy_isa() {
    return std::strcmp(P::name(), "dispatch") == 0 ? active_isa() : P::name();
}

template <class P>
void print_hash(const std::string& name, const matf& Y) {
    std::printf("hash %s isa=%s out=%ldx%ld fnv1a=%016llx\n", name.c_str(), policy_isa<P>(), static_cast<long>(Y.rows()),
                static_cast<long>(Y.cols()), static_cast<unsigned long long>(fnv1a(Y)));
    std::fflush(stdout);
}

/// One forward of every standard case on its fixed-seed inputs (the latency case: its 256
/// inputs one per call, as timed), hashed; no timing, no machine limits.
template <class P>
void hash_all(const options& o) {
    std::printf("policy=%s hash mode\n", P::name());
    // The published FNV-1a 64 test vectors ("" and "a"): hashes from a wrong function would
    // still compare equal between two builds, and say nothing to anyone else.
    const unsigned char a = 'a';
    if (fnv1a(&a, 0) != 0xcbf29ce484222325ull || fnv1a(&a, 1) != 0xaf63dc4c8601ec8cull)
        fail("--hash: the FNV-1a implementation does not reproduce its test vectors");
    auto wanted = [&](const std::string& name) { return name.rfind(o.only, 0) == 0; };
    auto hash_tl = [&](const tl_case& c) {
        const tl<P> layer = make_tl<P>(c.spec);
        const matf X = tl_inputs(c.spec);
        const std::string name = c.spec.name;
        print_hash<P>(name, sample_output(layer, X, c.spec.batch, X.cols()));
        if (c.flat) print_hash<P>(name + "-flat", sample_output(treegate::flatten(layer), X, c.spec.batch, X.cols()));
        if (o.bf16 && c.bf16) {
            print_hash<P>(name + "-bf16", sample_output(treegate::tree_linear_bf16<P>(layer), X, c.spec.batch, X.cols()));
            if (c.flat) {
                const tl<P> flat = treegate::flatten(layer);
                print_hash<P>(name + "-flat-bf16", sample_output(treegate::tree_linear_bf16<P>(flat), X, c.spec.batch, X.cols()));
            }
        }
    };
    for (const tl_case& c : tl_cases) {
        if (wanted(c.spec.name)) hash_tl(c);
        if (std::strcmp(c.spec.name, "PS-deep") == 0 && wanted("UF-fff")) print_hash<P>("UF-fff", make_fff<P>().forward_batch(fff_inputs()));
    }
}

}  // namespace roofline

#endif  // TREEGATE_ROOFLINE_HASH_HPP
