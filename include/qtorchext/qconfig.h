/**
 * @file qconfig.h
 * QConfig: the fake quantizers (or observers) a layer's activation and weight
 * get, as factories; presets by name, the same as Python's
 * qtorchext.qconfig(name).
 */
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/nn/module.h>

namespace qat {

/// Makes a fresh quantizer module (a FakeQuantize, an observer, ...).
using ModuleFactory = std::function<std::shared_ptr<torch::nn::Module>()>;

struct QConfig {
  /// For the layer's output activation; empty: leave it in floating point.
  ModuleFactory activation;
  /// For the layer's weight; empty: leave it in floating point.
  ModuleFactory weight;

  /**
   * The preset `name`:
   *  - int8: activations uint8 per tensor, affine, moving-average min/max
   *    (averaging 0.01); weights int8 per channel (axis 0), symmetric, from
   *    the current weights (averaging 1).
   *  - w4a8, w2a8: the same with 4 / 2-bit weights; group_size selects
   *    per-group weights.
   *  - w1a8: binary weights (alpha = mean |w| per channel), uint8 activations.
   *  - int4_weight_only / int2_weight_only: 4- / 2-bit per-group affine
   *    weights (group_size 32 by default) with float16 scales, float
   *    activations.
   *  - fp16, bf16: activations and weights rounded through that type.
   *  - lsq_w4a4: learnable (LSQ) 4-bit weights (per channel, symmetric) and
   *    activations ([0, 15], per tensor).
   * Throws for an unknown name, listing the valid ones.
   */
  static QConfig preset(const std::string& name, std::optional<int64_t> group_size = std::nullopt);

  /// The preset names, sorted.
  static std::vector<std::string> preset_names();
};

/// The weight quantizer of the weight-only presets: bits-wide per-group affine
/// codes with float16 scales; min / max ranges, or the least-squared-error
/// range search (MSEObserver) with mse_search (quantize_dynamic).
ModuleFactory weight_only_weight(int bits, int64_t group_size, bool mse_search = false);

}  // namespace qat
