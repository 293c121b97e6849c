// CUDA kernels of the histogram observer (update, range searches, merge) and the
// MSE observer. The update bins on the device with the CPU's range logic (in
// double); the range searches and the MSE observer run the CPU kernels on host
// copies at convert time (one-off syncs). See observer_kernel.cu for the
// NaN handling shared with the min / max update.
#include "ops/common/histogram_grid.h"
#include "ops/cuda/observer_utils.cuh"
#include "ops/observer.h"

namespace qtorchext::cuda {
namespace {

using TensorPair = std::tuple<at::Tensor, at::Tensor>;

// ---------------------------------------------------------------------------
// Histogram observer update: the CPU's grid (ops/common/histogram_grid.h, in
// double) on the device, no host sync. A batch with a NaN is skipped (the CPU
// raises; see the top of the file).
// ---------------------------------------------------------------------------

struct HistPlan {
  int32_t skip;  // no finite value or a NaN: nothing changes
  HistogramState state;  // the stored histogram, whose counts move onto grid
  HistogramGrid grid;
  double inv_width;
};

/// One block: merges the batch partials and plans the grid (thread 0).
__global__ void __launch_bounds__(kThreads) histogram_plan_kernel(
    const MinMax* __restrict__ partial, int64_t splits, const int64_t* __restrict__ counts,
    float* __restrict__ min_val, float* __restrict__ max_val, int64_t bins,
    HistPlan* __restrict__ plan) {
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
  int64_t first = -1, last = -1;
  for (int64_t i = 0; i < bins; ++i) {
    if (counts[i] != 0) {
      first = first < 0 ? i : first;
      last = i;
    }
  }
  p.state = histogram_state(*min_val, *max_val, bins, first, last);
  double lo = b.mn, hi = b.mx;
  int e_min = histogram_min_exponent(fmax(fabs(lo), fabs(hi)));
  if (p.state.kind != HistogramState::kEmpty) {
    lo = fmin(lo, p.state.ext_lo);
    hi = fmax(hi, p.state.ext_hi);
    e_min = max(e_min, p.state.e_min);
  }
  p.grid = histogram_grid_in_float(histogram_grid(lo, hi, bins, e_min), bins);
  p.inv_width = ldexp(1.0, -p.grid.e);
  *min_val = static_cast<float>(ldexp(p.grid.m, p.grid.e));
  *max_val = static_cast<float>(ldexp(p.grid.m + static_cast<double>(bins), p.grid.e));
  *plan = p;
}

/// Old counts aside and the histogram zeroed.
__global__ void histogram_clear_kernel(
    int64_t* __restrict__ counts, int64_t* __restrict__ old, int64_t bins,
    const HistPlan* __restrict__ plan) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < bins && !plan->skip) {
    old[i] = counts[i];
    counts[i] = 0;
  }
}

/// Old counts onto the new grid (histogram_moved_bin).
__global__ void histogram_move_kernel(
    int64_t* __restrict__ counts, const int64_t* __restrict__ old, int64_t bins,
    const HistPlan* __restrict__ plan) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < bins && !plan->skip && old[i] != 0) {
    const int64_t to = histogram_moved_bin(plan->state, i, plan->grid, bins);
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
  const double inv_width = plan->inv_width, m = plan->grid.m;
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
    const int64_t bin = histogram_bin(static_cast<double>(v), inv_width, m, bins);
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
        reinterpret_cast<const MinMax*>(partial.const_data_ptr()), splits, counts,
        min_val.data_ptr<float>(), max_val.data_ptr<float>(), bins, plan_p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const unsigned bin_blocks = static_cast<unsigned>((bins + kThreads - 1) / kThreads);
    histogram_clear_kernel<<<bin_blocks, kThreads, 0, stream>>>(counts, old.data_ptr<int64_t>(), bins, plan_p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    histogram_move_kernel<<<bin_blocks, kThreads, 0, stream>>>(counts, old.const_data_ptr<int64_t>(), bins, plan_p);
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

std::tuple<at::Tensor, at::Tensor, at::Tensor> histogram_merge_cuda(
    const at::Tensor& histograms,
    const at::Tensor& min_vals,
    const at::Tensor& max_vals,
    const std::optional<at::Tensor>& base,
    const std::optional<at::Tensor>& base_min_val,
    const std::optional<at::Tensor>& base_max_val) {
  checks::histogram_merge_args(
      histograms, min_vals, max_vals, base, base_min_val, base_max_val,
      "qtorchext::histogram_merge");
  auto host = [](const std::optional<at::Tensor>& t) -> std::optional<at::Tensor> {
    return t.has_value() ? std::optional<at::Tensor>(t->cpu()) : std::nullopt;
  };
  auto [h, lo, hi] = qat::histogram_merge(
      histograms.cpu(), min_vals.cpu(), max_vals.cpu(), host(base), host(base_min_val),
      host(base_max_val));
  const auto device = histograms.device();
  return {h.to(device), lo.to(device), hi.to(device)};
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
  m.impl("observer_histogram_update", &observer_histogram_update_cuda);
  m.impl("histogram_search_range", &histogram_search_range_cuda);
  m.impl("histogram_percentile_range", &histogram_percentile_range_cuda);
  m.impl("histogram_merge", &histogram_merge_cuda);
  m.impl("observer_mse_update", &observer_mse_update_cuda);
}
