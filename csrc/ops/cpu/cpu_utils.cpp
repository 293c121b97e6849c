#include "ops/cpu/cpu_utils.h"

#include <algorithm>
#include <cmath>

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include "ops/common/checks.h"

namespace qtorchext::cpu {

ScalarKind scalar_kind(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return ScalarKind::Float;
    case at::kDouble:
      return ScalarKind::Double;
    case at::kHalf:
      return ScalarKind::Half;
    case at::kBFloat16:
      return ScalarKind::BFloat16;
    default:
      TORCH_INTERNAL_ASSERT(false, "unexpected dtype ", t);
  }
}

at::Tensor with_layout_of(const at::Tensor& x, const at::Tensor& like) {
  if (x.sizes() == like.sizes() && x.strides() == like.strides()) {
    return x;
  }
  at::Tensor y = at::empty_like(like, x.options());
  y.copy_(x);
  return y;
}

at::Tensor dense(const at::Tensor& x) {
  if (x.is_non_overlapping_and_dense()) {
    return x;
  }
  at::Tensor y = at::empty_like(x);
  y.copy_(x);
  return y;
}

ChannelLayout channel_layout(const at::Tensor& dense, int64_t axis) {
  ChannelLayout layout;
  const int64_t channels = dense.size(axis);
  if (channels > 1) {
    layout.channels = channels;
    layout.inner = dense.stride(axis);
  }
  return layout;
}

at::Tensor sum_except(const at::Tensor& contrib, int64_t axis) {
  if (axis < 0) {
    return contrib.sum();
  }
  if (contrib.dim() == 1) {
    return contrib;
  }
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < contrib.dim(); ++d) {
    if (d != axis) {
      dims.push_back(d);
    }
  }
  return contrib.sum(dims);
}

void parallel_elements(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) {
    return;
  }
  at::parallel_for(0, n, kGrain, fn);
}

std::tuple<at::Tensor, at::Tensor> affine_forward(
    const at::Tensor& input,
    at::Tensor out,
    at::Tensor mask,
    const AffineParams& params) {
  if (input.numel() == 0) {
    return {out, mask};
  }
  const at::Tensor x = with_layout_of(input, out);
  const auto& table = kernels();
  const ScalarKind kind = scalar_kind(input.scalar_type());
  const void* xp = x.const_data_ptr();
  void* op = out.data_ptr();
  uint8_t* mp = mask.defined() ? reinterpret_cast<uint8_t*>(mask.data_ptr<bool>()) : nullptr;
  parallel_elements(x.numel(), [&](int64_t b, int64_t e) {
    table.fake_quant_affine(kind, xp, op, mp, b, e, params);
  });
  return {out, mask};
}

AffineParams QParamArrays::affine(
    const ChannelLayout& layout,
    int64_t quant_min,
    int64_t quant_max) const {
  AffineParams p;
  p.scale = scale.data();
  p.inv_scale = inv_scale.data();
  p.zero_point = zero_point.data();
  p.layout = layout;
  p.quant_min = static_cast<float>(quant_min);
  p.quant_max = static_cast<float>(quant_max);
  return p;
}

namespace {

/// The values of a small CPU tensor as float32, in logical order.
std::vector<float> to_floats(const at::Tensor& t) {
  return checks::cpu_values<float>(t);
}

std::vector<float> inverse(const std::vector<float>& scale) {
  std::vector<float> inv(scale.size());
  for (size_t i = 0; i < scale.size(); ++i) {
    inv[i] = 1.0f / scale[i];  // float division, as PyTorch's kernels
  }
  return inv;
}

}  // namespace

QParamArrays int_qparams(
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    const char* op) {
  QParamArrays q;
  q.scale = to_floats(scale);
  checks::scale_values(q.scale.data(), static_cast<int64_t>(q.scale.size()), op);
  checks::zero_point_values(zero_point, quant_min, quant_max, op);
  q.inv_scale = inverse(q.scale);
  q.zero_point = to_floats(zero_point);
  return q;
}

QParamArrays learnable_qparams(
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    const char* op) {
  QParamArrays q;
  q.scale = to_floats(scale);
  checks::scale_values(q.scale.data(), static_cast<int64_t>(q.scale.size()), op);
  q.inv_scale = inverse(q.scale);
  q.zero_point = to_floats(zero_point);
  checks::finite_values(
      q.zero_point.data(), static_cast<int64_t>(q.zero_point.size()), "zero_point", op);
  const float lo = static_cast<float>(quant_min);
  const float hi = static_cast<float>(quant_max);
  for (float& z : q.zero_point) {
    z = std::min(std::max(std::nearbyint(z), lo), hi);  // half to even, then clamp
  }
  return q;
}

}  // namespace qtorchext::cpu
