// Private ops of the affine fake-quant family, used by the autograd kernels.
#pragma once

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
