// CUDA kernels of the learnable (LSQ) fake-quant ops.
//
// Forward: the affine kernel with the zero point rounded half to even and
// clamped on the device (PyTorch's forward). Backward: one fused pass writes
// dX and sums the per-element scale / zero-point contributions per channel
// (grad_reduce.cuh: block sums in double, then an ordered sum of the
// partials; deterministic, no atomics). Per element, as the CPU kernel
// (csrc/ops/cpu/vec/kernels_impl.h, LearnableGradOp) with FMA contraction,
// which is what ATen's vectorized CPU builds and its CUDA kernel compute:
//
//   q      = nearbyint(fma(x, inv_scale, zero_point))   // the backward's q
//   dX     = dY * (quant_min <= q <= quant_max)
//   dScale = in range: dY * fma(q - zero_point, scale, -x) * inv_scale *
//   grad_factor
//            below (q < quant_min, NaN, q >= 2^63): dY * (quant_min -
//            zero_point) * grad_factor above: dY * (quant_max - zero_point) *
//            grad_factor
//   dZp    = in range: 0; else -dY * scale * grad_factor
//
// The sums are exact to double before the final rounding to float32, so
// they can differ from the CPU's float32 at::sum in the last bits.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <ATen/Dispatch.h>

#include "ops/common/checks.h"
#include "ops/fake_quantize_learnable.h"
#include "ops/cpu/cpu_utils.h"
#include "ops/cuda/cuda_utils.cuh"
#include "ops/cuda/fake_quantize_kernel.cuh"
#include "ops/cuda/grad_reduce.cuh"

namespace qtorchext::cuda {
namespace {

using TensorTriple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

constexpr const char* kPerTensor =
    "qtorchext::fake_quantize_learnable_per_tensor_affine";
constexpr const char* kPerChannel =
    "qtorchext::fake_quantize_learnable_per_channel_affine";

at::Tensor learnable_forward(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max) {
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor s = scale.contiguous();
  const at::Tensor z = zero_point.contiguous();
  at::Tensor out = at::empty_like(input);
  AffineQParams p;
  p.scale = s.const_data_ptr();
  p.scale_kind = param_kind(s.scalar_type());
  p.zero_point = z.const_data_ptr();
  p.zero_point_kind = param_kind(z.scalar_type());
  p.round_zero_point = true;
  p.layout = axis < 0 ? ChannelLayout{} : cpu::channel_layout(out, axis);
  p.quant_min = static_cast<float>(quant_min);
  p.quant_max = static_cast<float>(quant_max);
  // Per tensor, PyTorch calls its per-tensor kernel; per channel, its
  // per-channel kernel (with that kernel's int64 conversion).
  p.output_in_float = axis < 0 && input.scalar_type() == at::kDouble;
  p.overflow_to_qmin = axis >= 0;
  return std::get<0>(affine_forward(input, out, at::Tensor(), p));
}

at::Tensor per_tensor_cuda(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    double grad_factor) {
  checks::learnable_args(
      input,
      scale,
      zero_point,
      false,
      0,
      quant_min,
      quant_max,
      grad_factor,
      kPerTensor);
  return learnable_forward(input, scale, zero_point, -1, quant_min, quant_max);
}

at::Tensor per_channel_cuda(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max,
    double grad_factor) {
  const int64_t ax = checks::learnable_args(
      input,
      scale,
      zero_point,
      true,
      axis,
      quant_min,
      quant_max,
      grad_factor,
      kPerChannel);
  return learnable_forward(input, scale, zero_point, ax, quant_min, quant_max);
}

__device__ __forceinline__ float fma_t(float a, float b, float c) {
  return fmaf(a, b, c);
}
__device__ __forceinline__ double fma_t(double a, double b, double c) {
  return fma(a, b, c);
}

/// Per-element LSQ gradients (formulas at the top of the file).
template <class S>
struct LearnableGradOp {
  const S* x;
  const S* dy;
  S* dx;                    // may be null
  const float* scale;       // float32, contiguous
  const float* zero_point;  // float32, contiguous
  bool per_channel;
  float quant_min;
  float quant_max;
  float grad_factor;

  __device__ __forceinline__ void operator()(
      int64_t idx, int64_t c, double (&acc)[2]) const {
    using T = compute_t<S>;
    const int64_t ci = per_channel ? c : 0;
    const float s = scale[ci];
    float z = round_even(zero_point[ci]);
    z = z < quant_min ? quant_min : z;  // std::min(std::max(z, lo), hi)
    z = quant_max < z ? quant_max : z;
    const T sc = static_cast<T>(s);
    const T inv = static_cast<T>(__frcp_rn(s));
    const T zp = static_cast<T>(z);
    const T qmin = static_cast<T>(quant_min);
    const T qmax = static_cast<T>(quant_max);
    const T gf = static_cast<T>(grad_factor);
    const T xv = load_as(x[idx]);
    const T g = load_as(dy[idx]);
    const T q = round_even(fma_t(xv, inv, zp));
    const bool in_range = q >= qmin && q <= qmax;
    if (dx != nullptr) {
      dx[idx] = store_as<S>(mul_rn(g, in_range ? T(1) : T(0)));
    }
    const bool below = q < qmin || q != q || q >= static_cast<T>(0x1p63);
    const T err = fma_t(sub_rn(q, zp), sc, -xv);
    const T d_in = mul_rn(mul_rn(mul_rn(g, err), inv), gf);
    const T d_small = mul_rn(mul_rn(g, sub_rn(qmin, zp)), gf);
    const T d_big = mul_rn(mul_rn(g, sub_rn(qmax, zp)), gf);
    const T ds = in_range ? d_in : (below ? d_small : d_big);
    const T dz = in_range ? T(0) : mul_rn(mul_rn(-g, sc), gf);
    acc[0] += static_cast<double>(ds);
    acc[1] += static_cast<double>(dz);
  }
};

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
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = cpu::dense(input);
  at::Tensor dx = output_mask[0] ? at::empty_like(x) : at::Tensor();
  if (x.numel() == 0) {
    return {
        dx,
        output_mask[1] ? at::zeros(scale.sizes(), scale.options())
                       : at::Tensor(),
        output_mask[2] ? at::zeros(zero_point.sizes(), zero_point.options())
                       : at::Tensor()};
  }
  at::Tensor ds =
      output_mask[1] ? at::empty(scale.sizes(), scale.options()) : at::Tensor();
  at::Tensor dz = output_mask[2]
                      ? at::empty(zero_point.sizes(), zero_point.options())
                      : at::Tensor();
  const at::Tensor g = cpu::with_layout_of(grad, x);
  const at::Tensor s = scale.contiguous();
  const at::Tensor z = zero_point.contiguous();
  const ChannelLayout layout =
      axis < 0 ? ChannelLayout{} : cpu::channel_layout(x, axis);
  const int64_t outer = x.numel() / (layout.channels * layout.inner);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf,
      at::kBFloat16,
      x.scalar_type(),
      "qtorchext_learnable_backward_cuda",
      [&] {
        LearnableGradOp<scalar_t> f;
        f.x = x.const_data_ptr<scalar_t>();
        f.dy = g.const_data_ptr<scalar_t>();
        f.dx = dx.defined() ? dx.data_ptr<scalar_t>() : nullptr;
        f.scale = s.const_data_ptr<float>();
        f.zero_point = z.const_data_ptr<float>();
        f.per_channel = layout.channels > 1;
        f.quant_min = static_cast<float>(quant_min);
        f.quant_max = static_cast<float>(quant_max);
        f.grad_factor =
            static_cast<float>(grad_factor);  // PyTorch passes it as float
        grad_reduce<2, float>(
            f,
            outer,
            layout.channels,
            layout.inner,
            ds.defined() ? ds.data_ptr<float>() : nullptr,
            dz.defined() ? dz.data_ptr<float>() : nullptr,
            x);
      });
  return {dx, ds, dz};
}

TensorTriple per_tensor_backward_cuda(
    const at::Tensor& grad,
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    double grad_factor,
    std::array<bool, 3> output_mask) {
  checks::learnable_args(
      input,
      scale,
      zero_point,
      false,
      0,
      quant_min,
      quant_max,
      grad_factor,
      kPerTensor);
  return learnable_backward(
      grad,
      input,
      scale,
      zero_point,
      -1,
      quant_min,
      quant_max,
      grad_factor,
      output_mask,
      kPerTensor);
}

TensorTriple per_channel_backward_cuda(
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
      input,
      scale,
      zero_point,
      true,
      axis,
      quant_min,
      quant_max,
      grad_factor,
      kPerChannel);
  return learnable_backward(
      grad,
      input,
      scale,
      zero_point,
      ax,
      quant_min,
      quant_max,
      grad_factor,
      output_mask,
      kPerChannel);
}

}  // namespace
}  // namespace qtorchext::cuda

TORCH_LIBRARY_IMPL(qtorchext, CUDA, m) {
  using namespace qtorchext::cuda;
  m.impl("fake_quantize_learnable_per_tensor_affine", &per_tensor_cuda);
  m.impl(
      "_fake_quantize_learnable_per_tensor_affine_backward",
      &per_tensor_backward_cuda);
  m.impl("fake_quantize_learnable_per_channel_affine", &per_channel_cuda);
  m.impl(
      "_fake_quantize_learnable_per_channel_affine_backward",
      &per_channel_backward_cuda);
}
