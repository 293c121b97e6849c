// Meta kernels of weight packing: quantize_weight (float -> integer codes), pack_linear_weight
// (int8 GEMM panels / CUDA rows), pack_int_weight / unpack_int_weight /
// dequantize_weight (2/4/8-bit codes, 2 or 4 per byte), pack_binary_weight /
// dequantize_binary_weight (32 signs per int32): checks and output shapes.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "ops/common/checks.h"
#include "ops/meta/quantized_utils.h"
#include "ops/weight_packing.h"

namespace qtorchext::meta {
namespace {

using OptTensor = std::optional<at::Tensor>;

at::Tensor quantize_weight(
    const at::Tensor& weight,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max) {
  checks::quantize_weight_args(weight, scale, zero_point, quant_min, quant_max, "qtorchext::quantize_weight");
  return at::empty_symint(weight.sym_sizes(), weight.options().dtype(at::kChar));
}

at::Tensor pack_linear_weight(
    const at::Tensor& weight,
    const at::Tensor& zero_point,
    bool narrow,
    bool rows) {
  checks::pack_linear_weight_args(weight, zero_point, "qtorchext::pack_linear_weight");
  if (rows) {
    return at::empty_symint(weight.sym_sizes(), weight.options().dtype(at::kChar));
  }
  return at::empty_symint(
      {(weight.sym_size(0) + 15) / 16, (weight.sym_size(1) + 1) / 2, 16, 2},
      weight.options().dtype(narrow ? at::kChar : at::kShort));
}

at::Tensor pack_int_weight(const at::Tensor& weight, int64_t bits, int64_t quant_min) {
  checks::pack_int_weight_args(weight, bits, quant_min, "qtorchext::pack_int_weight");
  return at::empty_symint(
      {weight.sym_size(0), (weight.sym_size(1) * bits + 7) / 8}, weight.options().dtype(at::kByte));
}

at::Tensor unpack_int_weight(
    const at::Tensor& packed,
    int64_t bits,
    int64_t quant_min,
    int64_t in_features) {
  checks::unpack_int_weight_args(packed, bits, quant_min, in_features, "qtorchext::unpack_int_weight");
  return at::empty_symint({packed.sym_size(0), in_features}, packed.options().dtype(at::kChar));
}

at::Tensor dequantize_weight(
    const at::Tensor& packed,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t bits,
    int64_t quant_min,
    int64_t in_features) {
  checks::weight_bits_arg(bits, quant_min, "qtorchext::dequantize_weight");
  checks::packed_int_weight(packed, scale, zero_point, bits, in_features, "qtorchext::dequantize_weight");
  return at::empty_symint({packed.sym_size(0), in_features}, scale.options().dtype(at::kFloat));
}

at::Tensor pack_binary_weight(const at::Tensor& weight) {
  TORCH_CHECK(
      weight.dim() == 2 && at::isFloatingType(weight.scalar_type()),
      "qtorchext::pack_binary_weight: weight must be a 2-D floating tensor, got ",
      weight.scalar_type(), " of shape ", weight.sym_sizes());
  return at::empty_symint(
      {weight.sym_size(0), (weight.sym_size(1) + 31) / 32}, weight.options().dtype(at::kInt));
}

at::Tensor dequantize_binary_weight(
    const at::Tensor& weight_bits,
    const at::Tensor& weight_alpha,
    int64_t in_features) {
  checks::binary_weight_args(weight_bits, weight_alpha, in_features, "qtorchext::dequantize_binary_weight");
  return at::empty_symint({weight_alpha.sym_numel(), in_features}, weight_alpha.options());
}

}  // namespace
}  // namespace qtorchext::meta

TORCH_LIBRARY_IMPL(qtorchext, Meta, m) {
  using namespace qtorchext::meta;
  m.impl("quantize_weight", &quantize_weight);
  m.impl("pack_linear_weight", &pack_linear_weight);
  m.impl("pack_int_weight", &pack_int_weight);
  m.impl("unpack_int_weight", &unpack_int_weight);
  m.impl("dequantize_weight", &dequantize_weight);
  m.impl("pack_binary_weight", &pack_binary_weight);
  m.impl("dequantize_binary_weight", &dequantize_binary_weight);
}
