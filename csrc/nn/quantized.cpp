// The quantized state of converted layers: mirrors _QuantizedLayer of
// python/qtorchext/nn/quantized.py step for step (same buffers, same ops).
#include "qtorchext/nn/quantized.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "qtorchext/fake_quantize.h"
#include "qtorchext/ops.h"

namespace qat::nn {
namespace {

int64_t levels_bits(int64_t qmin, int64_t qmax) {
  const int64_t levels = qmax - qmin + 1;
  return levels <= 4 ? 2 : (levels <= 16 ? 4 : 8);
}

struct WeightPlan {
  int64_t mode = kInt8, bits = 8, qmin = 0, qmax = 0, group = 0;
  int64_t scale_dtype = 0;  // QuantMeta::scale_dtype
  at::Tensor scale, zero_point;  // [N, G]
};

WeightPlan weight_plan(torch::nn::Module* wq, int64_t out_channels) {
  WeightPlan p;
  if (auto* f = dynamic_cast<FloatFakeQuantizeImpl*>(wq)) {
    p.mode = f->dtype == at::kHalf ? kFloat16 : kBFloat16;
    p.bits = 16;
    return p;
  }
  if (dynamic_cast<BinaryFakeQuantizeImpl*>(wq) != nullptr) {
    p.mode = kBinary, p.bits = 1, p.qmin = -1, p.qmax = 1;
    return p;
  }
  std::tuple<at::Tensor, at::Tensor> qparams;
  const ObserverOptions* o = nullptr;
  if (auto* f = dynamic_cast<FakeQuantizeImpl*>(wq)) {
    qparams = f->calculate_qparams();
    o = &f->observer().observer_options();
    if (f->options.scale_dtype().has_value()) {
      p.scale_dtype = *f->options.scale_dtype() == at::kHalf ? 1 : 2;
    }
  } else if (auto* l = dynamic_cast<LearnableFakeQuantizeImpl*>(wq)) {
    qparams = l->calculate_qparams();
    o = &l->observer().observer_options();
  } else {
    TORCH_CHECK(false, "cannot convert a weight quantizer of type ", wq ? wq->name() : "null");
  }
  at::Tensor scale = std::get<0>(qparams).detach().to(at::kFloat).reshape({-1});
  at::Tensor zp = std::get<1>(qparams).detach().to(at::kInt).reshape({-1});
  p.group = o->group_size().value_or(0);
  if (p.group != 0) {
    scale = scale.reshape({out_channels, -1});
    zp = zp.reshape({out_channels, -1});
  } else if (!o->ch_axis().has_value()) {
    scale = scale.expand({out_channels}).reshape({out_channels, 1}).clone();
    zp = zp.expand({out_channels}).reshape({out_channels, 1}).clone();
  } else {
    TORCH_CHECK(
        *o->ch_axis() == 0, "weight quantizer per channel along axis ", *o->ch_axis(),
        ": only the output channels (axis 0) can be converted");
    scale = scale.reshape({out_channels, 1});
    zp = zp.reshape({out_channels, 1});
  }
  p.mode = kInt8;
  p.qmin = o->quant_min();
  p.qmax = o->quant_max();
  p.bits = levels_bits(p.qmin, p.qmax);
  p.scale = scale;
  p.zero_point = zp;
  return p;
}

struct InputPlan {
  int64_t kind = kInputFloat, qmin = 0, qmax = 0;
  at::Tensor scale, zero_point;  // [1] for static
};

InputPlan input_plan(torch::nn::Module* aq) {
  InputPlan p;
  if (aq == nullptr) {
    return p;
  }
  if (auto* d = dynamic_cast<DynamicFakeQuantizeImpl*>(aq)) {
    p.kind = d->options.symmetric() ? kInputDynamicSymmetric : kInputDynamic;
    p.qmin = d->options.quant_min();
    p.qmax = d->options.quant_max();
    return p;
  }
  if (auto* b = dynamic_cast<BinaryFakeQuantizeImpl*>(aq)) {
    TORCH_CHECK(
        !b->options.ch_axis().has_value(),
        "binary input quantizers must be per tensor (ch_axis=None)");
    p.kind = kInputBinary;
    return p;
  }
  if (auto* f = dynamic_cast<FloatFakeQuantizeImpl*>(aq)) {
    p.kind = f->dtype == at::kHalf ? kInputFloat16 : kInputBFloat16;
    return p;
  }
  std::tuple<at::Tensor, at::Tensor> qparams;
  const ObserverOptions* o = nullptr;
  if (auto* f = dynamic_cast<FakeQuantizeImpl*>(aq)) {
    qparams = f->calculate_qparams();
    o = &f->observer().observer_options();
  } else if (auto* l = dynamic_cast<LearnableFakeQuantizeImpl*>(aq)) {
    qparams = l->calculate_qparams();
    o = &l->observer().observer_options();
  } else {
    TORCH_CHECK(false, "cannot convert an input quantizer of type ", aq->name());
  }
  TORCH_CHECK(
      !o->ch_axis().has_value() && !o->group_size().has_value(),
      "input quantizers must be per tensor to be converted");
  p.kind = kInputStatic;
  p.qmin = o->quant_min();
  p.qmax = o->quant_max();
  p.scale = std::get<0>(qparams).detach().to(at::kFloat).reshape({1});
  p.zero_point = std::get<1>(qparams).detach().to(at::kInt).reshape({1});
  return p;
}

}  // namespace

at::Tensor find_buffer(const torch::nn::Module& owner, const std::string& name) {
  const auto buffers = owner.named_buffers(/*recurse=*/false);
  const at::Tensor* t = buffers.find(name);
  return t == nullptr ? at::Tensor() : *t;
}

// ---------------------------------------------------------------------------
// QuantMeta
// ---------------------------------------------------------------------------

at::Tensor QuantMeta::to_tensor() const {
  return at::tensor(
      std::vector<int64_t>{
          kFormatVersion, layer, mode, bits, weight_quant_min, weight_quant_max, group_size,
          input, input_quant_min, input_quant_max, relu ? 1 : 0, scale_dtype},
      at::kLong);
}

QuantMeta QuantMeta::from_tensor(const at::Tensor& t, const std::string& where) {
  TORCH_CHECK(
      t.scalar_type() == at::kLong && t.numel() == 12,
      where, "quant_meta must be 12 int64 entries, got ", t.scalar_type(), " of shape ",
      t.sizes());
  const at::Tensor c = t.cpu().contiguous();
  const int64_t* v = c.const_data_ptr<int64_t>();
  TORCH_CHECK(
      v[0] <= kFormatVersion,
      where, "the state dict uses quantized format version ", v[0], ", newer than the ",
      kFormatVersion, " this qtorchext reads; update qtorchext");
  QuantMeta m;
  m.layer = v[1], m.mode = v[2], m.bits = v[3], m.weight_quant_min = v[4];
  m.weight_quant_max = v[5], m.group_size = v[6], m.input = v[7], m.input_quant_min = v[8];
  m.input_quant_max = v[9], m.relu = v[10] != 0;
  TORCH_CHECK(
      v[11] >= 0 && v[11] <= 2,
      where, "quant_meta names weight scale dtype ", v[11],
      "; this qtorchext reads 0 (float32), 1 (float16), 2 (bfloat16)");
  m.scale_dtype = v[11];
  return m;
}

bool QuantMeta::operator==(const QuantMeta& o) const {
  return layer == o.layer && mode == o.mode && bits == o.bits &&
      weight_quant_min == o.weight_quant_min && weight_quant_max == o.weight_quant_max &&
      group_size == o.group_size && input == o.input && input_quant_min == o.input_quant_min &&
      input_quant_max == o.input_quant_max && relu == o.relu && scale_dtype == o.scale_dtype;
}

std::string QuantMeta::describe() const {
  static const char* modes[] = {"int8", "weight-only", "binary", "float16", "bfloat16"};
  static const char* inputs[] = {
      "float", "static", "dynamic", "dynamic symmetric", "binary", "float16", "bfloat16"};
  std::string s = fmt::format("{} weights", mode >= 0 && mode < 5 ? modes[mode] : "?");
  if (mode == kInt8 || mode == kWeightOnly) {
    s += fmt::format(" ({}-bit, [{}, {}], ", bits, weight_quant_min, weight_quant_max);
    s += group_size ? fmt::format("group {}", group_size) : std::string("per channel");
    static const char* scale_types[] = {"float32", "float16", "bfloat16"};
    s += fmt::format(", {} scales)", scale_dtype >= 0 && scale_dtype < 3 ? scale_types[scale_dtype] : "?");
  }
  s += fmt::format(", {} input", input >= 0 && input < 7 ? inputs[input] : "?");
  return relu ? s + ", relu" : s;
}

QuantMeta meta_for(
    int64_t layer,
    torch::nn::Module* weight_quantizer,
    torch::nn::Module* input_quantizer,
    int64_t out_channels,
    bool relu) {
  const WeightPlan w = weight_plan(weight_quantizer, out_channels);
  const InputPlan in = input_plan(input_quantizer);
  QuantMeta m;
  m.layer = layer, m.mode = w.mode, m.bits = w.bits, m.weight_quant_min = w.qmin;
  m.weight_quant_max = w.qmax, m.group_size = w.group, m.input = in.kind;
  m.input_quant_min = in.qmin, m.input_quant_max = in.qmax, m.relu = relu;
  m.scale_dtype = (w.mode == kInt8) ? w.scale_dtype : 0;
  // The integer GEMM takes per-channel weights with static inputs (and, for
  // linear layers, dynamic per-token ones); the rest runs weight-only on the
  // input's exact fake-quant values.
  const bool conv = layer == kConv1d || layer == kConv2d;
  const bool integer_input = in.kind == kInputStatic ||
      (!conv && (in.kind == kInputDynamic || in.kind == kInputDynamicSymmetric));
  if (m.mode == kInt8 && (m.group_size != 0 || !integer_input)) {
    m.mode = kWeightOnly;
  }
  return m;
}

// ---------------------------------------------------------------------------
// QuantizedState
// ---------------------------------------------------------------------------

void QuantizedState::setup(
    torch::nn::Module& owner,
    const QuantMeta& meta_,
    int64_t out_features_,
    int64_t in_features_,
    bool has_bias,
    at::IntArrayRef float_weight_shape,
    int64_t conv_groups_) {
  meta = meta_;
  out_features = out_features_;
  in_features = in_features_;
  conv_groups = conv_groups_;
  const int64_t n = out_features, k = in_features;
  const int64_t groups = meta.group_size ? k / meta.group_size : 1;
  owner.register_buffer("quant_meta", meta.to_tensor());
  if (meta.mode == kInt8 || meta.mode == kWeightOnly) {
    owner.register_buffer("weight_packed", at::zeros({n, (k * meta.bits + 7) / 8}, at::kByte));
    owner.register_buffer("weight_scale", at::ones({n, groups}, meta.weight_scale_dtype()));
    owner.register_buffer("weight_zero_point", at::zeros({n, groups}, meta.zero_point_dtype()));
  } else if (meta.mode == kBinary) {
    owner.register_buffer("weight_bits", at::zeros({n, (k + 31) / 32}, at::kInt));
    owner.register_buffer("weight_alpha", at::ones({n}));
  } else {
    owner.register_buffer(
        "weight",
        at::zeros(
            float_weight_shape.empty() ? at::IntArrayRef({n, k}) : float_weight_shape,
            meta.mode == kFloat16 ? at::kHalf : at::kBFloat16));
  }
  if (has_bias) {
    owner.register_buffer("bias", at::zeros({n}));
  }
  if (meta.input == kInputStatic) {
    owner.register_buffer("input_scale", at::ones({1}));
    owner.register_buffer("input_zero_point", at::zeros({1}, at::kInt));
  }
  packed_.clear();
}

void QuantizedState::fill(
    torch::nn::Module& owner,
    const at::Tensor& weight2d,
    torch::nn::Module* weight_quantizer,
    torch::nn::Module* input_quantizer) {
  torch::NoGradGuard guard;
  if (meta.mode == kInt8 || meta.mode == kWeightOnly) {
    const WeightPlan w = weight_plan(weight_quantizer, out_features);
    const at::Tensor codes = qat::quantize_weight(
        weight2d.to(at::kFloat),
        meta.group_size ? w.scale : w.scale.reshape({-1}),
        meta.group_size ? w.zero_point : w.zero_point.reshape({-1}),
        meta.weight_quant_min,
        meta.weight_quant_max);
    find_buffer(owner, "weight_packed")
        .copy_(qat::pack_int_weight(codes, meta.bits, meta.weight_quant_min));
    find_buffer(owner, "weight_scale").copy_(w.scale);
    find_buffer(owner, "weight_zero_point").copy_(w.zero_point);
  } else if (meta.mode == kBinary) {
    auto* b = dynamic_cast<BinaryFakeQuantizeImpl*>(weight_quantizer);
    find_buffer(owner, "weight_bits").copy_(qat::pack_binary_weight(weight2d));
    const at::Tensor alpha =
        qat::binary_scale(weight2d, b->options.ch_axis().has_value() ? std::optional<int64_t>(0) : std::nullopt);
    find_buffer(owner, "weight_alpha").copy_(alpha.to(at::kFloat).expand({out_features}));
  }
  if (meta.input == kInputStatic) {
    const InputPlan in = input_plan(input_quantizer);
    find_buffer(owner, "input_scale").copy_(in.scale);
    find_buffer(owner, "input_zero_point").copy_(in.zero_point);
  }
  packed_.clear();
}

bool QuantizedState::native_input() const {
  if (meta.mode == kInt8) {
    return true;
  }
  if (meta.mode == kBinary) {
    return meta.input == kInputStatic || (meta.input == kInputBinary && meta.layer == kLinear);
  }
  return meta.input == kInputFloat;
}

at::Tensor QuantizedState::input_fake_quant(const torch::nn::Module& owner, const at::Tensor& x) const {
  switch (meta.input) {
    case kInputStatic:
      return qat::fake_quantize_per_tensor_affine(
          x, find_buffer(owner, "input_scale"), find_buffer(owner, "input_zero_point"),
          meta.input_quant_min, meta.input_quant_max);
    case kInputDynamic:
    case kInputDynamicSymmetric:
      return DynamicFakeQuantize(DynamicFakeQuantizeOptions()
                                     .quant_min(meta.input_quant_min)
                                     .quant_max(meta.input_quant_max)
                                     .symmetric(meta.input == kInputDynamicSymmetric))
          ->forward(x);
    case kInputBinary:
      return qat::binarize(x, qat::binary_scale(x, std::nullopt));
    case kInputFloat16:
      return qat::fake_cast(x, at::kHalf);
    case kInputBFloat16:
      return qat::fake_cast(x, at::kBFloat16);
    default:
      return x;
  }
}

at::Tensor QuantizedState::group_rows(const at::Tensor& t, int64_t group) const {
  if (!t.defined() || conv_groups == 1) {
    return t;
  }
  const int64_t n = out_features / conv_groups;
  return t.narrow(0, group * n, n);
}

std::vector<at::Tensor> QuantizedState::gemm_packs(
    const at::Tensor& codes,
    const at::Tensor& zero_point,
    bool rows) const {
  // The CUDA kernel's int8 rows of weight - zero point on the GPU; on the CPU
  // int8 panels (half the bytes to read) when every weight - zero point fits,
  // else int16 ones.
  const bool narrow = rows ||
      (meta.weight_quant_min - zero_point.max().item<int64_t>() >= -128 &&
       meta.weight_quant_max - zero_point.min().item<int64_t>() <= 127);
  std::vector<at::Tensor> packs;
  for (int64_t g = 0; g < conv_groups; ++g) {
    packs.push_back(qat::pack_linear_weight(group_rows(codes, g), group_rows(zero_point, g), narrow, rows));
  }
  return packs;
}

at::Tensor QuantizedState::packed(const torch::nn::Module& owner, int64_t group) {
  const at::Tensor stored = find_buffer(owner, "weight_packed");
  if (packed_.empty() || packed_[0].device() != stored.device()) {
    const at::Tensor codes =
        qat::unpack_int_weight(stored, meta.bits, meta.weight_quant_min, in_features);
    const at::Tensor zero_point = find_buffer(owner, "weight_zero_point").reshape({-1});
    // One per group of a grouped convolution.
    packed_ = gemm_packs(codes, zero_point, stored.is_cuda());
  }
  return packed_[group];
}

at::Tensor QuantizedState::conv_weight(const torch::nn::Module& owner, int64_t taps) {
  const at::Tensor stored = find_buffer(owner, "weight_packed");
  if (packed_.empty() || packed_[0].device() != stored.device()) {
    const at::Tensor codes = qat::unpack_int_weight(stored, meta.bits, meta.weight_quant_min, in_features)
                                 .view({out_features, -1, taps})
                                 .transpose(1, 2)
                                 .reshape({out_features, -1});
    const at::Tensor zero_point = find_buffer(owner, "weight_zero_point").reshape({-1});
    packed_ = {at::stack(gemm_packs(codes, zero_point, stored.is_cuda()))};
  }
  return packed_[0];
}

at::Tensor QuantizedState::depthwise_weight(const torch::nn::Module& owner) {
  const at::Tensor stored = find_buffer(owner, "weight_packed");
  if (packed_.empty() || packed_[0].device() != stored.device()) {
    const at::Tensor codes =
        qat::unpack_int_weight(stored, meta.bits, meta.weight_quant_min, in_features);
    const at::Tensor zero_point = find_buffer(owner, "weight_zero_point").reshape({-1, 1});
    packed_ = {codes.to(at::kShort) - zero_point.to(at::kShort)};
  }
  return packed_[0];
}

at::Tensor QuantizedState::rows(
    const torch::nn::Module& owner,
    const at::Tensor& x_in,
    bool input_done,
    int64_t group) {
  at::Tensor x = x_in;
  if (!input_done && !native_input()) {
    x = input_fake_quant(owner, x);
    input_done = true;
  }
  const at::Tensor bias_t = group_rows(find_buffer(owner, "bias"), group);
  const std::optional<at::Tensor> bias =
      bias_t.defined() ? std::optional<at::Tensor>(bias_t) : std::nullopt;
  const bool relu = meta.relu;
  if (meta.mode == kInt8) {
    const at::Tensor scale =
        group_rows(find_buffer(owner, "weight_scale").reshape({-1}).to(at::kFloat), group);
    if (meta.input == kInputStatic) {
      return qat::linear_int8(
          x, packed(owner, group), scale, bias, find_buffer(owner, "input_scale"),
          find_buffer(owner, "input_zero_point"), meta.input_quant_min, meta.input_quant_max,
          false, relu);
    }
    return qat::linear_int8(
        x, packed(owner, group), scale, bias, std::nullopt, std::nullopt, meta.input_quant_min,
        meta.input_quant_max, meta.input == kInputDynamicSymmetric, relu);
  }
  if (meta.mode == kBinary) {
    const bool native = !input_done;
    const bool is_static = native && meta.input == kInputStatic;
    return qat::linear_binary(
        x, group_rows(find_buffer(owner, "weight_bits"), group),
        group_rows(find_buffer(owner, "weight_alpha"), group), in_features, bias,
        is_static ? std::optional<at::Tensor>(find_buffer(owner, "input_scale")) : std::nullopt,
        is_static ? std::optional<at::Tensor>(find_buffer(owner, "input_zero_point")) : std::nullopt,
        is_static ? meta.input_quant_min : 0, is_static ? meta.input_quant_max : 0,
        native && meta.input == kInputBinary, relu);
  }
  if (meta.mode == kWeightOnly) {
    return qat::linear_weight_only(
        x, group_rows(find_buffer(owner, "weight_packed"), group),
        group_rows(find_buffer(owner, "weight_scale"), group),
        group_rows(find_buffer(owner, "weight_zero_point"), group), meta.bits,
        meta.weight_quant_min, bias, relu);
  }
  at::Tensor y = at::linear(
      x, find_buffer(owner, "weight").reshape({out_features, -1}).to(at::kFloat),
      bias_t.defined() ? bias_t : at::Tensor());
  return relu ? at::relu(y) : y;
}

}  // namespace qat::nn
