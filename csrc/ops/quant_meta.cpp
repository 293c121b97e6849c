// quant_meta encoding and the conversion plan (include/qtorchext/quant_meta.h),
// the one place both frontends take them from.
#include "qtorchext/quant_meta.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

namespace qat {
namespace {

constexpr int64_t kEntries = 12;

int64_t levels_bits(int64_t qmin, int64_t qmax) {
  const int64_t levels = qmax - qmin + 1;
  return levels <= 4 ? 2 : (levels <= 16 ? 4 : 8);
}

}  // namespace

std::vector<int64_t> QuantMeta::to_list() const {
  // version 1 unless a GELU is fused: a version-1 reader would apply ReLU
  const int64_t version = activation >= kGelu ? 2 : 1;
  return {version, layer, mode, bits, weight_quant_min, weight_quant_max, group_size,
          input, input_quant_min, input_quant_max, activation, scale_dtype};
}

at::Tensor QuantMeta::to_tensor() const {
  return at::tensor(to_list(), at::kLong);
}

QuantMeta QuantMeta::from_list(c10::ArrayRef<int64_t> v, const std::string& where) {
  TORCH_CHECK(
      static_cast<int64_t>(v.size()) == kEntries, where, "quant_meta must be ", kEntries,
      " int64 entries, got ", v.size());
  TORCH_CHECK(
      v[0] <= kFormatVersion, where, "the state dict uses quantized format version ", v[0],
      ", newer than the ", kFormatVersion, " this qtorchext reads; update qtorchext");
  TORCH_CHECK(v[0] >= 1, where, "quant_meta names format version ", v[0], "; versions start at 1");
  QuantMeta m;
  m.layer = v[1], m.mode = v[2], m.bits = v[3], m.weight_quant_min = v[4];
  m.weight_quant_max = v[5], m.group_size = v[6], m.input = v[7], m.input_quant_min = v[8];
  m.input_quant_max = v[9], m.activation = v[10], m.scale_dtype = v[11];
  TORCH_CHECK(
      m.activation >= kNoActivation && m.activation <= (v[0] >= 2 ? kGeluTanh : kRelu), where,
      "quant_meta names activation ", m.activation, " in format version ", v[0],
      "; this qtorchext reads 0 (none), 1 (ReLU), and from version 2 on 2 (GELU) and 3 (GELU, "
      "tanh approximation)");
  TORCH_CHECK(
      m.layer >= kLinear && m.layer <= kEmbedding, where, "quant_meta names layer kind ", m.layer,
      "; this qtorchext reads 0 (linear), 1 (conv1d), 2 (conv2d), 3 (embedding)");
  TORCH_CHECK(
      m.mode >= kInt8 && m.mode <= kBFloat16, where, "quant_meta names mode ", m.mode,
      "; this qtorchext reads 0 (int8) to 4 (bfloat16)");
  TORCH_CHECK(
      m.input >= kInputFloat && m.input <= kInputBFloat16, where, "quant_meta names input kind ",
      m.input, "; this qtorchext reads 0 (float) to 6 (bfloat16)");
  TORCH_CHECK(
      m.scale_dtype >= 0 && m.scale_dtype <= 2, where, "quant_meta names weight scale dtype ",
      m.scale_dtype, "; this qtorchext reads 0 (float32), 1 (float16), 2 (bfloat16)");
  TORCH_CHECK(
      m.activation < kGelu || m.layer == kLinear, where, "quant_meta names a fused GELU on layer "
      "kind ", m.layer, "; GELU fuses into linear layers (0) only");
  if (m.mode == kInt8 || m.mode == kWeightOnly) {
    TORCH_CHECK(
        m.bits == 2 || m.bits == 4 || m.bits == 8, where, "quant_meta names ", m.bits,
        "-bit integer weights; this qtorchext reads 2, 4 or 8");
    TORCH_CHECK(
        m.weight_quant_min <= m.weight_quant_max && m.group_size >= 0, where,
        "quant_meta names the weight range [", m.weight_quant_min, ", ", m.weight_quant_max,
        "] with group size ", m.group_size);
  }
  return m;
}

QuantMeta QuantMeta::from_tensor(const at::Tensor& t, const std::string& where) {
  TORCH_CHECK(
      t.scalar_type() == at::kLong && t.numel() == kEntries, where, "quant_meta must be ",
      kEntries, " int64 entries, got ", t.scalar_type(), " of shape ", t.sizes());
  const at::Tensor c = t.cpu().contiguous();
  return from_list(c10::ArrayRef<int64_t>(c.const_data_ptr<int64_t>(), kEntries), where);
}

bool QuantMeta::native_input() const {
  if (mode == kInt8) {
    return true;
  }
  if (mode == kBinary) {
    return input == kInputStatic || (input == kInputBinary && layer == kLinear);
  }
  return input == kInputFloat;
}

bool QuantMeta::operator==(const QuantMeta& o) const {
  return to_list() == o.to_list();
}

namespace {
/// "uint8", "int4", ... for an integer range that is a whole type; else "5-level [0, 4]".
std::string int_type_name(int64_t qmin, int64_t qmax) {
  const int64_t levels = qmax - qmin + 1;
  for (int64_t b : {1, 2, 4, 8, 16}) {
    if (levels == (int64_t{1} << b)) {
      if (qmin == 0) {
        return fmt::format("uint{}", b);
      }
      if (qmin == -(int64_t{1} << (b - 1))) {
        return fmt::format("int{}", b);
      }
    }
  }
  return fmt::format("{}-level [{}, {}]", levels, qmin, qmax);
}
}  // namespace

std::string QuantMeta::describe() const {
  // plainly, as a user would say it: "4-bit weights per channel, uint8 activations"
  static const char* scale_types[] = {"float32", "float16", "bfloat16"};
  std::string s;
  if (mode == kInt8 || mode == kWeightOnly) {
    s = fmt::format("{}-bit weights", bits);
    const int64_t levels = weight_quant_max - weight_quant_min + 1;
    if (levels != (int64_t{1} << bits) || (weight_quant_min != 0 && weight_quant_min != -(levels / 2))) {
      s += fmt::format(" [{}, {}]", weight_quant_min, weight_quant_max);
    }
    s += group_size ? fmt::format(" in groups of {}", group_size) : std::string(" per channel");
    if (scale_dtype > 0 && scale_dtype < 3) {
      s += fmt::format(" ({} scales)", scale_types[scale_dtype]);
    }
  } else if (mode == kBinary) {
    s = "binary weights (+-alpha per channel)";
  } else {
    s = mode == kFloat16 ? "float16 weights" : "bfloat16 weights";
  }
  switch (input) {
    case kInputStatic:
      s += ", " + int_type_name(input_quant_min, input_quant_max) + " activations (static)";
      break;
    case kInputDynamic:
    case kInputDynamicSymmetric:
      s += fmt::format(
          ", {} activations per token (dynamic{})", int_type_name(input_quant_min, input_quant_max),
          input == kInputDynamicSymmetric ? ", symmetric" : "");
      break;
    case kInputBinary:
      s += ", binary activations";
      break;
    case kInputFloat16:
      s += ", float16 activations";
      break;
    case kInputBFloat16:
      s += ", bfloat16 activations";
      break;
    default:
      s += layer == kEmbedding ? "" : ", float activations";
  }
  switch (activation) {
    case kRelu:
      return s + ", fused ReLU";
    case kGelu:
      return s + ", fused GELU";
    case kGeluTanh:
      return s + ", fused GELU (tanh)";
    default:
      return s;
  }
}

namespace {

/// "[3, 0]": the index of the first true entry of `bad` (a bool tensor).
std::string first_index(const at::Tensor& bad, int64_t* flat) {
  const at::Tensor idx = bad.reshape({-1}).nonzero();
  *flat = idx[0].item<int64_t>();
  std::string out = "[";
  int64_t rest = *flat;
  std::vector<int64_t> coords(bad.dim(), 0);
  for (int64_t d = bad.dim() - 1; d >= 0; --d) {
    coords[d] = rest % bad.size(d);
    rest /= bad.size(d);
  }
  for (size_t d = 0; d < coords.size(); ++d) {
    out += (d ? ", " : "") + std::to_string(coords[d]);
  }
  return out + "]";
}

void check_scales(const at::Tensor& t, const std::string& name, bool zero_ok, const std::string& where) {
  TORCH_CHECK(
      at::isFloatingType(t.scalar_type()), where, name, " must be a floating tensor, got ",
      t.scalar_type());
  if (t.numel() == 0) {
    return;
  }
  const at::Tensor v = t.detach().to(at::kCPU, at::kDouble);
  const at::Tensor bad = zero_ok ? ~(v.isfinite() & (v >= 0)) : ~(v.isfinite() & (v > 0));
  if (bad.any().item<bool>()) {
    int64_t flat = 0;
    const std::string at_index = first_index(bad, &flat);
    TORCH_CHECK_VALUE(
        false, where, name, at_index, " is ", v.reshape({-1})[flat].item<double>(),
        zero_ok ? "; it must be finite and >= 0" : "; scales must be finite and > 0");
  }
}

void check_zero_points(
    const at::Tensor& t,
    const std::string& name,
    int64_t qmin,
    int64_t qmax,
    const std::string& where) {
  TORCH_CHECK(
      !at::isFloatingType(t.scalar_type()) && t.scalar_type() != at::kBool, where, name,
      " must be an integer tensor, got ", t.scalar_type());
  if (t.numel() == 0) {
    return;
  }
  const at::Tensor v = t.detach().to(at::kCPU, at::kLong);
  const at::Tensor bad = (v < qmin) | (v > qmax);
  if (bad.any().item<bool>()) {
    int64_t flat = 0;
    const std::string at_index = first_index(bad, &flat);
    TORCH_CHECK_VALUE(
        false, where, name, at_index, " is ", v.reshape({-1})[flat].item<int64_t>(),
        ", outside the quantized range [", qmin, ", ", qmax, "]");
  }
}

}  // namespace

void check_layer_qparams(
    const QuantMeta& m,
    const std::vector<std::pair<std::string, at::Tensor>>& state,
    const std::string& where) {
  const bool affine = m.mode == kInt8 || m.mode == kWeightOnly;
  for (const auto& [name, t] : state) {
    if (!t.defined()) {
      continue;
    }
    if (name == "weight_scale" && affine) {
      check_scales(t, name, false, where);
    } else if (name == "weight_alpha" && m.mode == kBinary) {
      check_scales(t, name, true, where);
    } else if (name == "weight_zero_point" && affine) {
      check_zero_points(t, name, m.weight_quant_min, m.weight_quant_max, where);
    } else if (name == "input_scale" && m.input == kInputStatic) {
      check_scales(t, name, false, where);
    } else if (name == "input_zero_point" && m.input == kInputStatic) {
      check_zero_points(t, name, m.input_quant_min, m.input_quant_max, where);
    }
  }
}

std::vector<LayerBuffer> layer_buffers(
    const QuantMeta& m,
    int64_t n,
    int64_t k,
    bool has_bias,
    at::IntArrayRef float_weight_shape) {
  TORCH_CHECK(
      n >= 0 && k > 0, "layer_buffers: out_features (", n, ") must be >= 0 and in_features (", k,
      ") > 0");
  std::vector<LayerBuffer> out;
  if (m.mode == kInt8 || m.mode == kWeightOnly) {
    TORCH_CHECK(
        m.group_size == 0 || k % m.group_size == 0, "layer_buffers: group_size ", m.group_size,
        " must divide in_features ", k);
    const int64_t groups = m.group_size ? k / m.group_size : 1;
    out.push_back({"weight_packed", "weight", {n, (k * m.bits + 7) / 8}, at::kByte, 0});
    out.push_back({"weight_scale", "weight_scale", {n, groups}, m.weight_scale_dtype(), 1});
    out.push_back({"weight_zero_point", "weight_zero_point", {n, groups}, m.zero_point_dtype(), 0});
  } else if (m.mode == kBinary) {
    out.push_back({"weight_bits", "weight", {n, (k + 31) / 32}, at::kInt, 0});
    out.push_back({"weight_alpha", "weight_scale", {n}, at::kFloat, 1});
  } else {
    std::vector<int64_t> shape = float_weight_shape.empty() ? std::vector<int64_t>{n, k}
                                                             : float_weight_shape.vec();
    out.push_back({"weight", "weight", shape, m.float_weight_dtype(), 0});
  }
  if (has_bias) {
    out.push_back({"bias", "bias", {n}, at::kFloat, 0});
  }
  if (m.input == kInputStatic) {
    out.push_back({"input_scale", "input_scale", {1}, at::kFloat, 1});
    out.push_back({"input_zero_point", "input_zero_point", {1}, at::kInt, 0});
  }
  return out;
}

QuantMeta plan_quant_meta(
    int64_t layer,
    const WeightQuantizerSpec& weight,
    const InputQuantizerSpec& input,
    int64_t activation) {
  TORCH_CHECK_VALUE(
      layer >= kLinear && layer <= kEmbedding, "plan_quant_meta: layer must be 0 (linear) to 3 "
      "(embedding), got ", layer);
  TORCH_CHECK_VALUE(
      activation >= kNoActivation && activation <= kGeluTanh, "plan_quant_meta: activation must "
      "be 0 (none), 1 (ReLU), 2 (GELU) or 3 (GELU, tanh), got ", activation);
  TORCH_CHECK_VALUE(
      activation < kGelu || layer == kLinear, "plan_quant_meta: a GELU fuses into linear layers "
      "only, got layer kind ", layer);
  QuantMeta m;
  m.layer = layer;
  m.activation = activation;
  switch (weight.kind) {
    case WeightQuantizerSpec::kFloat16:
    case WeightQuantizerSpec::kBFloat16:
      m.mode = weight.kind == WeightQuantizerSpec::kFloat16 ? kFloat16 : kBFloat16;
      m.bits = 16;
      break;
    case WeightQuantizerSpec::kBinary:
      m.mode = kBinary, m.bits = 1, m.weight_quant_min = -1, m.weight_quant_max = 1;
      break;
    case WeightQuantizerSpec::kAffine:
      TORCH_CHECK_VALUE(
          weight.group_size != 0 || !weight.ch_axis.has_value() || *weight.ch_axis == 0,
          "weight quantizer per channel along axis ", weight.ch_axis.value_or(0),
          ": only the output channels (axis 0) can be converted");
      TORCH_CHECK_VALUE(
          weight.group_size >= 0, "weight quantizer group_size must be >= 0, got ",
          weight.group_size);
      m.mode = kInt8;
      m.weight_quant_min = weight.quant_min;
      m.weight_quant_max = weight.quant_max;
      m.bits = levels_bits(weight.quant_min, weight.quant_max);
      m.group_size = weight.group_size;
      if (weight.scale_dtype.has_value()) {
        const at::ScalarType t = *weight.scale_dtype;
        TORCH_CHECK_VALUE(
            t == at::kFloat || t == at::kHalf || t == at::kBFloat16,
            "weight quantizer scale_dtype must be float32, float16 or bfloat16, got ", t);
        m.scale_dtype = t == at::kHalf ? 1 : (t == at::kBFloat16 ? 2 : 0);
      }
      break;
    default:
      TORCH_CHECK_VALUE(false, "plan_quant_meta: weight quantizer kind ", weight.kind, " is unknown");
  }
  switch (input.kind) {
    case InputQuantizerSpec::kNone:
      m.input = kInputFloat;
      break;
    case InputQuantizerSpec::kAffine:
      TORCH_CHECK_VALUE(input.per_tensor, "input quantizers must be per tensor to be converted");
      m.input = kInputStatic;
      break;
    case InputQuantizerSpec::kDynamic:
      m.input = kInputDynamic;
      break;
    case InputQuantizerSpec::kDynamicSymmetric:
      m.input = kInputDynamicSymmetric;
      break;
    case InputQuantizerSpec::kBinary:
      TORCH_CHECK_VALUE(input.per_tensor, "binary input quantizers must be per tensor (ch_axis=None)");
      m.input = kInputBinary;
      break;
    case InputQuantizerSpec::kFloat16:
      m.input = kInputFloat16;
      break;
    case InputQuantizerSpec::kBFloat16:
      m.input = kInputBFloat16;
      break;
    default:
      TORCH_CHECK_VALUE(false, "plan_quant_meta: input quantizer kind ", input.kind, " is unknown");
  }
  if (m.input == kInputStatic || m.input == kInputDynamic || m.input == kInputDynamicSymmetric) {
    m.input_quant_min = input.quant_min;
    m.input_quant_max = input.quant_max;
  }
  const bool conv = layer == kConv1d || layer == kConv2d;
  const bool integer_input = m.input == kInputStatic ||
      (!conv && (m.input == kInputDynamic || m.input == kInputDynamicSymmetric));
  if (m.mode == kInt8 && (m.group_size != 0 || !integer_input)) {
    m.mode = kWeightOnly;
  }
  if (m.mode != kInt8 && m.mode != kWeightOnly) {
    m.scale_dtype = 0;
  }
  return m;
}

const char* activation_name(int64_t activation) {
  switch (activation) {
    case kRelu:
      return "relu";
    case kGelu:
      return "gelu";
    case kGeluTanh:
      return "gelu_tanh";
    default:
      return "";
  }
}

}  // namespace qat
