// Autograd kernels of the affine fake-quant family (per-tensor, per-channel,
// per-group): the straight-through estimator as a cached mask. Forward runs
// the cachemask op and saves the mask; backward is dY * mask. Without a
// gradient to compute, the plain op runs and no mask is written.
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "ops/fake_quantize.h"
#include "qtorchext/ops.h"

namespace qtorchext::autograd {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

enum Form : int64_t { kPerTensor = 0, kPerChannel = 1, kPerGroup = 2 };

bool needs_grad(const at::Tensor& t) {
  return at::GradMode::is_enabled() && t.requires_grad();
}

// grad * mask is linear in grad, so its own derivative is grad_grad * mask:
// double backward works.
class MaskBackwardFunction : public torch::autograd::Function<MaskBackwardFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad, const at::Tensor& mask) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({mask});
    return ops::fake_quantize_mask_backward(grad, mask);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor mask = ctx->get_saved_variables()[0];
    return {ops::fake_quantize_mask_backward(grads[0], mask), at::Tensor()};
  }
};

class AffineFunction : public torch::autograd::Function<AffineFunction> {
 public:
  // arg: axis (per-channel) or group_size (per-group); unused per tensor.
  static at::Tensor forward(
      AutogradContext* ctx,
      const at::Tensor& input,
      const at::Tensor& scale,
      const at::Tensor& zero_point,
      int64_t form,
      int64_t arg,
      int64_t quant_min,
      int64_t quant_max) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ops::TensorPair res;
    switch (form) {
      case kPerTensor:
        res = ops::fake_quantize_per_tensor_affine_cachemask(
            input, scale, zero_point, quant_min, quant_max);
        break;
      case kPerChannel:
        res = ops::fake_quantize_per_channel_affine_cachemask(
            input, scale, zero_point, arg, quant_min, quant_max);
        break;
      default:
        res = ops::fake_quantize_per_group_cachemask(
            input, scale, zero_point, arg, quant_min, quant_max);
        break;
    }
    ctx->save_for_backward({std::get<1>(res)});
    return std::get<0>(res);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor mask = ctx->get_saved_variables()[0];
    // Only the input is differentiable; the qparams of these ops are not
    // (use the learnable ops to train them).
    return {
        ops::fake_quantize_mask_backward(grads[0], mask),
        at::Tensor(),
        at::Tensor(),
        at::Tensor(),
        at::Tensor(),
        at::Tensor(),
        at::Tensor()};
  }
};

at::Tensor per_tensor(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max) {
  if (needs_grad(input)) {
    return AffineFunction::apply(input, scale, zero_point, kPerTensor, 0, quant_min, quant_max);
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  return qat::fake_quantize_per_tensor_affine(input, scale, zero_point, quant_min, quant_max);
}

at::Tensor per_channel(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max) {
  if (needs_grad(input)) {
    return AffineFunction::apply(
        input, scale, zero_point, kPerChannel, axis, quant_min, quant_max);
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  return qat::fake_quantize_per_channel_affine(
      input, scale, zero_point, axis, quant_min, quant_max);
}

at::Tensor per_group(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t group_size,
    int64_t quant_min,
    int64_t quant_max) {
  if (needs_grad(input)) {
    return AffineFunction::apply(
        input, scale, zero_point, kPerGroup, group_size, quant_min, quant_max);
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  return qat::fake_quantize_per_group(input, scale, zero_point, group_size, quant_min, quant_max);
}

at::Tensor mask_backward(const at::Tensor& grad, const at::Tensor& mask) {
  return MaskBackwardFunction::apply(grad, mask);
}

}  // namespace
}  // namespace qtorchext::autograd

TORCH_LIBRARY_IMPL(qtorchext, Autograd, m) {
  using namespace qtorchext::autograd;
  m.impl("fake_quantize_per_tensor_affine", &per_tensor);
  m.impl("fake_quantize_per_channel_affine", &per_channel);
  m.impl("fake_quantize_per_group", &per_group);
  m.impl("_fake_quantize_mask_backward", &mask_backward);
}
