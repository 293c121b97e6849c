// Autograd kernels of the learnable (LSQ) fake-quant ops: gradients for
// input, scale and zero point (only those requested are computed). Double
// backward is refused with a clear error.
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "ops/fake_quantize_learnable.h"
#include "qtorchext/ops.h"

namespace qtorchext::autograd {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class LearnableFunction : public torch::autograd::Function<LearnableFunction> {
 public:
  static at::Tensor forward(
      AutogradContext* ctx,
      const at::Tensor& input,
      const at::Tensor& scale,
      const at::Tensor& zero_point,
      bool per_channel,
      int64_t axis,
      int64_t quant_min,
      int64_t quant_max,
      double grad_factor) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({input, scale, zero_point});
    ctx->saved_data["per_channel"] = per_channel;
    ctx->saved_data["axis"] = axis;
    ctx->saved_data["quant_min"] = quant_min;
    ctx->saved_data["quant_max"] = quant_max;
    ctx->saved_data["grad_factor"] = grad_factor;
    if (per_channel) {
      return qat::fake_quantize_learnable_per_channel_affine(
          input, scale, zero_point, axis, quant_min, quant_max, grad_factor);
    }
    return qat::fake_quantize_learnable_per_tensor_affine(
        input, scale, zero_point, quant_min, quant_max, grad_factor);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::array<bool, 3> mask{
        ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2)};
    const int64_t qmin = ctx->saved_data["quant_min"].toInt();
    const int64_t qmax = ctx->saved_data["quant_max"].toInt();
    const double gf = ctx->saved_data["grad_factor"].toDouble();
    ops::TensorTriple g;
    if (ctx->saved_data["per_channel"].toBool()) {
      g = ops::fake_quantize_learnable_per_channel_affine_backward(
          grads[0], saved[0], saved[1], saved[2], ctx->saved_data["axis"].toInt(), qmin, qmax,
          gf, mask);
    } else {
      g = ops::fake_quantize_learnable_per_tensor_affine_backward(
          grads[0], saved[0], saved[1], saved[2], qmin, qmax, gf, mask);
    }
    return {
        std::get<0>(g),
        std::get<1>(g),
        std::get<2>(g),
        at::Tensor(),
        at::Tensor(),
        at::Tensor(),
        at::Tensor(),
        at::Tensor()};
  }
};

bool any_needs_grad(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c) {
  return at::GradMode::is_enabled() && (a.requires_grad() || b.requires_grad() || c.requires_grad());
}

at::Tensor per_tensor(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    double grad_factor) {
  if (any_needs_grad(input, scale, zero_point)) {
    return LearnableFunction::apply(
        input, scale, zero_point, false, 0, quant_min, quant_max, grad_factor);
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  return qat::fake_quantize_learnable_per_tensor_affine(
      input, scale, zero_point, quant_min, quant_max, grad_factor);
}

at::Tensor per_channel(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max,
    double grad_factor) {
  if (any_needs_grad(input, scale, zero_point)) {
    return LearnableFunction::apply(
        input, scale, zero_point, true, axis, quant_min, quant_max, grad_factor);
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  return qat::fake_quantize_learnable_per_channel_affine(
      input, scale, zero_point, axis, quant_min, quant_max, grad_factor);
}

}  // namespace
}  // namespace qtorchext::autograd

TORCH_LIBRARY_IMPL(qtorchext, Autograd, m) {
  using namespace qtorchext::autograd;
  m.impl("fake_quantize_learnable_per_tensor_affine", &per_tensor);
  m.impl("fake_quantize_learnable_per_channel_affine", &per_channel);
  // Differentiating the backward (double backward) is not supported: its
  // outputs carry a node that raises "the derivative ... is not implemented".
  m.impl(
      "_fake_quantize_learnable_per_tensor_affine_backward",
      torch::autograd::autogradNotImplementedFallback());
  m.impl(
      "_fake_quantize_learnable_per_channel_affine_backward",
      torch::autograd::autogradNotImplementedFallback());
}
