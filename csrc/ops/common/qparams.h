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

}  // namespace qtorchext
