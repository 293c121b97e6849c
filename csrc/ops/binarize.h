// Private ops of the binarization family.
#pragma once

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
