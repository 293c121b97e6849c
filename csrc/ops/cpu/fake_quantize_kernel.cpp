// CPU kernels of the affine fake-quant family. The element loops live in
// vec/kernels_impl.h (vectorized, chosen at run time); this file checks
// arguments, prepares qparam arrays and output layouts, and threads.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cmath>

#include "ops/cpu/fake_quantize_kernel.h"

#include "ops/common/checks.h"
#include "ops/fake_quantize.h"
#include "ops/cpu/cpu_utils.h"

namespace qtorchext::cpu {
namespace {

constexpr const char* kPerTensor = "qtorchext::fake_quantize_per_tensor_affine";
constexpr const char* kPerChannel = "qtorchext::fake_quantize_per_channel_affine";
constexpr const char* kPerGroup = "qtorchext::fake_quantize_per_group";
constexpr const char* kMaskBackward = "qtorchext::_fake_quantize_mask_backward";

at::Tensor mask_like(const at::Tensor& t, bool with_mask) {
  return with_mask ? at::empty_like(t, t.options().dtype(at::kBool)) : at::Tensor();
}

// PyTorch's floating zero point mode of the per-channel op:
//   q   = lrintf(zero_point + x * inv_scale)
//   out = (clamp(q, quant_min, quant_max) - zero_point) * scale   (in double)
// kept scalar and exact to its types; it serves float qparams of embeddings.
template <class scalar_t, class zp_t>
void float_zero_point_loop(
    const scalar_t* x,
    scalar_t* out,
    bool* mask,
    int64_t begin,
    int64_t end,
    const ChannelLayout& layout,
    const float* scale,
    const float* inv_scale,
    const zp_t* zero_point,
    int64_t quant_min,
    int64_t quant_max) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  for (int64_t i = begin; i < end; ++i) {
    const int64_t c = layout.channels == 1 ? 0 : (i / layout.inner) % layout.channels;
    const acc_t t = static_cast<acc_t>(static_cast<float>(zero_point[c])) +
        static_cast<acc_t>(x[i]) * static_cast<acc_t>(inv_scale[c]);
    const long q = std::lrintf(static_cast<float>(t));
    if (mask != nullptr) {
      mask[i] = quant_min <= q && q <= quant_max;
    }
    const double clamped = std::fmin(
        std::fmax(static_cast<double>(q), static_cast<double>(quant_min)),
        static_cast<double>(quant_max));
    const double y = (clamped - static_cast<double>(static_cast<float>(zero_point[c]))) *
        static_cast<double>(scale[c]);
    out[i] = static_cast<scalar_t>(static_cast<acc_t>(y));
  }
}

TensorPair per_channel_float_zero_point(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max,
    bool with_mask) {
  const at::Tensor s = scale.to(at::kFloat).contiguous();
  checks::scale_values(s.const_data_ptr<float>(), s.numel(), kPerChannel);
  const at::Tensor inv = s.reciprocal();
  const at::Tensor z = zero_point.contiguous();
  const at::Tensor zf = z.to(at::kFloat);
  checks::finite_values(zf.const_data_ptr<float>(), zf.numel(), "zero_point", kPerChannel);
  at::Tensor out = at::empty_like(input);
  at::Tensor mask = mask_like(out, with_mask);
  if (input.numel() == 0) {
    return {out, mask};
  }
  const at::Tensor x = with_layout_of(input, out);
  const ChannelLayout layout = channel_layout(out, axis);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fq_float_zp", [&] {
    using self_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND(at::kHalf, z.scalar_type(), "fq_float_zp_z", [&] {
      const self_t* xp = x.const_data_ptr<self_t>();
      self_t* outp = out.data_ptr<self_t>();
      bool* mp = mask.defined() ? mask.data_ptr<bool>() : nullptr;
      const scalar_t* zp = z.const_data_ptr<scalar_t>();
      parallel_elements(x.numel(), [&](int64_t b, int64_t e) {
        float_zero_point_loop<self_t, scalar_t>(
            xp,
            outp,
            mp,
            b,
            e,
            layout,
            s.const_data_ptr<float>(),
            inv.const_data_ptr<float>(),
            zp,
            quant_min,
            quant_max);
      });
    });
  });
  return {out, mask};
}


}  // namespace

TensorPair fake_quantize_per_tensor(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    bool with_mask) {
  checks::per_tensor_affine_args(input, scale, zero_point, quant_min, quant_max, kPerTensor);
  const QParamArrays q = int_qparams(scale, zero_point, quant_min, quant_max, kPerTensor);
  AffineParams p = q.affine(ChannelLayout{}, quant_min, quant_max);
  p.output_in_float = input.scalar_type() == at::kDouble;
  at::Tensor out = at::empty_like(input);
  return affine_forward(input, out, mask_like(out, with_mask), p);
}

TensorPair fake_quantize_per_channel(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max,
    bool with_mask) {
  const int64_t ax = checks::per_channel_affine_args(
      input, scale, zero_point, axis, quant_min, quant_max, kPerChannel);
  if (at::isFloatingType(zero_point.scalar_type())) {
    return per_channel_float_zero_point(
        input, scale, zero_point, ax, quant_min, quant_max, with_mask);
  }
  const QParamArrays q = int_qparams(scale, zero_point, quant_min, quant_max, kPerChannel);
  at::Tensor out = at::empty_like(input);
  AffineParams p = q.affine(channel_layout(out, ax), quant_min, quant_max);
  p.overflow_to_qmin = true;
  return affine_forward(input, out, mask_like(out, with_mask), p);
}

namespace {

TensorPair per_group(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t group_size,
    int64_t quant_min,
    int64_t quant_max,
    bool with_mask) {
  checks::per_group_args(input, scale, zero_point, group_size, quant_min, quant_max, kPerGroup);
  const QParamArrays q = int_qparams(scale, zero_point, quant_min, quant_max, kPerGroup);
  at::Tensor out = at::empty_like(input, at::MemoryFormat::Contiguous);
  ChannelLayout layout;
  layout.inner = group_size;
  layout.channels = std::max<int64_t>(input.numel() / group_size, 1);
  AffineParams p = q.affine(layout, quant_min, quant_max);
  p.overflow_to_qmin = true;  // defined as per-channel on the grouped view
  return affine_forward(input, out, mask_like(out, with_mask), p);
}

at::Tensor per_tensor_cpu(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max) {
  return std::get<0>(fake_quantize_per_tensor(input, scale, zero_point, quant_min, quant_max, false));
}

TensorPair per_tensor_cachemask_cpu(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max) {
  return fake_quantize_per_tensor(input, scale, zero_point, quant_min, quant_max, true);
}

at::Tensor per_channel_cpu(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max) {
  return std::get<0>(fake_quantize_per_channel(input, scale, zero_point, axis, quant_min, quant_max, false));
}

TensorPair per_channel_cachemask_cpu(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max) {
  return fake_quantize_per_channel(input, scale, zero_point, axis, quant_min, quant_max, true);
}

at::Tensor per_group_cpu(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t group_size,
    int64_t quant_min,
    int64_t quant_max) {
  return std::get<0>(
      per_group(input, scale, zero_point, group_size, quant_min, quant_max, false));
}

TensorPair per_group_cachemask_cpu(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t group_size,
    int64_t quant_min,
    int64_t quant_max) {
  return per_group(input, scale, zero_point, group_size, quant_min, quant_max, true);
}

at::Tensor mask_backward_cpu(const at::Tensor& grad, const at::Tensor& mask) {
  checks::mask_backward_args(grad, mask, kMaskBackward);
  at::Tensor out = at::empty_like(mask, grad.options());
  if (out.numel() == 0) {
    return out;
  }
  const at::Tensor g = with_layout_of(grad, out);
  const at::Tensor m = with_layout_of(mask, out);
  const auto& table = kernels();
  const ScalarKind kind = scalar_kind(grad.scalar_type());
  const void* gp = g.const_data_ptr();
  const auto* mp = reinterpret_cast<const uint8_t*>(m.const_data_ptr<bool>());
  void* op = out.data_ptr();
  parallel_elements(out.numel(), [&](int64_t b, int64_t e) {
    table.mask_backward(kind, gp, mp, op, b, e);
  });
  return out;
}

}  // namespace
}  // namespace qtorchext::cpu

TORCH_LIBRARY_IMPL(qtorchext, CPU, m) {
  using namespace qtorchext::cpu;
  m.impl("fake_quantize_per_tensor_affine", &per_tensor_cpu);
  m.impl("_fake_quantize_per_tensor_affine_cachemask", &per_tensor_cachemask_cpu);
  m.impl("fake_quantize_per_channel_affine", &per_channel_cpu);
  m.impl("_fake_quantize_per_channel_affine_cachemask", &per_channel_cachemask_cpu);
  m.impl("fake_quantize_per_group", &per_group_cpu);
  m.impl("_fake_quantize_per_group_cachemask", &per_group_cachemask_cpu);
  m.impl("_fake_quantize_mask_backward", &mask_backward_cpu);
}
