// Helpers shared by the CUDA kernels of the quantized inference ops
// (weight_packing, linear_int8, linear_weight_only, conv_int8).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/ops/_int_mm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/max.h>
#include <ATen/ops/min.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>

#include "ops/common/checks.h"
#include "ops/common/qparams.h"
#include "ops/cpu/cpu_utils.h"
#include "ops/conv_int8.h"
#include "ops/cuda/cuda_utils.cuh"
#include "ops/linear_int8.h"
#include "ops/linear_weight_only.h"
#include "ops/weight_packing.h"
#include "qtorchext/ops.h"

namespace qtorchext::cuda {

using OptTensor = std::optional<at::Tensor>;

inline constexpr int kWarps = kThreads / 32;
inline constexpr int64_t kFusedInt8Rows = 16;      // at::_int_mm needs more than 16 rows
inline constexpr int64_t kWeightOnlyFusedRows = 8;  // as the CPU kernel
inline constexpr int kRowsPerWarp = 8;

/// float(acc) * (row_scale * col_scale) + bias, max(., 0): the CPU epilogue.
__device__ __forceinline__ float epilogue(
    uint32_t acc, float row_scale, float col_scale, const float* bias, int64_t n, bool relu) {
  float y = __fmul_rn(__int2float_rn(static_cast<int32_t>(acc)), __fmul_rn(row_scale, col_scale));
  if (bias != nullptr) {
    y = __fadd_rn(y, bias[n]);
  }
  return relu ? max_x86(y, 0.f) : y;
}

inline at::Tensor to_device(const std::vector<float>& v, const at::Device& device) {
  at::Tensor t = at::empty({static_cast<int64_t>(v.size())}, at::TensorOptions().dtype(at::kFloat));
  std::copy(v.begin(), v.end(), t.data_ptr<float>());
  return t.to(device);
}

/// Packed weights, float32 scales and int32 zero points on the device.
struct WeightOnlyArgs {
  at::Tensor packed, scale, zero_point;
  int64_t group = 0;
};

inline WeightOnlyArgs weight_only_args(
    const at::Tensor& packed,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t bits,
    int64_t quant_min,
    int64_t in_features,
    const char* op) {
  checks::weight_bits_arg(bits, quant_min, op);
  WeightOnlyArgs a;
  a.group = checks::packed_int_weight(packed, scale, zero_point, bits, in_features, op);
  a.packed = packed.contiguous();
  a.scale = scale.to(at::kFloat).contiguous();
  a.zero_point = zero_point.to(at::kInt).contiguous();
  return a;
}

/// Rows of an input [..., K] and the output back in its shape.
struct Rows {
  at::Tensor x;  // [M, K] contiguous
  int64_t m = 0;
  std::vector<int64_t> out_shape;
};

inline Rows as_rows(const at::Tensor& input, int64_t n) {
  Rows r;
  const int64_t k = input.size(-1);
  r.x = input.reshape({-1, k}).contiguous();
  r.m = r.x.size(0);
  r.out_shape = input.sizes().vec();
  r.out_shape.back() = n;
  return r;
}

/// dequantize_weight's CUDA kernel (linear_weight_only beyond a few rows).
at::Tensor dequantize_weight_cuda(
    const at::Tensor& packed,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t bits,
    int64_t quant_min,
    int64_t in_features);

}  // namespace qtorchext::cuda
