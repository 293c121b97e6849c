// Run-time choice of the CPU kernel table (see vec/kernels.h).
#pragma once

#include <string>
#include <vector>

#include "ops/cpu/vec/kernels.h"

namespace qtorchext::cpu {

/// The table in use. Chosen once from the CPU (best supported instruction
/// set), unless QTORCHEXT_CPU_CAPABILITY or, failing that,
/// ATEN_CPU_CAPABILITY names another; changed by set_cpu_capability().
const KernelTable& kernels();

}  // namespace qtorchext::cpu
