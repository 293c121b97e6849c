// The CUDA affine fake-quant forward, shared by the affine, learnable and
// fused observer ops (defined in fake_quantize_kernel.cu).
#pragma once

#include <tuple>

#include <ATen/core/Tensor.h>

#include "ops/cuda/cuda_utils.cuh"

namespace qtorchext::cuda {

/// Qparams read on the device in their own dtype (one entry per channel of
/// `layout`, contiguous). Numerics as cpu::AffineParams.
struct AffineQParams {
  const void* scale = nullptr;
  ParamKind scale_kind = ParamKind::Float;
  const void* zero_point = nullptr;
  ParamKind zero_point_kind = ParamKind::Int32;
  // Learnable ops: zero_point = clamp(nearbyint(zero_point), quant_min,
  // quant_max).
  bool round_zero_point = false;
  ChannelLayout layout;
  float quant_min = 0.f;
  float quant_max = 0.f;
  bool overflow_to_qmin = false;
  bool output_in_float = false;
  // A device flag (the fused op's fake_quant_enabled), null for always on:
  // when it is 0 the output is a copy of the input and the mask all true.
  const uint8_t* enabled = nullptr;
};

/// Runs the affine kernel over `input` into `out` (and `mask` when defined),
/// both laid out alike; returns them. Launches on the current stream.
std::tuple<at::Tensor, at::Tensor> affine_forward(
    const at::Tensor& input,
    at::Tensor out,
    at::Tensor mask,
    const AffineQParams& params);

/// (output, mask) of the affine ops on CUDA tensors; mask is undefined
/// unless with_mask. Check all arguments (metadata only).
std::tuple<at::Tensor, at::Tensor> fake_quantize_per_tensor(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    bool with_mask);

std::tuple<at::Tensor, at::Tensor> fake_quantize_per_channel(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max,
    bool with_mask);

}  // namespace qtorchext::cuda
