// Helpers shared by the CUDA observer kernels (min / max and histogram):
// the MinMax pair reduced in registers and shared memory, and the per-tensor
// min / max partials of a whole buffer.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "ops/common/checks.h"
#include "ops/common/qparams.h"
#include "ops/cpu/cpu_utils.h"
#include "ops/cuda/cuda_utils.cuh"
#include "ops/cuda/fake_quantize_kernel.cuh"
#include "qtorchext/ops.h"

namespace qtorchext::cuda {

// Trivially constructible (it lives in shared memory): start from empty().
struct MinMax {
  float mn;
  float mx;
  int nan;

  static __device__ __forceinline__ MinMax empty() {
    return MinMax{INFINITY, -INFINITY, 0};
  }

  __device__ __forceinline__ void add(float v) {
    if (v != v) {
      nan = 1;
    } else if (fabsf(v) < INFINITY) {
      mn = fminf(mn, v);
      mx = fmaxf(mx, v);
    }
  }
  __device__ __forceinline__ void merge(const MinMax& o) {
    mn = fminf(mn, o.mn);
    mx = fmaxf(mx, o.mx);
    nan |= o.nan;
  }
};

/// Block-wide merge; the result is valid in thread 0.
__device__ __forceinline__ MinMax block_minmax(MinMax v, MinMax* smem) {
  const int tid = threadIdx.x + threadIdx.y * blockDim.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int warps = (blockDim.x * blockDim.y) >> 5;
  for (int off = 16; off > 0; off >>= 1) {
    MinMax o = MinMax::empty();
    o.mn = __shfl_down_sync(0xffffffffu, v.mn, off);
    o.mx = __shfl_down_sync(0xffffffffu, v.mx, off);
    o.nan = __shfl_down_sync(0xffffffffu, v.nan, off);
    v.merge(o);
  }
  if (lane == 0) {
    smem[warp] = v;
  }
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? smem[lane] : MinMax::empty();
    for (int off = 16; off > 0; off >>= 1) {
      MinMax o = MinMax::empty();
      o.mn = __shfl_down_sync(0xffffffffu, v.mn, off);
      o.mx = __shfl_down_sync(0xffffffffu, v.mx, off);
      o.nan = __shfl_down_sync(0xffffffffu, v.nan, off);
      v.merge(o);
    }
  }
  __syncthreads();
  return v;
}


/// Per tensor: the whole buffer as one row, N elements (16 bytes) per load,
/// grid-stride; one partial per block.
template <class S, int N>
__global__ void __launch_bounds__(kThreads) minmax_flat_kernel(
    const S* __restrict__ x,
    int64_t n,
    const uint8_t* enabled,
    MinMax* __restrict__ partial) {
  if (enabled != nullptr && *enabled == 0) {
    return;
  }
  __shared__ MinMax smem[32];
  using P = Packet<S, N>;
  MinMax acc = MinMax::empty();
  const int64_t packets = n / N;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t v = tid; v < packets; v += stride) {
    const P in = reinterpret_cast<const P*>(x)[v];
#pragma unroll
    for (int k = 0; k < N; ++k) {
      acc.add(static_cast<float>(load_as(in.v[k])));
    }
  }
  const int64_t i = packets * N + tid;
  if (i < n) {
    acc.add(static_cast<float>(load_as(x[i])));
  }
  acc = block_minmax(acc, smem);
  if (threadIdx.x == 0) {
    partial[blockIdx.x] = acc;
  }
}

/// Per-tensor block partials of the n elements of x (16-byte loads when x is
/// aligned): a [splits] MinMax buffer, about 8 blocks per SM.
template <class S>
at::Tensor flat_minmax_partials(
    const S* x, int64_t n, const uint8_t* enabled, const at::TensorOptions& bytes,
    cudaStream_t stream, int64_t& splits) {
  splits = std::max<int64_t>(
      1, std::min<int64_t>(static_cast<int64_t>(sm_count()) * 8, (n + 4095) / 4096));
  at::Tensor partial = at::empty({static_cast<int64_t>(splits * sizeof(MinMax))}, bytes);
  auto* pp = reinterpret_cast<MinMax*>(partial.data_ptr());
  const auto blocks = static_cast<unsigned>(splits);
  if (aligned16(x)) {
    minmax_flat_kernel<S, kVec<S>><<<blocks, kThreads, 0, stream>>>(x, n, enabled, pp);
  } else {
    minmax_flat_kernel<S, 1><<<blocks, kThreads, 0, stream>>>(x, n, enabled, pp);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return partial;
}


}  // namespace qtorchext::cuda
