// Meta kernels of the int8 convolutions: im2row (patches as GEMM rows), conv2d_int8 (dense and
// grouped), conv2d_depthwise_int8: checks and output shapes.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "ops/common/checks.h"
#include "ops/meta/quantized_utils.h"
#include "ops/conv_int8.h"

namespace qtorchext::meta {
namespace {

using OptTensor = std::optional<at::Tensor>;

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

}  // namespace
}  // namespace qtorchext::meta

TORCH_LIBRARY_IMPL(qtorchext, Meta, m) {
  using namespace qtorchext::meta;
  m.impl("im2row", &im2row);
  m.impl("conv2d_int8", &conv2d_int8);
  m.impl("conv2d_depthwise_int8", &conv2d_depthwise_int8);
}
