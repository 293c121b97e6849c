// Device helpers shared by the CUDA kernels of csrc/ops/cuda.
//
// The numerics mirror the CPU kernels (csrc/ops/cpu/vec): every float
// operation is written with an explicit rounding intrinsic (__fmul_rn,
// __fadd_rn, ...) or an explicit fma, so nvcc cannot contract a multiply and
// an add into an FMA where the CPU code rounds twice (the target is also
// compiled with -fmad=false). float16 / bfloat16 compute in float, float64
// in double, as on the CPU.
//
// Only light headers: ATen/core/Tensor.h and c10/cuda (no ATen/cuda/
// CUDAContext.h, which pulls in cuBLAS and cuSPARSE).
#pragma once

#include <cstdint>
#include <type_traits>

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "ops/cpu/vec/kernels.h"  // ChannelLayout (the storage-order channel map)

namespace qtorchext::cuda {

using cpu::ChannelLayout;

constexpr int kThreads = 256;

/// Compute type of a storage type: double for double, float otherwise.
template <class S>
using compute_t = std::conditional_t<std::is_same_v<S, double>, double, float>;

template <class S>
__device__ __forceinline__ compute_t<S> load_as(S v) {
  return static_cast<compute_t<S>>(v);
}

/// Rounds to nearest even (c10::Half / c10::BFloat16 use __float2half and
/// __float2bfloat16 on the device, both round to nearest even).
template <class S>
__device__ __forceinline__ S store_as(compute_t<S> v) {
  return static_cast<S>(v);
}

// Explicitly rounded arithmetic in the compute type (no contraction).
__device__ __forceinline__ float mul_rn(float a, float b) {
  return __fmul_rn(a, b);
}
__device__ __forceinline__ double mul_rn(double a, double b) {
  return __dmul_rn(a, b);
}
__device__ __forceinline__ float add_rn(float a, float b) {
  return __fadd_rn(a, b);
}
__device__ __forceinline__ double add_rn(double a, double b) {
  return __dadd_rn(a, b);
}
__device__ __forceinline__ float sub_rn(float a, float b) {
  return __fsub_rn(a, b);
}
__device__ __forceinline__ double sub_rn(double a, double b) {
  return __dsub_rn(a, b);
}
/// Nearest, ties to even (cvt.rni), as std::nearbyint in the default mode.
__device__ __forceinline__ float round_even(float a) {
  return nearbyintf(a);
}
__device__ __forceinline__ double round_even(double a) {
  return nearbyint(a);
}
/// The CPU vectors' max / min: a NaN in a yields b (x86 maxps / minps).
template <class T>
__device__ __forceinline__ T max_x86(T a, T b) {
  return a > b ? a : b;
}
template <class T>
__device__ __forceinline__ T min_x86(T a, T b) {
  return a < b ? a : b;
}

/// dtype tags of small qparam tensors, read on the device in their own
/// dtype (no conversion kernels before the launch).
enum class ParamKind : int32_t { Float, Double, Half, BFloat16, Int32, Int64 };

inline ParamKind param_kind(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return ParamKind::Float;
    case at::kDouble:
      return ParamKind::Double;
    case at::kHalf:
      return ParamKind::Half;
    case at::kBFloat16:
      return ParamKind::BFloat16;
    case at::kInt:
      return ParamKind::Int32;
    case at::kLong:
      return ParamKind::Int64;
    default:
      TORCH_INTERNAL_ASSERT(false, "unexpected qparam dtype ", t);
  }
}

/// p[i] of a qparam tensor of kind k, as float.
__device__ __forceinline__ float load_param(
    const void* p, ParamKind k, int64_t i) {
  switch (k) {
    case ParamKind::Float:
      return static_cast<const float*>(p)[i];
    case ParamKind::Double:
      return static_cast<float>(static_cast<const double*>(p)[i]);
    case ParamKind::Half:
      return static_cast<float>(static_cast<const c10::Half*>(p)[i]);
    case ParamKind::BFloat16:
      return static_cast<float>(static_cast<const c10::BFloat16*>(p)[i]);
    case ParamKind::Int32:
      return static_cast<float>(static_cast<const int32_t*>(p)[i]);
    case ParamKind::Int64:
    default:
      return static_cast<float>(static_cast<const int64_t*>(p)[i]);
  }
}

/// A 16-byte (or smaller) packet of N elements for vectorized access.
template <class T, int N>
struct alignas(sizeof(T) * N) Packet {
  T v[N];
};

/// Elements per 16-byte packet.
template <class S>
constexpr int kVec = static_cast<int>(16 / sizeof(S));

inline bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

/// n / d and n % d for 32-bit n < 2^31 with one multiply-high (the
/// round-up method of Granlund & Montgomery, as ATen's IntDivider).
struct FastDiv32 {
  uint32_t d = 1;
  uint32_t m = 0;
  uint32_t shift = 0;

  FastDiv32() = default;
  explicit FastDiv32(uint32_t divisor) : d(divisor) {
    while (shift < 32 && (uint64_t{1} << shift) < divisor) {
      ++shift;
    }
    const uint64_t one = 1;
    m = static_cast<uint32_t>(
        ((one << 32) * ((one << shift) - divisor)) / divisor + 1);
  }
  __device__ __forceinline__ uint32_t div(uint32_t n) const {
    return (__umulhi(n, m) + n) >> shift;
  }
};

/// 64-bit indices: plain division.
struct PlainDiv64 {
  uint64_t d = 1;
  PlainDiv64() = default;
  explicit PlainDiv64(uint64_t divisor) : d(divisor) {}
  __device__ __forceinline__ uint64_t div(uint64_t n) const {
    return n / d;
  }
};

template <class Idx>
using divider_t =
    std::conditional_t<std::is_same_v<Idx, uint32_t>, FastDiv32, PlainDiv64>;

/// Walks the channels of consecutive elements i, i + 1, ... of a buffer laid
/// out as [outer, channels, inner]: one division for the first element, then
/// increments.
template <class Idx>
struct ChannelCursor {
  Idx r;  // position within the inner run
  Idx c;  // channel

  __device__ __forceinline__ ChannelCursor(
      Idx i, const divider_t<Idx>& inner, const divider_t<Idx>& channels) {
    const Idx q = inner.div(i);
    r = i - q * static_cast<Idx>(inner.d);
    c = q - channels.div(q) * static_cast<Idx>(channels.d);
  }
  __device__ __forceinline__ void next(Idx inner, Idx channels) {
    if (++r == inner) {
      r = 0;
      if (++c == channels) {
        c = 0;
      }
    }
  }
};

/// Blocks for a grid-stride loop over n work items: enough to fill every SM
/// several times, no more than the work needs.
inline int sm_count() {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(
      &sms, cudaDevAttrMultiProcessorCount, c10::cuda::current_device()));
  return sms;
}

inline int64_t grid_for(int64_t n, int threads = kThreads) {
  const int64_t needed = (n + threads - 1) / threads;
  const int64_t full = static_cast<int64_t>(sm_count()) * (2048 / threads);
  return std::max<int64_t>(1, std::min(needed, full));
}

/// Sums K values over the block (blockDim.x * blockDim.y threads, a multiple
/// of 32); the result is valid in thread 0. Uses `smem` (32 * K doubles).
template <int K>
__device__ __forceinline__ void block_sum(double (&v)[K], double* smem) {
  const int tid = threadIdx.x + threadIdx.y * blockDim.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int warps = (blockDim.x * blockDim.y) >> 5;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    for (int off = 16; off > 0; off >>= 1) {
      v[k] += __shfl_down_sync(0xffffffffu, v[k], off);
    }
  }
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      smem[warp * K + k] = v[k];
    }
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      v[k] = lane < warps ? smem[lane * K + k] : 0.0;
      for (int off = 16; off > 0; off >>= 1) {
        v[k] += __shfl_down_sync(0xffffffffu, v[k], off);
      }
    }
  }
  __syncthreads();  // smem is reused by the caller's next round
}

}  // namespace qtorchext::cuda
