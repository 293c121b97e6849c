// CUDA kernels of binarization: sign(x) * alpha with a clipped
// straight-through gradient and the alpha gradient sum(dY * sign(x)), as
// csrc/ops/cpu/binarize_kernel.cpp:
//
//   out    = x < 0 ? -alpha[c] : alpha[c]      (NaN stays NaN)
//   dX     = dY * (|x| <= clip)                (a multiplication)
//   dAlpha = sum over the channel of (x < 0 ? -dY : dY), NaN where x is NaN
//
// alpha is read in the compute type (float, double for double inputs); its
// values are not checked on the device (no host sync).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "ops/common/checks.h"
#include "ops/binarize.h"
#include "ops/cpu/cpu_utils.h"
#include "ops/cuda/cuda_utils.cuh"
#include "ops/cuda/grad_reduce.cuh"

namespace qtorchext::cuda {
namespace {

constexpr const char* kBinarize = "qtorchext::binarize";

at::ScalarType compute_type(const at::Tensor& input) {
  return input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

template <class S, int N, class Idx>
__global__ void __launch_bounds__(kThreads) binarize_kernel(
    const S* __restrict__ x,
    S* __restrict__ out,
    const compute_t<S>* __restrict__ alpha,
    Idx n,
    divider_t<Idx> inner,
    divider_t<Idx> channels) {
  using T = compute_t<S>;
  using P = Packet<S, N>;
  const Idx packets = n / N;
  const Idx stride = static_cast<Idx>(gridDim.x) * blockDim.x;
  const Idx tid = static_cast<Idx>(blockIdx.x) * blockDim.x + threadIdx.x;
  const Idx inner_n = static_cast<Idx>(inner.d);
  const Idx channels_n = static_cast<Idx>(channels.d);
  auto one = [&](T xv, Idx c) {
    const T a = alpha[c];
    const T y = xv < T(0) ? -a : a;
    return store_as<S>(xv != xv ? xv : y);
  };
  for (Idx v = tid; v < packets; v += stride) {
    const P in = reinterpret_cast<const P*>(x)[v];
    ChannelCursor<Idx> cur(v * N, inner, channels);
    P o;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      o.v[k] = one(load_as(in.v[k]), cur.c);
      cur.next(inner_n, channels_n);
    }
    reinterpret_cast<P*>(out)[v] = o;
  }
  const Idx i = packets * N + tid;
  if (i < n) {
    ChannelCursor<Idx> cur(i, inner, channels);
    out[i] = one(load_as(x[i]), cur.c);
  }
}

template <class S, int N>
void launch_binarize(
    const S* x,
    S* out,
    const compute_t<S>* alpha,
    int64_t n,
    const ChannelLayout& L) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t blocks = grid_for((n + N - 1) / N);
  if (n < (int64_t{1} << 31)) {
    binarize_kernel<S, N, uint32_t><<<blocks, kThreads, 0, stream>>>(
        x,
        out,
        alpha,
        static_cast<uint32_t>(n),
        FastDiv32(static_cast<uint32_t>(L.inner)),
        FastDiv32(static_cast<uint32_t>(L.channels)));
  } else {
    binarize_kernel<S, N, uint64_t><<<blocks, kThreads, 0, stream>>>(
        x,
        out,
        alpha,
        static_cast<uint64_t>(n),
        PlainDiv64(static_cast<uint64_t>(L.inner)),
        PlainDiv64(static_cast<uint64_t>(L.channels)));
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor binarize_cuda(
    const at::Tensor& input,
    const at::Tensor& alpha,
    int64_t axis,
    double clip) {
  const int64_t ax = checks::binarize_args(input, alpha, axis, clip, kBinarize);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = at::empty_like(input);
  if (out.numel() == 0) {
    return out;
  }
  const at::Tensor a = alpha.to(compute_type(input)).contiguous().reshape({-1});
  const at::Tensor x = cpu::with_layout_of(input, out);
  const ChannelLayout layout =
      ax < 0 ? ChannelLayout{} : cpu::channel_layout(out, ax);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf,
      at::kBFloat16,
      x.scalar_type(),
      "qtorchext_binarize_cuda",
      [&] {
        using T = compute_t<scalar_t>;
        const scalar_t* xp = x.const_data_ptr<scalar_t>();
        scalar_t* op = out.data_ptr<scalar_t>();
        const T* ap = a.const_data_ptr<T>();
        if (aligned16(xp) && aligned16(op)) {
          launch_binarize<scalar_t, kVec<scalar_t>>(
              xp, op, ap, x.numel(), layout);
        } else {
          launch_binarize<scalar_t, 1>(xp, op, ap, x.numel(), layout);
        }
      });
  return out;
}

template <class S>
struct BinarizeGradOp {
  const S* x;
  const S* dy;
  S* dx;  // may be null
  compute_t<S> clip;

  __device__ __forceinline__ void operator()(
      int64_t idx, int64_t, double (&acc)[1]) const {
    using T = compute_t<S>;
    const T xv = load_as(x[idx]);
    const T g = load_as(dy[idx]);
    if (dx != nullptr) {
      const T abs_x = xv < T(0) ? -xv : xv;
      dx[idx] = store_as<S>(mul_rn(g, abs_x <= clip ? T(1) : T(0)));
    }
    const T d = xv < T(0) ? -g : g;
    acc[0] += static_cast<double>(xv != xv ? xv : d);
  }
};

std::tuple<at::Tensor, at::Tensor> binarize_backward_cuda(
    const at::Tensor& grad,
    const at::Tensor& input,
    const at::Tensor& alpha,
    int64_t axis,
    double clip,
    std::array<bool, 2> output_mask) {
  const int64_t ax = checks::binarize_args(input, alpha, axis, clip, kBinarize);
  checks::grad_like_input(grad, input, kBinarize);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = cpu::dense(input);
  at::Tensor dx = output_mask[0] ? at::empty_like(x) : at::Tensor();
  if (x.numel() == 0) {
    return {
        dx,
        output_mask[1] ? at::zeros(alpha.sizes(), alpha.options())
                       : at::Tensor()};
  }
  const at::Tensor g = cpu::with_layout_of(grad, x);
  const ChannelLayout layout =
      ax < 0 ? ChannelLayout{} : cpu::channel_layout(x, ax);
  const int64_t outer = x.numel() / (layout.channels * layout.inner);
  // Per-channel sums in the compute type, then alpha's shape and dtype.
  at::Tensor da =
      output_mask[1]
          ? at::empty({layout.channels}, x.options().dtype(compute_type(input)))
          : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf,
      at::kBFloat16,
      x.scalar_type(),
      "qtorchext_binarize_backward_cuda",
      [&] {
        using T = compute_t<scalar_t>;
        BinarizeGradOp<scalar_t> f;
        f.x = x.const_data_ptr<scalar_t>();
        f.dy = g.const_data_ptr<scalar_t>();
        f.dx = dx.defined() ? dx.data_ptr<scalar_t>() : nullptr;
        f.clip = static_cast<T>(clip);
        grad_reduce<1, T>(
            f,
            outer,
            layout.channels,
            layout.inner,
            da.defined() ? da.data_ptr<T>() : nullptr,
            static_cast<T*>(nullptr),
            x);
      });
  at::Tensor dalpha;
  if (da.defined()) {
    dalpha = da.reshape(alpha.sizes()).to(alpha.scalar_type());
  }
  return {dx, dalpha};
}

}  // namespace
}  // namespace qtorchext::cuda

TORCH_LIBRARY_IMPL(qtorchext, CUDA, m) {
  using namespace qtorchext::cuda;
  m.impl("binarize", &binarize_cuda);
  m.impl("_binarize_backward", &binarize_backward_cuda);
}
