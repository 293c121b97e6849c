/**
 * @file mixed_precision.h
 * Mixed precision under a size budget (the twin of qtorchext.mixed_precision):
 * each layer's sensitivity to each candidate preset (the model's output error
 * on calibration batches with only that layer quantized), then one preset per
 * layer so that the quantized layers' bytes are at most budget x their float
 * bytes with the smallest summed error (a multiple-choice knapsack, solved by
 * dynamic programming over byte buckets, rounded up so the budget always
 * holds).
 *
 *   auto plan = qat::mixed_precision(model, batches, qat::MixedPrecisionOptions().budget(0.15));
 *   qat::quantize_static(model, batches, std::string("int8"), true, plan.qconfig);
 */
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/arg.h>
#include <torch/nn/module.h>

#include "qtorchext/quantize.h"

namespace qat {

/// The cheapest summed error within budget_bytes, one option per layer.
struct PrecisionChoice {
  std::vector<int64_t> option;  // per layer, an index into its options
  int64_t bytes = 0;
  double error = 0;
};

/**
 * Multiple-choice knapsack: for layer l, option c costs bytes[l][c] and adds
 * error[l][c]; returns the options with the least total error whose bytes sum
 * to at most budget_bytes (costs rounded up to 1/buckets of the budget, so
 * the result never exceeds it). Throws, naming the smallest possible total, if
 * even the cheapest options exceed the budget; NaN errors count as infinite.
 */
PrecisionChoice choose_precisions(
    const std::vector<std::vector<double>>& error,
    const std::vector<std::vector<int64_t>>& bytes,
    int64_t budget_bytes,
    int64_t buckets = 4096);

/// (bytes, error) of the best choice at `points` budgets from the smallest to
/// the largest total: the size-accuracy frontier.
std::vector<std::pair<int64_t, double>> precision_frontier(
    const std::vector<std::vector<double>>& error,
    const std::vector<std::vector<int64_t>>& bytes,
    int64_t points = 40);

/// An SVG chart of the frontier (bytes as a fraction of float_bytes against
/// the estimated error, log scale), the uniform presets as labelled points and
/// the chosen plan marked.
std::string frontier_svg(
    const std::vector<std::pair<int64_t, double>>& frontier,
    const std::vector<std::tuple<std::string, int64_t, double>>& uniform,
    const PrecisionChoice& chosen,
    int64_t float_bytes,
    double budget);

/// Options of mixed_precision (Python: its keyword arguments).
struct MixedPrecisionOptions {
  /// Quantized bytes of the layers at most budget x their float bytes.
  TORCH_ARG(double, budget) = 0.15;
  /// Preset names (qat::QConfig::preset) a layer may take.
  TORCH_ARG(std::vector<std::string>, candidates) =
      std::vector<std::string>{"int8", "int4_weight_only", "int2_weight_only", "w1a8"};
  /// Group size of the weight-only candidates (unset: the presets' 32).
  TORCH_ARG(std::optional<int64_t>, group_size) = std::nullopt;
  /// Where to write the frontier chart (.svg), or "".
  TORCH_ARG(std::string, plot_path) = "";
  TORCH_ARG(bool, progress) = true;
};

/// One layer of a plan: its preset, bytes, and sensitivity to each candidate.
struct LayerPrecision {
  std::string layer;
  std::string preset;
  int64_t bytes = 0;
  int64_t float_bytes = 0;
  std::map<std::string, double> error;  // candidate -> relative output error
  std::map<std::string, int64_t> candidate_bytes;
};

/// What mixed_precision chose.
struct MixedPrecisionPlan {
  /// Per module path, the chosen preset's QConfig (as qat::static_qconfig
  /// gives it, weight-only with the group size asked for); "" -> nullopt, so
  /// other layers stay float. Pass as prepare / prepare_ptq / quantize_static's
  /// per_module.
  QConfigMap qconfig;
  std::map<std::string, std::string> presets;
  std::vector<LayerPrecision> layers;
  int64_t bytes = 0, float_bytes = 0;
  double error = 0;  // the summed per-layer errors (the estimate minimised)
};

namespace detail {
using Runner = std::function<at::Tensor(torch::nn::Module&, const at::Tensor&)>;
MixedPrecisionPlan mixed_precision_impl(
    torch::nn::Module& model,
    const std::function<std::shared_ptr<torch::nn::Module>()>& clone,
    const Runner& run,
    const std::vector<at::Tensor>& batches,
    const MixedPrecisionOptions& options);
}  // namespace detail

/**
 * Measures every Linear's sensitivity to every candidate (the model's
 * relative output error, sum |y_q - y|^2 / sum |y|^2 over the batches, with
 * only that layer quantized: fake quantization, activation ranges calibrated
 * on the batches) and chooses one preset per layer within the budget.
 * The model is not changed. Model: a module holder with forward(Tensor) and
 * clone().
 */
template <class Model>
MixedPrecisionPlan mixed_precision(
    Model& model,
    const std::vector<at::Tensor>& batches,
    const MixedPrecisionOptions& options = {}) {
  using Impl = std::remove_reference_t<decltype(*model)>;
  return detail::mixed_precision_impl(
      *model, [&] { return model->clone(); },
      [](torch::nn::Module& m, const at::Tensor& x) -> at::Tensor { return dynamic_cast<Impl&>(m).forward(x); },
      batches, options);
}

}  // namespace qat
