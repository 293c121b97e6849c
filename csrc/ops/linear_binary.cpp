// Schemas, typed C++ entry points and argument checks of the binary-weight linear layer linear_binary (bit-packed weights, popcount kernels).
// Kernels: cpu/linear_binary_kernel.cpp, cuda/, meta/linear_binary_kernel.cpp, autograd/linear_binary_kernel.cpp.
#include "ops/linear_binary.h"

#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "ops/common/checks.h"
#include "ops/dispatch.h"
#include "qtorchext/ops.h"

TORCH_LIBRARY_FRAGMENT(qtorchext, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.def(
      "linear_binary(Tensor input, Tensor weight_bits, Tensor weight_alpha, int in_features, "
      "Tensor? bias, Tensor? input_scale, Tensor? input_zero_point, int input_quant_min, "
      "int input_quant_max, bool binary_input=False, bool relu=False) -> Tensor",
      tags);
}

namespace qat {

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
  return QTORCHEXT_CALL_OP(
      "linear_binary",
      at::Tensor(
          const at::Tensor&,
          const at::Tensor&,
          const at::Tensor&,
          int64_t,
          const OptTensor&,
          const OptTensor&,
          const OptTensor&,
          int64_t,
          int64_t,
          bool,
          bool),
      input,
      weight_bits,
      weight_alpha,
      in_features,
      bias,
      input_scale,
      input_zero_point,
      input_quant_min,
      input_quant_max,
      binary_input,
      relu);
}

}  // namespace qat

namespace qtorchext::checks {

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
    const char* op) {
  quantized_input(input, in_features, op);
  binary_weight_args(weight_bits, weight_alpha, in_features, op);
  optional_bias(bias, weight_alpha.sym_numel(), op);
  same_device(op, {{"input", &input}, {"weight_bits", &weight_bits}});
  if (bias.has_value() && bias->defined()) {
    same_device(op, {{"input", &input}, {"bias", &*bias}});
  }
  const bool is_static = static_input_args(input, input_scale, input_zero_point, op);
  TORCH_CHECK(
      !(is_static && binary_input), op, ": binary_input and 8-bit input qparams are exclusive");
  if (is_static) {
    quant_range(input_quant_min, input_quant_max, op);
    // the popcount kernel reads 8 bit planes of the codes above quant_min
    TORCH_CHECK(
        input_quant_max - input_quant_min <= 255,
        op, ": the input range [", input_quant_min, ", ", input_quant_max,
        "] must span at most 256 codes (8 bits)");
  }
  return is_static;
}

}  // namespace qtorchext::checks
