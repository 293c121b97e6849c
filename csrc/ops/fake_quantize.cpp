// Schemas and typed C++ entry points of the affine fake-quant family:
// per-tensor, per-channel, per-group, their cached-mask forms and the shared
// straight-through backward.
#include "ops/fake_quantize.h"

#include <ATen/ops/scalar_tensor.h>
#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "ops/common/checks.h"
#include "ops/dispatch.h"
#include "qtorchext/ops.h"

TORCH_LIBRARY_FRAGMENT(qtorchext, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.def(
      "fake_quantize_per_tensor_affine(Tensor input, Tensor scale, Tensor zero_point, "
      "int quant_min, int quant_max) -> Tensor",
      tags);
  m.def(
      "_fake_quantize_per_tensor_affine_cachemask(Tensor input, Tensor scale, "
      "Tensor zero_point, int quant_min, int quant_max) -> (Tensor output, Tensor mask)",
      tags);
  m.def(
      "fake_quantize_per_channel_affine(Tensor input, Tensor scale, Tensor zero_point, "
      "int axis, int quant_min, int quant_max) -> Tensor",
      tags);
  m.def(
      "_fake_quantize_per_channel_affine_cachemask(Tensor input, Tensor scale, "
      "Tensor zero_point, int axis, int quant_min, int quant_max) "
      "-> (Tensor output, Tensor mask)",
      tags);
  m.def(
      "fake_quantize_per_group(Tensor input, Tensor scale, Tensor zero_point, "
      "int group_size, int quant_min, int quant_max) -> Tensor",
      tags);
  m.def(
      "_fake_quantize_per_group_cachemask(Tensor input, Tensor scale, Tensor zero_point, "
      "int group_size, int quant_min, int quant_max) -> (Tensor output, Tensor mask)",
      tags);
  m.def("_fake_quantize_mask_backward(Tensor grad, Tensor mask) -> Tensor", tags);
}

namespace qtorchext::ops {

using Sig5 = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t);
using Sig6 = at::Tensor(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t);
using PairSig5 =
    TensorPair(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t);
using PairSig6 = TensorPair(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t);

TensorPair fake_quantize_per_tensor_affine_cachemask(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max) {
  return QTORCHEXT_CALL_OP(
      "_fake_quantize_per_tensor_affine_cachemask",
      PairSig5,
      input,
      scale,
      zero_point,
      quant_min,
      quant_max);
}

TensorPair fake_quantize_per_channel_affine_cachemask(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max) {
  return QTORCHEXT_CALL_OP(
      "_fake_quantize_per_channel_affine_cachemask",
      PairSig6,
      input,
      scale,
      zero_point,
      axis,
      quant_min,
      quant_max);
}

TensorPair fake_quantize_per_group_cachemask(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t group_size,
    int64_t quant_min,
    int64_t quant_max) {
  return QTORCHEXT_CALL_OP(
      "_fake_quantize_per_group_cachemask",
      PairSig6,
      input,
      scale,
      zero_point,
      group_size,
      quant_min,
      quant_max);
}

at::Tensor fake_quantize_mask_backward(const at::Tensor& grad, const at::Tensor& mask) {
  return QTORCHEXT_CALL_OP(
      "_fake_quantize_mask_backward",
      at::Tensor(const at::Tensor&, const at::Tensor&),
      grad,
      mask);
}

}  // namespace qtorchext::ops

namespace qat {

at::Tensor fake_quantize_per_tensor_affine(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max) {
  return QTORCHEXT_CALL_OP(
      "fake_quantize_per_tensor_affine",
      qtorchext::ops::Sig5,
      input,
      scale,
      zero_point,
      quant_min,
      quant_max);
}

at::Tensor fake_quantize_per_tensor_affine(
    const at::Tensor& input,
    double scale,
    int64_t zero_point,
    int64_t quant_min,
    int64_t quant_max) {
  qtorchext::checks::scalar_qparams(
      scale, zero_point, quant_min, quant_max, "qat::fake_quantize_per_tensor_affine");
  const auto opts = at::TensorOptions().device(input.device());
  return fake_quantize_per_tensor_affine(
      input,
      at::scalar_tensor(scale, opts.dtype(at::kFloat)),
      at::scalar_tensor(zero_point, opts.dtype(at::kInt)),
      quant_min,
      quant_max);
}

at::Tensor fake_quantize_per_channel_affine(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max) {
  return QTORCHEXT_CALL_OP(
      "fake_quantize_per_channel_affine",
      qtorchext::ops::Sig6,
      input,
      scale,
      zero_point,
      axis,
      quant_min,
      quant_max);
}

at::Tensor fake_quantize_per_group(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t group_size,
    int64_t quant_min,
    int64_t quant_max) {
  return QTORCHEXT_CALL_OP(
      "fake_quantize_per_group",
      qtorchext::ops::Sig6,
      input,
      scale,
      zero_point,
      group_size,
      quant_min,
      quant_max);
}

}  // namespace qat

namespace qtorchext::checks {

int64_t per_channel_affine_args(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max,
    const char* op) {
  input_dtype(input, op);
  quant_range(quant_min, quant_max, op);
  same_device(op, {{"input", &input}, {"scale", &scale}, {"zero_point", &zero_point}});
  const int64_t ax = wrap_axis(axis, input.dim(), op);
  scale_dtype(scale, op);
  zero_point_dtype(zero_point, /*allow_float=*/true, op);
  per_channel_shape(scale, "scale", input.sym_size(ax), ax, op);
  per_channel_shape(zero_point, "zero_point", input.sym_size(ax), ax, op);
  return ax;
}

void per_group_args(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t group_size,
    int64_t quant_min,
    int64_t quant_max,
    const char* op) {
  input_dtype(input, op);
  quant_range(quant_min, quant_max, op);
  same_device(op, {{"input", &input}, {"scale", &scale}, {"zero_point", &zero_point}});
  TORCH_CHECK(input.dim() >= 1, op, ": input must have at least one dimension");
  TORCH_CHECK(group_size > 0, op, ": group_size (", group_size, ") must be > 0");
  const c10::SymInt last = input.sym_size(-1);
  TORCH_CHECK(
      last % group_size == 0,
      op, ": group_size (", group_size, ") must divide the last dimension of input (",
      last, ")");
  scale_dtype(scale, op);
  zero_point_dtype(zero_point, /*allow_float=*/false, op);
  std::vector<c10::SymInt> expected(input.sym_sizes().begin(), input.sym_sizes().end());
  expected.back() = last / group_size;
  const c10::SymIntArrayRef want(expected);
  TORCH_CHECK(
      scale.sym_sizes() == want,
      op, ": scale must have shape ", want, " (input.shape[:-1] + [input.size(-1) / ",
      "group_size]), got shape ", scale.sym_sizes());
  TORCH_CHECK(
      zero_point.sym_sizes() == want,
      op, ": zero_point must have shape ", want, ", got shape ", zero_point.sym_sizes());
}

void mask_backward_args(const at::Tensor& grad, const at::Tensor& mask, const char* op) {
  input_dtype(grad, op, "grad");
  TORCH_CHECK(
      mask.scalar_type() == at::kBool,
      op, ": mask must be a bool tensor, got ", mask.scalar_type());
  same_shape(grad, mask, "grad", "mask", op);
  same_device(op, {{"grad", &grad}, {"mask", &mask}});
}

}  // namespace qtorchext::checks
