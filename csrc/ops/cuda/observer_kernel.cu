// CUDA kernels of the min/max observer update and the fused observer + fake
// quantization, with no host synchronisation: the enable flags, running
// statistics and qparams stay on the device and are read by the kernels.
//
// Batch statistics: per-channel min / max of the finite elements (read as
// float, as the CPU kernel), formed like grad_reduce.cuh in two passes
// (block partials, then one thread per channel), which also updates the
// running statistics as the CPU's update_running and, for the fused op,
// chooses the qparams with the shared choose_qparams (ops/common/qparams.h).
//
// One difference from the CPU, where NaN inputs are an error: raising it here
// would need a host sync, so a channel whose batch holds a NaN keeps its
// statistics (and qparams) unchanged, as the CPU leaves them when it throws.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "ops/common/checks.h"
#include "ops/common/qparams.h"
#include "ops/cpu/cpu_utils.h"
#include "ops/cuda/cuda_utils.cuh"
#include "ops/cuda/fake_quantize_kernel.cuh"
#include "qtorchext/ops.h"

namespace qtorchext::cuda {
namespace {

using TensorPair = std::tuple<at::Tensor, at::Tensor>;

// Trivially constructible (it lives in shared memory): start from empty().
struct MinMax {
  float mn;
  float mx;
  int nan;

  static __device__ __forceinline__ MinMax empty() {
    return MinMax{INFINITY, -INFINITY, 0};
  }

  __device__ __forceinline__ void add(float v) {
    if (v != v) {
      nan = 1;
    } else if (fabsf(v) < INFINITY) {
      mn = fminf(mn, v);
      mx = fmaxf(mx, v);
    }
  }
  __device__ __forceinline__ void merge(const MinMax& o) {
    mn = fminf(mn, o.mn);
    mx = fmaxf(mx, o.mx);
    nan |= o.nan;
  }
};

/// Block-wide merge; the result is valid in thread 0.
__device__ __forceinline__ MinMax block_minmax(MinMax v, MinMax* smem) {
  const int tid = threadIdx.x + threadIdx.y * blockDim.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int warps = (blockDim.x * blockDim.y) >> 5;
  for (int off = 16; off > 0; off >>= 1) {
    MinMax o = MinMax::empty();
    o.mn = __shfl_down_sync(0xffffffffu, v.mn, off);
    o.mx = __shfl_down_sync(0xffffffffu, v.mx, off);
    o.nan = __shfl_down_sync(0xffffffffu, v.nan, off);
    v.merge(o);
  }
  if (lane == 0) {
    smem[warp] = v;
  }
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? smem[lane] : MinMax::empty();
    for (int off = 16; off > 0; off >>= 1) {
      MinMax o = MinMax::empty();
      o.mn = __shfl_down_sync(0xffffffffu, v.mn, off);
      o.mx = __shfl_down_sync(0xffffffffu, v.mx, off);
      o.nan = __shfl_down_sync(0xffffffffu, v.nan, off);
      v.merge(o);
    }
  }
  __syncthreads();
  return v;
}

/// Long rows (and per tensor): block (c, s) covers split s of channel c.
template <class S>
__global__ void __launch_bounds__(kThreads) minmax_rows_kernel(
    const S* __restrict__ x,
    int64_t outer,
    int64_t channels,
    int64_t inner,
    const uint8_t* enabled,
    MinMax* __restrict__ partial) {
  if (enabled != nullptr && *enabled == 0) {
    return;
  }
  __shared__ MinMax smem[32];
  const int64_t n = outer * inner;
  const int64_t chunk = (n + gridDim.y - 1) / gridDim.y;
  const int64_t k0 = blockIdx.y * chunk;
  const int64_t k1 = k0 + chunk < n ? k0 + chunk : n;
  for (int64_t c = blockIdx.x; c < channels; c += gridDim.x) {
    MinMax acc = MinMax::empty();
    int64_t k = k0 + threadIdx.x;
    if (k < k1) {
      int64_t o = k / inner;
      int64_t i = k - o * inner;
      for (; k < k1; k += blockDim.x) {
        acc.add(static_cast<float>(load_as(x[(o * channels + c) * inner + i])));
        i += blockDim.x;
        if (i >= inner) {  // inner >= blockDim: one row end at most
          i -= inner;
          ++o;
        }
      }
    }
    acc = block_minmax(acc, smem);
    if (threadIdx.x == 0) {
      partial[blockIdx.y * channels + c] = acc;
    }
  }
}

/// Per tensor: the whole buffer as one row, N elements (16 bytes) per load,
/// grid-stride; one partial per block.
template <class S, int N>
__global__ void __launch_bounds__(kThreads) minmax_flat_kernel(
    const S* __restrict__ x,
    int64_t n,
    const uint8_t* enabled,
    MinMax* __restrict__ partial) {
  if (enabled != nullptr && *enabled == 0) {
    return;
  }
  __shared__ MinMax smem[32];
  using P = Packet<S, N>;
  MinMax acc = MinMax::empty();
  const int64_t packets = n / N;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t v = tid; v < packets; v += stride) {
    const P in = reinterpret_cast<const P*>(x)[v];
#pragma unroll
    for (int k = 0; k < N; ++k) {
      acc.add(static_cast<float>(load_as(in.v[k])));
    }
  }
  const int64_t i = packets * N + tid;
  if (i < n) {
    acc.add(static_cast<float>(load_as(x[i])));
  }
  acc = block_minmax(acc, smem);
  if (threadIdx.x == 0) {
    partial[blockIdx.x] = acc;
  }
}

/// Per-tensor block partials of the n elements of x (16-byte loads when x is
/// aligned): a [splits] MinMax buffer, about 8 blocks per SM.
template <class S>
at::Tensor flat_minmax_partials(
    const S* x, int64_t n, const uint8_t* enabled, const at::TensorOptions& bytes,
    cudaStream_t stream, int64_t& splits) {
  splits = std::max<int64_t>(
      1, std::min<int64_t>(static_cast<int64_t>(sm_count()) * 8, (n + 4095) / 4096));
  at::Tensor partial = at::empty({static_cast<int64_t>(splits * sizeof(MinMax))}, bytes);
  auto* pp = reinterpret_cast<MinMax*>(partial.data_ptr());
  const auto blocks = static_cast<unsigned>(splits);
  if (aligned16(x)) {
    minmax_flat_kernel<S, kVec<S>><<<blocks, kThreads, 0, stream>>>(x, n, enabled, pp);
  } else {
    minmax_flat_kernel<S, 1><<<blocks, kThreads, 0, stream>>>(x, n, enabled, pp);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return partial;
}

/// Short rows: columns j of the row of channels * inner elements.
template <class S>
__global__ void __launch_bounds__(kThreads) minmax_columns_kernel(
    const S* __restrict__ x,
    int64_t outer,
    int64_t row,
    const uint8_t* enabled,
    MinMax* __restrict__ partial) {
  if (enabled != nullptr && *enabled == 0) {
    return;
  }
  __shared__ MinMax smem[8][33];
  const int64_t j = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  MinMax acc = MinMax::empty();
  if (j < row) {
    const int64_t step = static_cast<int64_t>(gridDim.y) * 8;
    for (int64_t o = static_cast<int64_t>(blockIdx.y) * 8 + threadIdx.y;
         o < outer;
         o += step) {
      acc.add(static_cast<float>(load_as(x[o * row + j])));
    }
  }
  smem[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && j < row) {
    for (int y = 1; y < 8; ++y) {
      acc.merge(smem[y][threadIdx.x]);
    }
    partial[blockIdx.y * row + j] = acc;
  }
}

struct UpdateArgs {
  float* min_val;
  float* max_val;
  bool moving_average;
  float averaging_constant;
  // Fused op: the qparams chosen from the updated statistics (else null).
  float* scale;
  int32_t* zero_point;
  int64_t quant_min;
  int64_t quant_max;
  bool symmetric;
  float eps;
};

/// One block per channel: merges the channel's partials (a block reduction:
/// per tensor there are about 8 per SM), then thread 0 updates the running
/// statistics (CPU update_running) and the qparams.
__global__ void __launch_bounds__(kThreads) minmax_update_kernel(
    const MinMax* __restrict__ partial,
    int64_t splits,
    int64_t row,
    int64_t inner,
    int64_t channels,
    const uint8_t* enabled,
    UpdateArgs a) {
  if (enabled != nullptr && *enabled == 0) {
    return;
  }
  __shared__ MinMax smem[32];
  const int64_t parts = splits * inner;
  for (int64_t c = blockIdx.x; c < channels; c += gridDim.x) {
    MinMax b = MinMax::empty();
    for (int64_t t = threadIdx.x; t < parts; t += blockDim.x) {
      const int64_t s = t / inner, i = t - s * inner;
      b.merge(partial[s * row + c * inner + i]);
    }
    b = block_minmax(b, smem);
    if (threadIdx.x != 0 || b.nan != 0) {
      continue;  // NaN: see the top of the file
    }
    float mn = a.min_val[c];
    float mx = a.max_val[c];
    if (!(b.mn <= b.mx)) {
      // No finite value in the batch: the statistics stay.
    } else if (mn == INFINITY && mx == -INFINITY) {
      mn = b.mn;
      mx = b.mx;
    } else if (a.moving_average) {
      mn = __fadd_rn(mn, __fmul_rn(a.averaging_constant, __fsub_rn(b.mn, mn)));
      mx = __fadd_rn(mx, __fmul_rn(a.averaging_constant, __fsub_rn(b.mx, mx)));
    } else {
      mn = fminf(mn, b.mn);
      mx = fmaxf(mx, b.mx);
    }
    a.min_val[c] = mn;
    a.max_val[c] = mx;
    if (a.scale != nullptr) {  // from the statistics, updated or not (as the CPU)
      const QParams q =
          choose_qparams(mn, mx, a.quant_min, a.quant_max, a.symmetric, a.eps);
      a.scale[c] = q.scale;
      a.zero_point[c] = q.zero_point;
    }
  }
}

/// Observes a non-empty input (per tensor or along axis) and updates the
/// statistics and, when a.scale is set, the qparams. `enabled`: a device flag
/// (may be null) that turns all of it off.
void observe(
    const at::Tensor& input,
    std::optional<int64_t> axis,
    const uint8_t* enabled,
    const UpdateArgs& a) {
  const at::Tensor x = cpu::dense(input);
  const ChannelLayout layout =
      axis ? cpu::channel_layout(x, *axis) : ChannelLayout{};
  const int64_t channels = layout.channels;
  int64_t outer = x.numel() / (layout.channels * layout.inner);
  int64_t inner = layout.inner;
  if (channels == 1) {  // per tensor: one long row
    inner = x.numel();
    outer = 1;
  }
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t target_blocks = static_cast<int64_t>(sm_count()) * 8;
  const auto bytes = x.options().dtype(at::kByte);
  at::Tensor partial;
  int64_t splits = 1;
  int64_t row = channels;
  int64_t row_inner = 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "qtorchext_minmax_cuda", [&] {
        const scalar_t* xp = x.const_data_ptr<scalar_t>();
        if (channels == 1) {
          partial = flat_minmax_partials(xp, inner, enabled, bytes, stream, splits);
        } else if (inner >= kThreads) {
          const int64_t per_channel = outer * inner;
          splits = std::max<int64_t>(
              1,
              std::min<int64_t>(
                  {(target_blocks + channels - 1) / channels,
                   (per_channel + 2047) / 2048,
                   65535}));
          partial = at::empty(
              {static_cast<int64_t>(splits * channels * sizeof(MinMax))},
              bytes);
          const dim3 grid(
              static_cast<unsigned>(std::min<int64_t>(channels, 65535)),
              static_cast<unsigned>(splits));
          minmax_rows_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
              xp,
              outer,
              channels,
              inner,
              enabled,
              reinterpret_cast<MinMax*>(partial.data_ptr()));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        } else {
          row = channels * inner;
          row_inner = inner;
          const int64_t tiles = (row + 31) / 32;
          splits = std::max<int64_t>(
              1,
              std::min<int64_t>(
                  {(target_blocks + tiles - 1) / tiles,
                   (outer + 7) / 8,
                   65535}));
          partial = at::empty(
              {static_cast<int64_t>(splits * row * sizeof(MinMax))}, bytes);
          const dim3 grid(
              static_cast<unsigned>(tiles), static_cast<unsigned>(splits));
          minmax_columns_kernel<scalar_t><<<grid, dim3(32, 8), 0, stream>>>(
              xp,
              outer,
              row,
              enabled,
              reinterpret_cast<MinMax*>(partial.data_ptr()));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
  minmax_update_kernel<<<
      static_cast<unsigned>(std::min<int64_t>(channels, 65535)),
      kThreads,
      0,
      stream>>>(
      reinterpret_cast<const MinMax*>(partial.const_data_ptr()),
      splits,
      row,
      row_inner,
      channels,
      enabled,
      a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

UpdateArgs update_args(
    at::Tensor& min_val,
    at::Tensor& max_val,
    std::optional<double> averaging_constant) {
  UpdateArgs a{};
  a.min_val = min_val.data_ptr<float>();
  a.max_val = max_val.data_ptr<float>();
  a.moving_average = averaging_constant.has_value();
  a.averaging_constant = static_cast<float>(averaging_constant.value_or(0.0));
  return a;
}

void observer_minmax_update_cuda(
    const at::Tensor& input,
    at::Tensor& min_val,
    at::Tensor& max_val,
    std::optional<int64_t> ch_axis,
    std::optional<double> averaging_constant) {
  constexpr const char* op = "qtorchext::observer_minmax_update";
  const auto axis =
      checks::observer_stats_args(input, min_val, max_val, ch_axis, op);
  checks::averaging_constant_arg(averaging_constant, op);
  if (input.numel() == 0) {
    return;
  }
  const c10::cuda::CUDAGuard guard(input.device());
  observe(
      input, axis, nullptr, update_args(min_val, max_val, averaging_constant));
}

TensorPair fused(
    const at::Tensor& input,
    const at::Tensor& observer_enabled,
    const at::Tensor& fake_quant_enabled,
    at::Tensor& min_val,
    at::Tensor& max_val,
    at::Tensor& scale,
    at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric,
    double eps,
    std::optional<int64_t> ch_axis,
    std::optional<double> averaging_constant,
    bool with_mask) {
  constexpr const char* op = "qtorchext::fused_observe_fake_quantize";
  const auto axis =
      checks::observer_stats_args(input, min_val, max_val, ch_axis, op);
  checks::averaging_constant_arg(averaging_constant, op);
  checks::qparam_range(quant_min, quant_max, op);
  checks::eps_arg(eps, op);
  checks::flag_arg(observer_enabled, "observer_enabled", input, op);
  checks::flag_arg(fake_quant_enabled, "fake_quant_enabled", input, op);
  checks::qparam_buffers(scale, zero_point, min_val, op);
  const c10::cuda::CUDAGuard guard(input.device());
  if (input.numel() > 0) {
    UpdateArgs a = update_args(min_val, max_val, averaging_constant);
    a.scale = scale.data_ptr<float>();
    a.zero_point = zero_point.data_ptr<int32_t>();
    a.quant_min = quant_min;
    a.quant_max = quant_max;
    a.symmetric = symmetric;
    a.eps = static_cast<float>(eps);
    observe(input, axis, observer_enabled.const_data_ptr<uint8_t>(), a);
  }
  // The fake quantization reads fake_quant_enabled on the device: when 0 it
  // copies the input and sets the mask (the CPU's input.clone(), ones).
  at::Tensor out = at::empty_like(input);
  at::Tensor mask = with_mask
                        ? at::empty_like(out, out.options().dtype(at::kBool))
                        : at::Tensor();
  AffineQParams p;
  p.scale = scale.const_data_ptr();
  p.scale_kind = ParamKind::Float;
  p.zero_point = zero_point.const_data_ptr();
  p.zero_point_kind = ParamKind::Int32;
  p.layout = axis ? cpu::channel_layout(out, *axis) : ChannelLayout{};
  p.quant_min = static_cast<float>(quant_min);
  p.quant_max = static_cast<float>(quant_max);
  p.overflow_to_qmin = axis.has_value();
  p.output_in_float = !axis.has_value() && input.scalar_type() == at::kDouble;
  p.enabled = fake_quant_enabled.const_data_ptr<uint8_t>();
  return affine_forward(input, out, mask, p);
}

at::Tensor fused_cuda(
    const at::Tensor& input,
    const at::Tensor& observer_enabled,
    const at::Tensor& fake_quant_enabled,
    at::Tensor& min_val,
    at::Tensor& max_val,
    at::Tensor& scale,
    at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric,
    double eps,
    std::optional<int64_t> ch_axis,
    std::optional<double> averaging_constant) {
  return std::get<0>(fused(
      input,
      observer_enabled,
      fake_quant_enabled,
      min_val,
      max_val,
      scale,
      zero_point,
      quant_min,
      quant_max,
      symmetric,
      eps,
      ch_axis,
      averaging_constant,
      false));
}

TensorPair fused_cachemask_cuda(
    const at::Tensor& input,
    const at::Tensor& observer_enabled,
    const at::Tensor& fake_quant_enabled,
    at::Tensor& min_val,
    at::Tensor& max_val,
    at::Tensor& scale,
    at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric,
    double eps,
    std::optional<int64_t> ch_axis,
    std::optional<double> averaging_constant) {
  return fused(
      input,
      observer_enabled,
      fake_quant_enabled,
      min_val,
      max_val,
      scale,
      zero_point,
      quant_min,
      quant_max,
      symmetric,
      eps,
      ch_axis,
      averaging_constant,
      true);
}

// ---------------------------------------------------------------------------
// qparams from statistics, per-token qparams
// ---------------------------------------------------------------------------

__global__ void choose_qparams_kernel(
    const float* __restrict__ mn, const float* __restrict__ mx, float* __restrict__ scale,
    int32_t* __restrict__ zero_point, int64_t n, int64_t quant_min, int64_t quant_max,
    bool symmetric, float eps) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) {
    const QParams q = choose_qparams(mn[i], mx[i], quant_min, quant_max, symmetric, eps);
    scale[i] = q.scale;
    zero_point[i] = q.zero_point;
  }
}

TensorPair choose_qparams_cuda(
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric,
    double eps) {
  constexpr const char* op = "qtorchext::choose_qparams";
  checks::choose_qparams_args(min_val, max_val, quant_min, quant_max, eps, op);
  const c10::cuda::CUDAGuard guard(min_val.device());
  const at::Tensor mn = min_val.to(at::kFloat).contiguous();
  const at::Tensor mx = max_val.to(at::kFloat).contiguous();
  const std::vector<int64_t> shape =
      min_val.dim() == 0 ? std::vector<int64_t>{1} : min_val.sizes().vec();
  at::Tensor scale = at::empty(shape, min_val.options().dtype(at::kFloat));
  at::Tensor zero_point = at::empty(shape, min_val.options().dtype(at::kInt));
  const int64_t n = mn.numel();
  if (n > 0) {
    choose_qparams_kernel<<<(n + kThreads - 1) / kThreads, kThreads, 0,
                            c10::cuda::getCurrentCUDAStream()>>>(
        mn.const_data_ptr<float>(), mx.const_data_ptr<float>(), scale.data_ptr<float>(),
        zero_point.data_ptr<int32_t>(), n, quant_min, quant_max, symmetric,
        static_cast<float>(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {scale, zero_point};
}

/// One block per row: min / max of the finite values (dynamic ranges keep no
/// state, so non-finite values are skipped, as on the CPU), then the qparams.
template <class S>
__global__ void __launch_bounds__(kThreads) per_token_qparams_kernel(
    const S* __restrict__ x, int64_t cols, float* __restrict__ scale,
    int32_t* __restrict__ zero_point, int64_t quant_min, int64_t quant_max, bool symmetric,
    float eps) {
  __shared__ MinMax smem[32];
  const int64_t row = blockIdx.x;
  MinMax acc = MinMax::empty();
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = static_cast<float>(load_as(x[row * cols + c]));
    if (isfinite(v)) {
      acc.add(v);
    }
  }
  acc = block_minmax(acc, smem);
  if (threadIdx.x == 0) {
    const QParams q = choose_qparams(acc.mn, acc.mx, quant_min, quant_max, symmetric, eps);
    scale[row] = q.scale;
    zero_point[row] = q.zero_point;
  }
}

TensorPair choose_qparams_per_token_cuda(
    const at::Tensor& input,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric,
    double eps) {
  constexpr const char* op = "qtorchext::choose_qparams_per_token";
  checks::per_token_args(input, quant_min, quant_max, eps, op);
  const c10::cuda::CUDAGuard guard(input.device());
  std::vector<int64_t> shape = input.sizes().vec();
  shape.back() = 1;
  at::Tensor scale = at::empty(shape, input.options().dtype(at::kFloat));
  at::Tensor zero_point = at::empty(shape, input.options().dtype(at::kInt));
  const int64_t cols = input.size(-1);
  const int64_t rows = cols == 0 ? 0 : input.numel() / cols;
  if (rows == 0) {
    return {scale.fill_(1.0), zero_point.zero_()};
  }
  const at::Tensor x = input.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "per_token_qparams", [&] {
    per_token_qparams_kernel<scalar_t><<<static_cast<unsigned>(rows), kThreads, 0,
                                         c10::cuda::getCurrentCUDAStream()>>>(
        x.const_data_ptr<scalar_t>(), cols, scale.data_ptr<float>(),
        zero_point.data_ptr<int32_t>(), quant_min, quant_max, symmetric, static_cast<float>(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {scale, zero_point};
}

// ---------------------------------------------------------------------------
// Histogram observer update: the CPU's range logic (in double) and binning
// (in float) on the device, no host sync. A batch with a NaN is skipped (the
// CPU raises; see the top of the file).
// ---------------------------------------------------------------------------

struct HistPlan {
  int32_t skip;    // no finite value or a NaN: nothing changes
  int32_t rebin;   // 0 keep, 1 reset to zero, 2 widen by 2^k
  int32_t k;
  int64_t shift;
  float lo;
  float bins_per_unit;
};

/// One block: merges the batch partials and plans the range (thread 0).
__global__ void __launch_bounds__(kThreads) histogram_plan_kernel(
    const MinMax* __restrict__ partial, int64_t splits, float* __restrict__ min_val,
    float* __restrict__ max_val, int64_t bins, HistPlan* __restrict__ plan) {
  __shared__ MinMax smem[32];
  MinMax b = MinMax::empty();
  for (int64_t s = threadIdx.x; s < splits; s += blockDim.x) {
    b.merge(partial[s]);
  }
  b = block_minmax(b, smem);
  if (threadIdx.x != 0) {
    return;
  }
  HistPlan p{};
  if (b.nan != 0 || !(b.mn <= b.mx)) {
    p.skip = 1;
    *plan = p;
    return;
  }
  double lo = *min_val, hi = *max_val;
  if (lo == INFINITY && hi == -INFINITY) {
    lo = b.mn;
    hi = b.mx > lo ? static_cast<double>(b.mx) : lo + fmax(fabs(lo) * 0x1p-7, 0x1p-14);
    p.rebin = 1;
  } else if (b.mn < lo || b.mx > hi) {
    // widen by 2^k, the old bin edges on the new grid (as the CPU)
    const HistogramWidening w = widen_histogram(
        lo, hi, bins, fmin(static_cast<double>(b.mn), lo), fmax(static_cast<double>(b.mx), hi));
    p.rebin = 2;
    p.k = w.k;
    p.shift = w.shift;
    lo = w.lo;
    hi = w.hi;
  }
  const float lo_f = static_cast<float>(lo), hi_f = static_cast<float>(hi);
  p.lo = lo_f;
  p.bins_per_unit = __fdiv_rn(static_cast<float>(bins), __fsub_rn(hi_f, lo_f));
  *min_val = lo_f;
  *max_val = hi_f;
  *plan = p;
}

/// Old counts aside and the histogram zeroed, when the plan rebins.
__global__ void histogram_clear_kernel(
    int64_t* __restrict__ counts, int64_t* __restrict__ old, int64_t bins,
    const HistPlan* __restrict__ plan) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < bins && !plan->skip && plan->rebin != 0) {
    old[i] = counts[i];
    counts[i] = 0;
  }
}

/// Old bins i .. i + 2^k - 1 merge into new bin shift + (i >> k).
__global__ void histogram_merge_kernel(
    int64_t* __restrict__ counts, const int64_t* __restrict__ old, int64_t bins,
    const HistPlan* __restrict__ plan) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < bins && !plan->skip && plan->rebin == 2 && old[i] != 0) {
    const int64_t to = plan->k < 0 ? plan->shift : min(bins - 1, plan->shift + (i >> plan->k));
    atomicAdd(reinterpret_cast<unsigned long long*>(counts + to),
              static_cast<unsigned long long>(old[i]));
  }
}

/// Counts the finite values: per-block counts in shared memory when they fit.
template <class S>
__global__ void __launch_bounds__(kThreads) histogram_count_kernel(
    const S* __restrict__ x, int64_t n, int64_t* __restrict__ counts, int64_t bins,
    const HistPlan* __restrict__ plan, bool shared_counts) {
  extern __shared__ unsigned int local[];
  if (plan->skip) {
    return;
  }
  const float lo = plan->lo, bpu = plan->bins_per_unit, last = static_cast<float>(bins - 1);
  if (shared_counts) {
    for (int64_t b = threadIdx.x; b < bins; b += blockDim.x) {
      local[b] = 0;
    }
    __syncthreads();
  }
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const float v = static_cast<float>(load_as(x[i]));
    if (!isfinite(v)) {
      continue;
    }
    const float t = floorf(__fmul_rn(__fsub_rn(v, lo), bpu));
    const int64_t bin = static_cast<int64_t>(fminf(fmaxf(t, 0.f), last));
    if (shared_counts) {
      atomicAdd(local + bin, 1u);
    } else {
      atomicAdd(reinterpret_cast<unsigned long long*>(counts + bin), 1ull);
    }
  }
  if (shared_counts) {
    __syncthreads();
    for (int64_t b = threadIdx.x; b < bins; b += blockDim.x) {
      if (local[b] != 0) {
        atomicAdd(reinterpret_cast<unsigned long long*>(counts + b),
                  static_cast<unsigned long long>(local[b]));
      }
    }
  }
}

void observer_histogram_update_cuda(
    const at::Tensor& input,
    at::Tensor& histogram,
    at::Tensor& min_val,
    at::Tensor& max_val) {
  constexpr const char* op = "qtorchext::observer_histogram_update";
  checks::input_dtype(input, op);
  checks::histogram_args(histogram, min_val, max_val, op);
  checks::same_device(op, {{"input", &input}, {"histogram", &histogram}});
  if (input.numel() == 0) {
    return;
  }
  const c10::cuda::CUDAGuard guard(input.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor x = cpu::dense(input);
  const int64_t n = x.numel(), bins = histogram.numel();
  const auto bytes = x.options().dtype(at::kByte);
  at::Tensor plan = at::empty({static_cast<int64_t>(sizeof(HistPlan))}, bytes);
  at::Tensor old = at::empty({bins}, histogram.options());
  auto* plan_p = reinterpret_cast<HistPlan*>(plan.data_ptr());
  int64_t* counts = histogram.data_ptr<int64_t>();
  const bool shared_counts = bins * sizeof(unsigned int) <= 32 * 1024;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "histogram_update", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    int64_t splits = 1;
    const at::Tensor partial = flat_minmax_partials(xp, n, nullptr, bytes, stream, splits);
    histogram_plan_kernel<<<1, kThreads, 0, stream>>>(
        reinterpret_cast<const MinMax*>(partial.const_data_ptr()), splits, min_val.data_ptr<float>(), max_val.data_ptr<float>(), bins, plan_p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const unsigned bin_blocks = static_cast<unsigned>((bins + kThreads - 1) / kThreads);
    histogram_clear_kernel<<<bin_blocks, kThreads, 0, stream>>>(counts, old.data_ptr<int64_t>(), bins, plan_p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    histogram_merge_kernel<<<bin_blocks, kThreads, 0, stream>>>(counts, old.const_data_ptr<int64_t>(), bins, plan_p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    histogram_count_kernel<scalar_t><<<static_cast<unsigned>(grid_for(n)), kThreads,
                                       shared_counts ? bins * sizeof(unsigned int) : 0, stream>>>(
        xp, n, counts, bins, plan_p, shared_counts);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// ---------------------------------------------------------------------------
// Range searches over a histogram (a few thousand bins, at convert time) and
// the MSE observer (weights, once per conversion): computed by the CPU
// kernels on host copies, the results copied back (these syncs are one-off).
// ---------------------------------------------------------------------------

TensorPair on_device(const TensorPair& r, const at::Device& device) {
  return {std::get<0>(r).to(device), std::get<1>(r).to(device)};
}

TensorPair histogram_search_range_cuda(
    const at::Tensor& histogram,
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric) {
  checks::same_device(
      "qtorchext::histogram_search_range",
      {{"histogram", &histogram}, {"min_val", &min_val}, {"max_val", &max_val}});
  return on_device(
      qat::histogram_search_range(histogram.cpu(), min_val.cpu(), max_val.cpu(), quant_min,
                                  quant_max, symmetric),
      min_val.device());
}

TensorPair histogram_percentile_range_cuda(
    const at::Tensor& histogram,
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    double percentile,
    bool symmetric) {
  checks::same_device(
      "qtorchext::histogram_percentile_range",
      {{"histogram", &histogram}, {"min_val", &min_val}, {"max_val", &max_val}});
  return on_device(
      qat::histogram_percentile_range(histogram.cpu(), min_val.cpu(), max_val.cpu(), percentile,
                                      symmetric),
      min_val.device());
}

void observer_mse_update_cuda(
    const at::Tensor& input,
    at::Tensor& min_val,
    at::Tensor& max_val,
    at::Tensor& num_batches,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric,
    std::optional<int64_t> ch_axis,
    int64_t candidates) {
  checks::same_device(
      "qtorchext::observer_mse_update",
      {{"input", &input}, {"min_val", &min_val}, {"max_val", &max_val},
       {"num_batches", &num_batches}});
  at::Tensor mn = min_val.cpu(), mx = max_val.cpu(), nb = num_batches.cpu();
  qat::observer_mse_update(input.cpu(), mn, mx, nb, quant_min, quant_max, symmetric, ch_axis,
                           candidates);
  min_val.copy_(mn);
  max_val.copy_(mx);
  num_batches.copy_(nb);
}

}  // namespace
}  // namespace qtorchext::cuda

TORCH_LIBRARY_IMPL(qtorchext, CUDA, m) {
  using namespace qtorchext::cuda;
  m.impl("observer_minmax_update", &observer_minmax_update_cuda);
  m.impl("fused_observe_fake_quantize", &fused_cuda);
  m.impl("_fused_observe_fake_quantize_cachemask", &fused_cachemask_cuda);
  m.impl("choose_qparams", &choose_qparams_cuda);
  m.impl("choose_qparams_per_token", &choose_qparams_per_token_cuda);
  m.impl("observer_histogram_update", &observer_histogram_update_cuda);
  m.impl("histogram_search_range", &histogram_search_range_cuda);
  m.impl("histogram_percentile_range", &histogram_percentile_range_cuda);
  m.impl("observer_mse_update", &observer_mse_update_cuda);
}
