// Private ops of the observer family, used by the autograd kernels and the
// C++ frontend.
#pragma once

#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>

namespace qtorchext::ops {

/// (output, mask) of the fused observer + fake quantization.
std::tuple<at::Tensor, at::Tensor> fused_observe_fake_quantize_cachemask(
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
    std::optional<double> averaging_constant);

}  // namespace qtorchext::ops
