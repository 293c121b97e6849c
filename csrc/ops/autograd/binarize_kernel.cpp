// Autograd kernel of binarization: clipped straight-through gradient for the
// input, sum(dY * sign(x)) for alpha. Double backward is refused.
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "ops/binarize.h"
#include "qtorchext/ops.h"

namespace qtorchext::autograd {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class BinarizeFunction : public torch::autograd::Function<BinarizeFunction> {
 public:
  static at::Tensor forward(
      AutogradContext* ctx,
      const at::Tensor& input,
      const at::Tensor& alpha,
      int64_t axis,
      double clip) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({input, alpha});
    ctx->saved_data["axis"] = axis;
    ctx->saved_data["clip"] = clip;
    return qat::binarize(input, alpha, axis, clip);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    auto [dx, dalpha] = ops::binarize_backward(
        grads[0],
        saved[0],
        saved[1],
        ctx->saved_data["axis"].toInt(),
        ctx->saved_data["clip"].toDouble(),
        {ctx->needs_input_grad(0), ctx->needs_input_grad(1)});
    return {dx, dalpha, at::Tensor(), at::Tensor()};
  }
};

at::Tensor binarize(const at::Tensor& input, const at::Tensor& alpha, int64_t axis, double clip) {
  if (at::GradMode::is_enabled() && (input.requires_grad() || alpha.requires_grad())) {
    return BinarizeFunction::apply(input, alpha, axis, clip);
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  return qat::binarize(input, alpha, axis, clip);
}

}  // namespace
}  // namespace qtorchext::autograd

TORCH_LIBRARY_IMPL(qtorchext, Autograd, m) {
  m.impl("binarize", &qtorchext::autograd::binarize);
  m.impl("_binarize_backward", torch::autograd::autogradNotImplementedFallback());
}
