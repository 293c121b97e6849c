// Argument checks of the weight-only linear layer linear_weight_only (2/4/8-bit packed weights, float input).
// Shared by the family's CPU, CUDA and Meta kernels (metadata only: symbolic
// sizes work under fake tensors); each message names the op, the argument and
// its value. Schemas and entry points: linear_weight_only.cpp.
#pragma once

#include <optional>
#include <utility>

#include <ATen/core/Tensor.h>

namespace qtorchext::checks {

/// linear_weight_only's arguments; returns the group size.
int64_t weight_only_args(
    const at::Tensor& input,
    const at::Tensor& packed,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t bits,
    int64_t quant_min,
    const std::optional<at::Tensor>& bias,
    const char* op);

}  // namespace qtorchext::checks
