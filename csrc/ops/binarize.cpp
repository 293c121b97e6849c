// Schemas and typed C++ entry points of binarization.
#include "ops/binarize.h"
#include "ops/common/checks.h"

#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "ops/dispatch.h"
#include "qtorchext/ops.h"

TORCH_LIBRARY_FRAGMENT(qtorchext, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.def(
      "binarize(Tensor input, Tensor alpha, int axis=0, float clip=1.0) -> Tensor", tags);
  m.def(
      "_binarize_backward(Tensor grad, Tensor input, Tensor alpha, int axis, float clip, "
      "bool[2] output_mask) -> (Tensor, Tensor)",
      tags);
}

namespace qtorchext::ops {

using TensorPair = std::tuple<at::Tensor, at::Tensor>;

std::tuple<at::Tensor, at::Tensor> binarize_backward(
    const at::Tensor& grad,
    const at::Tensor& input,
    const at::Tensor& alpha,
    int64_t axis,
    double clip,
    std::array<bool, 2> output_mask) {
  return QTORCHEXT_CALL_OP(
      "_binarize_backward",
      TensorPair(
          const at::Tensor&,
          const at::Tensor&,
          const at::Tensor&,
          int64_t,
          double,
          std::array<bool, 2>),
      grad,
      input,
      alpha,
      axis,
      clip,
      output_mask);
}

}  // namespace qtorchext::ops

namespace qat {

at::Tensor binarize(const at::Tensor& input, const at::Tensor& alpha, int64_t axis, double clip) {
  return QTORCHEXT_CALL_OP(
      "binarize",
      at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, double),
      input,
      alpha,
      axis,
      clip);
}

}  // namespace qat

namespace qtorchext::checks {

int64_t binarize_args(
    const at::Tensor& input,
    const at::Tensor& alpha,
    int64_t axis,
    double clip,
    const char* op) {
  input_dtype(input, op);
  same_device(op, {{"input", &input}, {"alpha", &alpha}});
  scale_dtype(alpha, op, "alpha");
  TORCH_CHECK(
      std::isfinite(clip) && clip >= 0,
      op, ": clip must be finite and >= 0, got ", clip);
  if (alpha.dim() <= 1 && alpha.sym_numel() == 1) {
    return -1;
  }
  const int64_t ax = wrap_axis(axis, input.dim(), op);
  TORCH_CHECK(
      alpha.dim() == 1 && alpha.sym_size(0) == input.sym_size(ax),
      op, ": alpha must hold one element or be 1-D with input.size(", ax, ") = ",
      input.sym_size(ax), " entries, got shape ", alpha.sym_sizes());
  return ax;
}

}  // namespace qtorchext::checks
