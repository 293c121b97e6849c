// Private ops of the binarization family.
#pragma once

#include <optional>

#include <array>
#include <tuple>

#include <ATen/core/Tensor.h>

namespace qtorchext::ops {

/// (d_input, d_alpha); masked-out outputs are undefined tensors.
std::tuple<at::Tensor, at::Tensor> binarize_backward(
    const at::Tensor& grad,
    const at::Tensor& input,
    const at::Tensor& alpha,
    int64_t axis,
    double clip,
    std::array<bool, 2> output_mask);

}  // namespace qtorchext::ops

// Argument checks of the family, shared by its CPU, CUDA and Meta kernels
// (metadata only; each message names the op, the argument and its value).
namespace qtorchext::checks {

/// Returns the wrapped axis, or -1 for a per-tensor alpha.
int64_t binarize_args(
    const at::Tensor& input,
    const at::Tensor& alpha,
    int64_t axis,
    double clip,
    const char* op);

}  // namespace qtorchext::checks
