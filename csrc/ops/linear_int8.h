// Argument checks of the integer linear layer linear_int8 (int8 static / dynamic inputs, exact int32 sums).
// Shared by the family's CPU, CUDA and Meta kernels (metadata only: symbolic
// sizes work under fake tensors); each message names the op, the argument and
// its value. Schemas and entry points: linear_int8.cpp.
#pragma once

#include <optional>
#include <utility>

#include <ATen/core/Tensor.h>

namespace qtorchext::checks {

bool linear_int8_args(
    const at::Tensor& input,
    const at::Tensor& packed_weight,
    const at::Tensor& weight_scale,
    const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& input_scale,
    const std::optional<at::Tensor>& input_zero_point,
    int64_t input_quant_min,
    int64_t input_quant_max,
    const char* op);

}  // namespace qtorchext::checks
