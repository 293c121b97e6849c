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
 *   qat::report(float_copy, model, batches, "sqnr.csv", "sqnr.svg");  // per-layer SQNR table
 *
 * The layers follow the rules of quantize.h (drop-in layers in place, plain
 * layers inside Sequential / ModuleList / ModuleDict rebuilt in place).
 */
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/utils.h>

#include "qtorchext/distributed.h"
#include "qtorchext/quantize.h"

namespace qat {

/**
 * Converts every Linear for inference without calibration: "int8" (weights
 * int8 per channel, activations quantized per token at run time),
 * "int4_weight_only" / "int2_weight_only" (group_size, default 32), "fp16" /
 * "bf16" (weights stored in half precision). Returns how many layers.
 */
/// `layers`: which kinds of layer to convert, by name ("Linear", "Conv1d",
/// "Conv2d", "Embedding"; Python's `layers=(nn.Linear,)`), default Linear only.
/// `group_fallback`: "per_channel" or "float" for layers whose width the group
/// size does not divide (as qat::prepare), else "" (an error naming the layer).
int64_t quantize_dynamic(
    torch::nn::Module& model,
    const std::string& qconfig = "int8",
    std::optional<int64_t> group_size = std::nullopt,
    const std::vector<std::string>& layers = {"Linear"},
    const std::string& group_fallback = "");

/// The same with a QConfig: its activation must be empty or a
/// DynamicFakeQuantize (calibrated ranges: quantize_static).
int64_t quantize_dynamic(
    torch::nn::Module& model,
    const QConfig& qconfig,
    const std::vector<std::string>& layers = {"Linear"},
    const std::string& group_fallback = "");

namespace detail {
/// quantize_dynamic up to convert: the layers prepared, the model in eval mode.
int64_t prepare_dynamic(
    torch::nn::Module& model,
    const std::string& qconfig,
    std::optional<int64_t> group_size,
    const std::vector<std::string>& layers,
    const std::string& group_fallback);
int64_t prepare_dynamic(
    torch::nn::Module& model,
    const QConfig& qconfig,
    const std::vector<std::string>& layers,
    const std::string& group_fallback);
/// The QConfig post-training quantization uses for a preset name: weight-only
/// and half presets as quantize_dynamic (MSE ranges; group_size for the
/// weight-only ones), the static
/// ones as static_qconfig, dynamic_int8 as the preset.
QConfig ptq_qconfig(const std::string& name, std::optional<int64_t> group_size = std::nullopt);
/// Bytes of a module's parameters and buffers (recursively).
int64_t module_bytes(const torch::nn::Module& m);
}  // namespace detail

/// The QConfig a PTQ preset calibrates with: preset(name) with histogram
/// observers (L2-optimal ranges over all calibration data) on activations.
QConfig static_qconfig(const std::string& name);

/// prepare() for calibration: static_qconfig(name), model in eval mode.
int64_t prepare_ptq(
    torch::nn::Module& model,
    const std::string& qconfig = "int8",
    const QConfigMap& per_module = {},
    const std::string& group_fallback = "");
int64_t prepare_ptq(
    torch::nn::Module& model,
    const QConfig& qconfig,
    const QConfigMap& per_module = {},
    const std::string& group_fallback = "");

namespace detail {
/// "calibrate [#####     ] 12/24" on stderr, rewritten in place.
void print_progress(size_t done, size_t total);
}  // namespace detail

/// Runs the batches through a prepared model (eval mode, no gradients) so its
/// observers record activation ranges; with qat::set_observer_sync, combined
/// across the ranks after every batch (every rank must run as many batches).
/// Model: a module holder with forward(Tensor).
template <class Model>
void calibrate(Model& model, const std::vector<at::Tensor>& batches, bool progress = true) {
  torch::NoGradGuard guard;
  model->eval();
  for (size_t i = 0; i < batches.size(); ++i) {
    model->forward(batches[i]);
    detail::calibration_sync(*model);  // across ranks, when set (a collective)
    if (progress) {
      detail::print_progress(i + 1, batches.size());
    }
  }
}

/// One row of report(): a converted layer of the quantized model.
struct LayerReport {
  std::string layer;      // module path, as named_modules() names it
  std::string precision;  // QuantMeta::describe(), or "float32"
  double sqnr_db = 0;     // 10 log10(sum ref^2 / sum (q - ref)^2) over all batches
  int64_t bytes = 0;      // the layer's parameters and buffers
  int64_t float_bytes = 0;
};

namespace detail {
std::vector<LayerReport> report_impl(
    torch::nn::Module& model_fp32,
    torch::nn::Module& model_q,
    const std::function<void(const at::Tensor&)>& run_fp32,
    const std::function<void(const at::Tensor&)>& run_q,
    const std::vector<at::Tensor>& batches,
    const std::string& csv_path,
    const std::string& plot_path);

/// Writes `text` to `path` through a temporary file beside it, so the path
/// holds the finished file or what it held before, never half of one.
void write_file_atomically(const std::string& path, const std::string& text, const char* what);
}  // namespace detail

/**
 * The twin of qtorchext.report: per converted layer of model_q, the SQNR of
 * its output against the same layer (same module path) of model_fp32, both
 * models run end to end on the batches (so a layer's error includes what
 * reached it), its precision and bytes. Prints the table on stdout, writes
 * it as CSV to csv_path and a bar chart of the SQNRs as SVG to plot_path
 * (".svg"; Python's `plot=` writes what matplotlib writes) when given, returns
 * the rows.
 * The layers compared are qtorchext's drop-ins (qat::nn::Linear, Conv1d,
 * Conv2d, Embedding, and the plain layers prepare() rebuilt in containers):
 * LibTorch has no forward hooks, so these layers report their outputs.
 * Model: module holders with forward(Tensor), e.g. a float clone() taken
 * before prepare / convert.
 */
template <class Model>
std::vector<LayerReport> report(
    Model& model_fp32,
    Model& model_q,
    const std::vector<at::Tensor>& batches,
    const std::string& csv_path = "",
    const std::string& plot_path = "") {
  return detail::report_impl(
      *model_fp32, *model_q, [&](const at::Tensor& x) { model_fp32->forward(x); },
      [&](const at::Tensor& x) { model_q->forward(x); }, batches, csv_path, plot_path);
}

/// prepare_ptq + calibrate + disable_observer + convert, with a preset name
/// (histogram observers on activations) or a QConfig, and per-module
/// qconfigs (paths, "type:<Kind>" or "", as Python's dict).
namespace detail {
/// prepare_ptq with a preset name or a QConfig.
template <class Spec>
int64_t prepare_ptq_spec(
    torch::nn::Module& model,
    const Spec& qconfig,
    const QConfigMap& per_module,
    const std::string& group_fallback) {
  if constexpr (std::is_same_v<Spec, QConfig>) {
    return prepare_ptq(model, qconfig, per_module, group_fallback);
  } else {
    return prepare_ptq(model, std::string(qconfig), per_module, group_fallback);
  }
}
}  // namespace detail

template <class Model, class Spec = std::string>
int64_t quantize_static(
    Model& model,
    const std::vector<at::Tensor>& batches,
    const Spec& qconfig = "int8",
    bool progress = true,
    const QConfigMap& per_module = {},
    const std::string& group_fallback = "") {
  detail::prepare_ptq_spec(*model, qconfig, per_module, group_fallback);
  calibrate(model, batches, progress);
  disable_observer(*model);
  return convert(*model);
}

}  // namespace qat
