/**
 * @file gptq.h
 * GPTQ from C++ (the twin of qtorchext.gptq / method="gptq"): weights chosen
 * column by column on their quantizer's grid, each column's rounding error
 * spread over the columns not yet quantized through the inverse Hessian of
 * the layer's calibration inputs (the ops gptq_hessian_update and
 * gptq_quantize, ops.h).
 *
 *   qat::quantize_dynamic(model, "int4_weight_only", 128, batches, qat::GPTQOptions());
 *   // or, on a prepared model (prepare_ptq / prepare):
 *   qat::gptq(model, batches, qat::GPTQOptions().act_order(true));
 *
 * Layers run in the model's order, each Hessian collected with the layers
 * before it already quantized; layers fed the same input tensor (query, key,
 * value) share one Hessian and one pass; one Hessian is held at a time. The
 * layers are qtorchext's drop-ins (qat::nn::Linear and the plain Linears
 * prepare() rebuilt in containers): LibTorch has no forward hooks, so these
 * layers hand their inputs to the collector.
 */
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/arg.h>
#include <torch/nn/module.h>

#include "qtorchext/ptq.h"

namespace qat {

/// GPTQ's options (Python: qtorchext.GPTQ).
struct GPTQOptions {
  /// Quantize the columns with the largest inputs first (each column keeps
  /// its group's qparams).
  TORCH_ARG(bool, act_order) = false;
  /// Added to the Hessian's diagonal, as a fraction of its mean.
  TORCH_ARG(double, damp) = 0.01;
  /// Columns updated at once between the lazy whole-matrix updates.
  TORCH_ARG(int64_t, block_size) = 128;
};

namespace detail {
/// gptq() with the model run by run_batch(i), i < n_batches.
int64_t gptq_impl(
    torch::nn::Module& model,
    const std::function<void(size_t)>& run_batch,
    size_t n_batches,
    const GPTQOptions& options,
    bool progress,
    bool restore_observers);
}  // namespace detail

/**
 * Applies GPTQ in place to the weights of a prepared model: every Linear
 * whose weight quantizer is an integer FakeQuantize (per tensor, channel or
 * group) gets weights on the grid its quantizer's observer picks for the
 * original weights, chosen with the calibration batches. The weight
 * observers are then off, so convert stores exactly these codes
 * (restore_observers: left as they were, for QAT from the GPTQ weights).
 * Convolutions, embeddings, binary and learnable weights keep round to
 * nearest (a warning names them). Returns how many layers GPTQ chose.
 * Model: a module holder with forward(Tensor).
 */
template <class Model>
int64_t gptq(
    Model& model,
    const std::vector<at::Tensor>& batches,
    const GPTQOptions& options = {},
    bool progress = true,
    bool restore_observers = false) {
  return detail::gptq_impl(
      *model, [&](size_t i) { model->forward(batches[i]); }, batches.size(), options, progress,
      restore_observers);
}

/// quantize_dynamic with the Linear weights chosen by GPTQ on `calibration`
/// (Python: quantize_dynamic(..., calibration=batches, method="gptq")).
template <class Model>
int64_t quantize_dynamic(
    Model& model,
    const std::string& qconfig,
    std::optional<int64_t> group_size,
    const std::vector<at::Tensor>& calibration,
    const GPTQOptions& options,
    const std::vector<std::string>& layers = {"Linear"},
    const std::string& group_fallback = "",
    bool progress = true) {
  const int64_t n = detail::prepare_dynamic(*model, qconfig, group_size, layers, group_fallback);
  gptq(model, calibration, options, progress);
  convert(*model);
  return n;
}

/// quantize_static with the Linear weights chosen by GPTQ on the same
/// batches first; the activation ranges are then calibrated on the model with
/// those weights (Python: quantize_static(..., method="gptq")).
template <class Model, class Spec = std::string>
int64_t quantize_static(
    Model& model,
    const std::vector<at::Tensor>& batches,
    const Spec& qconfig,
    const GPTQOptions& options,
    bool progress = true,
    const QConfigMap& per_module = {},
    const std::string& group_fallback = "") {
  detail::prepare_ptq_spec(*model, qconfig, per_module, group_fallback);
  gptq(model, batches, options, progress);
  calibrate(model, batches, progress);
  disable_observer(*model);
  return convert(*model);
}

}  // namespace qat
