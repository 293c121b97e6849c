/**
 * @file nn/quantized.h
 * The quantized state of a converted layer, shared by the drop-in layers of
 * nn/modules.h; python/qtorchext/nn/quantized.py holds the same buffers and
 * calls the same ops. State dict
 * keys (identical in Python):
 *
 * | mode        | keys                                                           |
 * |-------------|----------------------------------------------------------------|
 * | int8        | weight_packed (uint8 codes), weight_scale, weight_zero_point   |
 * | weight-only |   ([out, groups]), bias, and input_scale / input_zero_point   |
 * |             |   for static inputs; zero points int8 when the weight range    |
 * |             |   fits in it (every preset), else int32; scales float32, or    |
 * |             |   float16 / bfloat16 when the quantizer rounds them so         |
 * | binary      | weight_bits (int32, 32 signs per word), weight_alpha, bias,    |
 * |             |   input_scale / input_zero_point for 8-bit inputs              |
 * | float16/bf16| weight (in that dtype), bias                                   |
 *
 * plus quant_meta (qtorchext/quant_meta.h), which travels in the state dict: a
 * file whose layer was quantized differently, or written by a newer format
 * version, is refused with a clear error.
 */
#pragma once

#include <memory>
#include <optional>
#include <string>

#include <torch/nn/module.h>
#include <torch/serialize/input-archive.h>

#include "qtorchext/quant_meta.h"

namespace qat::nn {

// quant_meta and its enums live with the ops (qtorchext/quant_meta.h).
using qat::kFormatVersion;
using qat::LayerBuffer;
using qat::QuantMeta;
using qat::Layer, qat::kLinear, qat::kConv1d, qat::kConv2d, qat::kEmbedding;
using qat::Mode, qat::kInt8, qat::kWeightOnly, qat::kBinary, qat::kFloat16, qat::kBFloat16;
using qat::Input, qat::kInputFloat, qat::kInputStatic, qat::kInputDynamic,
    qat::kInputDynamicSymmetric, qat::kInputBinary, qat::kInputFloat16, qat::kInputBFloat16;

/// The conversion plan (qat::plan_quant_meta) of a layer with these QAT
/// quantizers (input_quantizer null: a float input).
QuantMeta meta_for(
    int64_t layer,
    torch::nn::Module* weight_quantizer,
    torch::nn::Module* input_quantizer,
    int64_t activation);

/// The quantized tensors of one layer, registered as buffers of the layer
/// that owns this state (each method takes that owner). The forward is one
/// layer op (qat::quantized_linear / quantized_conv / quantized_embedding)
/// over them; Python's converted modules hold the same buffers.
class QuantizedState {
 public:
  /// Registers the buffers of `meta` (zero-filled) on `owner`. A
  /// convolution's in_features is one group's inputs times the kernel taps.
  void setup(
      torch::nn::Module& owner,
      const QuantMeta& meta,
      int64_t out_features,
      int64_t in_features,
      bool has_bias,
      at::IntArrayRef float_weight_shape);
  /// Fills them from the float weight [out, ...] (BatchNorm folded), the
  /// bias and the QAT quantizers: one qat::pack_quantized_weight call.
  void fill(
      torch::nn::Module& owner,
      const at::Tensor& weight,
      const at::Tensor& bias,
      torch::nn::Module* weight_quantizer,
      torch::nn::Module* input_quantizer);

  /// The stored tensors as the layer ops take them.
  struct Args {
    at::Tensor weight;  // weight_packed, weight_bits or weight
    std::optional<at::Tensor> weight_scale, weight_zero_point, bias, input_scale, input_zero_point;
  };
  Args args(const torch::nn::Module& owner) const;

  /// Reads owner's buffers from a torch::save archive: the file's quant_meta
  /// must describe this layer and its qparams pass qat::check_layer_qparams,
  /// all checked before any buffer changes.
  void load(torch::nn::Module& owner, torch::serialize::InputArchive& archive) const;

  QuantMeta meta;
  int64_t in_features = 0;
  int64_t out_features = 0;

 private:
  std::vector<LayerBuffer> buffers_;  // qat::layer_buffers of meta
};

/// A buffer of `owner` by name (undefined if absent).
at::Tensor find_buffer(const torch::nn::Module& owner, const std::string& name);

}  // namespace qat::nn
