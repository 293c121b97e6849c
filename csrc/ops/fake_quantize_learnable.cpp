// Schemas and typed C++ entry points of the learnable (LSQ) fake-quant ops.
#include "ops/fake_quantize_learnable.h"
#include "ops/common/checks.h"

#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "ops/dispatch.h"
#include "qtorchext/ops.h"

TORCH_LIBRARY_FRAGMENT(qtorchext, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.def(
      "fake_quantize_learnable_per_tensor_affine(Tensor input, Tensor scale, "
      "Tensor zero_point, int quant_min, int quant_max, float grad_factor=1.0) -> Tensor",
      tags);
  m.def(
      "_fake_quantize_learnable_per_tensor_affine_backward(Tensor grad, Tensor input, "
      "Tensor scale, Tensor zero_point, int quant_min, int quant_max, float grad_factor, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)",
      tags);
  m.def(
      "fake_quantize_learnable_per_channel_affine(Tensor input, Tensor scale, "
      "Tensor zero_point, int axis, int quant_min, int quant_max, float grad_factor=1.0) "
      "-> Tensor",
      tags);
  m.def(
      "_fake_quantize_learnable_per_channel_affine_backward(Tensor grad, Tensor input, "
      "Tensor scale, Tensor zero_point, int axis, int quant_min, int quant_max, "
      "float grad_factor, bool[3] output_mask) -> (Tensor, Tensor, Tensor)",
      tags);
}

namespace qtorchext::ops {

TensorTriple fake_quantize_learnable_per_tensor_affine_backward(
    const at::Tensor& grad,
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    double grad_factor,
    std::array<bool, 3> output_mask) {
  return QTORCHEXT_CALL_OP(
      "_fake_quantize_learnable_per_tensor_affine_backward",
      TensorTriple(
          const at::Tensor&,
          const at::Tensor&,
          const at::Tensor&,
          const at::Tensor&,
          int64_t,
          int64_t,
          double,
          std::array<bool, 3>),
      grad,
      input,
      scale,
      zero_point,
      quant_min,
      quant_max,
      grad_factor,
      output_mask);
}

TensorTriple fake_quantize_learnable_per_channel_affine_backward(
    const at::Tensor& grad,
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max,
    double grad_factor,
    std::array<bool, 3> output_mask) {
  return QTORCHEXT_CALL_OP(
      "_fake_quantize_learnable_per_channel_affine_backward",
      TensorTriple(
          const at::Tensor&,
          const at::Tensor&,
          const at::Tensor&,
          const at::Tensor&,
          int64_t,
          int64_t,
          int64_t,
          double,
          std::array<bool, 3>),
      grad,
      input,
      scale,
      zero_point,
      axis,
      quant_min,
      quant_max,
      grad_factor,
      output_mask);
}

}  // namespace qtorchext::ops

namespace qat {

at::Tensor fake_quantize_learnable_per_tensor_affine(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    double grad_factor) {
  return QTORCHEXT_CALL_OP(
      "fake_quantize_learnable_per_tensor_affine",
      at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, double),
      input,
      scale,
      zero_point,
      quant_min,
      quant_max,
      grad_factor);
}

at::Tensor fake_quantize_learnable_per_channel_affine(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max,
    double grad_factor) {
  return QTORCHEXT_CALL_OP(
      "fake_quantize_learnable_per_channel_affine",
      at::Tensor(
          const at::Tensor&,
          const at::Tensor&,
          const at::Tensor&,
          int64_t,
          int64_t,
          int64_t,
          double),
      input,
      scale,
      zero_point,
      axis,
      quant_min,
      quant_max,
      grad_factor);
}

}  // namespace qat

namespace qtorchext::checks {

int64_t learnable_args(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    bool per_channel,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max,
    double grad_factor,
    const char* op) {
  input_dtype(input, op);
  quant_range(quant_min, quant_max, op);
  same_device(op, {{"input", &input}, {"scale", &scale}, {"zero_point", &zero_point}});
  TORCH_CHECK(
      scale.scalar_type() == at::kFloat,
      op, ": scale must be a float32 tensor, got ", scale.scalar_type());
  TORCH_CHECK(
      zero_point.scalar_type() == at::kFloat,
      op, ": zero_point must be a float32 tensor (it is learned), got ",
      zero_point.scalar_type());
  TORCH_CHECK(
      std::isfinite(grad_factor) && std::abs(grad_factor) <= std::numeric_limits<float>::max(),
      op, ": grad_factor must be finite in float32, got ", grad_factor);
  if (!per_channel) {
    one_element(scale, "scale", op);
    one_element(zero_point, "zero_point", op);
    return 0;
  }
  const int64_t ax = wrap_axis(axis, input.dim(), op);
  per_channel_shape(scale, "scale", input.sym_size(ax), ax, op);
  per_channel_shape(zero_point, "zero_point", input.sym_size(ax), ax, op);
  return ax;
}

}  // namespace qtorchext::checks
