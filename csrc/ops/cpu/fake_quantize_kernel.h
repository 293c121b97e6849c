// The CPU affine fake-quant forward, shared with the fused observer op.
#pragma once

#include <tuple>

#include <ATen/core/Tensor.h>

namespace qtorchext::cpu {

using TensorPair = std::tuple<at::Tensor, at::Tensor>;

/// (output, mask); mask is undefined unless with_mask. Checks all arguments.
TensorPair fake_quantize_per_tensor(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    bool with_mask);

TensorPair fake_quantize_per_channel(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max,
    bool with_mask);

}  // namespace qtorchext::cpu
