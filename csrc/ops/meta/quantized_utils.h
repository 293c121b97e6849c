// Helpers of the Meta kernels of the quantized inference ops.
#pragma once

#include <vector>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

namespace qtorchext::meta {

/// The output of a linear layer over input [..., k]: [..., n].
inline at::Tensor linear_output(const at::Tensor& input, const c10::SymInt& n) {
  std::vector<c10::SymInt> shape(input.sym_sizes().begin(), input.sym_sizes().end());
  shape.back() = n;
  return at::empty_symint(shape, input.options());
}

}  // namespace qtorchext::meta
