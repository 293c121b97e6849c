// CPU kernels of the learnable (LSQ) fake-quant ops.
//
// Forward: the affine kernel with the zero point rounded half to even and
// clamped (PyTorch's forward). Backward: one vectorized pass writes dX and
// the per-element scale / zero-point contributions (the formulas are in
// include/qtorchext/ops.h and vec/kernels_impl.h), then at::sum reduces them
// exactly as PyTorch does, so the sums match it bit for bit.
#include <ATen/Version.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "ops/common/checks.h"
#include "ops/fake_quantize_learnable.h"
#include "ops/cpu/cpu_utils.h"

namespace qtorchext::cpu {
namespace {

using TensorTriple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

constexpr const char* kPerTensor = "qtorchext::fake_quantize_learnable_per_tensor_affine";
constexpr const char* kPerChannel = "qtorchext::fake_quantize_learnable_per_channel_affine";

at::Tensor learnable_forward(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max,
    const char* op) {
  const QParamArrays q = learnable_qparams(scale, zero_point, quant_min, quant_max, op);
  at::Tensor out = at::empty_like(input);
  AffineParams p = q.affine(axis < 0 ? ChannelLayout{} : channel_layout(out, axis), quant_min, quant_max);
  // Per tensor, PyTorch calls its per-tensor kernel; per channel, its
  // per-channel kernel (with that kernel's int64 conversion).
  p.output_in_float = axis < 0 && input.scalar_type() == at::kDouble;
  p.overflow_to_qmin = axis >= 0;
  return std::get<0>(affine_forward(input, out, at::Tensor(), p));
}

at::Tensor per_tensor_cpu(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    double grad_factor) {
  checks::learnable_args(
      input, scale, zero_point, false, 0, quant_min, quant_max, grad_factor, kPerTensor);
  return learnable_forward(input, scale, zero_point, -1, quant_min, quant_max, kPerTensor);
}

at::Tensor per_channel_cpu(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max,
    double grad_factor) {
  const int64_t ax = checks::learnable_args(
      input, scale, zero_point, true, axis, quant_min, quant_max, grad_factor, kPerChannel);
  return learnable_forward(input, scale, zero_point, ax, quant_min, quant_max, kPerChannel);
}

/// Whether ATen runs its vectorized builds (compiled with FMA contraction);
/// its choice is made once per process, like ours.
bool aten_kernels_use_fma() {
  static const bool fma = at::get_cpu_capability() != "DEFAULT";
  return fma;
}

/// Reduces per-element contributions to the shape and dtype of a qparam.
at::Tensor reduce_to(const at::Tensor& contrib, int64_t axis, const at::Tensor& like) {
  return sum_except(contrib, axis).reshape(like.sizes()).to(like.scalar_type());
}

TensorTriple learnable_backward(
    const at::Tensor& grad,
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max,
    double grad_factor,
    std::array<bool, 3> output_mask,
    const char* op) {
  checks::grad_like_input(grad, input, op);
  const QParamArrays q = learnable_qparams(scale, zero_point, quant_min, quant_max, op);

  const at::Tensor x = dense(input);
  const auto compute = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor dx = output_mask[0] ? at::empty_like(x) : at::Tensor();
  // The per-element scale and zero-point contributions share one allocation
  // (two fresh multi-megabyte buffers per step make glibc return memory to
  // the OS and page-fault it back every step). Each half has x's layout, so
  // at::sum reduces it exactly as it would a tensor of its own.
  at::Tensor ds, dz;
  if (output_mask[1] || output_mask[2]) {
    const int64_t parts = int64_t{output_mask[1]} + int64_t{output_mask[2]};
    const at::Tensor both = at::empty({parts, x.numel()}, x.options().dtype(compute));
    int64_t next = 0;
    for (int i : {1, 2}) {
      if (output_mask[i]) {
        (i == 1 ? ds : dz) = both[next++].as_strided(x.sizes(), x.strides());
      }
    }
  }
  if (x.numel() == 0) {
    return {
        dx,
        output_mask[1] ? at::zeros(scale.sizes(), scale.options()) : at::Tensor(),
        output_mask[2] ? at::zeros(zero_point.sizes(), zero_point.options()) : at::Tensor()};
  }
  const at::Tensor g = with_layout_of(grad, x);

  LearnableGradParams p;
  p.scale = q.scale.data();
  p.inv_scale = q.inv_scale.data();
  p.zero_point = q.zero_point.data();
  p.layout = axis < 0 ? ChannelLayout{} : channel_layout(x, axis);
  p.quant_min = static_cast<float>(quant_min);
  p.quant_max = static_cast<float>(quant_max);
  p.grad_factor = static_cast<float>(grad_factor);  // PyTorch passes it as float
  p.fused_multiply_add = aten_kernels_use_fma();

  const auto& table = kernels();
  const ScalarKind kind = scalar_kind(x.scalar_type());
  const void* xp = x.const_data_ptr();
  const void* gp = g.const_data_ptr();
  void* dxp = dx.defined() ? dx.data_ptr() : nullptr;
  void* dsp = ds.defined() ? ds.data_ptr() : nullptr;
  void* dzp = dz.defined() ? dz.data_ptr() : nullptr;
  parallel_elements(x.numel(), [&](int64_t b, int64_t e) {
    table.learnable_grad(kind, xp, gp, dxp, dsp, dzp, b, e, p);
  });
  return {
      dx,
      ds.defined() ? reduce_to(ds, axis, scale) : at::Tensor(),
      dz.defined() ? reduce_to(dz, axis, zero_point) : at::Tensor()};
}

TensorTriple per_tensor_backward_cpu(
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
  return learnable_backward(
      grad, input, scale, zero_point, -1, quant_min, quant_max, grad_factor, output_mask,
      kPerTensor);
}

TensorTriple per_channel_backward_cpu(
    const at::Tensor& grad,
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max,
    double grad_factor,
    std::array<bool, 3> output_mask) {
  const int64_t ax = checks::learnable_args(
      input, scale, zero_point, true, axis, quant_min, quant_max, grad_factor, kPerChannel);
  return learnable_backward(
      grad, input, scale, zero_point, ax, quant_min, quant_max, grad_factor, output_mask,
      kPerChannel);
}

}  // namespace
}  // namespace qtorchext::cpu

TORCH_LIBRARY_IMPL(qtorchext, CPU, m) {
  using namespace qtorchext::cpu;
  m.impl("fake_quantize_learnable_per_tensor_affine", &per_tensor_cpu);
  m.impl("_fake_quantize_learnable_per_tensor_affine_backward", &per_tensor_backward_cpu);
  m.impl("fake_quantize_learnable_per_channel_affine", &per_channel_cpu);
  m.impl("_fake_quantize_learnable_per_channel_affine_backward", &per_channel_backward_cpu);
}
