// Argument checks of the binary-weight linear layer linear_binary (bit-packed weights, popcount kernels).
// Shared by the family's CPU, CUDA and Meta kernels (metadata only: symbolic
// sizes work under fake tensors); each message names the op, the argument and
// its value. Schemas and entry points: linear_binary.cpp.
#pragma once

#include <optional>
#include <utility>

#include <ATen/core/Tensor.h>

namespace qtorchext::checks {

/// linear_binary's arguments; returns whether the input is static.
bool linear_binary_args(
    const at::Tensor& input,
    const at::Tensor& weight_bits,
    const at::Tensor& weight_alpha,
    int64_t in_features,
    const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& input_scale,
    const std::optional<at::Tensor>& input_zero_point,
    int64_t input_quant_min,
    int64_t input_quant_max,
    bool binary_input,
    const char* op);

}  // namespace qtorchext::checks
