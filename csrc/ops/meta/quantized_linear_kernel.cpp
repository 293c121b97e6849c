// Meta kernels of the quantized inference ops: checks and output shapes.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "ops/common/checks.h"

namespace qtorchext::meta {
namespace {

using OptTensor = std::optional<at::Tensor>;

at::Tensor linear_output(const at::Tensor& input, const c10::SymInt& n) {
  std::vector<c10::SymInt> shape(input.sym_sizes().begin(), input.sym_sizes().end());
  shape.back() = n;
  return at::empty_symint(shape, input.options());
}

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
  const auto [oh, ow] = checks::conv_int8_args(
      input, packed_weight, weight_scale, bias, input_scale, input_zero_point, input_quant_min,
      input_quant_max, kernel_size, stride, padding, dilation, groups, "qtorchext::conv2d_int8");
  return at::empty_symint(
      {input.sym_size(0), weight_scale.sym_numel(), oh, ow},
      input.options().memory_format(at::MemoryFormat::ChannelsLast));
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
  const auto [oh, ow] = checks::depthwise_conv_args(
      input, weight, weight_scale, bias, input_scale, input_zero_point, input_quant_min,
      input_quant_max, kernel_size, stride, padding, dilation, "qtorchext::conv2d_depthwise_int8");
  return at::empty_symint(
      {input.sym_size(0), weight.sym_size(0), oh, ow},
      input.options().memory_format(at::MemoryFormat::ChannelsLast));
}

at::Tensor im2row(
    const at::Tensor& input,
    at::IntArrayRef kernel_size,
    at::IntArrayRef stride,
    at::IntArrayRef padding,
    at::IntArrayRef dilation) {
  const auto [oh, ow] = checks::im2row_args(input, kernel_size, stride, padding, dilation, "qtorchext::im2row");
  return at::empty_symint(
      {input.sym_size(0) * oh * ow, input.sym_size(1) * kernel_size[0] * kernel_size[1]},
      input.options().memory_format(at::MemoryFormat::Contiguous));
}

}  // namespace
}  // namespace qtorchext::meta

TORCH_LIBRARY_IMPL(qtorchext, Meta, m) {
  using namespace qtorchext::meta;
  m.impl("quantize_weight", &quantize_weight);
  m.impl("pack_linear_weight", &pack_linear_weight);
  m.impl("linear_int8", &linear_int8);
  m.impl("pack_int_weight", &pack_int_weight);
  m.impl("unpack_int_weight", &unpack_int_weight);
  m.impl("dequantize_weight", &dequantize_weight);
  m.impl("linear_weight_only", &linear_weight_only);
  m.impl("pack_binary_weight", &pack_binary_weight);
  m.impl("dequantize_binary_weight", &dequantize_binary_weight);
  m.impl("linear_binary", &linear_binary);
  m.impl("im2row", &im2row);
  m.impl("conv2d_depthwise_int8", &conv2d_depthwise_int8);
  m.impl("conv2d_int8", &conv2d_int8);
}
