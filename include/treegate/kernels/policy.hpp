// treegate/kernels/policy.hpp — the kernel policies available everywhere and the default one.
// Layers take the policy as a template parameter; nothing here is selected by a macro.
#ifndef TREEGATE_KERNELS_POLICY_HPP
#define TREEGATE_KERNELS_POLICY_HPP

#include "eigen.hpp"
#include "reference.hpp"

namespace treegate::kernels {

/// The policy layers use unless told otherwise.
using default_policy = eigen;

}  // namespace treegate::kernels

#endif
