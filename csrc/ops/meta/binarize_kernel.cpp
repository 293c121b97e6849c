// Meta kernels of binarization.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "ops/common/checks.h"
#include "ops/binarize.h"

namespace qtorchext::meta {
namespace {

constexpr const char* kBinarize = "qtorchext::binarize";

at::Tensor binarize(const at::Tensor& input, const at::Tensor& alpha, int64_t axis, double clip) {
  checks::binarize_args(input, alpha, axis, clip, kBinarize);
  return at::empty_like(input);
}

std::tuple<at::Tensor, at::Tensor> binarize_backward(
    const at::Tensor& grad,
    const at::Tensor& input,
    const at::Tensor& alpha,
    int64_t axis,
    double clip,
    std::array<bool, 2> output_mask) {
  checks::binarize_args(input, alpha, axis, clip, kBinarize);
  checks::grad_like_input(grad, input, kBinarize);
  return {
      output_mask[0] ? at::empty_like(input) : at::Tensor(),
      output_mask[1] ? at::empty_symint(alpha.sym_sizes(), alpha.options()) : at::Tensor()};
}

}  // namespace
}  // namespace qtorchext::meta

TORCH_LIBRARY_IMPL(qtorchext, Meta, m) {
  m.impl("binarize", &qtorchext::meta::binarize);
  m.impl("_binarize_backward", &qtorchext::meta::binarize_backward);
}
