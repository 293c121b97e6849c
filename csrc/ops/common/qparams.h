// The qparam formula shared by every op that chooses a scale and zero point
// (observers, the fused observer + fake quant, per-token dynamic ranges, the
// MSE search): one definition for CPU and CUDA. No torch headers.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define QTORCHEXT_HOST_DEVICE __host__ __device__
#else
#define QTORCHEXT_HOST_DEVICE
#endif

namespace qtorchext {

/// torch.ao.quantization's _calculate_qparams, in float32:
///   min- = min(min_val, 0), max+ = max(max_val, 0)   (the range holds 0)
///   symmetric: scale = max(-min-, max+) / ((quant_max - quant_min) / 2),
///              zero_point = 0, or (quant_min + quant_max) / 2 for unsigned
///              ranges (quant_min >= 0), PyTorch's choice for explicit ranges
///   affine:    scale = (max+ - min-) / (quant_max - quant_min),
///              zero_point = clamp(quant_min - round(min- / scale))
///   scale = max(scale, eps). Never-observed statistics (min_val = +inf,
///   max_val = -inf) give PyTorch's defaults, scale 1 and zero point 0.
struct QParams {
  float scale;
  int32_t zero_point;
};

QTORCHEXT_HOST_DEVICE inline QParams choose_qparams(
    float min_val,
    float max_val,
    int64_t quant_min,
    int64_t quant_max,
    bool symmetric,
    float eps) {
  if (min_val == INFINITY && max_val == -INFINITY) {
    return {1.0f, 0};
  }
  const float min_neg = fminf(min_val, 0.f);
  const float max_pos = fmaxf(max_val, 0.f);
  if (symmetric) {
    const float m = fmaxf(-min_neg, max_pos);
    const float scale = fmaxf(m / (static_cast<float>(quant_max - quant_min) / 2.0f), eps);
    const int32_t zp = quant_min >= 0 ? static_cast<int32_t>((quant_min + quant_max) / 2) : 0;
    return {scale, zp};
  }
  const float scale = fmaxf((max_pos - min_neg) / static_cast<float>(quant_max - quant_min), eps);
  const float r = nearbyintf(min_neg / scale);
  if (r != r) {  // min_val = -inf: an infinite scale; a fixed answer, not a NaN cast
    return {scale, static_cast<int32_t>(quant_min)};
  }
  int64_t zp = quant_min - static_cast<int64_t>(r);
  zp = zp < quant_min ? quant_min : (zp > quant_max ? quant_max : zp);
  return {scale, static_cast<int32_t>(zp)};
}

/// How a histogram of `bins` bins over [lo, hi) widens to cover [need_lo,
/// need_hi] (need_lo <= lo, need_hi >= hi): by 2^k, with the old bin edges on
/// the new grid, so that old bins i .. i + 2^k - 1 merge exactly into new bin
/// shift + (i >> k). When even 2^62 is not enough (data ~1e19 times wider than
/// the old range), the range becomes [need_lo, need_hi] and every old count
/// goes to the one new bin that holds the old range's centre (k = -1, bin
/// `shift`): all of them lie within a small fraction of that bin.
struct HistogramWidening {
  int k;
  int64_t shift;
  double lo, hi;
};

QTORCHEXT_HOST_DEVICE inline HistogramWidening widen_histogram(
    double lo,
    double hi,
    int64_t bins,
    double need_lo,
    double need_hi) {
  const double n = static_cast<double>(bins);
  const double width = (hi - lo) / n;
  for (int k = 0; k <= 62; ++k) {
    const double w = ldexp(width, k);
    const double shift = ceil((lo - need_lo) / w);
    if (shift >= n) {  // the old range would start beyond the last bin
      continue;
    }
    const double new_lo = lo - shift * w;
    if (new_lo + n * w >= need_hi) {
      return {k, static_cast<int64_t>(shift), new_lo, new_lo + n * w};
    }
  }
  const double w = (need_hi - need_lo) / n;
  double bin = floor((lo + (hi - lo) / 2 - need_lo) / w);
  bin = bin < 0 ? 0 : (bin > n - 1 ? n - 1 : bin);
  return {-1, static_cast<int64_t>(bin), need_lo, need_hi};
}

}  // namespace qtorchext
