// treegate/kernels/cpu_features.hpp — which x86 vector extensions the CPU and the OS both support.
// Read once per process (CPUID and XGETBV) and cached; the kernel policies and the dispatch use it.
#ifndef TREEGATE_KERNELS_CPU_FEATURES_HPP
#define TREEGATE_KERNELS_CPU_FEATURES_HPP

#include <cstdint>

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define TREEGATE_DETAIL_X86_KERNELS 1
#include <cpuid.h>
#else
#define TREEGATE_DETAIL_X86_KERNELS 0
#endif

namespace treegate::kernels {

/// Extensions that are usable, not merely present: a CPU may report AVX-512 while the OS does
/// not save the ZMM and opmask registers on a context switch (XCR0), and then the instructions
/// fault or lose state. Every flag is false on builds without the x86 kernels (not x86-64, or
/// neither GCC nor Clang).
struct cpu_feature_set {
    bool avx2_fma = false;     ///< AVX2 and FMA, with the YMM state saved by the OS
    bool avx512f = false;      ///< AVX-512 Foundation, with the ZMM and opmask state saved
    bool avx512bw = false;     ///< byte and word instructions (needs avx512f)
    bool avx512vl = false;     ///< 128- and 256-bit forms (needs avx512f)
    bool avx512dq = false;     ///< doubleword and quadword instructions (needs avx512f)
    bool avx512_bf16 = false;  ///< VCVTNE2PS2BF16, VDPBF16PS (needs avx512f)
    /// The set the `avx512` policy needs: F, BW, VL and DQ (with AVX2 and FMA).
    bool avx512() const noexcept { return avx2_fma && avx512f && avx512bw && avx512vl && avx512dq; }
};

namespace detail {

#if TREEGATE_DETAIL_X86_KERNELS
// XGETBV with ECX = 0 reads XCR0, the register-state components the OS has enabled. Spelled
// as the instruction so that no target attribute (xsave) is needed around it.
inline std::uint64_t read_xcr0() noexcept {
    std::uint32_t lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (static_cast<std::uint64_t>(hi) << 32) | lo;
}
#endif

inline cpu_feature_set detect_cpu_features() noexcept {
    cpu_feature_set f;
#if TREEGATE_DETAIL_X86_KERNELS
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    const bool fma = (c >> 12) & 1u, osxsave = (c >> 27) & 1u, avx = (c >> 28) & 1u;
    if (!osxsave || !avx) return f;
    const std::uint64_t xcr0 = read_xcr0();
    // Bits 1, 2: SSE and upper YMM halves; 5, 6, 7: opmask, upper ZMM halves of zmm0-15, zmm16-31.
    const bool ymm_state = (xcr0 & 0x6u) == 0x6u;
    const bool zmm_state = (xcr0 & 0xe6u) == 0xe6u;
    unsigned max_leaf = 0, e = 0;
    __get_cpuid(0, &max_leaf, &e, &e, &e);
    if (max_leaf < 7 || !ymm_state) return f;
    unsigned a7 = 0, b7 = 0, c7 = 0, d7 = 0;
    __cpuid_count(7, 0, a7, b7, c7, d7);
    f.avx2_fma = fma && ((b7 >> 5) & 1u);
    if (zmm_state && ((b7 >> 16) & 1u)) {
        f.avx512f = true;
        f.avx512dq = (b7 >> 17) & 1u;
        f.avx512bw = (b7 >> 30) & 1u;
        f.avx512vl = (b7 >> 31) & 1u;
        if (a7 >= 1) {  // leaf 7 sub-leaf 1 exists
            unsigned a71 = 0, b71 = 0, c71 = 0, d71 = 0;
            __cpuid_count(7, 1, a71, b71, c71, d71);
            f.avx512_bf16 = (a71 >> 5) & 1u;
        }
    }
#endif
    return f;
}

}  // namespace detail

/// The usable extensions of the CPU this process runs on, detected on the first call.
inline const cpu_feature_set& cpu_features() noexcept {
    static const cpu_feature_set features = detail::detect_cpu_features();
    return features;
}

}  // namespace treegate::kernels

#endif
