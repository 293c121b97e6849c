// CPU kernels of binarization: sign(x) * alpha with a clipped
// straight-through gradient and the alpha gradient sum(dY * sign(x)).
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "ops/common/checks.h"
#include "ops/binarize.h"
#include "ops/cpu/cpu_utils.h"

namespace qtorchext::cpu {
namespace {

constexpr const char* kBinarize = "qtorchext::binarize";

at::ScalarType compute_type(const at::Tensor& input) {
  return input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor alpha_array(const at::Tensor& alpha, const at::Tensor& input) {
  at::Tensor a = alpha.to(compute_type(input)).contiguous().reshape({-1});
  checks::alpha_values(a, kBinarize);
  return a;
}

at::Tensor binarize_cpu(const at::Tensor& input, const at::Tensor& alpha, int64_t axis, double clip) {
  const int64_t ax = checks::binarize_args(input, alpha, axis, clip, kBinarize);
  const at::Tensor a = alpha_array(alpha, input);
  at::Tensor out = at::empty_like(input);
  if (out.numel() == 0) {
    return out;
  }
  const at::Tensor x = with_layout_of(input, out);
  BinaryParams p;
  p.alpha = a.const_data_ptr();
  p.layout = ax < 0 ? ChannelLayout{} : channel_layout(out, ax);
  p.clip = clip;
  const auto& table = kernels();
  const ScalarKind kind = scalar_kind(input.scalar_type());
  const void* xp = x.const_data_ptr();
  void* op = out.data_ptr();
  parallel_elements(out.numel(), [&](int64_t b, int64_t e) {
    table.binarize(kind, xp, op, b, e, p);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> binarize_backward_cpu(
    const at::Tensor& grad,
    const at::Tensor& input,
    const at::Tensor& alpha,
    int64_t axis,
    double clip,
    std::array<bool, 2> output_mask) {
  const int64_t ax = checks::binarize_args(input, alpha, axis, clip, kBinarize);
  checks::grad_like_input(grad, input, kBinarize);
  const at::Tensor x = dense(input);
  at::Tensor dx = output_mask[0] ? at::empty_like(x) : at::Tensor();
  at::Tensor da =
      output_mask[1] ? at::empty_like(x, x.options().dtype(compute_type(input))) : at::Tensor();
  if (x.numel() == 0) {
    return {dx, output_mask[1] ? at::zeros(alpha.sizes(), alpha.options()) : at::Tensor()};
  }
  const at::Tensor g = with_layout_of(grad, x);
  BinaryParams p;
  p.clip = clip;
  p.layout = ax < 0 ? ChannelLayout{} : channel_layout(x, ax);
  const auto& table = kernels();
  const ScalarKind kind = scalar_kind(x.scalar_type());
  const void* xp = x.const_data_ptr();
  const void* gp = g.const_data_ptr();
  void* dxp = dx.defined() ? dx.data_ptr() : nullptr;
  void* dap = da.defined() ? da.data_ptr() : nullptr;
  parallel_elements(x.numel(), [&](int64_t b, int64_t e) {
    table.binarize_grad(kind, xp, gp, dxp, dap, b, e, p);
  });
  at::Tensor dalpha;
  if (da.defined()) {
    dalpha = sum_except(da, ax).reshape(alpha.sizes()).to(alpha.scalar_type());
  }
  return {dx, dalpha};
}

}  // namespace
}  // namespace qtorchext::cpu

TORCH_LIBRARY_IMPL(qtorchext, CPU, m) {
  using namespace qtorchext::cpu;
  m.impl("binarize", &binarize_cpu);
  m.impl("_binarize_backward", &binarize_backward_cpu);
}
