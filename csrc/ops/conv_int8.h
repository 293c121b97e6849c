// Argument checks of the int8 convolutions: im2row (patches as GEMM rows), conv2d_int8 (dense and
// grouped), conv2d_depthwise_int8.
// Shared by the family's CPU, CUDA and Meta kernels (metadata only: symbolic
// sizes work under fake tensors); each message names the op, the argument and
// its value. Schemas and entry points: conv_int8.cpp.
#pragma once

#include <optional>
#include <utility>

#include <ATen/core/Tensor.h>

namespace qtorchext::checks {

/// im2row's arguments (4-D float input, 2 entries each, positive kernel,
/// stride and dilation, padding >= 0, a non-empty output); returns the
/// output height and width.
std::pair<c10::SymInt, c10::SymInt> im2row_args(
    const at::Tensor& input,
    at::IntArrayRef kernel_size,
    at::IntArrayRef stride,
    at::IntArrayRef padding,
    at::IntArrayRef dilation,
    const char* op);

/// conv2d_depthwise_int8's arguments (im2row_args' geometry, int16 weight
/// [C * multiplier, kh * kw], float32 weight_scale / bias of C * multiplier,
/// static per-tensor input qparams, one device, exact int32 sums); returns
/// the output height and width.
std::pair<c10::SymInt, c10::SymInt> depthwise_conv_args(
    const at::Tensor& input,
    const at::Tensor& weight,
    const at::Tensor& weight_scale,
    const std::optional<at::Tensor>& bias,
    const at::Tensor& input_scale,
    const at::Tensor& input_zero_point,
    int64_t input_quant_min,
    int64_t input_quant_max,
    at::IntArrayRef kernel_size,
    at::IntArrayRef stride,
    at::IntArrayRef padding,
    at::IntArrayRef dilation,
    const char* op);

/// conv2d_int8's arguments: im2row_args' geometry, groups dividing the
/// input channels and out_channels = weight_scale's length; packed_weight the
/// stacked pack_linear_weight of each group's [out / groups, kh * kw * C /
/// groups] weights (panels [groups, ...] or int8 rows [groups, out / groups,
/// K]); static per-tensor input qparams; one device; exact int32 sums.
/// Returns the output height and width.
std::pair<c10::SymInt, c10::SymInt> conv_int8_args(
    const at::Tensor& input,
    const at::Tensor& packed_weight,
    const at::Tensor& weight_scale,
    const std::optional<at::Tensor>& bias,
    const at::Tensor& input_scale,
    const at::Tensor& input_zero_point,
    int64_t input_quant_min,
    int64_t input_quant_max,
    at::IntArrayRef kernel_size,
    at::IntArrayRef stride,
    at::IntArrayRef padding,
    at::IntArrayRef dilation,
    int64_t groups,
    const char* op);

}  // namespace qtorchext::checks
