// Meta kernels of the weight-only linear layer linear_weight_only (2/4/8-bit packed weights, float input): checks and output shapes.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "ops/common/checks.h"
#include "ops/meta/quantized_utils.h"
#include "ops/linear_weight_only.h"

namespace qtorchext::meta {
namespace {

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
  constexpr const char* op = "qtorchext::linear_weight_only";
  checks::weight_only_args(input, packed, scale, zero_point, bits, quant_min, bias, op);
  return linear_output(input, packed.sym_size(0));
}

}  // namespace
}  // namespace qtorchext::meta

TORCH_LIBRARY_IMPL(qtorchext, Meta, m) {
  using namespace qtorchext::meta;
  m.impl("linear_weight_only", &linear_weight_only);
}
