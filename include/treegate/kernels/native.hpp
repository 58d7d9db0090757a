// treegate/kernels/native.hpp — `native`: the fastest policy the compiler was allowed to use.
// `avx2` when this translation unit is compiled with AVX2 and FMA enabled (-mavx2 -mfma, -march=…), else `eigen`.
#ifndef TREEGATE_KERNELS_NATIVE_HPP
#define TREEGATE_KERNELS_NATIVE_HPP

#include "avx2.hpp"
#include "eigen.hpp"

namespace treegate::kernels {

// Decided by the compiler flags of the including translation unit, not by a treegate macro:
// `native` is a plain alias, so a program whose translation units are built with different
// flags gets different types (never an ODR clash), and may still name avx2 or eigen directly.
#if defined(__AVX2__) && defined(__FMA__) && TREEGATE_DETAIL_AVX2_KERNELS
using native = avx2;
#else
using native = eigen;
#endif

}  // namespace treegate::kernels

#endif
