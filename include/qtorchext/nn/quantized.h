/**
 * @file nn/quantized.h
 * The quantized state of a converted layer, shared by the drop-in layers of
 * nn/modules.h; the twin of python/qtorchext/nn/quantized.py. State dict
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
 * plus quant_meta (QuantMeta below), which travels in the state dict: a
 * file whose layer was quantized differently, or written by a newer format
 * version, is refused with a clear error.
 */
#pragma once

#include <memory>
#include <string>

#include <torch/nn/module.h>

namespace qat::nn {

/// Format version of quant_meta and the quantized state dicts.
constexpr int64_t kFormatVersion = 1;

enum Layer : int64_t { kLinear = 0, kConv1d = 1, kConv2d = 2, kEmbedding = 3 };
enum Mode : int64_t { kInt8 = 0, kWeightOnly = 1, kBinary = 2, kFloat16 = 3, kBFloat16 = 4 };
enum Input : int64_t {
  kInputFloat = 0,
  kInputStatic = 1,
  kInputDynamic = 2,
  kInputDynamicSymmetric = 3,
  kInputBinary = 4,
  kInputFloat16 = 5,
  kInputBFloat16 = 6
};

/// How a layer was quantized (the quant_meta buffer: 12 int64 entries,
/// layout in python/qtorchext/nn/meta.py).
struct QuantMeta {
  int64_t layer = kLinear;
  int64_t mode = kInt8;
  int64_t bits = 8;
  int64_t weight_quant_min = 0;
  int64_t weight_quant_max = 0;
  int64_t group_size = 0;  // 0: per output channel
  int64_t input = kInputFloat;
  int64_t input_quant_min = 0;
  int64_t input_quant_max = 0;
  bool relu = false;
  /// weight_scale's dtype: 0 float32, 1 float16, 2 bfloat16 (quant_meta entry 11).
  int64_t scale_dtype = 0;

  at::Tensor to_tensor() const;
  at::ScalarType weight_scale_dtype() const {
    return scale_dtype == 1 ? at::kHalf : (scale_dtype == 2 ? at::kBFloat16 : at::kFloat);
  }
  /// Throws for a newer format version or a malformed tensor.
  static QuantMeta from_tensor(const at::Tensor& t, const std::string& where);
  bool operator==(const QuantMeta& o) const;
  /// weight_zero_point is stored as int8 when the weight range fits (every
  /// preset), else int32 (e.g. unsigned 8-bit weights, 0..255).
  at::ScalarType zero_point_dtype() const {
    return weight_quant_min >= -128 && weight_quant_max <= 127 ? at::kChar : at::kInt;
  }
  std::string describe() const;
};

/// The plan convert() derives from a layer's quantizers.
QuantMeta meta_for(
    int64_t layer,
    torch::nn::Module* weight_quantizer,
    torch::nn::Module* input_quantizer,
    int64_t out_channels,
    bool relu);

/// The quantized tensors of one layer, registered as buffers of the layer
/// that owns this state (each method takes that owner), and its kernels.
class QuantizedState {
 public:
  /// Registers the buffers of `meta` (zero-filled) on `owner`. A grouped
  /// convolution (conv_groups > 1) has in_features = one group's inputs, and
  /// output channel group g reads input channel group g.
  void setup(
      torch::nn::Module& owner,
      const QuantMeta& meta,
      int64_t out_features,
      int64_t in_features,
      bool has_bias,
      at::IntArrayRef float_weight_shape,
      int64_t conv_groups = 1);
  /// Fills them from the float weight [out, in] and the QAT quantizers.
  void fill(
      torch::nn::Module& owner,
      const at::Tensor& weight2d,
      torch::nn::Module* weight_quantizer,
      torch::nn::Module* input_quantizer);
  /// Whether the matrix kernel quantizes the raw input itself.
  bool native_input() const;
  /// The QAT input quantizer's output, exactly.
  at::Tensor input_fake_quant(const torch::nn::Module& owner, const at::Tensor& x) const;
  /// The layer's matrix product on rows [..., in] -> [..., out]
  /// (input_done: the input transform was already applied); of a grouped
  /// convolution, output channel group `group`: [..., out / conv_groups].
  at::Tensor rows(
      const torch::nn::Module& owner,
      const at::Tensor& x,
      bool input_done = false,
      int64_t group = 0);
  /// The depthwise convolution kernel's weights: int16 weight - zero point
  /// [out, taps], built once per device.
  at::Tensor depthwise_weight(const torch::nn::Module& owner);
  /// conv2d_int8's weights: per group pack_linear_weight of the codes with
  /// K in (taps, channels) order, stacked; built once per device.
  at::Tensor conv_weight(const torch::nn::Module& owner, int64_t taps);
  /// Drops the packed GEMM weights (after a load).
  void invalidate() {
    packed_.clear();
  }

  QuantMeta meta;
  int64_t in_features = 0;
  int64_t out_features = 0;
  int64_t conv_groups = 1;

 private:
  at::Tensor packed(const torch::nn::Module& owner, int64_t group);
  /// pack_linear_weight of each group's codes [out / groups, K].
  std::vector<at::Tensor> gemm_packs(const at::Tensor& codes, const at::Tensor& zero_point, bool rows) const;
  /// The rows of an [out, ...] tensor in output channel group `group`.
  at::Tensor group_rows(const at::Tensor& t, int64_t group) const;
  std::vector<at::Tensor> packed_;  // one per group
};

/// A buffer of `owner` by name (undefined if absent).
at::Tensor find_buffer(const torch::nn::Module& owner, const std::string& name);

}  // namespace qat::nn
