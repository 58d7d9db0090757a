// treegate/kernels/dispatch.hpp — the `dispatch` policy: the best kernels this CPU runs, chosen once per process.
// Also the ISA levels (isa, cpu_supports, best_isa, active_isa), TREEGATE_ISA, and prepare<Policy>().
//
// `dispatch` has the policy interface of kernels/reference.hpp. On first use it binds, for the
// whole process, to one table of function pointers: the kernels of the best level the CPU and
// the build support (avx512, else avx2, else eigen), or the level the environment variable
// TREEGATE_ISA names (reference, eigen, avx2 or avx512). After that a call costs one load of
// the table pointer and an indirect call, with no feature test. float and bf16 weights go to
// the bound level's kernels; double goes to the bound level's double kernels (eigen's for
// avx2 and avx512, whose double calls forward there anyway); other scalars to eigen.
//
// A TREEGATE_ISA value that is unknown, or names a level the CPU lacks, is a config_error.
// The kernels are noexcept, so an error met first inside one ends the program (the message on
// stderr, then std::terminate): code that must see it as an exception calls active_isa() or
// prepare<Policy>() first; the layers do so in their constructors.
#ifndef TREEGATE_KERNELS_DISPATCH_HPP
#define TREEGATE_KERNELS_DISPATCH_HPP

#include "../bf16.hpp"
#include "../config.hpp"
#include "../error.hpp"
#include "avx2.hpp"
#include "avx512.hpp"
#include "cpu_features.hpp"
#include "eigen.hpp"
#include "paths.hpp"
#include "reference.hpp"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <type_traits>

namespace treegate::kernels {

/// Instruction-set levels of the kernels, from the slowest.
enum class isa { reference, eigen, avx2, avx512 };

inline const char* to_string(isa level) noexcept {
    switch (level) {
        case isa::reference: return "reference";
        case isa::eigen: return "eigen";
        case isa::avx2: return "avx2";
        case isa::avx512: return "avx512";
    }
    return "unknown";
}

/// True when the level's float (and bf16-weight) kernels are batch invariant: a column's result
/// does not depend on the other columns of its call, so an example's output does not depend on
/// the group it is multiplied in (README, "Kernel policies"). Eigen's GEMM and GEMV block by
/// shape, so `eigen` is not; `double` runs on Eigen at every SIMD level.
inline constexpr bool batch_invariant(isa level) noexcept { return level != isa::eigen; }

/// True when `cpu` (by default this CPU and OS, kernels/cpu_features.hpp) can run the level's
/// kernels; builds without the x86 kernels report no x86 features, hence only reference, eigen.
inline bool cpu_supports(isa level, const cpu_feature_set& cpu) noexcept {
    switch (level) {
        case isa::reference:
        case isa::eigen: return true;
        case isa::avx2: return cpu.avx2_fma;
        case isa::avx512: return cpu.avx512();
    }
    return false;
}
inline bool cpu_supports(isa level) noexcept { return cpu_supports(level, cpu_features()); }

/// The fastest level `cpu` supports.
inline isa best_isa(const cpu_feature_set& cpu) noexcept {
    if (cpu_supports(isa::avx512, cpu)) return isa::avx512;
    if (cpu_supports(isa::avx2, cpu)) return isa::avx2;
    return isa::eigen;
}
inline isa best_isa() noexcept { return best_isa(cpu_features()); }

/// The level a TREEGATE_ISA value asks for on `cpu`: best_isa() for a null or empty value, else
/// the named level. Throws config_error for an unknown name or a level `cpu` lacks. This is
/// what active_isa() applies to the environment; it never reads the environment itself.
inline isa select_isa(const char* value, const cpu_feature_set& cpu) {
    if (value == nullptr || *value == '\0') return best_isa(cpu);
    // The message is built only on failure: binding never allocates (the allocation tests run
    // layers whose first kernel call may be the bind).
    const auto supported = [&cpu] {
        std::string list;
        for (isa level : {isa::reference, isa::eigen, isa::avx2, isa::avx512})
            if (cpu_supports(level, cpu)) list += std::string(list.empty() ? "" : ", ") + to_string(level);
        return list;
    };
    for (isa level : {isa::reference, isa::eigen, isa::avx2, isa::avx512}) {
        if (std::strcmp(value, to_string(level)) != 0) continue;
        if (!cpu_supports(level, cpu))
            treegate::detail::raise<config_error>("TREEGATE_ISA=", value, ": this CPU (or build) cannot run the ", value,
                                                  " kernels; it supports ", supported());
        return level;
    }
    treegate::detail::raise<config_error>("TREEGATE_ISA=", value,
                                          ": unknown level (expected reference, eigen, avx2 or avx512); this CPU supports ",
                                          supported());
}
inline isa select_isa(const char* value) { return select_isa(value, cpu_features()); }

namespace detail {

/// One level's kernels on one scalar type, as function pointers.
template <class S>
struct scalar_kernels {
    void (*gemm)(index_t, index_t, index_t, const S*, index_t, const S*, index_t, S*, index_t) noexcept;
    void (*gemv)(index_t, index_t, const S*, index_t, const S*, S*) noexcept;
    void (*path_sum)(index_t, index_t, const S* const*, int, const S*, S*) noexcept;
    S (*dot)(index_t, const S*, const S*) noexcept;
    void (*axpy)(index_t, S, const S*, S*) noexcept;
    void (*dot_many)(index_t, int, const S* const*, const S* const*, S*) noexcept;
    void (*axpy_many)(index_t, int, const S*, const S* const*, S*) noexcept;
    void (*axpy_paths)(index_t, int, int, int, const S*, const S* const*, index_t, S* const*) noexcept;
};

/// bf16 weights, float inputs and outputs.
struct bf16_kernels {
    void (*gemm)(index_t, index_t, index_t, const bf16*, index_t, const float*, index_t, float*, index_t) noexcept;
    void (*gemv)(index_t, index_t, const bf16*, index_t, const float*, float*) noexcept;
    void (*path_sum)(index_t, index_t, const bf16* const*, int, const float*, float*) noexcept;
};

struct dispatch_table {
    isa level;
    scalar_kernels<float> f32;
    scalar_kernels<double> f64;
    bf16_kernels bf16w;
};

template <class P, class S>
constexpr scalar_kernels<S> scalar_kernels_of() noexcept {
    return {&P::template gemm<S>, &P::template gemv<S>,     &P::template path_sum<S>, &P::template dot<S>,
            &P::template axpy<S>, &P::template dot_many<S>, &P::template axpy_many<S>, &kernels::axpy_paths<P, S>};
}

template <class P>
constexpr dispatch_table table_of_policy(isa level) noexcept {
    return {level, scalar_kernels_of<P, float>(), scalar_kernels_of<P, double>(), {&P::gemm, &P::gemv, &P::path_sum}};
}

inline constexpr dispatch_table reference_table = table_of_policy<reference>(isa::reference);
inline constexpr dispatch_table eigen_table = table_of_policy<eigen>(isa::eigen);
inline constexpr dispatch_table avx2_table = table_of_policy<avx2>(isa::avx2);
inline constexpr dispatch_table avx512_table = table_of_policy<avx512>(isa::avx512);

/// The table of a level (whether or not this CPU can run it: the caller checks).
inline const dispatch_table& table_for(isa level) noexcept {
    switch (level) {
        case isa::reference: return reference_table;
        case isa::eigen: return eigen_table;
        case isa::avx2: return avx2_table;
        case isa::avx512: return avx512_table;
    }
    return eigen_table;
}

/// The bound table, null until the first bind.
inline std::atomic<const dispatch_table*> active_table{nullptr};

/// Binds on the first call (thread-safe: a function-local static), throws config_error for a
/// bad TREEGATE_ISA; a failed bind is retried, and fails again, on the next call.
inline const dispatch_table& bind_table() {
    static const dispatch_table& bound = table_for(select_isa(std::getenv("TREEGATE_ISA")));
    active_table.store(&bound, std::memory_order_release);
    return bound;
}

/// bind_table() for the noexcept kernels: a bad TREEGATE_ISA ends the program, after printing
/// why (an exception leaving a noexcept function would end it without the message).
inline const dispatch_table& bind_table_or_terminate() noexcept {
    try {
        return bind_table();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s (call treegate::kernels::active_isa() first to get this as an exception)\n", e.what());
        std::terminate();
    }
}

inline const dispatch_table& table() noexcept {
    const dispatch_table* t = active_table.load(std::memory_order_acquire);
    return t != nullptr ? *t : bind_table_or_terminate();
}

template <class S>
constexpr bool dispatched = std::is_same_v<S, float> || std::is_same_v<S, double>;

template <class S>
const scalar_kernels<S>& kernels_for(const dispatch_table& t) noexcept {
    if constexpr (std::is_same_v<S, float>)
        return t.f32;
    else
        return t.f64;
}

}  // namespace detail

/// The level `dispatch` is bound to; binds on the first call (reading TREEGATE_ISA once).
/// Throws config_error when TREEGATE_ISA is unknown or names a level this CPU lacks.
inline isa active_isa() { return detail::bind_table().level; }

/// The best kernels this CPU runs, bound once per process (see the top of this header).
struct dispatch {
    static constexpr const char* name() noexcept { return "dispatch"; }

    template <class Scalar>
    static void gemm(index_t rows, index_t cols, index_t n, const Scalar* W, index_t ldw, const Scalar* X, index_t ldx,
                     Scalar* Y, index_t ldy) noexcept {
        if constexpr (detail::dispatched<Scalar>)
            detail::kernels_for<Scalar>(detail::table()).gemm(rows, cols, n, W, ldw, X, ldx, Y, ldy);
        else
            eigen::gemm(rows, cols, n, W, ldw, X, ldx, Y, ldy);
    }

    template <class Scalar>
    static void gemv(index_t rows, index_t cols, const Scalar* W, index_t ldw, const Scalar* x, Scalar* y) noexcept {
        if constexpr (detail::dispatched<Scalar>)
            detail::kernels_for<Scalar>(detail::table()).gemv(rows, cols, W, ldw, x, y);
        else
            eigen::gemv(rows, cols, W, ldw, x, y);
    }

    template <class Scalar>
    static void path_sum(index_t rows, index_t cols, const Scalar* const* blocks, int count, const Scalar* x,
                         Scalar* y) noexcept {
        if constexpr (detail::dispatched<Scalar>)
            detail::kernels_for<Scalar>(detail::table()).path_sum(rows, cols, blocks, count, x, y);
        else
            eigen::path_sum(rows, cols, blocks, count, x, y);
    }

    static void gemm(index_t rows, index_t cols, index_t n, const bf16* W, index_t ldw, const float* X, index_t ldx,
                     float* Y, index_t ldy) noexcept {
        detail::table().bf16w.gemm(rows, cols, n, W, ldw, X, ldx, Y, ldy);
    }

    static void gemv(index_t rows, index_t cols, const bf16* W, index_t ldw, const float* x, float* y) noexcept {
        detail::table().bf16w.gemv(rows, cols, W, ldw, x, y);
    }

    static void path_sum(index_t rows, index_t cols, const bf16* const* blocks, int count, const float* x,
                         float* y) noexcept {
        detail::table().bf16w.path_sum(rows, cols, blocks, count, x, y);
    }

    template <class Scalar>
    static Scalar dot(index_t n, const Scalar* a, const Scalar* b) noexcept {
        if constexpr (detail::dispatched<Scalar>)
            return detail::kernels_for<Scalar>(detail::table()).dot(n, a, b);
        else
            return eigen::dot(n, a, b);
    }

    template <class Scalar>
    static void axpy(index_t n, Scalar alpha, const Scalar* x, Scalar* y) noexcept {
        if constexpr (detail::dispatched<Scalar>)
            detail::kernels_for<Scalar>(detail::table()).axpy(n, alpha, x, y);
        else
            eigen::axpy(n, alpha, x, y);
    }

    template <class Scalar>
    static void dot_many(index_t n, int count, const Scalar* const* a, const Scalar* const* b, Scalar* out) noexcept {
        if constexpr (detail::dispatched<Scalar>)
            detail::kernels_for<Scalar>(detail::table()).dot_many(n, count, a, b, out);
        else
            eigen::dot_many(n, count, a, b, out);
    }

    template <class Scalar>
    static void axpy_many(index_t n, int count, const Scalar* alpha, const Scalar* const* x, Scalar* y) noexcept {
        if constexpr (detail::dispatched<Scalar>)
            detail::kernels_for<Scalar>(detail::table()).axpy_many(n, count, alpha, x, y);
        else
            eigen::axpy_many(n, count, alpha, x, y);
    }

    template <class Scalar>
    static void axpy_paths(index_t n, int m, int count, int shared, const Scalar* alpha, const Scalar* const* x,
                           index_t ld, Scalar* const* ys) noexcept {
        if constexpr (detail::dispatched<Scalar>)
            detail::kernels_for<Scalar>(detail::table()).axpy_paths(n, m, count, shared, alpha, x, ld, ys);
        else
            kernels::axpy_paths<eigen>(n, m, count, shared, alpha, x, ld, ys);
    }
};

/// Makes a policy ready before its first (noexcept) kernel call, so that a configuration error
/// surfaces as an exception where it can be handled: for `dispatch` this binds it (active_isa(),
/// which throws config_error for a bad TREEGATE_ISA); for every other policy it does nothing.
/// Layer constructors call it once.
template <class Policy>
void prepare() {
    if constexpr (std::is_same_v<Policy, dispatch>) (void)active_isa();
}

}  // namespace treegate::kernels

#endif
