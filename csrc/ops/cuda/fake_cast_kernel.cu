// CUDA kernel of the float16 / bfloat16 fake cast: out = cast(cast(x, dtype),
// x.dtype), through float as c10 does (so float64 inputs round twice, as on
// the CPU); round to nearest even.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "ops/common/checks.h"
#include "ops/fake_cast.h"
#include "ops/cpu/cpu_utils.h"
#include "ops/cuda/cuda_utils.cuh"

namespace qtorchext::cuda {
namespace {

constexpr const char* kFakeCast = "qtorchext::fake_cast";

template <class S, class Target, int N>
__global__ void __launch_bounds__(kThreads)
    fake_cast_kernel(const S* __restrict__ x, S* __restrict__ out, int64_t n) {
  using T = compute_t<S>;
  using P = Packet<S, N>;
  auto one = [](S v) {
    const float f = static_cast<float>(load_as(v));
    return store_as<S>(
        static_cast<T>(static_cast<float>(static_cast<Target>(f))));
  };
  const int64_t packets = n / N;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid =
      static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t v = tid; v < packets; v += stride) {
    const P in = reinterpret_cast<const P*>(x)[v];
    P o;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      o.v[k] = one(in.v[k]);
    }
    reinterpret_cast<P*>(out)[v] = o;
  }
  const int64_t i = packets * N + tid;
  if (i < n) {
    out[i] = one(x[i]);
  }
}

template <class S, class Target>
void launch_fake_cast(const S* x, S* out, int64_t n) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  constexpr int N = kVec<S>;
  if (aligned16(x) && aligned16(out)) {
    fake_cast_kernel<S, Target, N>
        <<<grid_for((n + N - 1) / N), kThreads, 0, stream>>>(x, out, n);
  } else {
    fake_cast_kernel<S, Target, 1>
        <<<grid_for(n), kThreads, 0, stream>>>(x, out, n);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor fake_cast_cuda(const at::Tensor& input, at::ScalarType dtype) {
  checks::fake_cast_args(input, dtype, kFakeCast);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = at::empty_like(input);
  if (out.numel() == 0) {
    return out;
  }
  const at::Tensor x = cpu::with_layout_of(input, out);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf,
      at::kBFloat16,
      x.scalar_type(),
      "qtorchext_fake_cast_cuda",
      [&] {
        const scalar_t* xp = x.const_data_ptr<scalar_t>();
        scalar_t* op = out.data_ptr<scalar_t>();
        if (dtype == at::kHalf) {
          launch_fake_cast<scalar_t, c10::Half>(xp, op, x.numel());
        } else {
          launch_fake_cast<scalar_t, c10::BFloat16>(xp, op, x.numel());
        }
      });
  return out;
}

}  // namespace
}  // namespace qtorchext::cuda

TORCH_LIBRARY_IMPL(qtorchext, CUDA, m) {
  m.impl("fake_cast", &qtorchext::cuda::fake_cast_cuda);
}
