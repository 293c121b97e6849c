// Argument checks of the fake cast op.
#pragma once

#include <optional>

#include <ATen/core/Tensor.h>

// Argument checks of the family, shared by its CPU, CUDA and Meta kernels
// (metadata only; each message names the op, the argument and its value).
namespace qtorchext::checks {

/// Fake cast: floating input, dtype float16 or bfloat16.
void fake_cast_args(const at::Tensor& input, at::ScalarType dtype, const char* op);

}  // namespace qtorchext::checks
