// Meta kernels of the integer linear layer linear_int8 (int8 static / dynamic inputs, exact int32 sums): checks and output shapes.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "ops/common/checks.h"
#include "ops/meta/quantized_utils.h"
#include "ops/linear_int8.h"

namespace qtorchext::meta {
namespace {

using OptTensor = std::optional<at::Tensor>;

at::Tensor linear_int8(
    const at::Tensor& input,
    const at::Tensor& packed_weight,
    const at::Tensor& weight_scale,
    const OptTensor& bias,
    const OptTensor& input_scale,
    const OptTensor& input_zero_point,
    int64_t input_quant_min,
    int64_t input_quant_max,
    bool input_symmetric,
    bool relu) {
  constexpr const char* op = "qtorchext::linear_int8";
  checks::linear_int8_args(
      input, packed_weight, weight_scale, bias, input_scale, input_zero_point, input_quant_min,
      input_quant_max, op);
  return linear_output(input, weight_scale.sym_numel());
}

}  // namespace
}  // namespace qtorchext::meta

TORCH_LIBRARY_IMPL(qtorchext, Meta, m) {
  using namespace qtorchext::meta;
  m.impl("linear_int8", &linear_int8);
}
