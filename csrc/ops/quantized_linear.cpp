// Schemas and typed C++ entry points of the quantized inference ops:
// integer (int8 static / dynamic), weight-only (2/4/8-bit packed) and
// binary (bit-packed, popcount) linear layers, and their weight packing.
#include <torch/library.h>

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
  m.def(
      "linear_int8(Tensor input, Tensor packed_weight, Tensor weight_scale, Tensor? bias, "
      "Tensor? input_scale, Tensor? input_zero_point, int input_quant_min, int input_quant_max, "
      "bool input_symmetric=False, bool relu=False) -> Tensor",
      tags);
  m.def("pack_int_weight(Tensor weight, int bits, int quant_min) -> Tensor", tags);
  m.def(
      "unpack_int_weight(Tensor packed, int bits, int quant_min, int in_features) -> Tensor", tags);
  m.def(
      "dequantize_weight(Tensor packed, Tensor scale, Tensor zero_point, int bits, int quant_min, "
      "int in_features) -> Tensor",
      tags);
  m.def(
      "linear_weight_only(Tensor input, Tensor packed, Tensor scale, Tensor zero_point, int bits, "
      "int quant_min, Tensor? bias, bool relu=False) -> Tensor",
      tags);
  m.def("pack_binary_weight(Tensor weight) -> Tensor", tags);
  m.def(
      "im2row(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation) "
      "-> Tensor",
      tags);
  m.def(
      "conv2d_int8(Tensor input, Tensor packed_weight, Tensor weight_scale, Tensor? bias, "
      "Tensor input_scale, Tensor input_zero_point, int input_quant_min, int input_quant_max, "
      "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, int groups=1, "
      "bool relu=False) -> Tensor",
      tags);
  m.def(
      "conv2d_depthwise_int8(Tensor input, Tensor weight, Tensor weight_scale, Tensor? bias, "
      "Tensor input_scale, Tensor input_zero_point, int input_quant_min, int input_quant_max, "
      "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, bool relu=False) -> Tensor",
      tags);
  m.def(
      "dequantize_binary_weight(Tensor weight_bits, Tensor weight_alpha, int in_features) -> Tensor",
      tags);
  m.def(
      "linear_binary(Tensor input, Tensor weight_bits, Tensor weight_alpha, int in_features, "
      "Tensor? bias, Tensor? input_scale, Tensor? input_zero_point, int input_quant_min, "
      "int input_quant_max, bool binary_input=False, bool relu=False) -> Tensor",
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

at::Tensor im2row(
    const at::Tensor& input,
    at::IntArrayRef kernel_size,
    at::IntArrayRef stride,
    at::IntArrayRef padding,
    at::IntArrayRef dilation) {
  return QTORCHEXT_CALL_OP(
      "im2row",
      at::Tensor(const at::Tensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef),
      input,
      kernel_size,
      stride,
      padding,
      dilation);
}

at::Tensor conv2d_int8(
    const at::Tensor& input,
    const at::Tensor& packed_weight,
    const at::Tensor& weight_scale,
    const OptTensor& bias,
    const at::Tensor& input_scale,
    const at::Tensor& input_zero_point,
    int64_t input_quant_min,
    int64_t input_quant_max,
    at::IntArrayRef kernel_size,
    at::IntArrayRef stride,
    at::IntArrayRef padding,
    at::IntArrayRef dilation,
    int64_t groups,
    bool relu) {
  return QTORCHEXT_CALL_OP(
      "conv2d_int8",
      at::Tensor(
          const at::Tensor&,
          const at::Tensor&,
          const at::Tensor&,
          const OptTensor&,
          const at::Tensor&,
          const at::Tensor&,
          int64_t,
          int64_t,
          at::IntArrayRef,
          at::IntArrayRef,
          at::IntArrayRef,
          at::IntArrayRef,
          int64_t,
          bool),
      input,
      packed_weight,
      weight_scale,
      bias,
      input_scale,
      input_zero_point,
      input_quant_min,
      input_quant_max,
      kernel_size,
      stride,
      padding,
      dilation,
      groups,
      relu);
}

at::Tensor conv2d_depthwise_int8(
    const at::Tensor& input,
    const at::Tensor& weight,
    const at::Tensor& weight_scale,
    const OptTensor& bias,
    const at::Tensor& input_scale,
    const at::Tensor& input_zero_point,
    int64_t input_quant_min,
    int64_t input_quant_max,
    at::IntArrayRef kernel_size,
    at::IntArrayRef stride,
    at::IntArrayRef padding,
    at::IntArrayRef dilation,
    bool relu) {
  return QTORCHEXT_CALL_OP(
      "conv2d_depthwise_int8",
      at::Tensor(
          const at::Tensor&,
          const at::Tensor&,
          const at::Tensor&,
          const OptTensor&,
          const at::Tensor&,
          const at::Tensor&,
          int64_t,
          int64_t,
          at::IntArrayRef,
          at::IntArrayRef,
          at::IntArrayRef,
          at::IntArrayRef,
          bool),
      input,
      weight,
      weight_scale,
      bias,
      input_scale,
      input_zero_point,
      input_quant_min,
      input_quant_max,
      kernel_size,
      stride,
      padding,
      dilation,
      relu);
}

}  // namespace qat
