// Private ops of the learnable (LSQ) fake-quant family.
#pragma once

#include <optional>

#include <array>
#include <tuple>

#include <ATen/core/Tensor.h>

namespace qtorchext::ops {

using TensorTriple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

/// (d_input, d_scale, d_zero_point); outputs whose output_mask entry is
/// false are undefined tensors.
TensorTriple fake_quantize_learnable_per_tensor_affine_backward(
    const at::Tensor& grad,
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    double grad_factor,
    std::array<bool, 3> output_mask);

TensorTriple fake_quantize_learnable_per_channel_affine_backward(
    const at::Tensor& grad,
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max,
    double grad_factor,
    std::array<bool, 3> output_mask);

}  // namespace qtorchext::ops

// Argument checks of the family, shared by its CPU, CUDA and Meta kernels
// (metadata only; each message names the op, the argument and its value).
namespace qtorchext::checks {

/// Learnable ops: float32 scale and zero point. Returns the wrapped axis
/// (per tensor: axis is ignored and 0 is returned).
int64_t learnable_args(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    bool per_channel,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max,
    double grad_factor,
    const char* op);

}  // namespace qtorchext::checks
