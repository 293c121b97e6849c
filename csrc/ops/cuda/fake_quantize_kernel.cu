// CUDA kernels of the affine fake-quant family: per-tensor, per-channel (int
// and floating zero points), per-group, their cached-mask forms and the
// straight-through backward dY * mask.
//
// Same checks, layouts and numerics as csrc/ops/cpu/fake_quantize_kernel.cpp
// (the formulas are in include/qtorchext/ops.h); the qparams are read by the
// kernels on the device, so no value checks run here (see ops.h).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "ops/common/checks.h"
#include "ops/fake_quantize.h"
#include "ops/cpu/cpu_utils.h"
#include "ops/cuda/cuda_utils.cuh"
#include "ops/cuda/fake_quantize_kernel.cuh"

namespace qtorchext::cuda {
namespace {

using TensorPair = std::tuple<at::Tensor, at::Tensor>;

constexpr const char* kPerTensor = "qtorchext::fake_quantize_per_tensor_affine";
constexpr const char* kPerChannel =
    "qtorchext::fake_quantize_per_channel_affine";
constexpr const char* kPerGroup = "qtorchext::fake_quantize_per_group";
constexpr const char* kMaskBackward = "qtorchext::_fake_quantize_mask_backward";

// ---------------------------------------------------------------------------
// Affine forward
// ---------------------------------------------------------------------------

/// One channel's qparams in float: scale, 1.0f / scale (rounded once, as the
/// CPU's float division) and the integral zero point.
struct ChannelQ {
  float scale;
  float inv_scale;
  float zero_point;
};

__device__ __forceinline__ ChannelQ
channel_q(const AffineQParams& p, int64_t c) {
  ChannelQ q;
  q.scale = load_param(p.scale, p.scale_kind, c);
  q.inv_scale = __frcp_rn(q.scale);
  float z = load_param(p.zero_point, p.zero_point_kind, c);
  if (p.round_zero_point) {
    // std::min(std::max(nearbyint(z), lo), hi) of the CPU qparams.
    z = round_even(z);
    z = z < p.quant_min ? p.quant_min : z;
    z = p.quant_max < z ? p.quant_max : z;
  }
  q.zero_point = z;
  return q;
}

/// q = nearbyint(x * inv_scale) + zero_point; out = (clamp(q) - zero_point)
/// * scale; mask = quant_min <= q <= quant_max. T is float or double.
template <class T>
__device__ __forceinline__ T
affine_one(T x, const ChannelQ& c, const AffineQParams& p, bool& in_range) {
  const T inv = static_cast<T>(c.inv_scale);
  const T zp = static_cast<T>(c.zero_point);
  const T qmin = static_cast<T>(p.quant_min);
  const T qmax = static_cast<T>(p.quant_max);
  const T q = add_rn(round_even(mul_rn(x, inv)), zp);
  in_range = q >= qmin && q <= qmax;
  T qc = min_x86(max_x86(q, qmin), qmax);  // NaN -> quant_min
  if (p.overflow_to_qmin && q >= static_cast<T>(0x1p63)) {
    qc = qmin;
  }
  T y = mul_rn(sub_rn(qc, zp), static_cast<T>(c.scale));
  if (p.output_in_float) {
    y = static_cast<T>(static_cast<float>(y));
  }
  return y;
}

/// Fake quantization switched off on the device: out = x (bit copy), mask 1.
template <class S, int N>
__device__ void copy_through(
    const S* x, S* out, uint8_t* mask, int64_t n, int64_t tid, int64_t stride) {
  using P = Packet<S, N>;
  using M = Packet<uint8_t, N>;
  M ones;
#pragma unroll
  for (int k = 0; k < N; ++k) {
    ones.v[k] = 1;
  }
  const int64_t packets = n / N;
  for (int64_t v = tid; v < packets; v += stride) {
    reinterpret_cast<P*>(out)[v] = reinterpret_cast<const P*>(x)[v];
    if (mask != nullptr) {
      reinterpret_cast<M*>(mask)[v] = ones;
    }
  }
  const int64_t i = packets * N + tid;
  if (i < n) {
    out[i] = x[i];
    if (mask != nullptr) {
      mask[i] = 1;
    }
  }
}

/// Per tensor: one set of qparams, no channel arithmetic.
template <class S, int N>
__global__ void __launch_bounds__(kThreads) affine_per_tensor_kernel(
    const S* __restrict__ x,
    S* __restrict__ out,
    uint8_t* __restrict__ mask,
    int64_t n,
    AffineQParams p) {
  using T = compute_t<S>;
  using P = Packet<S, N>;
  using M = Packet<uint8_t, N>;
  const int64_t packets = n / N;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid =
      static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p.enabled != nullptr && *p.enabled == 0) {
    copy_through<S, N>(x, out, mask, n, tid, stride);
    return;
  }
  const ChannelQ c = channel_q(p, 0);
  for (int64_t v = tid; v < packets; v += stride) {
    const P in = reinterpret_cast<const P*>(x)[v];
    P o;
    M m;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      bool ok;
      o.v[k] = store_as<S>(affine_one<T>(load_as(in.v[k]), c, p, ok));
      m.v[k] = ok;
    }
    reinterpret_cast<P*>(out)[v] = o;
    if (mask != nullptr) {
      reinterpret_cast<M*>(mask)[v] = m;
    }
  }
  // The tail of fewer than N elements.
  const int64_t i = packets * N + tid;
  if (i < n) {
    bool ok;
    out[i] = store_as<S>(affine_one<T>(load_as(x[i]), c, p, ok));
    if (mask != nullptr) {
      mask[i] = ok;
    }
  }
}

/// Per channel: element i is in channel (i / inner) % channels. Idx is
/// uint32_t (fast division) when the tensor has fewer than 2^31 elements.
template <class S, int N, class Idx>
__global__ void __launch_bounds__(kThreads) affine_per_channel_kernel(
    const S* __restrict__ x,
    S* __restrict__ out,
    uint8_t* __restrict__ mask,
    Idx n,
    divider_t<Idx> inner,
    divider_t<Idx> channels,
    AffineQParams p) {
  using T = compute_t<S>;
  using P = Packet<S, N>;
  using M = Packet<uint8_t, N>;
  const Idx packets = n / N;
  const Idx stride = static_cast<Idx>(gridDim.x) * blockDim.x;
  const Idx tid = static_cast<Idx>(blockIdx.x) * blockDim.x + threadIdx.x;
  const Idx inner_n = static_cast<Idx>(inner.d);
  const Idx channels_n = static_cast<Idx>(channels.d);
  if (p.enabled != nullptr && *p.enabled == 0) {
    copy_through<S, N>(
        x,
        out,
        mask,
        static_cast<int64_t>(n),
        static_cast<int64_t>(tid),
        static_cast<int64_t>(stride));
    return;
  }
  for (Idx v = tid; v < packets; v += stride) {
    const P in = reinterpret_cast<const P*>(x)[v];
    ChannelCursor<Idx> cur(v * N, inner, channels);
    P o;
    M m;
    // The qparams (two loads and a correctly rounded reciprocal) only when
    // the channel changes: a packet usually lies in one channel.
    Idx last = cur.c;
    ChannelQ c = channel_q(p, static_cast<int64_t>(last));
#pragma unroll
    for (int k = 0; k < N; ++k) {
      if (cur.c != last) {
        last = cur.c;
        c = channel_q(p, static_cast<int64_t>(last));
      }
      bool ok;
      o.v[k] = store_as<S>(affine_one<T>(load_as(in.v[k]), c, p, ok));
      m.v[k] = ok;
      cur.next(inner_n, channels_n);
    }
    reinterpret_cast<P*>(out)[v] = o;
    if (mask != nullptr) {
      reinterpret_cast<M*>(mask)[v] = m;
    }
  }
  const Idx i = packets * N + tid;
  if (i < n) {
    ChannelCursor<Idx> cur(i, inner, channels);
    const ChannelQ c = channel_q(p, static_cast<int64_t>(cur.c));
    bool ok;
    out[i] = store_as<S>(affine_one<T>(load_as(x[i]), c, p, ok));
    if (mask != nullptr) {
      mask[i] = ok;
    }
  }
}

template <class S, int N>
void launch_affine(
    const S* x, S* out, uint8_t* mask, int64_t n, const AffineQParams& p) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t blocks = grid_for((n + N - 1) / N);
  if (p.layout.channels == 1) {
    affine_per_tensor_kernel<S, N>
        <<<blocks, kThreads, 0, stream>>>(x, out, mask, n, p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else if (n < (int64_t{1} << 31)) {
    affine_per_channel_kernel<S, N, uint32_t><<<blocks, kThreads, 0, stream>>>(
        x,
        out,
        mask,
        static_cast<uint32_t>(n),
        FastDiv32(static_cast<uint32_t>(p.layout.inner)),
        FastDiv32(static_cast<uint32_t>(p.layout.channels)),
        p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    affine_per_channel_kernel<S, N, uint64_t><<<blocks, kThreads, 0, stream>>>(
        x,
        out,
        mask,
        static_cast<uint64_t>(n),
        PlainDiv64(static_cast<uint64_t>(p.layout.inner)),
        PlainDiv64(static_cast<uint64_t>(p.layout.channels)),
        p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> affine_forward(
    const at::Tensor& input,
    at::Tensor out,
    at::Tensor mask,
    const AffineQParams& params) {
  if (input.numel() == 0) {
    return {out, mask};
  }
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = cpu::with_layout_of(input, out);
  uint8_t* mp = mask.defined()
                    ? reinterpret_cast<uint8_t*>(mask.data_ptr<bool>())
                    : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "qtorchext_affine_cuda", [&] {
        const scalar_t* xp = x.const_data_ptr<scalar_t>();
        scalar_t* op = out.data_ptr<scalar_t>();
        constexpr int N = kVec<scalar_t>;
        // The mask is a fresh allocation (aligned); x may be a view at any
        // offset.
        if (aligned16(xp) && aligned16(op) &&
            (mp == nullptr || reinterpret_cast<uintptr_t>(mp) % N == 0)) {
          launch_affine<scalar_t, N>(xp, op, mp, x.numel(), params);
        } else {
          launch_affine<scalar_t, 1>(xp, op, mp, x.numel(), params);
        }
      });
  return {out, mask};
}

namespace {

at::Tensor mask_like(const at::Tensor& t, bool with_mask) {
  return with_mask ? at::empty_like(t, t.options().dtype(at::kBool))
                   : at::Tensor();
}

/// Integer qparams: the tensors themselves (contiguous), read in their dtype.
AffineQParams int_qparams(
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    const ChannelLayout& layout,
    int64_t quant_min,
    int64_t quant_max) {
  AffineQParams p;
  p.scale = scale.const_data_ptr();
  p.scale_kind = param_kind(scale.scalar_type());
  p.zero_point = zero_point.const_data_ptr();
  p.zero_point_kind = param_kind(zero_point.scalar_type());
  p.layout = layout;
  p.quant_min = static_cast<float>(quant_min);
  p.quant_max = static_cast<float>(quant_max);
  return p;
}

// ---------------------------------------------------------------------------
// Per-channel with floating zero points, PyTorch's formula (see the CPU
// kernel): t = zero_point + x * inv_scale in the compute type, q = lrintf(t)
// as int64 (NaN and |q| >= 2^63 give INT64_MIN, as on x86), the output
// formed in double. Scalar: this mode serves embedding tables.
// ---------------------------------------------------------------------------
template <class S>
__global__ void __launch_bounds__(kThreads) float_zero_point_kernel(
    const S* __restrict__ x,
    S* __restrict__ out,
    uint8_t* __restrict__ mask,
    int64_t n,
    int64_t inner,
    int64_t channels,
    const void* scale,
    ParamKind scale_kind,
    const void* zero_point,
    ParamKind zero_point_kind,
    int64_t quant_min,
    int64_t quant_max) {
  using T = compute_t<S>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < n;
       i += stride) {
    const int64_t c = channels == 1 ? 0 : (i / inner) % channels;
    const float s = load_param(scale, scale_kind, c);
    const float inv = __frcp_rn(s);
    const float z = load_param(zero_point, zero_point_kind, c);
    const T t =
        add_rn(static_cast<T>(z), mul_rn(load_as(x[i]), static_cast<T>(inv)));
    const float r = nearbyintf(static_cast<float>(t));
    const int64_t q =
        (r >= -0x1p63f && r < 0x1p63f) ? static_cast<int64_t>(r) : INT64_MIN;
    if (mask != nullptr) {
      mask[i] = quant_min <= q && q <= quant_max;
    }
    const double clamped = fmin(
        fmax(static_cast<double>(q), static_cast<double>(quant_min)),
        static_cast<double>(quant_max));
    const double y = __dmul_rn(
        __dsub_rn(clamped, static_cast<double>(z)), static_cast<double>(s));
    out[i] = store_as<S>(static_cast<T>(y));
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
  at::Tensor out = at::empty_like(input);
  at::Tensor mask = mask_like(out, with_mask);
  if (input.numel() == 0) {
    return {out, mask};
  }
  const at::Tensor x = cpu::with_layout_of(input, out);
  const at::Tensor s = scale.contiguous();
  const at::Tensor z = zero_point.contiguous();
  const ChannelLayout layout = cpu::channel_layout(out, axis);
  uint8_t* mp = mask.defined()
                    ? reinterpret_cast<uint8_t*>(mask.data_ptr<bool>())
                    : nullptr;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf,
      at::kBFloat16,
      x.scalar_type(),
      "qtorchext_fq_float_zp_cuda",
      [&] {
        float_zero_point_kernel<scalar_t>
            <<<grid_for(x.numel()), kThreads, 0, stream>>>(
                x.const_data_ptr<scalar_t>(),
                out.data_ptr<scalar_t>(),
                mp,
                x.numel(),
                layout.inner,
                layout.channels,
                s.const_data_ptr(),
                param_kind(s.scalar_type()),
                z.const_data_ptr(),
                param_kind(z.scalar_type()),
                quant_min,
                quant_max);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
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
  checks::per_tensor_affine_args(
      input, scale, zero_point, quant_min, quant_max, kPerTensor);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = at::empty_like(input);
  AffineQParams p =
      int_qparams(scale, zero_point, ChannelLayout{}, quant_min, quant_max);
  p.output_in_float = input.scalar_type() == at::kDouble;
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
  const c10::cuda::CUDAGuard guard(input.device());
  if (at::isFloatingType(zero_point.scalar_type())) {
    return per_channel_float_zero_point(
        input, scale, zero_point, ax, quant_min, quant_max, with_mask);
  }
  const at::Tensor s = scale.contiguous();
  const at::Tensor z = zero_point.contiguous();
  at::Tensor out = at::empty_like(input);
  AffineQParams p =
      int_qparams(s, z, cpu::channel_layout(out, ax), quant_min, quant_max);
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
  checks::per_group_args(
      input, scale, zero_point, group_size, quant_min, quant_max, kPerGroup);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor s = scale.contiguous();
  const at::Tensor z = zero_point.contiguous();
  at::Tensor out = at::empty_like(input, at::MemoryFormat::Contiguous);
  ChannelLayout layout;
  layout.inner = group_size;
  layout.channels = std::max<int64_t>(input.numel() / group_size, 1);
  AffineQParams p = int_qparams(s, z, layout, quant_min, quant_max);
  p.overflow_to_qmin = true;  // defined as per-channel on the grouped view
  return affine_forward(input, out, mask_like(out, with_mask), p);
}

at::Tensor per_tensor_cuda(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max) {
  return std::get<0>(fake_quantize_per_tensor(
      input, scale, zero_point, quant_min, quant_max, false));
}

TensorPair per_tensor_cachemask_cuda(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max) {
  return fake_quantize_per_tensor(
      input, scale, zero_point, quant_min, quant_max, true);
}

at::Tensor per_channel_cuda(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max) {
  return std::get<0>(fake_quantize_per_channel(
      input, scale, zero_point, axis, quant_min, quant_max, false));
}

TensorPair per_channel_cachemask_cuda(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t axis,
    int64_t quant_min,
    int64_t quant_max) {
  return fake_quantize_per_channel(
      input, scale, zero_point, axis, quant_min, quant_max, true);
}

at::Tensor per_group_cuda(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t group_size,
    int64_t quant_min,
    int64_t quant_max) {
  return std::get<0>(per_group(
      input, scale, zero_point, group_size, quant_min, quant_max, false));
}

TensorPair per_group_cachemask_cuda(
    const at::Tensor& input,
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t group_size,
    int64_t quant_min,
    int64_t quant_max) {
  return per_group(
      input, scale, zero_point, group_size, quant_min, quant_max, true);
}

// ---------------------------------------------------------------------------
// Straight-through backward: out = grad * mask, a multiplication as on the
// CPU (so -0, Inf * 0 = NaN and NaN gradients behave alike).
// ---------------------------------------------------------------------------
template <class S, int N>
__global__ void __launch_bounds__(kThreads) mask_backward_kernel(
    const S* __restrict__ g,
    const uint8_t* __restrict__ m,
    S* __restrict__ out,
    int64_t n) {
  using T = compute_t<S>;
  using P = Packet<S, N>;
  using M = Packet<uint8_t, N>;
  const int64_t packets = n / N;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid =
      static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t v = tid; v < packets; v += stride) {
    const P gv = reinterpret_cast<const P*>(g)[v];
    const M mv = reinterpret_cast<const M*>(m)[v];
    P o;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      o.v[k] = store_as<S>(mul_rn(load_as(gv.v[k]), mv.v[k] ? T(1) : T(0)));
    }
    reinterpret_cast<P*>(out)[v] = o;
  }
  const int64_t i = packets * N + tid;
  if (i < n) {
    out[i] = store_as<S>(mul_rn(load_as(g[i]), m[i] ? T(1) : T(0)));
  }
}

at::Tensor mask_backward_cuda(const at::Tensor& grad, const at::Tensor& mask) {
  checks::mask_backward_args(grad, mask, kMaskBackward);
  const c10::cuda::CUDAGuard guard(grad.device());
  at::Tensor out = at::empty_like(mask, grad.options());
  if (out.numel() == 0) {
    return out;
  }
  const at::Tensor g = cpu::with_layout_of(grad, out);
  const at::Tensor m = cpu::with_layout_of(mask, out);
  const auto* mp = reinterpret_cast<const uint8_t*>(m.const_data_ptr<bool>());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf,
      at::kBFloat16,
      g.scalar_type(),
      "qtorchext_mask_backward_cuda",
      [&] {
        const scalar_t* gp = g.const_data_ptr<scalar_t>();
        scalar_t* op = out.data_ptr<scalar_t>();
        constexpr int N = kVec<scalar_t>;
        const int64_t n = out.numel();
        if (aligned16(gp) && aligned16(op) &&
            reinterpret_cast<uintptr_t>(mp) % N == 0) {
          mask_backward_kernel<scalar_t, N>
              <<<grid_for((n + N - 1) / N), kThreads, 0, stream>>>(
                  gp, mp, op, n);
        } else {
          mask_backward_kernel<scalar_t, 1>
              <<<grid_for(n), kThreads, 0, stream>>>(gp, mp, op, n);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return out;
}

}  // namespace
}  // namespace qtorchext::cuda

TORCH_LIBRARY_IMPL(qtorchext, CUDA, m) {
  using namespace qtorchext::cuda;
  m.impl("fake_quantize_per_tensor_affine", &per_tensor_cuda);
  m.impl(
      "_fake_quantize_per_tensor_affine_cachemask", &per_tensor_cachemask_cuda);
  m.impl("fake_quantize_per_channel_affine", &per_channel_cuda);
  m.impl(
      "_fake_quantize_per_channel_affine_cachemask",
      &per_channel_cachemask_cuda);
  m.impl("fake_quantize_per_group", &per_group_cuda);
  m.impl("_fake_quantize_per_group_cachemask", &per_group_cachemask_cuda);
  m.impl("_fake_quantize_mask_backward", &mask_backward_cuda);
}
