// AVX2 + FMA + F16C kernels (8 float / 4 double lanes). Compiled with
// -mavx2 -mfma -mf16c; only called after isa.cpp has checked the CPU.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "ops/cpu/vec/kernels.h"

namespace qtorchext::cpu {
namespace avx2 {

#include "ops/cpu/vec/simd_scalar.h"
#include "ops/cpu/vec/simd_avx2.h"

using VF = F32x8;
using VD = F64x4;
/// Narrower float vectors for short runs (weight-only groups of fewer bytes than VF::N).
using VW = F32x8;

using IGEMM = Int16Gemm;

using BITS = BitOps;

using GroupedLanes = GroupedLanes256;

void grouped_conv_impl(const GroupedConvParams& p, int64_t row_begin, int64_t row_end);
#define QTORCHEXT_GROUPED_CONV .grouped_conv = &grouped_conv_impl, .grouped_conv_lanes = GroupedLanes::kLanes

#include "ops/cpu/vec/kernels_impl.h"
#include "ops/cpu/vec/impl/grouped_conv.h"

}  // namespace avx2

const KernelTable kAvx2Kernels = avx2::make_table("avx2");
// The same kernels with the int8 linear GEMMs in oneDNN: for CPUs with
// AVX-VNNI (or AVX512-VNNI / AMX) where the AVX-512 table is not wanted.
const KernelTable kAvx2VnniKernels = avx2::make_table("avx2_vnni", true);

}  // namespace qtorchext::cpu
