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

// Argument checks of the family, shared by its CPU, CUDA and Meta kernels
// (metadata only; each message names the op, the argument and its value).
namespace qtorchext::checks {

/// Running statistics min_val / max_val: float32, contiguous, on input's
/// device; one element per tensor, or 1-D with input.size(ch_axis) entries.
/// Returns the wrapped axis (nullopt per tensor).
std::optional<int64_t> observer_stats_args(
    const at::Tensor& input,
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    std::optional<int64_t> ch_axis,
    const char* op);

/// The MSE observer update's arguments (observer_stats_args, a qparam range,
/// 1..10000 candidates, a one-element int64 num_batches); returns the axis.
std::optional<int64_t> mse_update_args(
    const at::Tensor& input,
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    const at::Tensor& num_batches,
    int64_t quant_min,
    int64_t quant_max,
    std::optional<int64_t> ch_axis,
    int64_t candidates,
    const char* op);

/// 0 < averaging_constant <= 1 when given.
void averaging_constant_arg(std::optional<double> averaging_constant, const char* op);

/// eps finite and > 0.
void eps_arg(double eps, const char* op);

/// A uint8 flag buffer with one element (observer_enabled, fake_quant_enabled).
void flag_arg(const at::Tensor& flag, const char* name, const at::Tensor& input, const char* op);

/// FakeQuantize's scale (float32) and zero_point (int32) buffers, shaped like
/// min_val.
void qparam_buffers(
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    const at::Tensor& min_val,
    const char* op);

/// A histogram observer's state: int64 1-D histogram, float32 one-element
/// range ends.
void histogram_args(
    const at::Tensor& histogram,
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    const char* op);

/// histogram_merge's inputs: int64 [observers, bins] histograms (bins <=
/// kMaxHistogramBins), float32 [observers] range ends, an optional base
/// histogram state of as many bins (all three parts or none).
void histogram_merge_args(
    const at::Tensor& histograms,
    const at::Tensor& min_vals,
    const at::Tensor& max_vals,
    const std::optional<at::Tensor>& base,
    const std::optional<at::Tensor>& base_min_val,
    const std::optional<at::Tensor>& base_max_val,
    const char* op);

/// choose_qparams' statistics: floating min_val / max_val of one shape and device.
void choose_qparams_args(
    const at::Tensor& min_val,
    const at::Tensor& max_val,
    int64_t quant_min,
    int64_t quant_max,
    double eps,
    const char* op);

/// choose_qparams_per_token's: a floating input of at least one dimension.
void per_token_args(
    const at::Tensor& input,
    int64_t quant_min,
    int64_t quant_max,
    double eps,
    const char* op);

}  // namespace qtorchext::checks
