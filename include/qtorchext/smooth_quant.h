/**
 * @file smooth_quant.h
 * SmoothQuant from C++ (the twin of qtorchext.smooth_quant): per input
 * channel j of a Linear,
 *
 *   s_j = max|x_j|^alpha / max_i |W_ij|^(1 - alpha)
 *
 * divides the layer's input and multiplies the weight's column j, so the
 * float output is unchanged up to rounding while the activation's outlier
 * channels shrink toward the weight's range. Every smoothed qat::nn::Linear
 * keeps its own factors (buffer `input_smooth`, in every stage): folding
 * them into the LayerNorm before is exact only where that LayerNorm feeds
 * nothing else, which a post-LN encoder's residual breaks.
 *
 *   qat::smooth_quant(model, batches, qat::SmoothQuantOptions().alpha(0.8));
 *   qat::quantize_static(model, batches, "int8");
 */
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/arg.h>
#include <torch/nn/module.h>

namespace qat {

/// The smallest factor smooth_factors gives.
constexpr double kMinSmoothFactor = 1e-5;

/// The factors of a Linear with `weight` [out, in] whose inputs reached
/// `input_absmax` [in] per channel: float32 [in], computed in float64, 1
/// where either maximum is 0, at least kMinSmoothFactor (Python:
/// qtorchext.smooth_factors).
at::Tensor smooth_factors(const at::Tensor& input_absmax, const at::Tensor& weight, double alpha);

/// Throws unless `factors` is a float tensor of shape [in_features] with
/// finite entries > 0; the message starts with `what`.
void check_smooth_factors(const at::Tensor& factors, int64_t in_features, const std::string& what);

/// The alphas alpha = "auto" chooses from: 0, 0.1, ..., 1.
std::vector<double> smooth_auto_alphas();

/// SmoothQuant's options (Python: the keywords of qtorchext.smooth_quant).
struct SmoothQuantOptions {
  /// Share of the activation range moved into the weights, in [0, 1].
  TORCH_ARG(double, alpha) = 0.5;
  /// Choose each layer's alpha from smooth_auto_alphas(): the one whose
  /// smoothed layer, quantized with the PTQ preset `qconfig`, has the least
  /// squared output error on up to 4096 of its calibration input rows
  /// (Python: alpha="auto").
  TORCH_ARG(bool, auto_alpha) = false;
  /// The preset the auto search simulates (as quantize_static uses it;
  /// weight-only presets with group_size: AWQ's search with SmoothQuant's
  /// factors).
  TORCH_ARG(std::string, qconfig) = "int8";
  /// Group size of a weight-only qconfig (default: the preset's).
  TORCH_ARG(std::optional<int64_t>, group_size) = std::nullopt;
  /// Module paths to smooth; empty: every qat::nn::Linear.
  TORCH_ARG(std::vector<std::string>, layers) = {};
};

namespace detail {
/// smooth_quant() with the model run by run_batch(i), i < n_batches.
std::map<std::string, double> smooth_quant_impl(
    torch::nn::Module& model,
    const std::function<void(size_t)>& run_batch,
    size_t n_batches,
    const SmoothQuantOptions& options);
}  // namespace detail

/**
 * Smooths the float qat::nn::Linear layers of `model` in place (every one,
 * or options.layers) from the largest input magnitudes per channel over the
 * calibration batches; then quantize with any preset (quantize_static,
 * quantize_dynamic, prepare). Returns {layer path: alpha used}. A layer the
 * batches never reach, or that sees NaN / inf, is an error naming it.
 * Model: a module holder with forward(Tensor).
 */
template <class Model>
std::map<std::string, double> smooth_quant(
    Model& model,
    const std::vector<at::Tensor>& batches,
    const SmoothQuantOptions& options = {}) {
  return detail::smooth_quant_impl(
      *model, [&](size_t i) { model->forward(batches[i]); }, batches.size(), options);
}

}  // namespace qat
