// Schemas, typed C++ entry points and argument checks of weight packing: quantize_weight (float -> integer codes), pack_linear_weight
// (int8 GEMM panels / CUDA rows), pack_int_weight / unpack_int_weight /
// dequantize_weight (2/4/8-bit codes, 2 or 4 per byte), pack_binary_weight /
// dequantize_binary_weight (32 signs per int32).
// Kernels: cpu/weight_packing_kernel.cpp, cuda/, meta/weight_packing_kernel.cpp, autograd/weight_packing_kernel.cpp.
#include "ops/weight_packing.h"

#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "ops/common/checks.h"
#include "ops/dispatch.h"
#include "qtorchext/ops.h"

TORCH_LIBRARY_FRAGMENT(qtorchext, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.def(
      "quantize_weight(Tensor weight, Tensor scale, Tensor zero_point, int quant_min, "
      "int quant_max) -> Tensor",
      tags);
  m.def(
      "pack_linear_weight(Tensor weight, Tensor zero_point, bool narrow=False, bool rows=False) -> Tensor",
      tags);
  m.def("pack_int_weight(Tensor weight, int bits, int quant_min) -> Tensor", tags);
  m.def(
      "unpack_int_weight(Tensor packed, int bits, int quant_min, int in_features) -> Tensor", tags);
  m.def(
      "dequantize_weight(Tensor packed, Tensor scale, Tensor zero_point, int bits, int quant_min, "
      "int in_features) -> Tensor",
      tags);
  m.def("pack_binary_weight(Tensor weight) -> Tensor", tags);
  m.def(
      "dequantize_binary_weight(Tensor weight_bits, Tensor weight_alpha, int in_features) -> Tensor",
      tags);
}

namespace qat {

using OptTensor = std::optional<at::Tensor>;

at::Tensor quantize_weight(
    const at::Tensor& weight,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max) {
  return QTORCHEXT_CALL_OP(
      "quantize_weight",
      at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t),
      weight,
      scale,
      zero_point,
      quant_min,
      quant_max);
}

at::Tensor pack_linear_weight(
    const at::Tensor& weight,
    const at::Tensor& zero_point,
    bool narrow,
    bool rows) {
  return QTORCHEXT_CALL_OP(
      "pack_linear_weight",
      at::Tensor(const at::Tensor&, const at::Tensor&, bool, bool),
      weight,
      zero_point,
      narrow,
      rows);
}

at::Tensor pack_int_weight(const at::Tensor& weight, int64_t bits, int64_t quant_min) {
  return QTORCHEXT_CALL_OP(
      "pack_int_weight", at::Tensor(const at::Tensor&, int64_t, int64_t), weight, bits, quant_min);
}

at::Tensor unpack_int_weight(
    const at::Tensor& packed,
    int64_t bits,
    int64_t quant_min,
    int64_t in_features) {
  return QTORCHEXT_CALL_OP(
      "unpack_int_weight",
      at::Tensor(const at::Tensor&, int64_t, int64_t, int64_t),
      packed,
      bits,
      quant_min,
      in_features);
}

at::Tensor dequantize_weight(
    const at::Tensor& packed,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t bits,
    int64_t quant_min,
    int64_t in_features) {
  return QTORCHEXT_CALL_OP(
      "dequantize_weight",
      at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t),
      packed,
      scale,
      zero_point,
      bits,
      quant_min,
      in_features);
}

at::Tensor pack_binary_weight(const at::Tensor& weight) {
  return QTORCHEXT_CALL_OP("pack_binary_weight", at::Tensor(const at::Tensor&), weight);
}

at::Tensor dequantize_binary_weight(
    const at::Tensor& weight_bits,
    const at::Tensor& weight_alpha,
    int64_t in_features) {
  return QTORCHEXT_CALL_OP(
      "dequantize_binary_weight",
      at::Tensor(const at::Tensor&, const at::Tensor&, int64_t),
      weight_bits,
      weight_alpha,
      in_features);
}

}  // namespace qat

namespace qtorchext::checks {

void quantize_weight_args(
    const at::Tensor& weight,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    const char* op) {
  input_dtype(weight, op, "weight");
  quant_range(quant_min, quant_max, op);
  TORCH_CHECK(
      quant_max <= 127, op, ": quant_max (", quant_max, ") must be <= 127: the codes are int8");
  same_device(op, {{"weight", &weight}, {"scale", &scale}, {"zero_point", &zero_point}});
  scale_dtype(scale, op);
  TORCH_CHECK(
      weight.dim() == 2 && scale.dim() >= 1 && scale.dim() <= 2 && scale.size(0) == weight.size(0) &&
          (scale.dim() == 1 || scale.size(1) > 0) &&
          weight.size(1) % (scale.dim() == 2 ? scale.size(1) : 1) == 0,
      op, ": weight [N, K] with scale [N] (per channel) or [N, groups] (groups dividing K), got ",
      weight.sizes(), " and ", scale.sizes());
  TORCH_CHECK(
      zero_point.sizes() == scale.sizes() && !at::isFloatingType(zero_point.scalar_type()),
      op, ": zero_point must be an integer tensor of the scale's shape ", scale.sizes(), ", got ",
      zero_point.scalar_type(), " of shape ", zero_point.sizes());
}

void pack_int_weight_args(const at::Tensor& weight, int64_t bits, int64_t quant_min, const char* op) {
  weight_bits_arg(bits, quant_min, op);
  TORCH_CHECK(
      weight.dim() == 2 && !at::isFloatingType(weight.scalar_type()),
      op, ": weight must be a 2-D integer tensor, got ", weight.scalar_type(), " of shape ",
      weight.sizes());
}

void unpack_int_weight_args(
    const at::Tensor& packed,
    int64_t bits,
    int64_t quant_min,
    int64_t in_features,
    const char* op) {
  weight_bits_arg(bits, quant_min, op);
  in_features_arg(in_features, 0, op);
  TORCH_CHECK(
      packed.scalar_type() == at::kByte && packed.dim() == 2 &&
          packed.size(1) == packed_row_bytes(in_features, bits),
      op, ": packed must be uint8 [rows, ", packed_row_bytes(in_features, bits), "], got ",
      packed.scalar_type(), " of shape ", packed.sizes());
}

void pack_linear_weight_args(const at::Tensor& weight, const at::Tensor& zero_point, const char* op) {
  TORCH_CHECK(
      weight.dim() == 2 && !at::isFloatingType(weight.scalar_type()) &&
          !at::isComplexType(weight.scalar_type()) && weight.scalar_type() != at::kBool,
      op, ": weight must be a 2-D integer tensor [out_features, in_features], got ",
      weight.scalar_type(), " of shape ", weight.sym_sizes());
  TORCH_CHECK(
      !at::isFloatingType(zero_point.scalar_type()) && !at::isComplexType(zero_point.scalar_type()) &&
          zero_point.scalar_type() != at::kBool &&
          (zero_point.sym_numel() == 1 || zero_point.sym_numel() == weight.sym_size(0)),
      op, ": zero_point must be an integer tensor of 1 or ", weight.sym_size(0), " entries, got ",
      zero_point.scalar_type(), " of shape ", zero_point.sym_sizes());
  same_device(op, {{"weight", &weight}, {"zero_point", &zero_point}});
}

}  // namespace qtorchext::checks
