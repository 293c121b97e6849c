// Schemas, typed C++ entry points and argument checks of the integer linear layer linear_int8 (int8 static / dynamic inputs, exact int32 sums).
// Kernels: cpu/linear_int8_kernel.cpp, cuda/, meta/linear_int8_kernel.cpp, autograd/linear_int8_kernel.cpp.
#include "ops/linear_int8.h"

#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "ops/common/checks.h"
#include "ops/dispatch.h"
#include "qtorchext/ops.h"

TORCH_LIBRARY_FRAGMENT(qtorchext, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.def(
      "linear_int8(Tensor input, Tensor packed_weight, Tensor weight_scale, Tensor? bias, "
      "Tensor? input_scale, Tensor? input_zero_point, int input_quant_min, int input_quant_max, "
      "bool input_symmetric=False, bool relu=False) -> Tensor",
      tags);
}

namespace qat {

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
  return QTORCHEXT_CALL_OP(
      "linear_int8",
      at::Tensor(
          const at::Tensor&,
          const at::Tensor&,
          const at::Tensor&,
          const OptTensor&,
          const OptTensor&,
          const OptTensor&,
          int64_t,
          int64_t,
          bool,
          bool),
      input,
      packed_weight,
      weight_scale,
      bias,
      input_scale,
      input_zero_point,
      input_quant_min,
      input_quant_max,
      input_symmetric,
      relu);
}

}  // namespace qat

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
    const char* op) {
  const c10::SymInt n = weight_scale.sym_numel();
  const c10::SymInt k = input.dim() > 0 ? input.sym_size(-1) : c10::SymInt(0);
  quantized_input(input, k, op);
  TORCH_CHECK(k >= 1, op, ": input must have at least one feature, got shape ", input.sym_sizes());
  float_vector(weight_scale, "weight_scale", n, op);
  optional_bias(bias, n, op);
  packed_linear_weight(packed_weight, n, k, op);
  quant_range(input_quant_min, input_quant_max, op);
  const bool is_static = static_input_args(input, input_scale, input_zero_point, op);
  same_device(
      op, {{"input", &input}, {"packed_weight", &packed_weight}, {"weight_scale", &weight_scale}});
  if (bias.has_value() && bias->defined()) {
    same_device(op, {{"input", &input}, {"bias", &*bias}});
  }
  // The int32 accumulation is exact while k * max|input code - zero point| *
  // max|weight - zero point| < 2^31 (int8 weights: |w - zp| <= 128; int16
  // panels hold weight ranges up to 8 bits with any zero point: <= 383).
  const int64_t wmax = packed_weight.scalar_type() == at::kChar ? 128 : 383;
  const int64_t per_input = std::max<int64_t>(1, (input_quant_max - input_quant_min) * wmax);
  TORCH_CHECK(
      k * per_input < (int64_t{1} << 31),
      op, ": in_features (", k, ") is too large for exact int32 accumulation with input codes in [",
      input_quant_min, ", ", input_quant_max, "] and ",
      packed_weight.scalar_type() == at::kChar ? "int8" : "int16", " weights: at most ",
      ((int64_t{1} << 31) - 1) / per_input);
  return is_static;
}

}  // namespace qtorchext::checks
