// The quantized state of converted layers: buffers, and the arguments of the
// layer ops (qat::quantized_linear / quantized_conv / quantized_embedding)
// that compute their forward. Python's converted modules
// (python/qtorchext/nn/quantized.py) hold the same buffers and call the same
// ops; the plan, the packing and the kernels are in C++ once.
#include "qtorchext/nn/quantized.h"

#include <ATen/ATen.h>

#include "qtorchext/fake_quantize.h"
#include "qtorchext/ops.h"

namespace qat::nn {
namespace {

/// An affine quantizer's observer options and qparams (null if not affine).
const ObserverOptions* affine_options(torch::nn::Module* q) {
  if (auto* f = dynamic_cast<FakeQuantizeImpl*>(q)) {
    return &f->observer().observer_options();
  }
  if (auto* l = dynamic_cast<LearnableFakeQuantizeImpl*>(q)) {
    return &l->observer().observer_options();
  }
  return nullptr;
}

std::tuple<at::Tensor, at::Tensor> affine_qparams(torch::nn::Module* q) {
  if (auto* f = dynamic_cast<FakeQuantizeImpl*>(q)) {
    return f->calculate_qparams();
  }
  return dynamic_cast<LearnableFakeQuantizeImpl*>(q)->calculate_qparams();
}

}  // namespace

at::Tensor find_buffer(const torch::nn::Module& owner, const std::string& name) {
  const auto buffers = owner.named_buffers(/*recurse=*/false);
  const at::Tensor* t = buffers.find(name);
  return t == nullptr ? at::Tensor() : *t;
}

QuantMeta meta_for(
    int64_t layer,
    torch::nn::Module* weight_quantizer,
    torch::nn::Module* input_quantizer,
    int64_t activation) {
  WeightQuantizerSpec w;
  if (auto* f = dynamic_cast<FloatFakeQuantizeImpl*>(weight_quantizer)) {
    w.kind = f->dtype == at::kHalf ? WeightQuantizerSpec::kFloat16 : WeightQuantizerSpec::kBFloat16;
  } else if (auto* b = dynamic_cast<BinaryFakeQuantizeImpl*>(weight_quantizer)) {
    w.kind = WeightQuantizerSpec::kBinary;
    w.ch_axis = b->options.ch_axis();
  } else if (const ObserverOptions* o = affine_options(weight_quantizer)) {
    w.kind = WeightQuantizerSpec::kAffine;
    w.quant_min = o->quant_min(), w.quant_max = o->quant_max();
    w.group_size = o->group_size().value_or(0);
    w.ch_axis = o->ch_axis();
    if (auto* f = dynamic_cast<FakeQuantizeImpl*>(weight_quantizer)) {
      w.scale_dtype = f->options.scale_dtype();
    }
  } else {
    TORCH_CHECK(
        false, "cannot convert a weight quantizer of type ",
        weight_quantizer ? weight_quantizer->name() : "null");
  }
  InputQuantizerSpec in;
  if (input_quantizer == nullptr) {
    in.kind = InputQuantizerSpec::kNone;
  } else if (auto* d = dynamic_cast<DynamicFakeQuantizeImpl*>(input_quantizer)) {
    in.kind = d->options.symmetric() ? InputQuantizerSpec::kDynamicSymmetric
                                     : InputQuantizerSpec::kDynamic;
    in.quant_min = d->options.quant_min(), in.quant_max = d->options.quant_max();
  } else if (auto* b = dynamic_cast<BinaryFakeQuantizeImpl*>(input_quantizer)) {
    in.kind = InputQuantizerSpec::kBinary;
    in.per_tensor = !b->options.ch_axis().has_value();
  } else if (auto* f = dynamic_cast<FloatFakeQuantizeImpl*>(input_quantizer)) {
    in.kind = f->dtype == at::kHalf ? InputQuantizerSpec::kFloat16 : InputQuantizerSpec::kBFloat16;
  } else if (const ObserverOptions* o = affine_options(input_quantizer)) {
    in.kind = InputQuantizerSpec::kAffine;
    in.quant_min = o->quant_min(), in.quant_max = o->quant_max();
    in.per_tensor = !o->ch_axis().has_value() && !o->group_size().has_value();
  } else {
    TORCH_CHECK(false, "cannot convert an input quantizer of type ", input_quantizer->name());
  }
  return plan_quant_meta(layer, w, in, activation);
}

void QuantizedState::setup(
    torch::nn::Module& owner,
    const QuantMeta& meta_,
    int64_t out_features_,
    int64_t in_features_,
    bool has_bias,
    at::IntArrayRef float_weight_shape) {
  meta = meta_;
  out_features = out_features_;
  in_features = in_features_;
  owner.register_buffer("quant_meta", meta.to_tensor());
  buffers_ = layer_buffers(meta, out_features, in_features, has_bias, float_weight_shape);
  for (const LayerBuffer& b : buffers_) {
    owner.register_buffer(b.name, at::full(b.shape, b.fill, at::TensorOptions().dtype(b.dtype)));
  }
}

void QuantizedState::fill(
    torch::nn::Module& owner,
    const at::Tensor& weight_in,
    const at::Tensor& bias,
    torch::nn::Module* weight_quantizer,
    torch::nn::Module* input_quantizer) {
  torch::NoGradGuard guard;
  const at::Tensor weight = weight_in.detach();
  std::optional<at::Tensor> scale, zero_point;
  if (affine_options(weight_quantizer) != nullptr) {
    auto [s, zp] = affine_qparams(weight_quantizer);
    scale = s.detach(), zero_point = zp.detach();
  } else if (auto* b = dynamic_cast<BinaryFakeQuantizeImpl*>(weight_quantizer)) {
    if (!b->options.ch_axis().has_value()) {  // per tensor: one alpha
      scale = qat::binary_scale(weight.reshape({weight.size(0), -1}), std::nullopt);
    }
  }
  // the weight buffers, in layer_buffers' order
  const std::vector<at::Tensor> packed =
      qat::pack_quantized_weight(weight, scale, zero_point, meta.to_list());
  for (size_t i = 0; i < packed.size(); ++i) {
    find_buffer(owner, buffers_[i].name).copy_(packed[i]);
  }
  if (bias.defined()) {
    find_buffer(owner, "bias").copy_(bias.detach());
  }
  if (meta.input == kInputStatic) {
    auto [s, zp] = affine_qparams(input_quantizer);
    find_buffer(owner, "input_scale").copy_(s.detach().to(at::kFloat).reshape({1}));
    find_buffer(owner, "input_zero_point").copy_(zp.detach().to(at::kInt).reshape({1}));
  }
}

QuantizedState::Args QuantizedState::args(const torch::nn::Module& owner) const {
  Args a;
  for (const LayerBuffer& b : buffers_) {
    const at::Tensor t = find_buffer(owner, b.name);
    if (b.role == "weight") {
      a.weight = t;
    } else if (b.role == "weight_scale") {
      a.weight_scale = t;
    } else if (b.role == "weight_zero_point") {
      a.weight_zero_point = t;
    } else if (b.role == "bias") {
      a.bias = t;
    } else if (b.role == "input_scale") {
      a.input_scale = t;
    } else {
      a.input_zero_point = t;
    }
  }
  return a;
}

void QuantizedState::load(torch::nn::Module& owner, torch::serialize::InputArchive& archive) const {
  const std::string where = owner.name() + " (" + meta.describe() + "): torch::load: ";
  std::vector<std::pair<std::string, at::Tensor>> read;
  for (const auto& b : owner.named_buffers(/*recurse=*/false)) {
    at::Tensor t;
    archive.read(b.key(), t, /*is_buffer=*/true);
    const at::Tensor& own = b.value();
    if (b.key() == "quant_meta") {
      const QuantMeta theirs = QuantMeta::from_tensor(t, where);
      TORCH_CHECK(
          theirs == meta, where, "the file holds a layer quantized as ", theirs.describe(),
          " (another architecture, bit width or fused activation)");
    }
    TORCH_CHECK(
        t.sizes() == own.sizes() &&
            (t.scalar_type() == own.scalar_type() ||
             (at::isFloatingType(t.scalar_type()) && at::isFloatingType(own.scalar_type()))),
        where, b.key(), " is ", t.scalar_type(), " of shape ", t.sizes(), " in the file but ",
        own.scalar_type(), " of shape ", own.sizes(), " in the layer");
    read.emplace_back(b.key(), std::move(t));
  }
  check_layer_qparams(meta, read, where);
  torch::NoGradGuard guard;
  for (const auto& [name, t] : read) {
    find_buffer(owner, name).copy_(t);
  }
}

}  // namespace qat::nn
