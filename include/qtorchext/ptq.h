/**
 * @file ptq.h
 * Post-training quantization from C++, the twins of qtorchext.quantize_dynamic
 * / prepare / calibrate / quantize_static:
 *
 *   qat::quantize_dynamic(*model, "int8");         // every Linear: int8 weights, per-token activations
 *   qat::prepare_ptq(*model, "int8");               // histogram observers on activations
 *   qat::calibrate(model, batches);                 // a fmt progress line on stderr
 *   qat::disable_observer(*model);
 *   qat::convert(*model);
 *
 * The layers follow the rules of quantize.h (drop-in layers in place, plain
 * layers inside Sequential / ModuleList / ModuleDict rebuilt in place).
 */
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/utils.h>

#include "qtorchext/quantize.h"

namespace qat {

/**
 * Converts every Linear for inference without calibration: "int8" (weights
 * int8 per channel, activations quantized per token at run time),
 * "int4_weight_only" / "int2_weight_only" (group_size, default 32), "fp16" /
 * "bf16" (weights stored in half precision). Returns how many layers.
 */
int64_t quantize_dynamic(
    torch::nn::Module& model,
    const std::string& qconfig = "int8",
    std::optional<int64_t> group_size = std::nullopt);

/// The QConfig a PTQ preset calibrates with: preset(name) with histogram
/// observers (L2-optimal ranges over all calibration data) on activations.
QConfig static_qconfig(const std::string& name);

/// prepare() for calibration: static_qconfig(name), model in eval mode.
int64_t prepare_ptq(torch::nn::Module& model, const std::string& qconfig = "int8", const QConfigMap& per_module = {});
int64_t prepare_ptq(torch::nn::Module& model, const QConfig& qconfig, const QConfigMap& per_module = {});

namespace detail {
/// "calibrate [#####     ] 12/24" on stderr, rewritten in place.
void print_progress(size_t done, size_t total);
}  // namespace detail

/// Runs the batches through a prepared model (eval mode, no gradients) so its
/// observers record activation ranges. Model: a module holder with forward(Tensor).
template <class Model>
void calibrate(Model& model, const std::vector<at::Tensor>& batches, bool progress = true) {
  torch::NoGradGuard guard;
  model->eval();
  for (size_t i = 0; i < batches.size(); ++i) {
    model->forward(batches[i]);
    if (progress) {
      detail::print_progress(i + 1, batches.size());
    }
  }
}

/// prepare_ptq + calibrate + disable_observer + convert.
template <class Model>
int64_t quantize_static(
    Model& model,
    const std::vector<at::Tensor>& batches,
    const std::string& qconfig = "int8",
    bool progress = true) {
  prepare_ptq(*model, qconfig);
  calibrate(model, batches, progress);
  disable_observer(*model);
  return convert(*model);
}

}  // namespace qat
