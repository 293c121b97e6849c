// Fused "elementwise gradient + per-channel sum" for the backward ops whose
// qparams get a gradient (learnable scale / zero point, binarization alpha).
//
// An op functor writes dX for element idx and adds its K per-element
// contributions to acc; the sums over every element of a channel are formed
// in two deterministic passes, without atomics:
//   1. each block sums its share of one channel (rows kernel) or of a tile of
//      columns (columns kernel) in double and writes one partial per split;
//   2. one thread per (k, channel) adds that channel's partials in order.
// Layout: the dense input is [outer, channels, inner] in storage order
// (cpu::channel_layout); per tensor is channels = 1, outer = 1.
#pragma once

#include <ATen/ops/empty.h>

#include "ops/cuda/cuda_utils.cuh"

namespace qtorchext::cuda {

/// Long rows (inner >= kMinRowInner, and per tensor): block (c, s) sums split
/// s of channel c's outer * inner elements, threads striding along the rows
/// (a stride of blockDim <= inner crosses at most one row end).
constexpr int64_t kMinRowInner = kThreads;

template <int K, class Op>
__global__ void __launch_bounds__(kThreads) grad_rows_kernel(
    Op op,
    int64_t outer,
    int64_t channels,
    int64_t inner,
    double* __restrict__ partial) {
  __shared__ double smem[32 * K];
  const int64_t n = outer * inner;
  const int64_t splits = gridDim.y;
  const int64_t chunk = (n + splits - 1) / splits;
  const int64_t k0 = blockIdx.y * chunk;
  const int64_t k1 = k0 + chunk < n ? k0 + chunk : n;
  for (int64_t c = blockIdx.x; c < channels; c += gridDim.x) {
    double acc[K];
#pragma unroll
    for (int k = 0; k < K; ++k) {
      acc[k] = 0.0;
    }
    int64_t kk = k0 + threadIdx.x;
    if (kk < k1) {
      int64_t o = kk / inner;
      int64_t i = kk - o * inner;
      for (; kk < k1; kk += blockDim.x) {
        op((o * channels + c) * inner + i, c, acc);
        i += blockDim.x;
        if (i >= inner) {
          i -= inner;
          ++o;
        }
      }
    }
    block_sum<K>(acc, smem);
    if (threadIdx.x == 0) {
#pragma unroll
      for (int k = 0; k < K; ++k) {
        partial[(blockIdx.y * K + k) * channels + c] = acc[k];
      }
    }
  }
}

/// Short rows (inner < kMinRowInner, e.g. the last axis): a row of
/// L = channels * inner elements per outer index; block (32 x 8) covers 32
/// columns j and strides over the outer index; a partial per column and
/// split, later summed over the inner positions of each channel.
template <int K, class Op>
__global__ void __launch_bounds__(kThreads) grad_columns_kernel(
    Op op,
    int64_t outer,
    int64_t row,
    int64_t inner,
    double* __restrict__ partial) {
  __shared__ double smem[K][8][33];
  const int64_t j = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  double acc[K];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    acc[k] = 0.0;
  }
  if (j < row) {
    const int64_t c = j / inner;
    const int64_t step = static_cast<int64_t>(gridDim.y) * 8;
    for (int64_t o = static_cast<int64_t>(blockIdx.y) * 8 + threadIdx.y;
         o < outer;
         o += step) {
      op(o * row + j, c, acc);
    }
  }
#pragma unroll
  for (int k = 0; k < K; ++k) {
    smem[k][threadIdx.y][threadIdx.x] = acc[k];
  }
  __syncthreads();
  if (threadIdx.y == 0 && j < row) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      double s = 0.0;
      for (int y = 0; y < 8; ++y) {
        s += smem[k][y][threadIdx.x];
      }
      partial[(blockIdx.y * K + k) * row + j] = s;
    }
  }
}

/// out_k[c] = sum over splits s and inner positions i of
/// partial[(s * K + k) * row + c * inner + i], in that order.
template <class T>
__global__ void __launch_bounds__(kThreads) grad_finalize_kernel(
    const double* __restrict__ partial,
    int64_t splits,
    int K,
    int64_t row,
    int64_t inner,
    int64_t channels,
    T* out0,
    T* out1) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= K * channels) {
    return;
  }
  const int k = static_cast<int>(t / channels);
  const int64_t c = t - k * channels;
  double s = 0.0;
  for (int64_t sp = 0; sp < splits; ++sp) {
    const double* p = partial + (sp * K + k) * row + c * inner;
    for (int64_t i = 0; i < inner; ++i) {
      s += p[i];
    }
  }
  T* out = k == 0 ? out0 : out1;
  if (out != nullptr) {
    out[c] = static_cast<T>(s);
  }
}

/// Runs op over every element of a dense [outer, channels, inner] buffer and
/// writes the per-channel sums of its K contributions to out0 / out1 (T:
/// float or double; either may be null, K is 1 or 2). `like` gives the device.
template <int K, class T, class Op>
void grad_reduce(
    const Op& op,
    int64_t outer,
    int64_t channels,
    int64_t inner,
    T* out0,
    T* out1,
    const at::Tensor& like) {
  if (channels == 1) {  // per tensor: one long row
    inner *= outer;
    outer = 1;
  }
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t target_blocks = static_cast<int64_t>(sm_count()) * 8;
  const auto options = like.options().dtype(at::kDouble);
  at::Tensor partial;
  int64_t splits = 1;
  int64_t row = channels;
  int64_t row_inner = 1;
  if (channels == 1 || inner >= kMinRowInner) {
    // At least 2048 elements per block, at most 65535 splits.
    const int64_t per_channel = outer * inner;
    splits = std::max<int64_t>(
        1,
        std::min<int64_t>(
            {(target_blocks + channels - 1) / channels,
             (per_channel + 2047) / 2048,
             65535}));
    partial = at::empty({splits * K * channels}, options);
    const dim3 grid(
        static_cast<unsigned>(std::min<int64_t>(channels, 65535)),
        static_cast<unsigned>(splits));
    grad_rows_kernel<K, Op><<<grid, kThreads, 0, stream>>>(
        op, outer, channels, inner, partial.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    row = channels * inner;
    row_inner = inner;
    const int64_t tiles = (row + 31) / 32;
    splits = std::max<int64_t>(
        1,
        std::min<int64_t>(
            {(target_blocks + tiles - 1) / tiles, (outer + 7) / 8, 65535}));
    partial = at::empty({splits * K * row}, options);
    const dim3 grid(
        static_cast<unsigned>(tiles), static_cast<unsigned>(splits));
    grad_columns_kernel<K, Op><<<grid, dim3(32, 8), 0, stream>>>(
        op, outer, row, inner, partial.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const int64_t outputs = K * channels;
  grad_finalize_kernel<T>
      <<<(outputs + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
          partial.const_data_ptr<double>(),
          splits,
          K,
          row,
          row_inner,
          channels,
          out0,
          out1);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace qtorchext::cuda
