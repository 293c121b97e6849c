/**
 * @file quant_meta.h
 * How a converted layer was quantized: the `quant_meta` buffer of every
 * converted layer (C++ and Python), and the conversion plan that derives it
 * from a layer's quantizers. Both frontends use these (Python through
 * qtorchext._C), and the layer ops (quantized_linear, quantized_conv,
 * quantized_embedding) take it as their `quant_meta` argument.
 *
 * quant_meta is 12 int64 entries:
 *
 * | #  | entry              | values                                              |
 * |----|--------------------|-----------------------------------------------------|
 * | 0  | format version     | 1; 2 for a fused GELU (which version 1 readers      |
 * |    |                    | would take for ReLU); a newer file is refused       |
 * | 1  | layer              | 0 linear, 1 conv1d, 2 conv2d, 3 embedding           |
 * | 2  | mode               | 0 int8 (integer GEMM), 1 weight-only, 2 binary,     |
 * |    |                    | 3 float16, 4 bfloat16                               |
 * | 3  | weight bits        | 8, 4, 2 (integer), 1 (binary), 16 (float)           |
 * | 4  | weight quant_min   |                                                     |
 * | 5  | weight quant_max   |                                                     |
 * | 6  | group size         | 0: per output channel                               |
 * | 7  | input              | 0 float, 1 static affine, 2 dynamic per token,      |
 * |    |                    | 3 dynamic per token symmetric, 4 binary,            |
 * |    |                    | 5 float16 cast, 6 bfloat16 cast                     |
 * | 8  | input quant_min    |                                                     |
 * | 9  | input quant_max    |                                                     |
 * | 10 | activation         | 0 none, 1 fused ReLU, 2 fused GELU (erf), 3 fused   |
 * |    |                    | GELU (tanh approximation); GELU on linear layers    |
 * | 11 | weight scale dtype | 0 float32, 1 float16, 2 bfloat16                    |
 */
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

namespace qat {

/// Newest format version of quant_meta and the quantized state dicts this
/// qtorchext reads. Layers are written as version 1 unless they fuse a GELU
/// (version 2), so files without one stay readable by older releases.
constexpr int64_t kFormatVersion = 2;

enum Layer : int64_t { kLinear = 0, kConv1d = 1, kConv2d = 2, kEmbedding = 3 };
enum Mode : int64_t { kInt8 = 0, kWeightOnly = 1, kBinary = 2, kFloat16 = 3, kBFloat16 = 4 };
/// The activation a converted layer applies to its output (entry 10).
enum Activation : int64_t { kNoActivation = 0, kRelu = 1, kGelu = 2, kGeluTanh = 3 };
enum Input : int64_t {
  kInputFloat = 0,
  kInputStatic = 1,
  kInputDynamic = 2,
  kInputDynamicSymmetric = 3,
  kInputBinary = 4,
  kInputFloat16 = 5,
  kInputBFloat16 = 6
};

/// How a layer was quantized (the quant_meta buffer).
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
  int64_t activation = kNoActivation;
  /// weight_scale's dtype: 0 float32, 1 float16, 2 bfloat16.
  int64_t scale_dtype = 0;

  /// The 12 entries, format version first.
  std::vector<int64_t> to_list() const;
  at::Tensor to_tensor() const;
  /// Parses and validates 12 entries; throws naming `where` for a newer
  /// format version or entries out of range.
  static QuantMeta from_list(c10::ArrayRef<int64_t> v, const std::string& where);
  static QuantMeta from_tensor(const at::Tensor& t, const std::string& where);

  at::ScalarType weight_scale_dtype() const {
    return scale_dtype == 1 ? at::kHalf : (scale_dtype == 2 ? at::kBFloat16 : at::kFloat);
  }
  /// weight_zero_point is stored as int8 when the weight range fits (every
  /// preset), else int32 (e.g. unsigned 8-bit weights, 0..255).
  at::ScalarType zero_point_dtype() const {
    return weight_quant_min >= -128 && weight_quant_max <= 127 ? at::kChar : at::kInt;
  }
  /// The dtype of a float16 / bfloat16 layer's `weight`.
  at::ScalarType float_weight_dtype() const {
    return mode == kFloat16 ? at::kHalf : at::kBFloat16;
  }
  /// Whether the matrix kernel quantizes the raw input itself (else the
  /// layer fake-quantizes its input in float first).
  bool native_input() const;
  bool operator==(const QuantMeta& o) const;
  bool operator!=(const QuantMeta& o) const {
    return !(*this == o);
  }
  std::string describe() const;
};

/// One tensor a converted layer stores (besides quant_meta).
struct LayerBuffer {
  std::string name;   // the state_dict key
  std::string role;   // the layer op argument it is: weight, weight_scale,
                      // weight_zero_point, bias, input_scale, input_zero_point
  std::vector<int64_t> shape;
  at::ScalarType dtype = at::kFloat;
  double fill = 0;    // its value before it is loaded or filled (scales: 1)
};

/**
 * The buffers of a converted layer quantized as `meta`, in the layer ops'
 * argument order (absent ones left out), the same in both frontends:
 *  - int8 / weight-only: weight_packed uint8 [out, ceil(in * bits / 8)],
 *    weight_scale [out, groups] (quant_meta's scale dtype),
 *    weight_zero_point [out, groups] (int8 when the range fits, else int32);
 *  - binary: weight_bits int32 [out, ceil(in / 32)], weight_alpha [out];
 *  - float16 / bfloat16: weight in that dtype, `float_weight_shape` (a
 *    convolution's) or [out, in];
 *  - bias [out] when has_bias; input_scale [1], input_zero_point int32 [1]
 *    for static inputs.
 * pack_quantized_weight returns the weight buffers in this order.
 */
std::vector<LayerBuffer> layer_buffers(
    const QuantMeta& meta,
    int64_t out_features,
    int64_t in_features,
    bool has_bias,
    at::IntArrayRef float_weight_shape = {});

/// What a weight quantizer is, as the conversion plan needs it.
/**
 * Checks the values of a converted layer's quantization parameters, as a
 * loaded file or a hand-edited state may hold them: weight scales finite and
 * > 0, weight zero points within [weight_quant_min, weight_quant_max], binary
 * alphas finite and >= 0, the static input's scale finite and > 0 and its zero
 * point within [input_quant_min, input_quant_max]. `state` maps buffer names
 * (the state dict keys without the layer's prefix) to tensors; names it does
 * not hold are not checked. Throws naming `where`, the buffer, the first bad
 * entry and its value. Reads the tensors on the host: for loads and
 * conversions, not for every forward.
 */
void check_layer_qparams(
    const QuantMeta& meta,
    const std::vector<std::pair<std::string, at::Tensor>>& state,
    const std::string& where);

struct WeightQuantizerSpec {
  enum Kind : int64_t { kAffine = 0, kBinary = 1, kFloat16 = 2, kBFloat16 = 3 };
  int64_t kind = kAffine;
  int64_t quant_min = 0, quant_max = 0;
  int64_t group_size = 0;           // 0: per tensor or per channel
  std::optional<int64_t> ch_axis;   // affine and binary
  /// The dtype the quantizer rounds its scales to (affine only).
  std::optional<at::ScalarType> scale_dtype;
};

/// What an input quantizer is (none: a float input).
struct InputQuantizerSpec {
  enum Kind : int64_t {
    kNone = 0,
    kAffine = 1,
    kDynamic = 2,
    kDynamicSymmetric = 3,
    kBinary = 4,
    kFloat16 = 5,
    kBFloat16 = 6
  };
  int64_t kind = kNone;
  int64_t quant_min = 0, quant_max = 0;
  bool per_tensor = true;  // affine and binary: converted only per tensor
};

/**
 * The conversion plan: the quant_meta of a layer with these quantizers.
 * Integer weights are 2, 4 or 8 bits by their number of levels; the integer
 * GEMM (mode int8) takes per-channel weights with static inputs (and, for
 * linear layers, dynamic per-token ones, which do not commute with a
 * convolution's unfold); other integer weights run weight-only on the
 * input's exact fake-quant values. Throws for a quantizer that cannot be
 * converted (weights per channel along an axis other than 0, inputs per
 * channel).
 */
QuantMeta plan_quant_meta(
    int64_t layer,
    const WeightQuantizerSpec& weight,
    const InputQuantizerSpec& input,
    int64_t activation);

/// The activation's name ("", "relu", "gelu", "gelu_tanh").
const char* activation_name(int64_t activation);

}  // namespace qat
