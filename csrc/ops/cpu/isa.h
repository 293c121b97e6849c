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

/// Whether int8 linear GEMMs go through oneDNN now: the table asks for it
/// (kernels().onednn_int8), torch's oneDNN is enabled, and a probe with
/// worst-case operands (done once) found at::_int_mm exact on this CPU. The
/// int8 linear then wants its weights as int8 rows [N, K]
/// (pack_linear_weight(..., rows=true)); else as int16 / int8 panels.
bool onednn_int8_linear();
/// The same for a given table (a kernel reads kernels() once per call).
bool onednn_int8_gemm(const KernelTable& table);

/// Whether torch's oneDNN may multiply int8 with AMX tiles here: the CPU has
/// AMX-INT8 and ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA, if set, admit AMX.
bool onednn_may_use_amx();

}  // namespace qtorchext::cpu
