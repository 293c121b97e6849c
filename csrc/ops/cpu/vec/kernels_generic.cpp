// Portable kernels: one-lane vectors, any x86-64 or other CPU.
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
namespace generic {

#include "ops/cpu/vec/simd_scalar.h"

using VF = F32x1;
using VD = F64x1;
/// Narrower float vectors for short runs (weight-only groups of fewer bytes than VF::N).
using VW = F32x1;

using IGEMM = Int16GemmScalar;

using BITS = BitOpsScalar;

#include "ops/cpu/vec/kernels_impl.h"

}  // namespace generic

const KernelTable kGenericKernels = generic::make_table("default");

}  // namespace qtorchext::cpu
