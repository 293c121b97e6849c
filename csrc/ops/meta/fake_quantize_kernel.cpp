// Meta kernels of the affine fake-quant family: the checks and output
// layouts of the real kernels, no data (for torch.compile / export).
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "ops/common/checks.h"
#include "ops/fake_quantize.h"

namespace qtorchext::meta {
namespace {

using TensorPair = std::tuple<at::Tensor, at::Tensor>;

TensorPair outputs(const at::Tensor& input, at::MemoryFormat format = at::MemoryFormat::Preserve) {
  return {
      at::empty_like(input, input.options(), format),
      at::empty_like(input, input.options().dtype(at::kBool), format)};
}

TensorPair per_tensor_cachemask(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max) {
  checks::per_tensor_affine_args(
      input, scale, zero_point, quant_min, quant_max,
      "qtorchext::fake_quantize_per_tensor_affine");
  return outputs(input);
}

at::Tensor per_tensor(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max) {
  return std::get<0>(per_tensor_cachemask(input, scale, zero_point, quant_min, quant_max));
}

TensorPair per_channel_cachemask(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max) {
  checks::per_channel_affine_args(
      input, scale, zero_point, axis, quant_min, quant_max,
      "qtorchext::fake_quantize_per_channel_affine");
  return outputs(input);
}

at::Tensor per_channel(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max) {
  return std::get<0>(
      per_channel_cachemask(input, scale, zero_point, axis, quant_min, quant_max));
}

TensorPair per_group_cachemask(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t group_size,
    int64_t quant_min,
    int64_t quant_max) {
  checks::per_group_args(
      input, scale, zero_point, group_size, quant_min, quant_max,
      "qtorchext::fake_quantize_per_group");
  return outputs(input, at::MemoryFormat::Contiguous);
}

at::Tensor per_group(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t group_size,
    int64_t quant_min,
    int64_t quant_max) {
  return std::get<0>(
      per_group_cachemask(input, scale, zero_point, group_size, quant_min, quant_max));
}

at::Tensor mask_backward(const at::Tensor& grad, const at::Tensor& mask) {
  checks::mask_backward_args(grad, mask, "qtorchext::_fake_quantize_mask_backward");
  return at::empty_like(mask, grad.options());
}

}  // namespace
}  // namespace qtorchext::meta

TORCH_LIBRARY_IMPL(qtorchext, Meta, m) {
  using namespace qtorchext::meta;
  m.impl("fake_quantize_per_tensor_affine", &per_tensor);
  m.impl("_fake_quantize_per_tensor_affine_cachemask", &per_tensor_cachemask);
  m.impl("fake_quantize_per_channel_affine", &per_channel);
  m.impl("_fake_quantize_per_channel_affine_cachemask", &per_channel_cachemask);
  m.impl("fake_quantize_per_group", &per_group);
  m.impl("_fake_quantize_per_group_cachemask", &per_group_cachemask);
  m.impl("_fake_quantize_mask_backward", &mask_backward);
}
