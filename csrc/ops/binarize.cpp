// Schemas and typed C++ entry points of binarization.
#include "ops/binarize.h"

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
