// treegate/kernels/policy.hpp — the kernel policies available everywhere and the default one.
// Layers take the policy as a template parameter; nothing here is selected by a macro.
#ifndef TREEGATE_KERNELS_POLICY_HPP
#define TREEGATE_KERNELS_POLICY_HPP

#include "dispatch.hpp"
#include "eigen.hpp"
#include "reference.hpp"

namespace treegate::kernels {

/// The policy layers use unless told otherwise: the best kernels this CPU runs, chosen once
/// per process (kernels/dispatch.hpp; TREEGATE_ISA overrides the choice).
using default_policy = dispatch;

}  // namespace treegate::kernels

#endif
