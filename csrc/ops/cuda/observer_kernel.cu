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
#include "ops/cuda/observer_utils.cuh"
#include "ops/observer.h"

namespace qtorchext::cuda {
namespace {

using TensorPair = std::tuple<at::Tensor, at::Tensor>;

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

}  // namespace
}  // namespace qtorchext::cuda

TORCH_LIBRARY_IMPL(qtorchext, CUDA, m) {
  using namespace qtorchext::cuda;
  m.impl("observer_minmax_update", &observer_minmax_update_cuda);
  m.impl("fused_observe_fake_quantize", &fused_cuda);
  m.impl("_fused_observe_fake_quantize_cachemask", &fused_cachemask_cuda);
  m.impl("choose_qparams", &choose_qparams_cuda);
  m.impl("choose_qparams_per_token", &choose_qparams_per_token_cuda);
}
