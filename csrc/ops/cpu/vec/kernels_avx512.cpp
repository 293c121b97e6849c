// AVX-512 kernels (16 float / 8 double lanes, opmask compares). Compiled
// twice: with -mavx512f -mavx512bw -mavx512vl -mavx512dq (the "avx512"
// table, Skylake-X and later), and with -mavx512vnni and
// QTORCHEXT_AVX512_VNNI defined (the "avx512_vnni" table: vpdpwssd in the
// int16 GEMM tiles, int8 linear GEMMs in oneDNN). Only called after isa.cpp
// has checked the CPU and the OS (ZMM and opmask state saved).
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

#if defined(QTORCHEXT_AVX512_VNNI)
#define QTORCHEXT_ISA avx512_vnni
#else
#define QTORCHEXT_ISA avx512
#endif

namespace qtorchext::cpu {
namespace QTORCHEXT_ISA {

#include "ops/cpu/vec/simd_scalar.h"
#include "ops/cpu/vec/simd_avx2.h"
#include "ops/cpu/vec/simd_avx512.h"

using VF = F32x16;
using VD = F64x8;
/// Narrower float vectors for short runs (weight-only groups of fewer bytes than VF::N).
using VW = F32x8;

using IGEMM = Int16Gemm512;

using BITS = BitOps;

using GroupedLanes = GroupedLanes512;

void grouped_conv_impl(const GroupedConvParams& p, int64_t row_begin, int64_t row_end);
#define QTORCHEXT_GROUPED_CONV .grouped_conv = &grouped_conv_impl, .grouped_conv_lanes = GroupedLanes::kLanes

#include "ops/cpu/vec/kernels_impl.h"
#include "ops/cpu/vec/impl/grouped_conv.h"

}  // namespace QTORCHEXT_ISA

#if defined(QTORCHEXT_AVX512_VNNI)
const KernelTable kAvx512VnniKernels = avx512_vnni::make_table("avx512_vnni", true);
#else
const KernelTable kAvx512Kernels = avx512::make_table("avx512");
#endif

}  // namespace qtorchext::cpu
