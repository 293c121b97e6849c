// Meta kernels of the learnable (LSQ) fake-quant ops.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "ops/common/checks.h"
#include "ops/fake_quantize_learnable.h"

namespace qtorchext::meta {
namespace {

using TensorTriple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

constexpr const char* kPerTensor = "qtorchext::fake_quantize_learnable_per_tensor_affine";
constexpr const char* kPerChannel = "qtorchext::fake_quantize_learnable_per_channel_affine";

at::Tensor per_tensor(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    double grad_factor) {
  checks::learnable_args(
      input, scale, zero_point, false, 0, quant_min, quant_max, grad_factor, kPerTensor);
  return at::empty_like(input);
}

at::Tensor per_channel(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max,
    double grad_factor) {
  checks::learnable_args(
      input, scale, zero_point, true, axis, quant_min, quant_max, grad_factor, kPerChannel);
  return at::empty_like(input);
}

TensorTriple backward_outputs(
    const at::Tensor& grad,
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    std::array<bool, 3> output_mask,
    const char* op) {
  checks::grad_like_input(grad, input, op);
  return {
      output_mask[0] ? at::empty_like(input) : at::Tensor(),
      output_mask[1] ? at::empty_symint(scale.sym_sizes(), scale.options()) : at::Tensor(),
      output_mask[2] ? at::empty_symint(zero_point.sym_sizes(), zero_point.options())
                     : at::Tensor()};
}

TensorTriple per_tensor_backward(
    const at::Tensor& grad,
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    double grad_factor,
    std::array<bool, 3> output_mask) {
  checks::learnable_args(
      input, scale, zero_point, false, 0, quant_min, quant_max, grad_factor, kPerTensor);
  return backward_outputs(grad, input, scale, zero_point, output_mask, kPerTensor);
}

TensorTriple per_channel_backward(
    const at::Tensor& grad,
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max,
    double grad_factor,
    std::array<bool, 3> output_mask) {
  checks::learnable_args(
      input, scale, zero_point, true, axis, quant_min, quant_max, grad_factor, kPerChannel);
  return backward_outputs(grad, input, scale, zero_point, output_mask, kPerChannel);
}

}  // namespace
}  // namespace qtorchext::meta

TORCH_LIBRARY_IMPL(qtorchext, Meta, m) {
  using namespace qtorchext::meta;
  m.impl("fake_quantize_learnable_per_tensor_affine", &per_tensor);
  m.impl("_fake_quantize_learnable_per_tensor_affine_backward", &per_tensor_backward);
  m.impl("fake_quantize_learnable_per_channel_affine", &per_channel);
  m.impl("_fake_quantize_learnable_per_channel_affine_backward", &per_channel_backward);
}
