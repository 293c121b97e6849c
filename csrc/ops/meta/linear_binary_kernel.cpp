// Meta kernels of the binary-weight linear layer linear_binary (bit-packed weights, popcount kernels): checks and output shapes.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "ops/common/checks.h"
#include "ops/meta/quantized_utils.h"
#include "ops/linear_binary.h"

namespace qtorchext::meta {
namespace {

using OptTensor = std::optional<at::Tensor>;

at::Tensor linear_binary(
    const at::Tensor& input,
    const at::Tensor& weight_bits,
    const at::Tensor& weight_alpha,
    int64_t in_features,
    const OptTensor& bias,
    const OptTensor& input_scale,
    const OptTensor& input_zero_point,
    int64_t input_quant_min,
    int64_t input_quant_max,
    bool binary_input,
    bool relu) {
  constexpr const char* op = "qtorchext::linear_binary";
  checks::linear_binary_args(
      input, weight_bits, weight_alpha, in_features, bias, input_scale, input_zero_point,
      input_quant_min, input_quant_max, binary_input, op);
  return linear_output(input, weight_alpha.sym_numel());
}

}  // namespace
}  // namespace qtorchext::meta

TORCH_LIBRARY_IMPL(qtorchext, Meta, m) {
  using namespace qtorchext::meta;
  m.impl("linear_binary", &linear_binary);
}
