// Private ops of the affine fake-quant family, used by the autograd kernels.
#pragma once

#include <optional>

#include <tuple>

#include <ATen/core/Tensor.h>

namespace qtorchext::ops {

using TensorPair = std::tuple<at::Tensor, at::Tensor>;

/// (output, mask): the forward plus the straight-through mask.
TensorPair fake_quantize_per_tensor_affine_cachemask(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max);

TensorPair fake_quantize_per_channel_affine_cachemask(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max);

TensorPair fake_quantize_per_group_cachemask(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t group_size,
    int64_t quant_min,
    int64_t quant_max);

/// grad * mask (a multiplication: Inf or NaN gradients under a zero mask give
/// NaN, as PyTorch's dY * mask).
at::Tensor fake_quantize_mask_backward(const at::Tensor& grad, const at::Tensor& mask);

}  // namespace qtorchext::ops

// Argument checks of the family, shared by its CPU, CUDA and Meta kernels
// (metadata only; each message names the op, the argument and its value).
namespace qtorchext::checks {

/// Returns the wrapped axis.
int64_t per_channel_affine_args(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max,
    const char* op);

void per_group_args(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t group_size,
    int64_t quant_min,
    int64_t quant_max,
    const char* op);

/// The straight-through backward grad * mask: floating grad, bool mask of
/// its shape, one device.
void mask_backward_args(const at::Tensor& grad, const at::Tensor& mask, const char* op);

}  // namespace qtorchext::checks
