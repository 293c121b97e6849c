// Schemas, typed C++ entry points and argument checks of the weight-only linear layer linear_weight_only (2/4/8-bit packed weights, float input).
// Kernels: cpu/linear_weight_only_kernel.cpp, cuda/, meta/linear_weight_only_kernel.cpp, autograd/linear_weight_only_kernel.cpp.
#include "ops/linear_weight_only.h"

#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "ops/common/checks.h"
#include "ops/dispatch.h"
#include "qtorchext/ops.h"

TORCH_LIBRARY_FRAGMENT(qtorchext, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.def(
      "linear_weight_only(Tensor input, Tensor packed, Tensor scale, Tensor zero_point, int bits, "
      "int quant_min, Tensor? bias, bool relu=False) -> Tensor",
      tags);
}

namespace qat {

using OptTensor = std::optional<at::Tensor>;

at::Tensor linear_weight_only(
    const at::Tensor& input,
    const at::Tensor& packed,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t bits,
    int64_t quant_min,
    const OptTensor& bias,
    bool relu) {
  return QTORCHEXT_CALL_OP(
      "linear_weight_only",
      at::Tensor(
          const at::Tensor&,
          const at::Tensor&,
          const at::Tensor&,
          const at::Tensor&,
          int64_t,
          int64_t,
          const OptTensor&,
          bool),
      input,
      packed,
      scale,
      zero_point,
      bits,
      quant_min,
      bias,
      relu);
}

}  // namespace qat

namespace qtorchext::checks {

int64_t weight_only_args(
    const at::Tensor& input,
    const at::Tensor& packed,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t bits,
    int64_t quant_min,
    const std::optional<at::Tensor>& bias,
    const char* op) {
  weight_bits_arg(bits, quant_min, op);
  const int64_t k = input.dim() > 0 ? input.sym_size(-1).guard_int(__FILE__, __LINE__) : 0;
  quantized_input(input, k, op);
  TORCH_CHECK(k >= 1, op, ": input must have at least one feature, got shape ", input.sym_sizes());
  const int64_t group = packed_int_weight(packed, scale, zero_point, bits, k, op);
  optional_bias(bias, packed.sym_size(0), op);
  same_device(op, {{"input", &input}, {"packed", &packed}});
  if (bias.has_value() && bias->defined()) {
    same_device(op, {{"input", &input}, {"bias", &*bias}});
  }
  return group;
}

}  // namespace qtorchext::checks
